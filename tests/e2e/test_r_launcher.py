"""JupyterLab's Launcher offers R beside Python (issue 13), seen in headless Chromium on the
real personal platform: one "R" tile in the Notebook section; it opens a notebook on the R
kernel that runs a cell. Screenshots go to ``$TWINHUB_SCREENSHOTS`` (tests/e2e/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.helpers.browser import log_in
from tests.helpers.platform import Platform

pytestmark = pytest.mark.integration

USER = "admin"  # the personal platform's one user
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def lab(personal_platform: Platform) -> Iterator[Platform]:
    p = personal_platform
    p.spawn(USER)
    yield p
    p.stop_server(USER)


def _notebooks(p: Platform) -> set[str]:
    r = requests.get(
        f"{p.url}user/{USER}/api/contents",
        headers={"Authorization": f"token {p.token(USER)}"},
        timeout=30,
    )
    r.raise_for_status()
    return {c["path"] for c in r.json()["content"] if c["type"] == "notebook"}


def test_the_launcher_has_one_r_notebook_that_runs_r(lab, browser_context, shots):
    p = lab
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, p.url, USER, p.admin_password)
    page.goto(f"{p.url}user/{USER}/lab")
    notebook_cards = page.locator('.jp-LauncherCard[data-category="Notebook"]')
    r_card = notebook_cards.and_(page.locator('[title="R"]'))
    r_card.wait_for()
    page.screenshot(path=str(shots / "1-launcher.png"))
    titles = [notebook_cards.nth(i).get_attribute("title") for i in range(notebook_cards.count())]
    assert titles.count("R") == 1 and any("Python" in (t or "") for t in titles), titles
    # The tile shows IRkernel's logo, not the letters JupyterLab draws without one.
    assert r_card.locator("img").count() == 1

    before = _notebooks(p)
    try:
        r_card.click()
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        panel.locator(".jp-Notebook-cell").first.wait_for()
        page.wait_for_selector("#jp-main-statusbar >> text=R | Idle", timeout=TIMEOUT_MS)
        panel.locator(".jp-Cell-inputArea .cm-content").first.click()
        page.keyboard.type("cat(sum(1:10))")
        page.keyboard.press("Shift+Enter")
        out = panel.locator(".jp-OutputArea-output").first
        out.wait_for()
        page.screenshot(path=str(shots / "2-r-notebook.png"))
        assert out.inner_text().strip() == "55"
    finally:
        # The notebook was made in the user's home (as root here, /root): remove it.
        for path in _notebooks(p) - before:
            requests.delete(
                f"{p.url}user/{USER}/api/contents/{path}",
                headers={"Authorization": f"token {p.token(USER)}"},
                timeout=30,
            )
    assert not errors, errors

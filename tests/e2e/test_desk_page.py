"""The service desk's page in headless Chromium (Playwright), and its link in JupyterLab's
Help menu.

- On the real multi-user platform: a user logs in through the hub, has too many or too
  large files refused by the form before any ticket is stored, opens a ticket with an
  attachment through the desk's form, and sees its thread; a member of the support group
  sees every ticket with the filters and answers; the user sees the answer and closes the
  ticket. Every write goes through the page's script (fetch with the XSRF value).
- A real JupyterLab (``jupyter lab`` with this checkout's labextension) has "Service desk"
  in its Help menu where its ``$TWINHUB_SERVICES`` lists the desk, opening the desk's path
  (with the platform's base URL) in a new tab; none where the desk does not run.

Screenshots go to ``$TWINHUB_SCREENSHOTS`` (look at them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.helpers.browser import log_in
from tests.helpers.platform import free_port
from twinhub import install_jupyter_config as ijc
from twinlab.contract import ENV_SERVICES

TIMEOUT_MS = 90_000
USER, STAFF = "deskpage-ann", "deskpage-sue"


@pytest.fixture(scope="module")
def site(multiuser_platform) -> tuple:
    p = multiuser_platform
    for name in (USER, STAFF):
        if p.api("GET", f"/users/{name}", user="admin").status_code != 404:
            pytest.skip(f"{name} existed before this module: its password is unknown")
    passwords = {USER: p.add_user(USER), STAFF: p.add_user(STAFF, groups=("support",))}
    return p, passwords


@pytest.mark.integration
@pytest.mark.multiuser
def test_ticket_from_the_page_answered_by_staff(site, browser_context, shots, tmp_path) -> None:
    p, passwords = site
    desk = p.url + "services/desk/"
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # -- the user: an empty desk, then a ticket with a file ---------------------------------
    log_in(page, p.url, USER, passwords[USER])
    page.goto(desk)
    page.locator("h1", has_text="Your tickets").wait_for()
    assert page.locator(".empty").count() == 1
    log_file = tmp_path / "kernel.log"
    log_file.write_text("Traceback (most recent call last):\n  MemoryError\n")
    page.fill("#t-subject", "My kernel dies when I open the ERA5 cube")
    page.fill("#t-body", "Every time I run the second cell.\nThe log is attached.")
    # Files past the limits (TwinhubDesk's defaults: 10 files, 5 MiB each) are refused by
    # the page before anything is stored: no half-made ticket, no staff mail.
    many = []
    for i in range(11):
        many.append(tmp_path / f"part{i}.txt")
        many[-1].write_text(str(i))
    big = tmp_path / "core.dump"
    big.write_bytes(b"\0" * (5 * 1024 * 1024 + 1))
    alert = page.locator("#new-ticket [role=alert]")
    for files, words in ((many, "at most 10"), ([big], "larger than the limit")):
        page.set_input_files("#t-files", [str(f) for f in files])
        page.click("#new-ticket button[type=submit]")
        alert.filter(has_text=words).wait_for()
    tickets = requests.get(desk + "api/v1/tickets", timeout=30,
                           headers={"Authorization": f"token {p.token(USER)}"})  # fmt: skip
    assert tickets.json()["tickets"] == []
    page.set_input_files("#t-files", str(log_file))
    page.screenshot(path=str(shots / "1-new-ticket-form.png"), full_page=True)
    page.click("#new-ticket button[type=submit]")
    page.wait_for_url(lambda u: "ticket=" in u)
    page.locator(".attachments a", has_text="kernel.log").wait_for()
    assert page.locator(".ticket .state").inner_text() == "open"
    assert "second cell" in page.locator(".thread .message .body").first.inner_text()
    page.screenshot(path=str(shots / "2-ticket-thread.png"), full_page=True)
    ticket_url = page.url

    # -- staff: every ticket, filters, the answer --------------------------------------------
    browser_context.clear_cookies()
    log_in(page, p.url, STAFF, passwords[STAFF])
    page.goto(desk + "?f=html&state=open")
    page.locator("h1", has_text="All tickets").wait_for()
    row = page.locator("table.tickets tr", has_text="ERA5 cube")
    assert row.count() == 1 and USER in row.inner_text()
    page.screenshot(path=str(shots / "3-staff-all-tickets.png"), full_page=True)
    row.locator("a").click()
    page.wait_for_url(lambda u: "ticket=" in u)
    page.fill("#reply-body", "Open the cube with chunks={'time': 24}: it then fits in memory.")
    page.click("#reply button[type=submit]")
    page.locator(".ticket .state", has_text="answered").wait_for()
    assert page.locator(".message.from-staff").count() == 1
    page.screenshot(path=str(shots / "4-staff-answered.png"), full_page=True)

    # -- the user again: the answer, then close ----------------------------------------------
    browser_context.clear_cookies()
    log_in(page, p.url, USER, passwords[USER])
    page.goto(ticket_url)
    page.locator(".message.from-staff", has_text="chunks").wait_for()
    page.click("button.transition[data-to=closed]")
    page.locator(".ticket .state", has_text="closed").wait_for()
    assert page.locator("button.transition[data-to=open]").count() == 1
    page.screenshot(path=str(shots / "5-user-closed.png"), full_page=True)
    assert not errors, errors
    page.close()


#: The platform's desk as the spawner lists it (a base URL; another host name than the
#: browser's: the item keeps the path, on the lab's own origin).
DESK_URL = "http://hub.example:8000/twins/services/desk/"


@pytest.fixture
def lab(tmp_path, request) -> tuple[str, str]:
    """A real JupyterLab server with this checkout's labextension build and twinlab's server
    extension, its ``$TWINHUB_SERVICES`` as the test's parameter names."""
    prefix = tmp_path / "prefix"
    settings = ijc.lab_overrides(prefix).parent
    ijc.labextension(prefix, ijc.LABEXTENSION_BUILD)  # first on JUPYTER_PATH: wins
    (tmp_path / "root").mkdir()
    port, token = free_port(), "desk-help-test"
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        ENV_SERVICES: json.dumps(request.param),
    }
    proc = subprocess.Popen(
        [str(Path(sys.prefix) / "bin" / "jupyter"), "lab", "--no-browser", "--allow-root",
         f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={tmp_path / 'root'}", f"--LabApp.app_settings_dir={settings}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "api/status", params={"token": token}, timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not start in 90 s")
        yield url, token
    finally:
        proc.terminate()
        proc.wait(30)


def _help_menu(page, url: str, token: str, shown: str):
    page.goto(f"{url}lab?token={token}")
    # The labextension says when its lookup of the desk is over (shown or not).
    page.locator(f"body[data-twinhub-desk={shown}]").wait_for(state="attached")
    page.locator(".lm-MenuBar-itemLabel", has_text="Help").click()
    page.locator(".lm-Menu-itemLabel", has_text="About JupyterLab").wait_for()
    return page.locator(".lm-Menu-itemLabel", has_text="Service desk")


@pytest.mark.parametrize("lab", [{"desk": DESK_URL}], indirect=True)
def test_jupyterlab_help_menu_opens_the_desk(lab, browser_context, shots) -> None:
    url, token = lab
    page = browser_context.new_page()
    item = _help_menu(page, url, token, "shown")
    item.wait_for()
    page.screenshot(path=str(shots / "6-lab-help-menu.png"))
    with browser_context.expect_page() as opened:
        item.click()
    # The desk's path with the platform's base URL, on the lab's origin (a bare lab server
    # answers it with its own redirect, without the slash: no desk here).
    assert opened.value.url.rstrip("/") == url + "twins/services/desk", opened.value.url
    opened.value.close()
    page.close()


@pytest.mark.parametrize("lab", [{"datalake": "http://hub.example/services/datalake/"}],
                         indirect=True)  # fmt: skip
def test_jupyterlab_help_menu_has_no_desk_where_none_runs(lab, browser_context, shots) -> None:
    url, token = lab
    page = browser_context.new_page()
    item = _help_menu(page, url, token, "none")
    page.screenshot(path=str(shots / "7-lab-help-menu-no-desk.png"))
    assert item.count() == 0
    page.close()

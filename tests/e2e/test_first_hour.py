"""A brand-new user's first hour, walked through in headless Chromium on the real
multi-user platform with the sample data (issue 18's check):

log in → land on the twinhub home (name, server, projects, links) → start the server with an
explicit click → open a tutorial from the Launcher → run it to the end with no warning
output → open the Dask sidebar, start a cluster there and see its Task Stream through the
user's server → open the Data lake page and search "temperature" (2t items first).

Screenshots go to ``$TWINHUB_SCREENSHOTS`` (tests/e2e/conftest.py) to be looked at.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.helpers.browser import log_in
from tests.helpers.platform import wait_for_seed

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

USER = "firsthour"
TUTORIAL = "01-getting-started.ipynb"
TIMEOUT_MS = 120_000
STDERR = "application/vnd.jupyter.stderr"


@pytest.fixture(scope="module")
def newcomer(multiuser_platform) -> tuple:
    p = multiuser_platform
    wait_for_seed(p)  # the tutorial and the search read the sample data
    if p.api("GET", f"/users/{USER}", user="admin").status_code != 404:
        pytest.skip(f"{USER} existed before this module: not a brand-new user")
    return p, p.add_user(USER)


@pytest.fixture(scope="module")
def page(browser_context):
    return browser_context.new_page()


def saved_notebook(p, name: str) -> dict:
    """The tutorial as JupyterLab last saved it, read through the contents API."""
    r = requests.get(
        f"{p.url}user/{USER}/api/contents/tutorials/{name}",
        headers={"Authorization": f"token {p.token(USER)}"},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()["content"]


def test_first_hour(newcomer, page, shots):
    p, password = newcomer
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    user_url = f"{p.url}user/{USER}/"

    # -- log in: the twinhub home, not a bare form ------------------------------------------
    log_in(page, p.url, USER, password)
    assert page.url.rstrip("/").endswith("/hub/home"), page.url
    page.locator("#twinhub-home").wait_for()
    page.screenshot(path=str(shots / "1-home.png"), full_page=True)
    assert "twinhub" in page.title()
    assert page.locator("#twinhub-server").get_attribute("data-state") == "stopped"
    assert page.locator("#twinhub-projects").is_visible()
    assert (
        page.locator("#twinhub-datalake-link")
        .first.get_attribute("href")
        .startswith(f"/user/{USER}/")
    )
    assert page.locator("#twinhub-support-link").is_visible()
    # Nothing started by itself: the server waits for the click.
    time.sleep(2)
    assert p.api("GET", f"/users/{USER}", user="admin").json()["servers"] == {}

    # -- start the server with an explicit click; JupyterLab opens ------------------------------
    page.click("#twinhub-start")
    page.wait_for_url(lambda u: f"/user/{USER}/lab" in u, timeout=TIMEOUT_MS)

    # -- the tutorial is in the Launcher; open it and run it to the end ----------------------
    card = page.locator(
        f'.jp-LauncherCard[data-category="twinhub"][title="twinhub tutorial: {TUTORIAL}"]'
    )
    card.wait_for()
    page.screenshot(path=str(shots / "2-launcher.png"))
    card.click()
    notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    notebook.locator(".jp-Notebook-cell").first.wait_for()
    page.wait_for_selector("#jp-main-statusbar >> text=Idle", timeout=TIMEOUT_MS)
    page.click(".lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")
    # Done when the saved notebook has every code cell executed (Ctrl+S saves it).
    deadline = time.monotonic() + 300
    while True:
        notebook.locator(".jp-Notebook-cell").first.click()
        page.keyboard.press("Escape")
        page.keyboard.press("Control+s")
        time.sleep(3)
        cells = [c for c in saved_notebook(p, TUTORIAL)["cells"] if c["cell_type"] == "code"]
        if cells and all(c.get("execution_count") for c in cells):
            break
        assert time.monotonic() < deadline, "the tutorial did not finish in 5 min"
    page.screenshot(path=str(shots / "3-tutorial-done.png"))
    outputs = [o for c in cells for o in c.get("outputs", [])]
    bad = [
        o
        for o in outputs
        if o["output_type"] == "error"
        or (o["output_type"] == "stream" and o.get("name") == "stderr")
        or STDERR in o.get("data", {})
    ]
    assert not bad, json.dumps(bad, indent=1)[:3000]
    assert "global mean" in json.dumps(outputs)
    # Nothing in red on the page either (what the user sees).
    assert page.locator(f'.jp-OutputArea-output[data-mime-type="{STDERR}"]').count() == 0

    # -- the Dask sidebar: a cluster on the gateway, its plots through the user's server ----
    page.locator(".jp-SideBar [data-id='dask-dashboard-launcher']").click()
    sidebar = page.locator("#dask-dashboard-launcher")
    sidebar.wait_for()
    sidebar.get_by_role("button", name="NEW").first.click()
    item = sidebar.locator(".dask-ClusterListingItem")
    item.first.wait_for()
    item.first.click()
    task_stream = sidebar.locator(".dask-DashboardListing-item button[value='Task Stream']")
    page.wait_for_function(
        "b => b && !b.disabled", arg=task_stream.element_handle(), timeout=TIMEOUT_MS
    )
    assert sidebar.locator(".dask-URLInput input").input_value().startswith("dask/dashboard/")
    mine = requests.get(
        f"{p.url}services/dask-gateway/api/v1/clusters/",
        headers={"Authorization": f"jupyterhub {p.token(USER)}"},
        timeout=30,
    ).json()
    assert len(mine) == 1, mine  # the sidebar's cluster is the user's, on the gateway
    task_stream.click()
    frame = page.locator(".jp-MainAreaWidget iframe").last
    frame.wait_for()
    assert "/dask/dashboard/" in (frame.get_attribute("src") or "")
    frame.content_frame.locator("canvas").first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(1500)  # let Bokeh draw before the screenshot
    page.screenshot(path=str(shots / "4-dask-sidebar.png"))

    # -- the Data lake page: "temperature" finds the 2t items first -----------------------
    lake = page.context.new_page()
    lake.on("pageerror", lambda e: errors.append(str(e)))
    lake.goto(user_url + "datalake/")
    lake.wait_for_function("document.querySelectorAll('#collection option').length > 1")
    lake.fill("#q", "temperature")
    lake.click("#search-button")
    lake.wait_for_function("document.querySelectorAll('#results li').length > 0")
    found = lake.locator("#results li .id").all_inner_texts()
    assert found and all("-2t-" in i for i in found[:5]), found
    lake.screenshot(path=str(shots / "5-datalake-temperature.png"))
    lake.close()

    assert not errors, errors

"""The "Usage" page and the budget warnings, driven in headless Chromium (Playwright) on the
real multi-user platform with its real accounting service.

A user in a project whose CPU budget is 96 % used (written through the accounting store,
tests/integration/test_usage_user_side.write_usage) logs in through the hub's login form:
JupyterLab shows the 95 % warning once; the Launcher's "Usage" tile opens the page, which
shows the totals, the budget bar at its level, one chart per resource used and energy and
CO2e with their methods. Screenshots go to ``$TWINHUB_SCREENSHOTS`` (look at them).
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.browser import log_in
from tests.integration.test_usage_user_side import (
    last_hour,
    make_project,
    project_budget,
    wait_notices,
    write_usage,
)

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

USER = "usagepage"
PROJECT = "usage-page-lab"
CPU_H, BUDGET, GIB = 0.96, 1.0, 1.5
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def site(multiuser_platform) -> tuple:
    p = multiuser_platform
    if p.api("GET", f"/users/{USER}", user="admin").status_code != 404:
        pytest.skip(f"{USER} existed before this module: its password is unknown")
    password = p.add_user(USER)
    make_project(p, PROJECT, [USER])
    project_budget(p, PROJECT, cpu_hours=BUDGET)
    write_usage(p, USER, PROJECT, CPU_H, GIB, last_hour())
    url = p.spawn(USER)
    # the budget checks see it at their next tick (TwinhubAccounting.interval)
    wait_notices(p, url, USER, lambda ns: any(n["level"] == 95 for n in ns))
    return p, url, password


def settled(page, toast) -> None:
    """Wait until the toast has slid fully into view (its screenshot shows its text)."""
    toast.wait_for()
    page.wait_for_function(
        "t => { const r = t.getBoundingClientRect(); return r.right <= window.innerWidth; }",
        arg=toast.element_handle(),
    )
    page.wait_for_timeout(500)


def test_warning_in_lab_then_the_usage_page(site, browser_context, shots) -> None:
    p, url, password = site
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, p.url, USER, password)

    # -- JupyterLab: the 95 % warning, once, with a way to the page -------------------------
    page.goto(url + "lab")
    toast = page.locator(".Toastify__toast", has_text=f"project {PROJECT} used")
    toast.wait_for()
    text = toast.inner_text()
    assert re.search(rf"project {PROJECT} used 0\.9\d* of 1 CPU-hours", text), text
    assert toast.locator("button", has_text="Open Usage").count() == 1
    assert "warning" in (toast.get_attribute("class") or ""), toast.get_attribute("class")
    settled(page, toast)
    page.screenshot(path=str(shots / "1-lab-warning.png"))
    # a reload polls again: the level was shown already, no second toast
    page.reload()
    tile = page.locator(".jp-LauncherCard[title^='Usage']")
    tile.wait_for()
    page.wait_for_timeout(4000)  # the first poll happens once JupyterLab is restored
    assert page.locator(".Toastify__toast", has_text=f"project {PROJECT}").count() == 0
    page.screenshot(path=str(shots / "2-launcher.png"))

    # -- the Launcher tile opens the page in a new tab ---------------------------------------
    with browser_context.expect_page() as opened:
        tile.click()
    usage = opened.value
    usage.on("pageerror", lambda e: errors.append(str(e)))
    usage.wait_for_load_state()
    assert usage.url.startswith(url + "usage/"), usage.url
    usage.wait_for_selector("body[data-loaded]")
    assert usage.inner_text("#whoami") == USER
    assert usage.inner_text("#status") == ""
    cpu = float(usage.inner_text("#totals .card[data-key=cpu_core_hours] .value"))
    assert CPU_H <= cpu <= CPU_H + 0.03, cpu  # + the server's own start-up, metered live
    assert "cgroup: measured" in usage.inner_text("#totals .card[data-key=cpu_core_hours]")
    # the project's budget: a bar at level 95, the figures beside it
    row = usage.locator(f".project[data-project='{PROJECT}'] .budget[data-budget=cpu_hours]")
    assert row.get_attribute("data-level") == "95"
    assert "of 1.000 used" in row.inner_text() and "left (9" in row.inner_text()
    assert f"project {PROJECT} used 0.9" in usage.inner_text("#notices")
    width = row.locator(".fill").evaluate("e => e.getBoundingClientRect().width")
    full = row.locator(".bar").evaluate("e => e.getBoundingClientRect().width")
    assert 0.95 <= width / full <= 1.0, (width, full)
    # one chart per resource used, with bars; memory's total is what was written (at least)
    keys = usage.eval_on_selector_all("#charts .chart", "cs => cs.map(c => c.dataset.key)")
    assert {"cpu_core_hours", "memory_gib_hours", "energy_kwh", "co2e_kg"} <= set(keys), keys
    assert usage.locator("#charts .chart[data-key=cpu_core_hours] rect.b").count() >= 1
    # energy and CO2e, with how they were found: no RAPL here, so estimated by the model
    energy = usage.inner_text("#energy")
    assert "energy kWh" in energy and "model: estimated" in energy
    assert float(usage.inner_text("#energy .card[data-key=co2e_kg] .value")) > 0
    usage.screenshot(path=str(shots / "3-usage-page.png"), full_page=True)

    # -- the project's own view: the scope selector lists it --------------------------------
    usage.select_option("#scope", PROJECT)
    usage.wait_for_function(
        f"document.getElementById('range').textContent.startsWith('project {PROJECT}')"
    )
    assert usage.locator(".project").count() == 1
    # hourly steps of the last 24 hours hold no written usage (it is two days old) but may
    # hold the server's live start-up; the page says so or draws it
    usage.select_option("#period", "1")
    usage.select_option("#step", "hour")
    usage.wait_for_timeout(1500)
    assert usage.locator("#status .error").count() == 0
    usage.screenshot(path=str(shots / "4-project-last-day.png"), full_page=True)
    href = usage.get_attribute("#csv", "href")
    assert href.startswith("api/usage?") and "format=csv" in href and f"project={PROJECT}" in href
    assert not errors, errors


def test_used_up_budget_is_an_error_in_lab(site, browser_context, shots) -> None:
    """The admin lowers the budget below what was used: the next look at JupyterLab shows
    the 100 % error (the 95 % warning was shown already); raised again, nothing more."""
    p, url, _ = site
    page = browser_context.new_page()  # the same browser: the 95 % was shown in it
    try:
        project_budget(p, PROJECT, cpu_hours=0.9)
        wait_notices(p, url, USER, lambda ns: any(n["level"] == 100 for n in ns))
        page.goto(url + "lab")
        toast = page.locator(".Toastify__toast", has_text=f"project {PROJECT} used")
        settled(page, toast)
        text = toast.inner_text()
        assert f"project {PROJECT} used 0.9" in text and "of 0.9 CPU-hours" in text, text
        assert re.match(r"Stopping at \d\d?:\d\d", text), text  # when its servers stop
        assert "error" in (toast.get_attribute("class") or "")
        page.screenshot(path=str(shots / "5-lab-used-up.png"))
    finally:
        project_budget(p, PROJECT, cpu_hours=10.0)  # before the grace runs out
        page.close()

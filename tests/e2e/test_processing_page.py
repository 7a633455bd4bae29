"""The processing service's pages in headless Chromium on the real multi-user platform.

A user logs in through the hub, opens ``/services/processing/`` (the hub's sign-on for
services), goes to the processes, opens echo, has a bad input refused by the form with the
API's message (no job made), runs echo from the form and lands on the job's page, which
follows the job by itself until it ends: status, stage, the stages table with times, the
log, the results link. Screenshots go to ``$TWINHUB_SCREENSHOTS`` (look at them: a blank
page is a failure).
"""

from __future__ import annotations

import json

import pytest

from tests.helpers.browser import log_in
from tests.helpers.processing import SERVICE, job_ids

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

TIMEOUT_MS = 90_000
USER = "p6pageuser"


@pytest.fixture(scope="module")
def site(multiuser_platform):
    p = multiuser_platform
    if p.api("GET", f"/users/{USER}", user="admin").status_code != 404:
        pytest.skip(f"{USER} existed before this module: its password is unknown")
    return p, p.add_user(USER)


def test_run_echo_from_the_form_and_follow_the_job(site, browser_context, shots):
    p, password = site
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, p.url, USER, password)

    page.goto(p.url + SERVICE)
    page.wait_for_url(f"**/{SERVICE}**")
    page.locator("h1").first.wait_for()
    assert USER in page.content()  # who is logged in
    page.screenshot(path=str(shots / "1-landing.png"), full_page=True)

    page.goto(p.url + SERVICE + "processes?f=html")
    table = page.locator("table.processes")
    table.wait_for()
    for pid in ("echo", "zonal-mean", "regrid", "area-mean", "climatology", "point-series"):
        assert table.locator("code", has_text=pid).count() >= 1, pid
    page.screenshot(path=str(shots / "2-processes.png"), full_page=True)

    table.locator('a[href*="processes/echo"]').first.click()
    form = page.locator("form#execute")
    form.wait_for()
    assert form.get_attribute("data-process") == "echo"
    page.screenshot(path=str(shots / "3-echo.png"), full_page=True)

    # a bad input: the API's refusal shown on the page, no job made
    before = job_ids(p, USER)
    page.fill("#inputs", json.dumps({"stringInput": 5}))
    page.click("#run")
    alert = form.locator("[role=alert]")
    alert.wait_for(state="visible")
    assert "stringInput" in alert.inner_text()
    assert job_ids(p, USER) == before
    page.screenshot(path=str(shots / "4-echo-refused.png"), full_page=True)

    page.fill("#inputs", json.dumps({"stringInput": "hello from the page", "pause": 4}))
    page.click("#run")
    page.wait_for_url("**/jobs/*?f=html")
    job = page.locator("#job").get_attribute("data-job")
    assert job and job in page.url
    assert job_ids(p, USER) == before | {job}
    page.screenshot(path=str(shots / "5-job-running.png"), full_page=True)

    # the page follows the job by itself until it ends
    page.locator("#status", has_text="successful").wait_for(timeout=120_000)
    assert page.locator("#stage").inner_text() == "finished"
    assert page.locator("#progress-text").inner_text() == "100%"
    rows = page.locator("table.stages tbody tr")
    names = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    order = ["queued", "scheduling", "fetching", "processing", "ingesting", "finished"]
    assert "processing" in names and names == sorted(names, key=order.index), names
    done = rows.nth(names.index("processing"))
    assert done.locator(".started").inner_text().strip(), "no start time of processing"
    assert done.locator(".finished").inner_text().strip(), "no end time of processing"
    assert page.locator("#log-lines").inner_text().strip(), "an empty log"
    assert page.locator("#dismiss").count() == 0  # an ended job cannot be dismissed
    page.screenshot(path=str(shots / "6-job-successful.png"), full_page=True)

    page.click("#results")
    page.wait_for_url("**/results?f=html")
    assert "hello from the page" in page.content()
    page.screenshot(path=str(shots / "7-results.png"), full_page=True)

    page.goto(p.url + SERVICE + "jobs?f=html")
    page.locator(f'a[href*="{job}"]').first.wait_for()
    page.screenshot(path=str(shots / "8-jobs.png"), full_page=True)
    assert not errors, errors
    page.close()

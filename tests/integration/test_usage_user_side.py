"""The user's side of accounting on the real multi-user platform: the info endpoint's
``usage`` key, ``twinlab.usage()`` in a kernel, and the Usage page's API behind
jupyter-server-proxy, all reading the real ``accounting`` service.

Usage is written into the platform's own database through the accounting store
(:class:`twinhub.services.accounting.store.UsageStore`, the code the meter writes with), as
ended sources with known CPU and memory: the figures to find are known exactly, whatever
the meter itself measures meanwhile for the test users' servers (a few core-seconds of
start-up: hence the tolerances below, stated per assertion). The project's budget is set
by the admin through the real ``projects`` service.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.helpers.kernel import run_code
from tests.helpers.platform import Platform
from twinhub.process.runtime import Runtime
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.readings import CPU, MEMORY, SERVER, Reading, Source
from twinhub.services.accounting.store import UsageStore
from twinlab.usage.client import TOTALS

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

ANN, BOB = "usageann", "usagebob"
PROJECT = "usage-lab"
#: What is written: ann's server in the project burns 0.9 CPU-hours of a 1.0 budget (90 %:
#: level 80) and holds 2 GiB for one hour; bob's (in no project) 0.5 CPU-hours.
ANN_CPU_H, BOB_CPU_H, ANN_GIB, BUDGET = 0.9, 0.5, 2.0, 1.0
#: Start-up of a user's own server, metered live by the platform meanwhile: at most this
#: many CPU-hours on top of what is written (about 10 core-seconds expected).
STARTUP_CPU_H = 0.03


def write_usage(
    p: Platform, user: str, project: str | None, cpu_hours: float, gib: float, end: datetime
) -> str:
    """One ended server source of ``user`` charged to ``project``: ``cpu_hours`` of CPU and
    ``gib`` GiB held over the hour before ``end``, through the accounting store."""
    rt = Runtime.load(p.state)
    store = UsageStore(rt.db_url, EnergyModel.from_settings(TwinhubAccounting()), interval=3600)
    start = end - timedelta(hours=1)
    src = Source(
        source_id=f"server:{user}/#{secrets.token_hex(6)}",
        user=user,
        project=project,
        kind=SERVER,
        started_at=start,
        ended_at=end,
    )
    store.apply(
        [
            Reading(src, CPU, "counter", cpu_hours * 3600, "cgroup", end),
            Reading(src, MEMORY, "gauge", gib, "cgroup", start),
        ]
    )
    store.apply([Reading(src, MEMORY, "gauge", gib, "cgroup", end)])
    # ended and read for the last time: the live meter leaves it alone
    store.mark_final_read(src.source_id)
    return src.source_id


def project_budget(p: Platform, project: str, **budget: float) -> None:
    """The admin sets ``project``'s allocation through the projects service."""
    r = requests.put(
        p.url + f"services/projects/api/projects/{project}",
        headers={"Authorization": f"token {p.token('admin')}"},
        json=budget,
        timeout=30,
    )
    assert r.status_code == 200, r.text


def make_project(p: Platform, project: str, members: list[str]) -> None:
    r = p.api("POST", f"/groups/{project}", user="admin")
    assert r.status_code in (201, 409), r.text
    r = p.api("POST", f"/groups/{project}/users", user="admin", json={"users": members})
    assert r.status_code == 200, r.text


def last_hour() -> datetime:
    """The end of the written hour: two days ago, on the hour (inside any default range)."""
    return (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def site(multiuser_platform) -> tuple[Platform, str]:
    p = multiuser_platform
    for user in (ANN, BOB):
        if p.api("GET", f"/users/{user}", user="admin").status_code == 404:
            p.add_user(user)
    make_project(p, PROJECT, [ANN])
    project_budget(p, PROJECT, cpu_hours=BUDGET)
    end = last_hour()
    write_usage(p, ANN, PROJECT, ANN_CPU_H, ANN_GIB, end)
    write_usage(p, BOB, None, BOB_CPU_H, 1.0, end)
    return p, p.spawn(ANN)


def info(p: Platform, url: str, user: str) -> dict:
    r = requests.get(
        url + "twinlab/api/info", headers={"Authorization": f"token {p.token(user)}"}, timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()


def wait_notices(p: Platform, url: str, user: str, want, timeout: float = 45) -> dict:
    """The info key's ``usage`` once ``want(notices)`` holds: the budget checks run each
    meter tick (TwinhubAccounting.interval, 15 s), and the key is reused for 5 s."""
    deadline = time.monotonic() + timeout
    usage = info(p, url, user)["usage"]
    while not want(usage.get("notices") or []) and time.monotonic() < deadline:
        time.sleep(1)
        usage = info(p, url, user)["usage"]
    return usage


def test_info_usage_key_has_totals_budgets_and_notices(site) -> None:
    p, url = site
    usage = wait_notices(p, url, ANN, bool)
    assert "error" not in usage, usage
    assert usage["user"] == ANN
    assert usage["url"].endswith("/services/accounting/")
    t = usage["totals"]
    assert set(TOTALS) <= set(t)
    # what was written, plus at most the server's own start-up (metered live); never bob's
    assert ANN_CPU_H <= t["cpu_core_hours"] <= ANN_CPU_H + STARTUP_CPU_H, t
    assert t["memory_gib_hours"] >= ANN_GIB * 0.999, t
    assert t["energy_kwh"] > 0 and t["co2e_kg"] > 0, t
    assert "cgroup" in usage["methods"]["cpu"]
    assert usage["methods"]["energy"] == ["model"]  # no RAPL here: estimated, and said so
    b = usage["budgets"][PROJECT]["cpu_hours"]
    assert b["limit"] == BUDGET and b["level"] == 80, b
    assert ANN_CPU_H <= b["used"] <= ANN_CPU_H + STARTUP_CPU_H, b
    # the budget checks' notice: the level, the figures, in words
    [notice] = usage["notices"]
    assert notice["project"] == PROJECT and notice["budget"] == "cpu_hours", notice
    assert notice["level"] == 80 and notice["limit"] == BUDGET, notice
    assert re.match(rf"project {PROJECT} used 0\.9\d* of 1 CPU-hours", notice["message"])


def test_raised_budget_clears_the_notice(site) -> None:
    """An admin grants more at run time: the info key says so within its reuse time."""
    p, url = site
    try:
        project_budget(p, PROJECT, cpu_hours=10.0)
        usage = wait_notices(p, url, ANN, lambda notices: not notices)
        assert usage["notices"] == [], usage
        assert usage["budgets"][PROJECT]["cpu_hours"]["limit"] == 10.0
        assert usage["budgets"][PROJECT]["cpu_hours"]["level"] == 0
    finally:
        project_budget(p, PROJECT, cpu_hours=BUDGET)


NOTEBOOK = """
import json, twinlab
df = twinlab.usage(step="day")
proj = twinlab.usage(step="hour", project={project!r})
print(json.dumps({{
    "columns": list(df.columns),
    "tz": str(df.index.tz),
    "index_name": df.index.name,
    "cpu": float(df["cpu_core_hours"].sum()),
    "total_cpu": df.attrs["totals"]["cpu_core_hours"],
    "energy_methods": df.attrs["methods"].get("energy"),
    "budget_level": df.attrs["budgets"][{project!r}]["cpu_hours"]["level"],
    "proj_cpu": float(proj["cpu_core_hours"].sum()),
    "proj_rows_nonzero": int((proj["cpu_core_hours"] > 0).sum()),
    "dtypes": sorted(set(str(t) for t in df.dtypes)),
}}))
"""


def test_twinlab_usage_dataframe_in_a_kernel(site) -> None:
    p, url = site
    out = json.loads(run_code(url, p.token(ANN), NOTEBOOK.format(project=PROJECT), timeout=120))
    assert out["columns"] == list(TOTALS)
    assert out["tz"] == "UTC" and out["index_name"] == "start"
    assert out["dtypes"] == ["float64"]
    # the series adds up to the totals (floats, unrounded)
    assert out["cpu"] == pytest.approx(out["total_cpu"], rel=1e-9)
    assert ANN_CPU_H <= out["cpu"] <= ANN_CPU_H + STARTUP_CPU_H
    assert out["energy_methods"] == ["model"]
    assert out["budget_level"] == 80
    # the project's totals: the written hour is one hourly row (plus live start-up rows)
    assert ANN_CPU_H <= out["proj_cpu"] <= ANN_CPU_H + STARTUP_CPU_H
    assert out["proj_rows_nonzero"] >= 1


REFUSED = """
import os, twinlab
from twinlab.usage import UsageError
for kw in ({{"user": {bob!r}}}, {{"project": "not-my-project"}}):
    try:
        twinlab.usage(**kw)
    except UsageError as e:
        print(e.status, e)
os.environ["TWINHUB_ACCOUNTING_URL"] = "http://127.0.0.1:9/services/accounting/"
try:
    twinlab.usage()
except UsageError as e:
    print(e.status, e)
try:
    twinlab.usage(step="fortnight")
except ValueError as e:
    print("ValueError", e)
"""


def test_twinlab_usage_clear_errors(site) -> None:
    p, url = site
    lines = run_code(url, p.token(ANN), REFUSED.format(bob=BOB), timeout=120).splitlines()
    assert len(lines) == 4, lines
    other, project, down, bad_step = lines
    assert other.startswith("403 the accounting service refused (403): ") and "admin:users" in other
    assert BOB in other
    assert project.startswith("403 ") and "not-my-project" in project
    assert down.startswith("0 the accounting service is not reachable at http://127.0.0.1:9/")
    assert bad_step.startswith("ValueError step must be one of hour, day, month")


def test_usage_page_api_behind_the_server_proxy(site) -> None:
    p, url = site
    h = {"Authorization": f"token {p.token(ANN)}"}
    page = requests.get(url + "usage/", headers=h, timeout=60)
    assert page.status_code == 200 and "<title>Usage</title>" in page.text
    assert requests.get(url + "usage/app.js", headers=h, timeout=30).status_code == 200
    r = requests.get(url + "usage/api/usage", params={"step": "day"}, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["user"] == ANN and doc["totals"]["cpu_core_hours"] >= ANN_CPU_H
    assert doc["budgets"][PROJECT]["cpu_hours"]["level"] == 80
    # the page shows its owner's usage: it passes no user= on
    r = requests.get(url + "usage/api/usage", params={"user": BOB}, headers=h, timeout=30)
    assert r.status_code == 400 and "user" in r.json()["message"]
    # a refusal of the service comes back with its status and message
    r = requests.get(url + "usage/api/usage", params={"project": "nope"}, headers=h, timeout=30)
    assert r.status_code == 403 and "'nope'" in r.json()["message"]
    r = requests.get(url + "usage/api/usage", params={"format": "csv"}, headers=h, timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    header = r.text.splitlines()[0].split(",")
    assert header[:2] == ["start", "end"] and set(TOTALS) <= set(header)
    # nobody else reaches the page: the server's own authentication is in front of it
    anonymous = requests.get(url + "usage/api/usage", timeout=30, allow_redirects=False)
    assert anonymous.status_code in (302, 403), anonymous.status_code
    bob = {"Authorization": f"token {p.token(BOB)}"}
    other = requests.get(url + "usage/api/usage", headers=bob, timeout=30, allow_redirects=False)
    assert other.status_code in (302, 403), other.status_code

"""The accounting service's API on the real multi-user platform: usage (JSON and CSV),
who may read what, bad input, ``/metrics`` and ``health``, and a real server's CPU.

Known usage is written through the store (:class:`UsageStore`, the meter's own way in) into
the platform's database, for users who run nothing, in the previous hour: the figures the API
gives back are checked against the readings written (named ``written_usage`` below). The
meter itself (cgroups, /proc) is checked against ground truth in test_accounting_meter.py;
here only that a real server's CPU reaches the API.
"""

from __future__ import annotations

import csv
import io
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.kernel import run_code
from twinhub.process.runtime import Runtime
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.readings import CPU, MEMORY, SERVER, Reading, Source
from twinhub.services.accounting.store import UsageStore

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

PROJECT = "acct-climate"
MEMBER, OTHER, NOBODY = "acctmember", "acctother", "acctnobody"
#: A name a spreadsheet would run as a formula: only a source charged to PROJECT, no account.
FORMULA_USER = "=acctcsv"
#: What the readings below amount to (base units): 36 core-s in the project, 20 GiB-s.
CPU_S, MEM_GIB_S = 36.0, 20.0
TOTALS = (
    "cpu_core_hours",
    "memory_gib_hours",
    "gpu_hours",
    "dask_worker_hours",
    "storage_gib_days",
    "energy_kwh",
    "co2e_kg",
)


@pytest.fixture(scope="module")
def acct(multiuser_platform):
    """Users (a project member, a member's colleague, someone in no project), the project
    with a CPU budget (through the projects service), and known usage of the member."""
    p = multiuser_platform
    admin = p.token("admin")
    for name in (MEMBER, OTHER, NOBODY):
        if p.api("GET", f"/users/{name}", token=admin).status_code == 404:
            p.add_user(name)
    r = requests.put(
        p.url + f"services/projects/api/projects/{PROJECT}",
        headers={"Authorization": f"token {admin}"},
        json={"cpu_hours": 100},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    p.api("POST", f"/groups/{PROJECT}", token=admin)  # 409 when it exists
    r = p.api("POST", f"/groups/{PROJECT}/users", token=admin, json={"users": [MEMBER, OTHER]})
    assert r.status_code == 200, r.text
    written_usage(p)
    return p


def hour_start() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def written_usage(p) -> None:
    """Two readings of one server run of MEMBER in the previous hour, 10 s apart: CPU 0 ->
    36 core-s (counter), memory 2 GiB (gauge: 2 GiB x 10 s = 20 GiB-s)."""
    rt = Runtime.load(p.state)
    settings = TwinhubAccounting(config=rt.config)
    store = UsageStore(rt.db_url, EnergyModel.from_settings(settings), interval=30.0)
    t0 = hour_start() - timedelta(minutes=50)  # in the previous hour, whatever the time
    src = Source(
        source_id=f"server:{MEMBER}/#{uuid.uuid4().hex[:12]}",
        user=MEMBER,
        project=PROJECT,
        kind=SERVER,
        started_at=t0,
    )
    t1 = t0 + timedelta(seconds=10)
    store.apply(
        [
            Reading(src, CPU, "counter", 0.0, "cgroup", t0),
            Reading(src, MEMORY, "gauge", 2.0, "cgroup", t0),
        ]
    )
    store.apply(
        [
            Reading(src, CPU, "counter", CPU_S, "cgroup", t1),
            Reading(src, MEMORY, "gauge", 2.0, "cgroup", t1),
        ]
    )
    store.end_source(src.source_id, t1)
    # A member of the project by its name alone: a source with no usage (totals unchanged).
    formula = Source(
        source_id=f"server:{FORMULA_USER}/#{uuid.uuid4().hex[:12]}",
        user=FORMULA_USER,
        project=PROJECT,
        kind=SERVER,
        started_at=t0,
    )
    store.apply([Reading(formula, CPU, "counter", 0.0, "cgroup", t0)])
    store.end_source(formula.source_id, t0)


def get(p, path: str, who: str | None = None, token: str | None = None, **kw):
    """GET a path of the service as user ``who`` (their token), or with ``token``."""
    tok = token or (p.token(who) if who else None)
    headers = {"Authorization": f"token {tok}"} if tok else {}
    return requests.get(p.url + "services/accounting/" + path, headers=headers, timeout=30, **kw)


def usage(p, who: str | None = None, token: str | None = None, **params):
    return get(p, "api/v1/usage", who=who, token=token, params=params)


# -- shapes ----------------------------------------------------------------------------------
def test_a_user_reads_their_own_usage_by_default(acct):
    r = usage(acct, MEMBER)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["user"] == MEMBER
    assert set(doc) >= {"user", "start", "end", "totals", "methods", "series", "budgets"}
    assert set(doc["totals"]) == set(TOTALS)
    assert doc["totals"]["cpu_core_hours"] == pytest.approx(CPU_S / 3600)
    assert doc["totals"]["memory_gib_hours"] == pytest.approx(MEM_GIB_S / 3600)
    assert doc["totals"]["gpu_hours"] == 0
    assert all(isinstance(v, float) for v in doc["totals"].values())
    assert "cgroup" in doc["methods"]["cpu"]
    # the CPU of the series adds up to the total
    assert sum(s["cpu_core_hours"] for s in doc["series"]) == pytest.approx(CPU_S / 3600)
    # budgets: the user's project, held against the project's own usage
    b = doc["budgets"][PROJECT]["cpu_hours"]
    assert b["limit"] == 100
    assert b["used"] == pytest.approx(CPU_S / 3600)
    assert b["fraction"] == pytest.approx(CPU_S / 3600 / 100)
    assert b["level"] == 0
    assert usage(acct, MEMBER, user=MEMBER).json()["totals"] == doc["totals"]


def test_someone_with_no_usage_gets_zeros_not_an_error(acct):
    doc = usage(acct, NOBODY).json()
    assert doc["user"] == NOBODY
    assert doc["totals"]["cpu_core_hours"] == 0
    assert doc["budgets"] == {}


def test_members_read_their_projects_totals(acct):
    for who in (MEMBER, OTHER):
        r = usage(acct, who, project=PROJECT)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["project"] == PROJECT
        assert doc["totals"]["cpu_core_hours"] == pytest.approx(CPU_S / 3600)
        assert list(doc["budgets"]) == [PROJECT]
    own = usage(acct, OTHER, project=PROJECT, user=OTHER).json()
    assert own["totals"]["cpu_core_hours"] == 0


def test_a_time_range_and_a_step(acct):
    now = datetime.now(UTC)
    # from this hour on (the API counts a bucket whole: the written hour is out)
    later = usage(acct, MEMBER, start=hour_start().isoformat()).json()
    assert later["totals"]["cpu_core_hours"] == 0
    day = usage(acct, MEMBER, start=(now - timedelta(hours=3)).isoformat(), step="hour").json()
    assert day["totals"]["cpu_core_hours"] == pytest.approx(CPU_S / 3600)
    assert day["series"] and all({"start", "end", *TOTALS} <= set(s) for s in day["series"])


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-02-01", "end": "2026-01-01"}, "start"),
        ({"format": "xml"}, "format"),
        ({"step": "fortnightly"}, "step"),
        ({"usr": MEMBER}, "usr"),
        ({"by": "member"}, "project"),
        # extreme values: refused with a message, not a 500 or minutes of work
        ({"step": "36000000000000000000000"}, "longer than 316224000 s"),
        ({"end": "9999-12-31T23:30", "step": "hour"}, "end='9999-12-31T23:30' is out of range"),
        ({"start": "0001-01-01T00:00+01:00"}, "start='0001-01-01T00:00+01:00' is out of range"),
        ({"start": "0001-01-01", "end": "9999-11-30", "step": "month"}, "out of range"),
        ({"start": "1970-01-01", "end": "2199-12-31", "step": "hour"}, "step too small"),
        ({"start": "1970-01-01", "end": "2199-12-31", "step": "day"}, "at most 20000"),
    ],
)
def test_bad_parameters_are_400_naming_them(acct, params, names):
    r = usage(acct, MEMBER, **params)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 400
    assert names in r.json()["description"]


# -- who sees what ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"user": OTHER},
        {"project": PROJECT, "user": OTHER},
        {"project": PROJECT, "by": "member"},
    ],
)
def test_another_users_usage_and_breakdowns_are_403_for_users(acct, params):
    r = usage(acct, MEMBER, **params)
    assert r.status_code == 403, r.text
    assert "admin:users" in r.json()["description"]


def test_a_non_member_may_not_read_a_project(acct):
    r = usage(acct, NOBODY, project=PROJECT)
    assert r.status_code == 403
    assert PROJECT in r.json()["description"] and "admin:users" in r.json()["description"]


def test_admins_read_anyone_and_per_member_breakdowns(acct):
    doc = usage(acct, "admin", user=MEMBER).json()
    assert doc["totals"]["cpu_core_hours"] == pytest.approx(CPU_S / 3600)
    assert list(doc["budgets"]) == [PROJECT]  # the member's projects, not the admin's
    r = usage(acct, "admin", project=PROJECT, by="member")
    assert r.status_code == 200, r.text
    assert MEMBER in r.text


def test_anonymous_is_refused(acct):
    r = usage(acct)
    assert r.status_code in (401, 403)


def test_only_get(acct):
    r = requests.post(
        acct.url + "services/accounting/api/v1/usage",
        headers={"Authorization": f"token {acct.token(MEMBER)}"},
        timeout=30,
    )
    assert r.status_code == 405


# -- CSV -------------------------------------------------------------------------------------
def test_csv_export(acct):
    r = usage(acct, MEMBER, format="csv", step="hour")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows
    assert {"start", "end", *TOTALS} <= set(rows[0])
    total = sum(float(row["cpu_core_hours"]) for row in rows)
    assert total == pytest.approx(CPU_S / 3600)
    # an admin's per-member breakdown: one row per member
    r = usage(acct, "admin", project=PROJECT, by="member", format="csv")
    assert r.status_code == 200, r.text
    members = {row["user"]: row for row in csv.DictReader(io.StringIO(r.text, newline=""))}
    assert float(members[MEMBER]["cpu_core_hours"]) == pytest.approx(CPU_S / 3600)
    assert OTHER not in members or float(members[OTHER]["cpu_core_hours"]) == 0
    # a name a spreadsheet would run as a formula is written as text
    assert "'" + FORMULA_USER in members and FORMULA_USER not in members
    # the JSON keeps the name as it is
    doc = usage(acct, "admin", project=PROJECT, by="member").json()
    assert doc["members"][FORMULA_USER]["cpu_core_hours"] == 0


# -- metrics and health ----------------------------------------------------------------------
def metric_families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_for_admins_parsed(acct):
    r = get(acct, "metrics", who="admin")
    assert r.status_code == 200, r.text
    fams = metric_families(r.text)
    for name in (
        "twinhub_usage_cpu_seconds",
        "twinhub_usage_memory_gib_seconds",
        "twinhub_usage_gpu_seconds",
        "twinhub_usage_energy_joules",
        "twinhub_usage_co2e_grams",
    ):
        assert fams[name].type == "counter", name
        assert fams[name].documentation, name
    assert fams["twinhub_budget_remaining_ratio"].type == "gauge"
    assert all(f.documentation for f in fams.values())
    cpu = [
        s
        for s in fams["twinhub_usage_cpu_seconds"].samples
        if s.labels["user"] == MEMBER and s.labels["project"] == PROJECT
    ]
    assert cpu and cpu[0].name == "twinhub_usage_cpu_seconds_total"
    assert cpu[0].value == pytest.approx(CPU_S)
    left = [
        s
        for s in fams["twinhub_budget_remaining_ratio"].samples
        if s.labels == {"project": PROJECT, "budget": "cpu_hours"}
    ]
    assert left[0].value == pytest.approx(1 - CPU_S / 3600 / 100)
    assert fams["twinhub_accounting_last_tick_timestamp_seconds"].samples[0].value > 0


def test_metrics_with_a_token_holding_only_read_metrics(acct):
    r = acct.api("POST", "/users/admin/tokens", user="admin", json={"scopes": ["read:metrics"]})
    assert r.status_code in (200, 201), r.text
    assert get(acct, "metrics", token=r.json()["token"]).status_code == 200


def test_metrics_refused_to_users_and_anonymous(acct):
    r = get(acct, "metrics", who=MEMBER)
    assert r.status_code == 403
    assert "read:metrics" in r.json()["description"]
    assert get(acct, "metrics").status_code == 401


def test_health_is_public(acct):
    r = get(acct, "health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    meter = r.json()["meter"]
    # the last failure, if any, by its step and class only: no SQL, parameters or hosts
    assert set(meter) >= {"ticks", "last_tick", "failed_step", "last_error"}
    if meter["last_error"] is not None:
        assert re.fullmatch(r"[a-z]+: \w+", meter["last_error"]), meter["last_error"]


def test_extreme_ranges_within_the_limits_are_answered(acct):
    r = usage(acct, MEMBER, start="1970-01-01", end="2199-12-31", step="month")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert len(doc["series"]) == 230 * 12
    assert doc["totals"]["cpu_core_hours"] == pytest.approx(CPU_S / 3600)


def test_twinhub_status_says_when_the_meter_ticked(acct):
    out = acct.cli("status", check=False).stdout
    assert "accounting     meter: last tick" in out, out


# -- budgets checked each tick ---------------------------------------------------------------
def set_cpu_budget(p, hours: float) -> None:
    r = requests.patch(
        p.url + f"services/projects/api/projects/{PROJECT}",
        headers={"Authorization": f"token {p.token('admin')}"},
        json={"cpu_hours": hours},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_a_budget_at_95_percent_is_a_notice_after_the_next_tick(acct):
    """The service's loop checks budgets after each tick: lowering the budget under what
    was used shows, within a few ticks, as a notice in the member's own usage."""
    assert usage(acct, MEMBER).json()["notices"] == []
    set_cpu_budget(acct, CPU_S / 3600 / 0.96)  # used: 96 %
    try:
        deadline = time.monotonic() + 60
        notices: list = []
        while time.monotonic() < deadline and not notices:
            doc = usage(acct, MEMBER).json()
            notices = doc["notices"]
            time.sleep(1)
        assert doc["budgets"][PROJECT]["cpu_hours"]["level"] == 95
        (n,) = notices
        assert (n["project"], n["budget"], n["level"]) == (PROJECT, "cpu_hours", 95)
        assert PROJECT in n["message"]
        assert "notices" not in usage(acct, MEMBER, project=PROJECT).json()
    finally:
        set_cpu_budget(acct, 100)


# -- the meter, end to end -------------------------------------------------------------------
@pytest.mark.slow
def test_a_real_servers_cpu_reaches_the_api(acct):
    """A kernel burns ~3 s of CPU; within a few ticks the API shows at least that much for
    its user (the exact figure against ground truth: test_accounting_meter.py)."""
    p = acct
    burner = "acctburner"
    if p.api("GET", f"/users/{burner}", user="admin").status_code == 404:
        p.add_user(burner)
    url = p.spawn(burner)
    try:
        out = run_code(
            url + "/",
            p.token(burner),
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 3: pass\n"
            "print(time.process_time() - t)",
        )
        burnt = float(out.split()[0])
        deadline = time.monotonic() + 90
        seen = 0.0
        while time.monotonic() < deadline:
            seen = usage(p, burner).json()["totals"]["cpu_core_hours"] * 3600
            if seen >= burnt:
                break
            time.sleep(2)
        assert seen >= burnt, f"metered {seen:.2f} core-s, the kernel burnt {burnt:.2f}"
    finally:
        p.stop_server(burner)

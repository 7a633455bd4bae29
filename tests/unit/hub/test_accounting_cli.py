"""``twinhub usage``: the real CLI (a subprocess) on a state directory whose database holds
usage written through the store (the meter's way in), on SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from traitlets.config import Config

from twinhub.db import schema
from twinhub.process.runtime import Runtime
from twinhub.services.accounting import report
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.readings import CPU, MEMORY, SERVER, Reading, Source
from twinhub.services.accounting.store import UsageStore

TWINHUB = str(Path(sys.prefix) / "bin" / "twinhub")
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    """A platform's state dir (never started): runtime.json, a migrated database, a project
    with a CPU budget of 1 hour, and usage in it: alice 72 core-s, bob 36 core-s (and 1 GiB
    held for 20 s each)."""
    d = tmp_path_factory.mktemp("usage-cli") / "state"
    d.mkdir()
    cfg = Config()
    cfg.TwinhubProjects.projects = {"climate": {"cpu_hours": 1}}
    rt = Runtime(state_dir=d, config=cfg, mode="multi-user")
    (d / "run").mkdir()
    rt.save()
    schema.upgrade(rt.db_url)
    store = UsageStore(rt.db_url, EnergyModel.from_settings(TwinhubAccounting()), 30.0)
    for user, project, cpu in (("alice", "climate", 72.0), ("bob", "climate", 36.0)):
        src = Source(f"server:{user}/#{user:0>12}", user, project, SERVER, started_at=T0)
        t1 = T0 + timedelta(seconds=20)
        store.apply([Reading(src, CPU, "counter", 0.0, "cgroup", T0),
                     Reading(src, MEMORY, "gauge", 1.0, "cgroup", T0)])  # fmt: skip
        store.apply([Reading(src, CPU, "counter", cpu, "cgroup", t1),
                     Reading(src, MEMORY, "gauge", 1.0, "cgroup", t1)])  # fmt: skip
    return d


def usage(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TWINHUB, "usage", "--state", str(state), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_users_usage_as_json(state):
    r = usage(state, "--user", "alice", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["user"] == "alice"
    assert doc["totals"]["cpu_core_hours"] == pytest.approx(72 / 3600)
    assert doc["totals"]["memory_gib_hours"] == pytest.approx(20 / 3600)


def test_a_projects_usage_and_budget_as_a_table(state):
    r = usage(state, "--project", "climate", "--since", "2026-03-01", "--until", "2026-03-03")
    assert r.returncode == 0, r.stderr
    assert "project climate" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("cpu_core_hours"))
    assert float(line.split()[1]) == pytest.approx(108 / 3600, rel=1e-3)
    assert "budget climate cpu_hours: used 0.03 of 1 (3.0 %, level 0)" in r.stdout


def test_everyone(state):
    r = usage(state, "--json")
    assert r.returncode == 0, r.stderr
    rows = {(x["user"], x["project"]): x["totals"] for x in json.loads(r.stdout)}
    assert set(rows) == {("alice", "climate"), ("bob", "climate")}
    assert rows["bob", "climate"]["cpu_core_hours"] == pytest.approx(36 / 3600)
    table = usage(state).stdout
    assert table.splitlines()[0].split()[:3] == ["user", "project", "cpu_core_hou"]
    assert any(x.startswith("alice") and "climate" in x for x in table.splitlines())


def test_a_range_with_nothing_in_it(state):
    r = usage(state, "--since", "2026-04-01", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_a_per_member_breakdown(state):
    r = usage(state, "--project", "climate", "--by-member", "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["members"]) == {"alice", "bob"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--user", "alice", "--since", "last tuesday"], "time ago"),
        (["--user", "alice", "--step", "weekly"], "step"),
        (["--by-member"], "--by-member needs --project"),
        (["--step", "day"], "--step needs --user or --project"),
    ],
)
def test_bad_input_is_a_one_line_error(state, args, says):
    r = usage(state, *args)
    assert r.returncode == 2
    assert says in r.stderr and "Traceback" not in r.stderr


def test_no_state_is_an_error(tmp_path):
    r = usage(tmp_path / "nothing")
    assert r.returncode == 2
    assert "no platform state" in r.stderr


def test_times_ago():
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    assert report.parse_since("7d", now) == now - timedelta(days=7)
    assert report.parse_since("90m", now) == now - timedelta(minutes=90)
    assert report.parse_since("2026-03-01", now) == datetime(2026, 3, 1, tzinfo=UTC)

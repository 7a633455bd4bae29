"""services.accounting.query on real SQLite files and a real PostgreSQL 15 cluster: the
usage JSON shape, steps and resolutions, per-member breakdowns, project use and budgets.
Data goes in through the store (readings), as in the service."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from twinhub.services.accounting import query
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.readings import Reading, Source
from twinhub.services.accounting.store import UsageStore

T0 = datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC)
KEYS = {
    "cpu_core_hours",
    "memory_gib_hours",
    "gpu_hours",
    "dask_worker_hours",
    "storage_gib_days",
    "energy_kwh",
    "co2e_kg",
}


@pytest.fixture
def db_url(twinhub_db: str) -> str:  # tests/fixtures/postgres.py: SQLite and PostgreSQL
    return twinhub_db


def model() -> EnergyModel:
    return EnergyModel(
        cpu_watts=4.0, memory_watts_per_gib=0.5, gpu_watts=None, pue=1.0, carbon_intensity=500.0
    )


def burn(store: UsageStore, source: Source, hours: list[int], core_s_per_hour: float) -> None:
    """CPU counter readings at the start and the end of each given hour after T0 (idle
    in between: the start's reading moves the cursor only)."""
    value = 0.0
    for h in hours:
        store.apply([Reading(source, "cpu", "counter", value, "cgroup", T0 + timedelta(hours=h))])
        value += core_s_per_hour
        store.apply(
            [Reading(source, "cpu", "counter", value, "cgroup", T0 + timedelta(hours=h + 1))]
        )


@pytest.fixture
def filled(db_url):
    store = UsageStore(db_url, model(), interval=30)
    a1 = Source("server:alice/#a1", "alice", "climate", "server", started_at=T0)
    a2 = Source("server:alice/x#a2", "alice", "ocean", "named-server", "x", started_at=T0)
    b1 = Source("cluster:b1", "bob", "climate", "cluster", "b1", started_at=T0)
    burn(store, a1, [0, 1, 2], 3600.0)  # 1 core-hour in each of hours 0..2
    burn(store, a2, [1], 1800.0)
    burn(store, b1, [2, 48], 7200.0)  # hour 2 and two days later
    return db_url


def test_user_usage_shape_totals_and_hourly_series(filled):
    out = query.usage(filled, user="alice", start=T0, end=T0 + timedelta(hours=4))
    assert set(out) >= {"user", "start", "end", "totals", "methods", "series"}
    assert "project" not in out and out["user"] == "alice"
    assert set(out["totals"]) == KEYS
    assert out["totals"]["cpu_core_hours"] == pytest.approx(3.5)
    assert out["totals"]["energy_kwh"] == pytest.approx(3.5 * 3600 * 4.0 / 3.6e6)
    assert out["totals"]["co2e_kg"] == pytest.approx(out["totals"]["energy_kwh"] * 0.5)
    assert all(isinstance(v, float) for v in out["totals"].values())
    assert out["methods"] == {"cpu": ["cgroup"], "energy": ["model"]}
    series = out["series"]
    assert [s["cpu_core_hours"] for s in series] == pytest.approx([1.0, 1.5, 1.0, 0.0])
    assert series[0]["start"] == T0.isoformat()
    assert series[-1]["end"] == (T0 + timedelta(hours=4)).isoformat()
    assert all(set(s) == KEYS | {"start", "end"} for s in series)
    # Days start at UTC midnight whatever the range's start.
    days = query.usage(
        filled,
        user="alice",
        start=T0 + timedelta(hours=1, minutes=30),
        end=T0 + timedelta(days=1, hours=6),
        step="day",
    )
    assert [(s["start"], s["end"]) for s in days["series"]] == [
        ((T0 + timedelta(hours=1, minutes=30)).isoformat(), (T0 + timedelta(days=1)).isoformat()),
        ((T0 + timedelta(days=1)).isoformat(), (T0 + timedelta(days=1, hours=6)).isoformat()),
    ]
    # Hour resolution: the bucket the range starts in counts whole.
    assert [s["cpu_core_hours"] for s in days["series"]] == pytest.approx([1.5 + 1.0, 0.0])
    # A step of two hours sums pairs of hours.
    two = query.usage(filled, user="alice", start=T0, end=T0 + timedelta(hours=4), step="7200")
    assert [s["cpu_core_hours"] for s in two["series"]] == pytest.approx([2.5, 1.0])


def test_project_usage_member_breakdown_and_user_within_project(filled):
    end = T0 + timedelta(days=3)
    out = query.usage(filled, project="climate", start=T0, end=end, step="day")
    assert out["project"] == "climate" and "user" not in out
    assert out["totals"]["cpu_core_hours"] == pytest.approx(3.0 + 4.0)
    assert [s["cpu_core_hours"] for s in out["series"]] == pytest.approx([5.0, 0.0, 2.0])
    assert "members" not in out
    members = query.usage(filled, project="climate", start=T0, end=end, by_member=True)["members"]
    assert {u: t["cpu_core_hours"] for u, t in members.items()} == {
        "alice": pytest.approx(3.0),
        "bob": pytest.approx(4.0),
    }
    # A project whose name starts like another's shares none of its members' figures.
    store = UsageStore(filled, model(), interval=30)
    carol = Source("server:carol/#c1", "carol", "climate2", "server", started_at=T0)
    burn(store, carol, [5], 360.0)
    members = query.usage(filled, project="climate", start=T0, end=end, by_member=True)["members"]
    assert set(members) == {"alice", "bob"}
    members = query.usage(filled, project="climate2", start=T0, end=end, by_member=True)["members"]
    assert {u: t["cpu_core_hours"] for u, t in members.items()} == {"carol": pytest.approx(0.1)}
    both = query.usage(filled, user="alice", project="ocean", start=T0, end=end)
    assert (both["user"], both["project"]) == ("alice", "ocean")
    assert both["totals"]["cpu_core_hours"] == pytest.approx(0.5)
    # Two users never see each other's figures.
    assert query.usage(filled, user="bob", start=T0, end=end)["totals"][
        "cpu_core_hours"
    ] == pytest.approx(4.0)


def test_long_ranges_read_day_buckets_and_months(filled):
    start, end = T0 - timedelta(days=40), T0 + timedelta(days=60)
    out = query.usage(filled, user="bob", start=start, end=end, step="month")
    assert out["resolution"] == "day"
    assert [s["start"][:10] for s in out["series"]] == [
        "2026-01-20",
        "2026-02-01",
        "2026-03-01",
        "2026-04-01",
    ]
    assert [s["cpu_core_hours"] for s in out["series"]] == pytest.approx([0, 0, 4.0, 0])
    assert out["totals"]["cpu_core_hours"] == pytest.approx(4.0)
    # Default range: from the first record to now, default step by the range.
    default = query.usage(filled, user="bob")
    assert default["start"] == T0.isoformat()
    assert default["totals"]["cpu_core_hours"] == pytest.approx(4.0)
    assert default["resolution"] == "day"


def test_empty_scope_and_bad_parameters(filled):
    out = query.usage(filled, user="nobody", start=T0, end=T0 + timedelta(hours=2))
    assert out["totals"]["cpu_core_hours"] == 0.0 and len(out["series"]) == 2
    assert query.usage(filled, user="nobody")["totals"]["energy_kwh"] == 0.0
    for kwargs, msg in [
        ({"user": "alice", "step": "week"}, "step must be"),
        ({"user": "alice", "step": "1800"}, "step 1800 s"),
        ({"user": "alice", "step": "5400"}, "multiple of 3600"),
        ({"user": "alice", "start": T0, "end": T0 - timedelta(hours=1)}, "end .* is before start"),
        ({"user": "alice", "start": "yesterday"}, "start must be a datetime"),
        ({}, "user or project"),
        ({"user": "alice", "by_member": True}, "by_member needs a project"),
        (
            {"user": "alice", "start": T0 - timedelta(days=3650), "end": T0, "step": "3600"},
            "step too small",
        ),
    ]:
        with pytest.raises(ValueError, match=msg):
            query.usage(filled, **kwargs)


def test_project_used_and_budget_levels(filled):
    store = UsageStore(filled, model(), interval=30)
    bucket = Source("bucket:project-climate", "alice", "climate", "storage", "project-climate")
    store.apply([Reading(bucket, "storage", "gauge", 10.0, "s3-list", T0)])
    used = query.project_used(filled, "climate")
    assert used["cpu_hours"] == pytest.approx(7.0)
    assert used["gpu_hours"] == 0.0
    assert used["storage_gb"] == pytest.approx(10 * 2**30 / 1e9)
    assert query.project_used(filled, "empty") == {
        "cpu_hours": 0.0,
        "gpu_hours": 0.0,
        "storage_gb": None,
    }
    allocations = {
        "climate": {"cpu_hours": 8.0, "gpu_hours": 0.0, "storage_gb": None},
        "ocean": {"cpu_hours": 0.6, "gpu_hours": None, "storage_gb": 5.0},
        "idle": {"cpu_hours": None, "gpu_hours": None, "storage_gb": None},
    }
    out = query.budgets(filled, allocations, ["climate", "ocean", "idle", "unknown"])
    assert out["climate"]["cpu_hours"] == {
        "used": pytest.approx(7.0),
        "limit": 8.0,
        "fraction": pytest.approx(0.875),
        "level": 80,
    }
    # A zero budget is used up from the start.
    assert out["climate"]["gpu_hours"]["level"] == 100
    assert "storage_gb" not in out["climate"]
    assert out["ocean"]["cpu_hours"]["level"] == 80  # 0.5 / 0.6
    assert out["ocean"]["storage_gb"] == {"used": None, "limit": 5.0, "fraction": None, "level": 0}
    assert out["idle"] == {} and out["unknown"] == {}
    assert [query.level(f) for f in (0.79, 0.8, 0.949, 0.95, 0.999, 1.0, 1.023)] == [
        0,
        80,
        80,
        95,
        95,
        100,
        100,
    ]


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"step": "36000000000000000000000"}, r"longer than 316224000 s \(ten years\)"),
        ({"step": str(10 * 366 * 86400 + 3600)}, r"longer than 316224000 s \(ten years\)"),
        ({"start": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))}, "start must be from"),
        ({"end": datetime(9999, 12, 31, 23, 30, tzinfo=UTC), "step": "hour"}, "end must be from"),
        ({"start": datetime(1969, 12, 31, tzinfo=UTC)}, "start must be from 1970-01-01"),
        ({"end": datetime(2200, 1, 1, tzinfo=UTC)}, "to before 2200-01-01"),
    ],
)
def test_extreme_values_are_value_errors_naming_the_parameter(filled, kwargs, msg):
    """Not an OverflowError (a 500 in the API) or minutes of work."""
    with pytest.raises(ValueError, match=msg):
        query.usage(filled, user="bob", **kwargs)


def test_the_widest_range_and_step_are_answered(filled):
    start, end = datetime(1970, 1, 1, tzinfo=UTC), datetime(2199, 12, 31, tzinfo=UTC)
    out = query.usage(filled, user="bob", start=start, end=end, step="month")
    assert len(out["series"]) == 230 * 12
    assert out["totals"]["cpu_core_hours"] == pytest.approx(4.0)
    out = query.usage(filled, user="bob", start=start, end=end, step=str(query.MAX_STEP_S))
    assert len(out["series"]) == 23
    assert sum(s["cpu_core_hours"] for s in out["series"]) == pytest.approx(4.0)


def test_month_steps_count_against_the_cap_too(filled, monkeypatch):
    monkeypatch.setattr(query, "MAX_SERIES", 24)
    two_years = {"start": T0 - timedelta(days=365), "end": T0 + timedelta(days=365)}
    assert len(query.usage(filled, user="bob", step="month", **two_years)["series"]) == 24
    two_years["end"] += timedelta(seconds=1)
    with pytest.raises(ValueError, match="25 series entries for this range, at most 24"):
        query.usage(filled, user="bob", step="month", **two_years)
    out = query.usage(filled, user="bob", step="month", start=T0, end=T0 + timedelta(days=300))
    assert len(out["series"]) == 10

"""services.accounting.store on real SQLite files and a real PostgreSQL 15 cluster:
counter deltas, resets, gauges, idempotency across a failed transaction, roll-up splits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import delete, func, inspect, select

from twinhub import db
from twinhub.db.models import UsageCursor, UsageRecord, UsageRollup, UsageSource
from twinhub.db.schema import _alembic_config
from twinhub.services.accounting import rollup
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.readings import Reading, Source
from twinhub.services.accounting.store import UsageStore

T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)
ALICE = Source("server:alice/#aaaaaaaaaaaa", "alice", "climate", "server", "", started_at=T0)


@pytest.fixture
def db_url(twinhub_db: str) -> str:  # tests/fixtures/postgres.py: SQLite and PostgreSQL
    return twinhub_db


def model(**kw) -> EnergyModel:
    args = dict(
        cpu_watts=4.0, memory_watts_per_gib=0.5, gpu_watts=None, pue=1.5, carbon_intensity=200.0
    )
    return EnergyModel(**(args | kw))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def cpu(value: float, t: float, source: Source = ALICE) -> Reading:
    return Reading(source, "cpu", "counter", value, "cgroup", at(t))


def mem(gib: float, t: float, source: Source = ALICE) -> Reading:
    return Reading(source, "memory", "gauge", gib, "cgroup", at(t))


def records(url: str, resource: str | None = None) -> list:
    with db.session(url) as s:
        q = select(UsageRecord).order_by(UsageRecord.start)
        if resource:
            q = q.where(UsageRecord.resource == resource)
        return list(s.scalars(q))


def rollups(url: str, kind: str, scope: str, step: str) -> dict[datetime, UsageRollup]:
    with db.session(url) as s:
        rows = s.scalars(
            select(UsageRollup).where(
                UsageRollup.scope_kind == kind, UsageRollup.scope == scope, UsageRollup.step == step
            )
        )
        return {rollup.utc(r.bucket_start): r for r in rows}


def total(url: str, column: str, kind: str = "user", scope: str = "alice") -> float:
    return sum(getattr(r, column) for r in rollups(url, kind, scope, "hour").values())


def test_counter_deltas_and_replay_counts_nothing_twice(db_url):
    store = UsageStore(db_url, model(), interval=15)
    first = [cpu(3.0, 15)]
    assert store.apply(first) == 1
    # The first reading of a counter charges everything since the source began.
    (rec,) = records(db_url)
    assert (rollup.utc(rec.start), rollup.utc(rec.end), rec.quantity) == (T0, at(15), 3.0)
    assert store.apply(first) == 0  # the same tick again (a restart): nothing new
    batch = [cpu(10.0, 30), cpu(12.5, 45)]
    assert store.apply(batch) == 2
    assert store.apply(batch) == 0
    assert [r.quantity for r in records(db_url)] == [3.0, 7.0, 2.5]
    assert total(db_url, "cpu_core_s") == pytest.approx(12.5)
    assert total(db_url, "cpu_core_s", "project", "climate") == pytest.approx(12.5)
    assert total(db_url, "cpu_core_s", "member", "climate\x1falice") == pytest.approx(12.5)
    with db.session(db_url) as s:
        cur = s.get(UsageCursor, (ALICE.source_id, "cpu"))
        assert (cur.value, rollup.utc(cur.read_at)) == (12.5, at(45))
        assert s.get(UsageSource, ALICE.source_id).project == "climate"


def test_failed_transaction_moves_no_cursor_and_the_retry_counts_once(db_url, monkeypatch):
    store = UsageStore(db_url, model(), interval=15)
    store.apply([cpu(1.0, 15), mem(2.0, 15)])

    def crash(*args, **kwargs):
        raise RuntimeError("killed between the record and the cursor")

    # The records are inserted, then the process "dies" before the cursor moves and the
    # commit: the whole tick must vanish.
    monkeypatch.setattr(UsageStore, "_move_cursors", staticmethod(crash))
    with pytest.raises(RuntimeError, match="killed"):
        store.apply([cpu(4.0, 30), mem(2.0, 30)])
    assert [r.quantity for r in records(db_url)] == [1.0]
    assert total(db_url, "cpu_core_s") == pytest.approx(1.0)
    assert total(db_url, "memory_gib_s") == 0.0
    monkeypatch.undo()
    # The next tick reads the counter further on: charged from the unmoved cursor.
    assert store.apply([cpu(6.0, 45), mem(2.0, 45)]) == 2
    assert total(db_url, "cpu_core_s") == pytest.approx(6.0)
    # Memory: the level held from 15 to 45 s, capped at 2 x interval = 30 s: 2 GiB x 30 s.
    assert total(db_url, "memory_gib_s") == pytest.approx(60.0)


def test_conflicting_record_is_not_added_again(db_url):
    """A second meter working from the same cursor produces the same (source, resource,
    start): its insert is a no-op and nothing is added to the roll-ups."""
    store = UsageStore(db_url, model(), interval=15)
    assert store.apply([cpu(5.0, 15)]) == 1
    with db.engine(db_url).begin() as conn:
        conn.execute(delete(UsageCursor.__table__))  # the other meter has not seen it
    assert store.apply([cpu(5.5, 16)]) == 0
    assert total(db_url, "cpu_core_s") == pytest.approx(5.0)


def test_counter_reset_charges_the_new_value(db_url):
    store = UsageStore(db_url, model(), interval=15)
    store.apply([cpu(100.0, 15)])
    store.apply([cpu(3.0, 30)])  # the cgroup was recreated: counting restarted
    assert [r.quantity for r in records(db_url)] == [100.0, 3.0]


def test_gauge_first_reading_charges_nothing_and_gaps_are_capped(db_url):
    store = UsageStore(db_url, model(), interval=10)
    assert store.apply([mem(4.0, 0)]) == 0
    assert records(db_url) == []
    assert store.apply([mem(4.0, 10)]) == 1
    # 5 minutes without readings (the meter was down): only 2 x interval is billed.
    assert store.apply([mem(1.0, 310)]) == 1
    recs = records(db_url, "memory")
    assert [r.quantity for r in recs] == [40.0, 20.0]
    assert (rollup.utc(recs[1].start), rollup.utc(recs[1].end)) == (at(290), at(310))
    assert store.apply([mem(0.0, 320)]) == 0  # nothing held: no record, cursor moves
    assert store.apply([mem(1.0, 330)]) == 1
    assert records(db_url, "memory")[-1].quantity == 10.0


def test_record_across_an_hour_is_split_proportionally(db_url):
    src = Source("cluster:c1", "alice", "climate", "cluster", "c1", started_at=at(3570))
    store = UsageStore(db_url, model(), interval=15)
    store.apply([cpu(0.0, 3570, src)])
    assert store.apply([cpu(60.0, 3630, src)]) == 1  # 10:59:30 -> 11:00:30
    hours = rollups(db_url, "user", "alice", "hour")
    assert {k: v.cpu_core_s for k, v in hours.items()} == {
        at(0): pytest.approx(30.0),
        at(3600): pytest.approx(30.0),
    }
    days = rollups(db_url, "project", "climate", "day")
    assert [v.cpu_core_s for v in days.values()] == [pytest.approx(60.0)]
    assert sum(v.energy_j for v in hours.values()) == pytest.approx(60 * 4.0 * 1.5)


def test_energy_co2e_and_methods(db_url):
    store = UsageStore(db_url, model(gpu_watts=None), interval=15)
    gpu_src = Source(
        "server:bob/gpu#bbbbbbbbbbbb", "bob", None, "named-server", "gpu", started_at=T0
    )

    def gpu(alloc: float, joules: float, t: float) -> Reading:
        return Reading(gpu_src, "gpu", "gauge", alloc, "allocation", at(t), energy_j=joules)

    store.apply([cpu(10.0, 15), mem(2.0, 15), gpu(1, 5000.0, 15)])
    store.apply([cpu(20.0, 30), mem(2.0, 30), gpu(1, 5300.0, 30)])
    store.apply([gpu(1, 5600.0, 45)])
    cpu_recs = records(db_url, "cpu")
    assert [(r.energy_j, r.energy_method) for r in cpu_recs] == [(60.0, "model"), (60.0, "model")]
    assert cpu_recs[0].co2e_g == pytest.approx(60.0 / 3.6e6 * 200.0)
    (m,) = records(db_url, "memory")
    assert (m.quantity, m.energy_j) == (30.0, pytest.approx(30.0 * 0.5 * 1.5))
    g = records(db_url, "gpu")
    # NVML joules since the previous energy reading, x PUE.
    assert [(r.quantity, r.energy_j, r.energy_method) for r in g] == [
        (15.0, 450.0, "nvml"),
        (15.0, 450.0, "nvml"),
    ]
    # bob's server is charged to no project: user scope only.
    assert rollups(db_url, "project", "None", "hour") == {}
    (bob,) = rollups(db_url, "user", "bob", "day").values()
    assert rollup.decode_methods(bob.methods) == {"gpu": ["allocation"], "energy": ["nvml"]}
    (alice,) = rollups(db_url, "user", "alice", "day").values()
    assert rollup.decode_methods(alice.methods) == {
        "cpu": ["cgroup"],
        "memory": ["cgroup"],
        "energy": ["model"],
    }


def test_gpu_without_nvml_or_watts_has_no_energy(db_url):
    store = UsageStore(db_url, model(), interval=15)
    src = Source("server:bob/#cccccccccccc", "bob", "p", "server", started_at=T0)
    store.apply([Reading(src, "gpu", "gauge", 2, "allocation", at(0))])
    store.apply([Reading(src, "gpu", "gauge", 2, "allocation", at(15))])
    (r,) = records(db_url, "gpu")
    assert (r.quantity, r.energy_j, r.energy_method, r.co2e_g) == (30.0, None, "none", None)


def test_bad_readings_write_nothing(db_url):
    store = UsageStore(db_url, model(), interval=15)
    with pytest.raises(ValueError, match="unknown resource 'disk'"):
        store.apply([cpu(1.0, 15), Reading(ALICE, "disk", "gauge", 1.0, "du", at(15))])
    with pytest.raises(ValueError, match="timezone-aware"):
        store.apply([Reading(ALICE, "cpu", "counter", 1.0, "cgroup", datetime(2026, 1, 1))])
    with pytest.raises(ValueError, match="value -1"):
        store.apply([cpu(-1.0, 15)])
    assert records(db_url) == []


def test_end_source_prune_and_open_sources(db_url):
    store = UsageStore(db_url, model(), interval=15, raw_retention_days=1)
    store.apply([cpu(1.0, 15)])
    assert [s["source_id"] for s in store.open_sources()] == [ALICE.source_id]
    store.end_source(ALICE.source_id, at(20))
    store.end_source(ALICE.source_id, at(99))  # the first end wins
    with db.session(db_url) as s:
        assert rollup.utc(s.get(UsageSource, ALICE.source_id).ended_at) == at(20)
    store.mark_final_read(ALICE.source_id)
    assert store.open_sources() == []
    assert store.prune(at(15) + timedelta(hours=23)) == 0
    assert store.prune(at(15) + timedelta(days=1, seconds=1)) == 1
    assert records(db_url) == []
    # Roll-ups stay.
    assert total(db_url, "cpu_core_s") == pytest.approx(1.0)
    with db.session(db_url) as s:
        assert s.scalar(select(func.count()).select_from(UsageRollup)) > 0


def test_migration_0006_up_from_0005_with_data_and_down(db_url):
    store = UsageStore(db_url, model(), interval=15)
    store.apply([cpu(1.0, 15)])
    cfg = _alembic_config()
    with db.engine(db_url).begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005_allocations")
    names = set(inspect(db.engine(db_url)).get_table_names())
    assert not names & {"usage_sources", "usage_records", "usage_rollups", "budget_states"}
    assert "project_allocations" in names
    with db.session(db_url) as s:
        s.add(db.ProjectAllocation(project="p", allocation={"cpu_hours": 1}, updated_by="admin"))
    # Up to the newest revision (later migrations, e.g. 0007_registry_desk, come along).
    assert db.upgrade(db_url) == ("0005_allocations", db.head_revision())
    with db.session(db_url) as s:
        assert s.get(db.ProjectAllocation, "p").allocation == {"cpu_hours": 1}
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 0
    assert store.apply([cpu(1.0, 15)]) == 1


def test_who_pays_is_fixed_at_the_first_reading_and_an_end_is_kept(db_url):
    store = UsageStore(db_url, model(), interval=15)
    store.apply([cpu(1.0, 15)])
    moved = Source(ALICE.source_id, "mallory", "other", "server", ended_at=at(40))
    assert store.apply([cpu(2.0, 30, moved)]) == 1
    (_, second) = records(db_url)
    assert (second.user, second.project) == ("alice", "climate")
    with db.session(db_url) as s:
        row = s.get(UsageSource, ALICE.source_id)
        assert (row.user, row.project, rollup.utc(row.ended_at)) == ("alice", "climate", at(40))

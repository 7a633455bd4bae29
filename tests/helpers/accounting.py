"""Ground truth against the meter on a real platform: a server's charge file, its records in
the platform's database, and its CPU baseline (start-up cost and idle rate).

Shared by the accuracy tests (tests/integration/test_accounting_meter.py) and the
durability test of a whole-platform kill (tests/security/test_faults.py); each helper takes
the platform's state path (``Platform.state``).
Everything here reads real state: the charge files the hub writes, ``usage_records`` in
the platform's database, and the cgroup's ``cpuacct.usage``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from twinhub.db.models import UsageCursor, UsageRecord
from twinhub.db.schema import engine
from twinhub.process.runtime import Runtime
from twinhub.services.accounting.backend_cgroup import cpu_seconds
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.spawn import charges

# Burns ``s`` CPU-seconds in the kernel's own process, measured inside.
BURN = """
import time
t = time.process_time()
while time.process_time() - t < {s}:
    pass
print("BURNED", time.process_time() - t)
"""

# Burns in a thread of the kernel until ``stop_burn()`` (a later execute) sets the event; the
# kernel keeps answering meanwhile, and the burn outlives the client's websocket (and the
# proxy it goes through). ``time.process_time()`` is the kernel process's CPU time.
BURN_UNTIL_STOPPED = """
import threading as _th, time as _time
_burn_stop, _burn_out = _th.Event(), {}
def _burn():
    t = _time.process_time()
    while not _burn_stop.is_set():
        for _ in range(10000):
            pass
    _burn_out["s"] = _time.process_time() - t
_burn_thread = _th.Thread(target=_burn, daemon=True)
_burn_thread.start()
def stop_burn():
    _burn_stop.set()
    _burn_thread.join()
    print("BURNED", _burn_out["s"])
"""


def value(out: str, key: str) -> float:
    """The number after ``key`` on a line of a kernel's output."""
    for line in out.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {key} in {out!r}")


def interval(state: Path) -> float:
    return TwinhubAccounting(config=Runtime.load(state).config).interval


def open_charge(
    state: Path, user: str, kind: str = "server", timeout: float = 30
) -> charges.Charge:
    d = Runtime.load(state).path(charges.CHARGES_DIR)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [c for c in charges.list_charges(d) if c.user == user and c.kind == kind]
        mine = [c for c in mine if c.ended_at is None]
        if mine:
            return mine[-1]
        time.sleep(0.2)
    raise AssertionError(f"no open {kind} charge of {user} in {d}")


def wait_finished(state: Path, source_id: str, timeout: float = 90) -> None:
    """Until the meter did its final read of a stopped source (it then removes the charge file)."""
    d = Runtime.load(state).path(charges.CHARGES_DIR)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if charges.read(d, source_id) is None:
            return
        time.sleep(0.5)
    raise AssertionError(f"the meter did not finish {source_id} within {timeout} s")


def utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # SQLite: naive UTC


def records(state: Path, source_id: str, resource: str) -> list[dict]:
    """The source's records of ``resource``, by start."""
    t = UsageRecord.__table__
    q = sa.select(t).where(t.c.source_id == source_id, t.c.resource == resource)
    with engine(Runtime.load(state).db_url).connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q.order_by(t.c.start, t.c.id))]
    for r in rows:
        r["start"], r["end"] = utc(r["start"]), utc(r["end"])
    return rows


def duplicates(state: Path, source_id: str, resource: str) -> list[tuple]:
    """(start, count) of every (source_id, resource, start) stored more than once."""
    t = UsageRecord.__table__
    q = (
        sa.select(t.c.start, sa.func.count())
        .where(t.c.source_id == source_id, t.c.resource == resource)
        .group_by(t.c.start)
        .having(sa.func.count() > 1)
    )
    with engine(Runtime.load(state).db_url).connect() as conn:
        return [tuple(r) for r in conn.execute(q)]


def cursor(state: Path, source_id: str, counter: str) -> float | None:
    t = UsageCursor.__table__
    q = sa.select(t.c.value).where(t.c.source_id == source_id, t.c.counter == counter)
    with engine(Runtime.load(state).db_url).connect() as conn:
        return conn.execute(q).scalar()


def no_overlap(rows: list[dict]) -> None:
    """Each stretch of time is charged once (no record counted twice)."""
    for a, b in zip(rows, rows[1:], strict=False):
        assert a["end"] <= b["start"], (a, b)


def largest_gap(rows: list[dict]) -> float:
    """The longest stretch (s) between two consecutive records that nothing covers."""
    gaps = [(b["start"] - a["end"]).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]
    return max(gaps, default=0.0)


def metered_after(
    state: Path, source_id: str, at: datetime, timeout: float = 90
) -> tuple[float, float]:
    """(CPU charged up to the meter's first tick after ``at``, monotonic time of that tick)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = records(state, source_id, "cpu")
        if rows and rows[-1]["end"] >= at:
            lag = (datetime.now(UTC) - rows[-1]["end"]).total_seconds()
            return sum(r["quantity"] for r in rows), time.monotonic() - lag
        time.sleep(0.5)
    raise AssertionError(f"no tick of {source_id} after {at}")


@dataclass
class Baseline:
    """A source's CPU counter once up (``base``) and its idle rate (core-s per s)."""

    cpu_dir: Path
    base: float = 0.0
    rate: float = 0.0
    since: float = 0.0  # monotonic time of the second reading

    @classmethod
    def measure(cls, cpu_dir: Path, idle: float = 10.0, settle: float = 5.0) -> Baseline:
        time.sleep(settle)  # the tail of the start-up (imports, registration) is start-up
        b0 = cpu_seconds(cpu_dir)
        time.sleep(idle)
        b = cls(cpu_dir, cpu_seconds(cpu_dir), since=time.monotonic())
        b.rate = (b.base - b0) / idle
        return b

    def check(self, name: str, truth: float, metered: float, at: float) -> float:
        """Asserts metered - start-up - idle is within 10 % of ``truth``; returns that."""
        idle = self.rate * (at - self.since)
        got = metered - self.base - idle
        print(
            f"{name}: truth {truth:.3f} core-s; metered {metered:.3f} = start-up {self.base:.3f} "
            f"+ idle {idle:.3f} ({self.rate * 100:.2f} % of a core) + {got:.3f} "
            f"({(got - truth) / truth * 100:+.1f} %)"
        )
        assert abs(got - truth) <= 0.10 * truth, (name, truth, got)
        return got

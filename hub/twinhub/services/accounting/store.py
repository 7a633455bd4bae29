"""Readings -> interval records, cursors and roll-ups, in twinhub's database.

The transaction rule (docs/design/accounting.md §3.1) is what makes a kill -9 safe: one
:meth:`UsageStore.apply` is one transaction that (1) charges each reading against its cursor
(counter: the increase, or the whole value after a reset; gauge: value x the time since the
previous reading, capped at 2 x interval), (2) inserts the record with ``ON CONFLICT DO
NOTHING`` on ``(source_id, resource, start)``, and only when the row was new (3) adds it to
the roll-ups and (4) moves the cursor. A crash before the commit leaves the cursor where it
was, so the next tick charges the same increase again (nothing lost); after the commit the
cursor makes the replayed increase zero (nothing counted twice). Two meters racing on one
source compute the same ``start`` from the same cursor, and the second insert is a no-op.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ... import db
from ...db.models import UsageCursor, UsageRecord, UsageRollup, UsageSource, utcnow
from . import rollup
from .energy import EnergyModel
from .readings import RESOURCES, Reading, Source

log = logging.getLogger(__name__)

SOURCES: Table = UsageSource.__table__  # type: ignore[assignment]
CURSORS: Table = UsageCursor.__table__  # type: ignore[assignment]
RECORDS: Table = UsageRecord.__table__  # type: ignore[assignment]
ROLLUPS: Table = UsageRollup.__table__  # type: ignore[assignment]

_ROLLUP_KEY = ("scope_kind", "scope", "step", "bucket_start")


def _insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT (both know ON CONFLICT)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise db.DatabaseError(f"accounting needs SQLite or PostgreSQL, not {conn.dialect.name}")


def _check(r: Reading) -> None:
    if r.resource not in RESOURCES:
        raise ValueError(f"reading of {r.source.source_id}: unknown resource {r.resource!r}")
    if r.kind not in ("counter", "gauge"):
        raise ValueError(f"reading of {r.source.source_id}: kind must be counter or gauge")
    if not math.isfinite(r.value) or r.value < 0:
        raise ValueError(f"reading of {r.source.source_id}/{r.resource}: value {r.value}")
    if r.energy_j is not None and (not math.isfinite(r.energy_j) or r.energy_j < 0):
        raise ValueError(f"reading of {r.source.source_id}: energy_j {r.energy_j}")
    if r.at.tzinfo is None:
        raise ValueError(f"reading of {r.source.source_id}: 'at' must be timezone-aware")


class UsageStore:
    """Turns meter readings into records; safe to call again with the same readings."""

    def __init__(
        self,
        db_url: str,
        energy: EnergyModel,
        interval: float,
        *,
        raw_retention_days: float = 35.0,
    ) -> None:
        self.db_url, self.energy, self.interval = db_url, energy, float(interval)
        self.raw_retention_days = float(raw_retention_days)
        #: A gauge is charged for at most this long per reading (an outage is not billed).
        self.max_gap = timedelta(seconds=2 * self.interval)

    # -- writing ----------------------------------------------------------------------------
    def apply(self, readings: list[Reading]) -> int:
        """Charge ``readings`` in one transaction; the number of records written."""
        for r in readings:
            _check(r)
        if not readings:
            return 0
        rapl_rate = self.energy.rapl.sample() if self.energy.rapl is not None else None
        readings = sorted(readings, key=lambda r: rollup.utc(r.at))
        with db.engine(self.db_url).begin() as conn:
            sources = self._upsert_sources(conn, {r.source.source_id: r.source for r in readings})
            cursors = self._load_cursors(conn, list(sources))
            sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0] * len(rollup.SUM_COLUMNS))
            masks: dict[tuple, int] = defaultdict(int)
            moves: dict[tuple[str, str], tuple[float, datetime]] = {}
            written = 0
            for r in readings:
                src = sources[r.source.source_id]
                at = rollup.utc(r.at)
                key = (r.source.source_id, r.resource)
                cur = cursors.get(key)
                if cur is not None and at <= cur[1]:
                    continue  # already charged (a replay) or out of order
                charge = self._charge(r, at, cur, src)
                ekey = (r.source.source_id, f"{r.resource}:energy_j")
                measured, emove = self._energy_delta(r, at, cursors.get(ekey))
                new_moves = {key: (r.value, at)}
                if emove is not None:
                    new_moves[ekey] = emove
                if charge is None or (charge[2] <= 0 and not measured):
                    # Nothing to bill (first gauge reading, idle): only the cursor moves.
                    moves.update(new_moves)
                    cursors.update(new_moves)
                    continue
                start, end, quantity = charge
                energy = self.energy.for_record(
                    r.resource, quantity, measured_j=measured, rapl_j_per_core_s=rapl_rate
                )
                co2e = self.energy.co2e_g(energy.joules, start + (end - start) / 2)
                row = {
                    "source_id": r.source.source_id,
                    "user": src["user"],
                    "project": src["project"],
                    "source_kind": src["kind"],
                    "resource": r.resource,
                    "start": start,
                    "end": end,
                    "quantity": quantity,
                    "method": r.method,
                    "energy_j": energy.joules,
                    "energy_method": energy.method,
                    "co2e_g": co2e,
                }
                stmt = _insert(conn, RECORDS).values(**row)
                stmt = stmt.on_conflict_do_nothing(
                    index_elements=["source_id", "resource", "start"]
                )
                # RETURNING, not rowcount: psycopg reports no row count for an INSERT whose
                # primary key SQLAlchemy fetches.
                if conn.execute(stmt.returning(RECORDS.c.id)).first() is None:
                    log.info("record %s/%s@%s exists: not charged again", *key, start)
                    continue
                written += 1
                moves.update(new_moves)
                cursors.update(new_moves)
                self._add_to_rollups(sums, masks, row)
            self._write_rollups(conn, sums, masks)
            self._move_cursors(conn, moves)
        return written

    def _charge(
        self, r: Reading, at: datetime, cur: tuple[float, datetime] | None, src: dict
    ) -> tuple[datetime, datetime, float] | None:
        """(start, end, quantity) of the record this reading makes; None: nothing to charge."""
        if r.kind == "counter":
            if cur is None:
                # Cumulative since the source began: all of it, from when it began.
                began = src["started_at"]
                if began is not None and rollup.utc(began) < at:
                    start = rollup.utc(began)
                else:  # start unknown: one interval before first sight, never a zero-length
                    # record (the next one would start at the same time and be dropped)
                    start = at - timedelta(seconds=self.interval)
                return start, at, r.value
            delta = r.value - cur[0] if r.value >= cur[0] else r.value  # below: a reset
            return cur[1], at, delta
        if cur is None:
            return None  # a level needs a previous reading to span time
        span = min(at - cur[1], self.max_gap)
        return at - span, at, r.value * span.total_seconds()

    @staticmethod
    def _energy_delta(
        r: Reading, at: datetime, cur: tuple[float, datetime] | None
    ) -> tuple[float | None, tuple[float, datetime] | None]:
        """Measured joules since the previous energy reading (None on the first: a device
        counter's start is not this source's) and the energy cursor's new position."""
        if r.energy_j is None:
            return None, None
        if cur is None or at <= cur[1]:
            return None, (r.energy_j, at)
        delta = r.energy_j - cur[0] if r.energy_j >= cur[0] else r.energy_j
        return delta, (r.energy_j, at)

    def _upsert_sources(self, conn: Connection, sources: dict[str, Source]) -> dict[str, dict]:
        """Insert unknown sources; the stored rows (who pays is decided once, at the first
        reading, and never changes)."""

        def stored() -> dict[str, dict]:
            rows = conn.execute(
                select(
                    SOURCES.c.source_id,
                    SOURCES.c.user,
                    SOURCES.c.project,
                    SOURCES.c.kind,
                    SOURCES.c.started_at,
                    SOURCES.c.ended_at,
                ).where(SOURCES.c.source_id.in_(list(sources)))
            )
            return {row.source_id: row._asdict() for row in rows}

        known = stored()  # one SELECT per tick; writes only for what is new
        missing = [s for sid, s in sources.items() if sid not in known]
        if missing:
            ins = _insert(conn, SOURCES)
            for s in missing:
                conn.execute(
                    ins.values(
                        source_id=s.source_id,
                        user=s.user,
                        project=s.project,
                        kind=s.kind,
                        name=s.name,
                        started_at=rollup.utc(s.started_at) if s.started_at else None,
                        ended_at=rollup.utc(s.ended_at) if s.ended_at else None,
                        final_read=False,
                        created_at=utcnow(),
                    ).on_conflict_do_nothing(index_elements=["source_id"])  # a racing meter
                )
        ended = [
            s
            for sid, s in sources.items()
            if s.ended_at and sid in known and not known[sid]["ended_at"]
        ]
        for s in ended:
            conn.execute(
                update(SOURCES)
                .where(and_(SOURCES.c.source_id == s.source_id, SOURCES.c.ended_at.is_(None)))
                .values(ended_at=rollup.utc(s.ended_at))
            )
        return stored() if missing or ended else known

    @staticmethod
    def _load_cursors(
        conn: Connection, ids: list[str]
    ) -> dict[tuple[str, str], tuple[float, datetime]]:
        rows = conn.execute(select(CURSORS).where(CURSORS.c.source_id.in_(ids)))
        return {(c.source_id, c.counter): (c.value, rollup.utc(c.read_at)) for c in rows}

    @staticmethod
    def _add_to_rollups(sums: dict[tuple, list[float]], masks: dict[tuple, int], row: dict) -> None:
        col = rollup.SUM_COLUMNS.index(rollup.COLUMN[row["resource"]])
        e_col, c_col = len(rollup.SUM_COLUMNS) - 2, len(rollup.SUM_COLUMNS) - 1
        bits = rollup.method_bits(row["resource"], row["method"], row["energy_method"])
        scopes = rollup.scopes(row["user"], row["project"])
        for step in rollup.STEPS:
            parts = rollup.split(row["start"], row["end"], step)  # the same for every scope
            for scope_kind, scope in scopes:
                for bucket, frac in parts:
                    key = (scope_kind, scope, step, bucket)
                    acc = sums[key]
                    acc[col] += row["quantity"] * frac
                    acc[e_col] += (row["energy_j"] or 0.0) * frac
                    acc[c_col] += (row["co2e_g"] or 0.0) * frac
                    masks[key] |= bits

    @staticmethod
    def _write_rollups(
        conn: Connection, sums: dict[tuple, list[float]], masks: dict[tuple, int]
    ) -> None:
        if not sums:
            return
        params = [
            dict(zip(_ROLLUP_KEY, key, strict=True))
            | dict(zip(rollup.SUM_COLUMNS, acc, strict=True))
            | {"methods": masks[key]}
            for key, acc in sums.items()
        ]
        ins = _insert(conn, ROLLUPS)
        stmt = ins.on_conflict_do_update(
            index_elements=list(_ROLLUP_KEY),
            set_={c: ROLLUPS.c[c] + ins.excluded[c] for c in rollup.SUM_COLUMNS}
            | {"methods": ROLLUPS.c.methods.op("|")(ins.excluded.methods)},
        )
        conn.execute(stmt, params)

    @staticmethod
    def _move_cursors(
        conn: Connection, moves: dict[tuple[str, str], tuple[float, datetime]]
    ) -> None:
        if not moves:
            return
        ins = _insert(conn, CURSORS)
        stmt = ins.on_conflict_do_update(
            index_elements=["source_id", "counter"],
            set_={"value": ins.excluded.value, "read_at": ins.excluded.read_at},
            # Never backwards (a slower, racing meter).
            where=CURSORS.c.read_at < ins.excluded.read_at,
        )
        conn.execute(
            stmt,
            [
                {"source_id": sid, "counter": counter, "value": value, "read_at": at}
                for (sid, counter), (value, at) in moves.items()
            ],
        )

    # -- sources ----------------------------------------------------------------------------
    def register(self, sources: Iterable[Source], probes: dict[str, dict] | None = None) -> None:
        """Record sources before their first reading (and their probe: where to read them)."""
        sources = list(sources)
        if not sources:
            return
        with db.engine(self.db_url).begin() as conn:
            self._upsert_sources(conn, {s.source_id: s for s in sources})
            for sid, probe in (probes or {}).items():
                conn.execute(update(SOURCES).where(SOURCES.c.source_id == sid).values(probe=probe))

    def end_source(self, source_id: str, at: datetime) -> None:
        """The source stopped at ``at`` (kept if already set: the first end wins)."""
        with db.engine(self.db_url).begin() as conn:
            conn.execute(
                update(SOURCES)
                .where(and_(SOURCES.c.source_id == source_id, SOURCES.c.ended_at.is_(None)))
                .values(ended_at=rollup.utc(at))
            )

    def mark_final_read(self, source_id: str) -> None:
        """The meter read an ended source one last time (its cgroup may go now)."""
        with db.engine(self.db_url).begin() as conn:
            conn.execute(
                update(SOURCES).where(SOURCES.c.source_id == source_id).values(final_read=True)
            )

    def open_sources(self) -> list[dict]:
        """Sources not ended, or ended without their final read (what the meter still reads)."""
        with db.engine(self.db_url).connect() as conn:
            rows = conn.execute(
                select(SOURCES).where(
                    (SOURCES.c.ended_at.is_(None)) | (SOURCES.c.final_read.is_(False))
                )
            )
            return [row._asdict() for row in rows]

    def prune(self, now: datetime) -> int:
        """Delete raw records that ended more than ``raw_retention_days`` before ``now``
        (roll-ups keep their sums); the number deleted."""
        cutoff = rollup.utc(now) - timedelta(days=self.raw_retention_days)
        with db.engine(self.db_url).begin() as conn:
            return conn.execute(delete(RECORDS).where(RECORDS.c.end < cutoff)).rowcount

"""Usage queries and budgets, read from the roll-ups (never the raw records: a user-year is
365 day rows, a month at most 744 hour rows, whatever the number of samples).

Resolution: hour buckets when the range is at most 31 days or the step asks for hours,
day buckets beyond; a bucket is counted whole when the range starts or ends inside it.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, func, select

from ... import db
from ...db.models import UsageCursor, UsageRollup, UsageSource
from . import rollup
from .readings import STORAGE, STORAGE_SOURCE

ROLLUPS: Table = UsageRollup.__table__  # type: ignore[assignment]
CURSORS: Table = UsageCursor.__table__  # type: ignore[assignment]
SOURCES: Table = UsageSource.__table__  # type: ignore[assignment]

#: Ranges up to this long are read from hour buckets.
HOURLY_UP_TO = timedelta(days=31)
#: Series entries at most (a step too small for its range is refused, not truncated).
MAX_SERIES = 20000
#: Longest step in seconds (ten years): longer ones would only overflow the date arithmetic.
MAX_STEP_S = 10 * 366 * 86400
BUDGET_LEVELS = (100, 95, 80)
GB = 1e9
GIB = 2**30


def _aware(at: datetime | None, name: str) -> datetime | None:
    if at is None:
        return None
    if not isinstance(at, datetime):
        raise ValueError(f"{name} must be a datetime, not {at!r}")
    utc: datetime | None
    try:
        utc = rollup.utc(at)
    except OverflowError:  # astimezone next to year 1 or 9999
        utc = None
    if utc is None or not rollup.EARLIEST <= utc < rollup.LATEST:
        raise ValueError(
            f"{name} must be from {rollup.EARLIEST.date()} to before {rollup.LATEST.date()}, "
            f"not {at.isoformat()}"
        )
    return utc


def parse_step(step: str | int | None) -> str | int | None:
    """'hour' | 'day' | 'month' | seconds (int, >= 3600, a multiple of 3600, at most
    :data:`MAX_STEP_S`) | None."""
    if step is None or step == "":
        return None
    if isinstance(step, str) and step in ("hour", "day", "month"):
        return step
    text = str(step).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(
            f"step must be 'hour', 'day', 'month' or a number of seconds, not {step!r}"
        )
    if len(text) > len(str(MAX_STEP_S)):
        raise ValueError(f"step {text[:20]}... s: longer than {MAX_STEP_S} s (ten years)")
    seconds = int(text)
    if seconds < 3600 or seconds % 3600:
        raise ValueError(f"step {seconds} s: must be at least 3600 and a multiple of 3600")
    if seconds > MAX_STEP_S:
        raise ValueError(f"step {seconds} s: longer than {MAX_STEP_S} s (ten years)")
    return seconds


def _zeros() -> dict[str, float]:
    return dict.fromkeys(rollup.SUM_COLUMNS, 0.0)


def _reported(sums: dict[str, float]) -> dict[str, float]:
    return {key: sums[col] / div for col, (key, div) in rollup.REPORTED.items()}


def _add_months(at: datetime, n: int) -> datetime:
    month = at.month - 1 + n
    return at.replace(year=at.year + month // 12, month=month % 12 + 1, day=1)


def _boundaries(start: datetime, end: datetime, step: str | int, grain: str) -> list[datetime]:
    """Series boundaries from ``start`` past ``end``: days and months from UTC midnight,
    hours and seconds from ``start`` floored to the bucket grain."""
    origin = rollup.floor(start, "day" if step in ("day", "month") else grain)
    out = [origin]
    if step == "month":
        # Counted before any entry is made: a refused range costs nothing.
        months = (end.year - origin.year) * 12 + end.month - origin.month
        months += end > end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if months > MAX_SERIES:
            raise ValueError(_too_many(months))
        cur = origin.replace(day=1, hour=0)
        while cur < end:
            cur = _add_months(cur, 1)
            out.append(cur)
        out[0] = origin
        return out
    width = timedelta(seconds=rollup.STEPS[step] if isinstance(step, str) else step)
    if (end - origin) / width > MAX_SERIES:
        raise ValueError(_too_many(math.ceil((end - origin) / width)))
    cur = origin
    while cur < end:
        cur += width
        out.append(cur)
    return out


def _too_many(n: int) -> str:
    return (
        f"step too small: {n} series entries for this range, at most {MAX_SERIES}; "
        "use a larger step= or a shorter range"
    )


def _scope(user: str | None, project: str | None) -> tuple[str, str]:
    if user is not None and project is not None:
        return rollup.MEMBER, rollup.member_scope(project, user)
    if user is not None:
        return rollup.USER, user
    if project is not None:
        return rollup.PROJECT, project
    raise ValueError("user or project: one of them is needed")


def _first_bucket(db_url: str, kind: str, scope: str) -> datetime | None:
    with db.engine(db_url).connect() as conn:
        first = conn.scalar(
            select(func.min(ROLLUPS.c.bucket_start)).where(
                and_(
                    ROLLUPS.c.scope_kind == kind, ROLLUPS.c.scope == scope, ROLLUPS.c.step == "day"
                )
            )
        )
    return rollup.utc(first) if first is not None else None


def usage(
    db_url: str,
    *,
    user: str | None = None,
    project: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    step: str | None = None,
    by_member: bool = False,
) -> dict[str, Any]:
    """Usage of ``user``, ``project``, or ``user`` within ``project`` over [start, end)
    (default: the first record to now): totals, methods, series by ``step`` and, with
    ``by_member`` (a project's), the totals per member. Bad parameters: ValueError naming
    the parameter."""
    kind, scope = _scope(user, project)
    if by_member and (project is None or user is not None):
        raise ValueError("by_member needs a project and no user")
    step_v = parse_step(step)
    start_v, end_v = _aware(start, "start"), _aware(end, "end")
    end_v = end_v or datetime.now(UTC)
    if start_v is None:
        start_v = _first_bucket(db_url, kind, scope) or rollup.floor(end_v, "hour")
    if end_v < start_v:
        raise ValueError(f"end ({end_v.isoformat()}) is before start ({start_v.isoformat()})")
    span = end_v - start_v
    hourly = (
        span <= HOURLY_UP_TO or step_v == "hour" or (isinstance(step_v, int) and step_v % 86400)
    )
    grain = "hour" if hourly else "day"
    series_step = step_v or grain
    bounds = _boundaries(start_v, end_v, series_step, grain)

    lo = rollup.floor(start_v, grain)
    in_range = [
        ROLLUPS.c.step == grain,
        ROLLUPS.c.bucket_start >= lo,
        ROLLUPS.c.bucket_start < end_v,
    ]
    cols = [ROLLUPS.c[c] for c in rollup.SUM_COLUMNS]
    with db.engine(db_url).connect() as conn:
        rows = conn.execute(
            select(ROLLUPS.c.bucket_start, ROLLUPS.c.methods, *cols)
            .where(and_(ROLLUPS.c.scope_kind == kind, ROLLUPS.c.scope == scope, *in_range))
            .order_by(ROLLUPS.c.bucket_start)
        ).all()
        members = _member_totals(conn, project, in_range) if by_member and project else {}

    totals = _zeros()
    entries = [_zeros() for _ in bounds[:-1]]
    mask = 0
    i = 0
    for row in rows:
        at = rollup.utc(row.bucket_start)
        while i + 1 < len(bounds) - 1 and at >= bounds[i + 1]:
            i += 1
        mask |= int(row.methods)
        for c in rollup.SUM_COLUMNS:
            value = float(getattr(row, c))
            totals[c] += value
            if entries:
                entries[i][c] += value
    series = [
        {"start": max(a, start_v).isoformat(), "end": min(b, end_v).isoformat(), **_reported(e)}
        for a, b, e in zip(bounds[:-1], bounds[1:], entries, strict=True)
        if a < end_v
    ]
    out: dict[str, Any] = {}
    if user is not None:
        out["user"] = user
    if project is not None:
        out["project"] = project
    out |= {
        "start": start_v.isoformat(),
        "end": end_v.isoformat(),
        "step": series_step,
        "resolution": grain,
        "totals": _reported(totals),
        "methods": rollup.decode_methods(mask),
        "series": series,
    }
    if by_member:
        out["members"] = {u: _reported(m) for u, m in sorted(members.items())}
    return out


def _member_totals(conn: Any, project: str, in_range: list) -> dict[str, dict[str, float]]:
    """Totals per member of ``project`` over the range: the members are the users who ever
    had a source charged to it; their member scopes are matched exactly (an index lookup each,
    and no dependence on how the database's collation orders the separator)."""
    users = conn.scalars(
        select(SOURCES.c.user).where(SOURCES.c.project == project).distinct()
    ).all()
    if not users:
        return {}
    scopes = {rollup.member_scope(project, u): u for u in users}
    rows = conn.execute(
        select(ROLLUPS.c.scope, *[func.sum(ROLLUPS.c[c]).label(c) for c in rollup.SUM_COLUMNS])
        .where(
            and_(
                ROLLUPS.c.scope_kind == rollup.MEMBER, ROLLUPS.c.scope.in_(list(scopes)), *in_range
            )
        )
        .group_by(ROLLUPS.c.scope)
    ).all()
    out = {u: _zeros() for u in users}
    for row in rows:
        out[scopes[row.scope]] = {c: float(getattr(row, c) or 0.0) for c in rollup.SUM_COLUMNS}
    return out


def project_used(db_url: str, project: str) -> dict[str, float | None]:
    """All-time CPU and GPU hours charged to ``project`` and its latest sampled storage in
    GB (1e9 bytes; None when never sampled)."""
    with db.engine(db_url).connect() as conn:
        cpu_s, gpu_s = conn.execute(
            select(
                func.coalesce(func.sum(ROLLUPS.c.cpu_core_s), 0.0),
                func.coalesce(func.sum(ROLLUPS.c.gpu_s), 0.0),
            ).where(
                and_(
                    ROLLUPS.c.scope_kind == rollup.PROJECT,
                    ROLLUPS.c.scope == project,
                    ROLLUPS.c.step == "day",
                )
            )
        ).one()
        # Storage: the last level read of each of the project's live storage sources.
        stored = conn.execute(
            select(func.count(CURSORS.c.value), func.sum(CURSORS.c.value))
            .select_from(CURSORS.join(SOURCES, CURSORS.c.source_id == SOURCES.c.source_id))
            .where(
                and_(
                    SOURCES.c.project == project,
                    SOURCES.c.kind == STORAGE_SOURCE,
                    SOURCES.c.ended_at.is_(None),
                    CURSORS.c.counter == STORAGE,
                )
            )
        ).one()
    storage_gb = float(stored[1]) * GIB / GB if stored[0] else None
    return {
        "cpu_hours": float(cpu_s) / 3600,
        "gpu_hours": float(gpu_s) / 3600,
        "storage_gb": storage_gb,
    }


def level(fraction: float | None) -> int:
    """0, 80, 95 or 100: the highest threshold ``fraction`` reached."""
    if fraction is None:
        return 0
    return next((lv for lv in BUDGET_LEVELS if fraction >= lv / 100), 0)


def budgets(
    db_url: str, allocations: dict[str, dict], projects: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """{project: {budget: {used, limit, fraction, level}}} for the budgets ``allocations``
    give a limit (a limit of 0 is used up from the start: fraction 1)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for project in projects:
        alloc = allocations.get(project) or {}
        limits = {b: alloc.get(b) for b in ("cpu_hours", "gpu_hours", "storage_gb")}
        if all(v is None for v in limits.values()):
            out[project] = {}
            continue
        used = project_used(db_url, project)
        entry: dict[str, dict[str, Any]] = {}
        for budget, limit in limits.items():
            if limit is None:
                continue
            u = used[budget]
            if u is None:
                fraction = None
            elif limit > 0:
                fraction = u / limit
            else:
                fraction = 1.0
            entry[budget] = {
                "used": u,
                "limit": float(limit),
                "fraction": fraction,
                "level": level(fraction),
            }
        out[project] = entry
    return out

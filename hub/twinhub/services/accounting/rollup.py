"""Roll-up arithmetic shared by the store (writes) and the queries (reads): buckets, scopes,
the columns per resource, and the methods bitmask."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from .readings import CPU, DASK_WORKER, ENERGY_METHODS, GPU, MEASURE_METHODS, MEMORY, STORAGE

#: Roll-up steps and their length in seconds (days are UTC days).
STEPS: Final = {"hour": 3600, "day": 86400}

#: The roll-up column that sums each resource's quantity (base units).
COLUMN: Final = {
    CPU: "cpu_core_s",
    MEMORY: "memory_gib_s",
    GPU: "gpu_s",
    DASK_WORKER: "dask_worker_s",
    STORAGE: "storage_gib_s",
}
#: Every summed column, resources first, then energy and CO2e.
SUM_COLUMNS: Final = (*COLUMN.values(), "energy_j", "co2e_g")

#: What the API reports per column: (key, divisor from base units).
REPORTED: Final = {
    "cpu_core_s": ("cpu_core_hours", 3600.0),
    "memory_gib_s": ("memory_gib_hours", 3600.0),
    "gpu_s": ("gpu_hours", 3600.0),
    "dask_worker_s": ("dask_worker_hours", 3600.0),
    "storage_gib_s": ("storage_gib_days", 86400.0),
    "energy_j": ("energy_kwh", 3.6e6),
    "co2e_g": ("co2e_kg", 1000.0),
}

#: Times the queries accept, [EARLIEST, LATEST): bucket arithmetic stays far from datetime's
#: year 1 and 9999 (an OverflowError, not an answer) and covers any real record.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2200, 1, 1, tzinfo=UTC)

USER, PROJECT, MEMBER = "user", "project", "member"
SEP: Final = "\x1f"  # member scope: project SEP user (one project's members: one index range)

# Bits: measure method m of resource r -> r * 8 + m (5 x 8 = 40 bits); energy method e -> 40 + e.
_RESOURCES: Final = tuple(COLUMN)
if len(MEASURE_METHODS) > 8:  # pragma: no cover - a new method needs a wider layout
    raise ImportError("methods bitmask: at most 8 measure methods per resource")
_ENERGY_BASE: Final = len(_RESOURCES) * 8


def utc(at: datetime) -> datetime:
    """``at`` as an aware UTC datetime (naive ones, as SQLite returns them, are UTC)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def floor(at: datetime, step: str) -> datetime:
    at = utc(at)
    if step == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    if step == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown roll-up step {step!r}")


def split(start: datetime, end: datetime, step: str) -> list[tuple[datetime, float]]:
    """The ``step`` buckets [start, end) overlaps and the fraction of it in each (summing
    to 1). A zero-length interval is all in the bucket of ``end``."""
    start, end = utc(start), utc(end)
    if end <= start:
        return [(floor(end, step), 1.0)]
    total = (end - start).total_seconds()
    width = timedelta(seconds=STEPS[step])
    out = []
    bucket = floor(start, step)
    while bucket < end:
        nxt = bucket + width
        overlap = (min(nxt, end) - max(bucket, start)).total_seconds()
        if overlap > 0:
            out.append((bucket, overlap / total))
        bucket = nxt
    return out


def scopes(user: str, project: str | None) -> list[tuple[str, str]]:
    """The roll-up scopes a record of ``user`` charged to ``project`` adds to (user "": a
    project's own storage, in no member's usage)."""
    out = [(USER, user)] if user else []
    if project is not None:
        out.append((PROJECT, project))
        if user:
            out.append((MEMBER, member_scope(project, user)))
    return out


def member_scope(project: str, user: str) -> str:
    return f"{project}{SEP}{user}"


def method_bits(resource: str, method: str, energy_method: str) -> int:
    bits = 0
    if resource in _RESOURCES and method in MEASURE_METHODS:
        bits |= 1 << (_RESOURCES.index(resource) * 8 + MEASURE_METHODS.index(method))
    if energy_method in ENERGY_METHODS:
        bits |= 1 << (_ENERGY_BASE + ENERGY_METHODS.index(energy_method))
    return bits


def decode_methods(mask: int) -> dict[str, list[str]]:
    """{resource: sorted measure methods seen, "energy": sorted energy methods seen}; only
    what was seen."""
    out: dict[str, list[str]] = {}
    for r, resource in enumerate(_RESOURCES):
        seen = [m for i, m in enumerate(MEASURE_METHODS) if mask >> (r * 8 + i) & 1]
        if seen:
            out[resource] = sorted(seen)
    energy = [m for i, m in enumerate(ENERGY_METHODS) if mask >> (_ENERGY_BASE + i) & 1]
    if energy:
        out["energy"] = sorted(energy)
    return out

"""The accounting service's Prometheus text (prometheus-client): usage totals per user,
project and resource (read from the roll-ups at scrape time), each budget's remaining
fraction, and the meter's own health (ticks, failures, durations).

Usage counters are all-time sums of the daily roll-ups (per project member, and the rest of
a user's own: usage charged to no project, ``project=""``), so they only grow (raw records
are pruned, roll-ups never). Energy and CO2e are kept per record but summed over resources
in the roll-ups: their ``resource`` label is ``all``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import func, select

from ...db.models import UsageRollup
from ...db.schema import session
from . import query, rollup

#: Roll-up column -> (metric name without _total, HELP, resource label).
USAGE = {
    "cpu_core_s": (
        "twinhub_usage_cpu_seconds",
        "CPU core-seconds used (measured: cgroups, /proc or cAdvisor), by user, project "
        "and resource",
        "cpu",
    ),
    "memory_gib_s": (
        "twinhub_usage_memory_gib_seconds",
        "Memory held (working set, GiB) integrated over time, by user, project and resource",
        "memory",
    ),
    "gpu_s": (
        "twinhub_usage_gpu_seconds",
        "GPU-seconds allocated, by user, project and resource",
        "gpu",
    ),
    "dask_worker_s": (
        "twinhub_usage_dask_worker_seconds",
        "Dask worker-seconds (live workers x time), by user, project and resource",
        "dask_worker",
    ),
    "storage_gib_s": (
        "twinhub_usage_storage_gib_seconds",
        "Storage held (GiB, sampled) integrated over time, by user, project and resource",
        "storage",
    ),
    "energy_j": (
        "twinhub_usage_energy_joules",
        "Energy in joules (RAPL, NVML or the documented model, x PUE), by user, project and "
        "resource ('all': CPU, memory and GPU together)",
        "all",
    ),
    "co2e_g": (
        "twinhub_usage_co2e_grams",
        "Grams CO2e of that energy (x the configured carbon intensity), by user, project and "
        "resource ('all')",
        "all",
    ),
}
LABELS = ["user", "project", "resource"]
#: Upper bounds (seconds) of the tick duration histogram.
TICK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class TickStats:
    """The meter loop's own figures (this process's memory: they restart with it)."""

    ticks: int = 0
    records: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_tick: float | None = None  # unix time a tick last ended
    last_duration: float = 0.0
    #: The last failure as "step: ExceptionClass" (its text, which may hold SQL, parameters
    #: or hosts, goes to the log only: ``health`` is public).
    last_error: str = ""
    failed_step: str = ""
    consecutive_failures: int = 0
    duration_sum: float = 0.0
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(TICK_BUCKETS) + 1))
    _failed_now: bool = False

    def failed(self, step: str, e: BaseException) -> None:
        self.failures[step] = self.failures.get(step, 0) + 1
        self.failed_step = step
        self.last_error = f"{step}: {type(e).__name__}"
        self._failed_now = True

    def ticked(self, at: float, took: float) -> None:
        self.ticks += 1
        self.last_tick, self.last_duration = at, took
        self.duration_sum += took
        self.bucket_counts[bisect.bisect_left(TICK_BUCKETS, took)] += 1
        self.consecutive_failures = self.consecutive_failures + 1 if self._failed_now else 0
        self._failed_now = False

    def summary(self) -> dict[str, Any]:
        """What ``health`` (public) says of the meter: no exception text."""
        return {
            "ticks": self.ticks,
            "last_tick": self.last_tick,
            "last_duration_s": self.last_duration,
            "consecutive_failures": self.consecutive_failures,
            "failed_step": self.failed_step or None,
            "last_error": self.last_error or None,
        }


def usage_totals(
    db_url: str, start: datetime | None = None, end: datetime | None = None
) -> list[dict[str, Any]]:
    """Sums in base units per (user, project) of the daily roll-ups, all time or between
    ``start`` and ``end`` counted in whole UTC days (the days holding them are in). Usage
    charged to no project (a home directory) has project ""."""
    cols = [getattr(UsageRollup, c) for c in USAGE]
    q = select(UsageRollup.scope_kind, UsageRollup.scope, *(func.sum(c) for c in cols)).where(
        UsageRollup.scope_kind.in_((rollup.MEMBER, rollup.USER)), UsageRollup.step == "day"
    )
    if start is not None:
        q = q.where(UsageRollup.bucket_start >= rollup.floor(start, "day"))
    if end is not None:
        q = q.where(UsageRollup.bucket_start < end)
    q = q.group_by(UsageRollup.scope_kind, UsageRollup.scope).order_by(UsageRollup.scope)
    with session(db_url) as s:
        rows = s.execute(q).all()
    out: list[dict[str, Any]] = []
    per_user: dict[str, dict[str, float]] = {}
    for kind, scope, *sums in rows:
        figures = {c: float(v or 0.0) for c, v in zip(USAGE, sums, strict=True)}
        if kind == rollup.USER:
            per_user[scope] = figures
            continue
        project, _, user = str(scope).partition(rollup.SEP)
        out.append({"user": user, "project": project, **figures})
    # A user's own roll-up also holds what was charged to no project: the rest.
    charged: dict[str, dict[str, float]] = {}
    for row in out:
        acc = charged.setdefault(row["user"], dict.fromkeys(USAGE, 0.0))
        for c in USAGE:
            acc[c] += row[c]
    for user, figures in sorted(per_user.items()):
        rest = {c: figures[c] - charged.get(user, {}).get(c, 0.0) for c in USAGE}
        if any(abs(v) > 1e-9 * max(1.0, abs(figures[c])) for c, v in rest.items()):
            out.append({"user": user, "project": "", **{c: max(0.0, v) for c, v in rest.items()}})
    return out


class _Collector:
    def __init__(
        self,
        usage: list[dict[str, Any]],
        budgets: Mapping[str, Mapping[str, Mapping[str, Any]]],
        ticks: TickStats,
    ) -> None:
        self.usage, self.budgets, self.ticks = usage, budgets, ticks

    def collect(self) -> Iterator[Metric]:
        for col, (name, doc, resource) in USAGE.items():
            fam = CounterMetricFamily(name, doc, labels=LABELS)
            for row in self.usage:
                fam.add_metric([row["user"], row["project"], resource], float(row[col] or 0.0))
            yield fam
        remaining = GaugeMetricFamily(
            "twinhub_budget_remaining_ratio",
            "Fraction of each project's budget left (0 when used up; CPU and GPU budgets are "
            "all-time allocations, storage the latest size against storage_gb)",
            labels=["project", "budget"],
        )
        for project, budgets in sorted(self.budgets.items()):
            for budget, b in sorted(budgets.items()):
                fraction = b.get("fraction")
                if fraction is not None:
                    remaining.add_metric([project, budget], max(0.0, 1.0 - float(fraction)))
        yield remaining
        t = self.ticks
        yield CounterMetricFamily(
            "twinhub_accounting_ticks", "Meter ticks run (each: meter, budgets)", value=t.ticks
        )
        yield CounterMetricFamily(
            "twinhub_accounting_records_written",
            "Usage records the meter wrote (replays of a tick write none)",
            value=t.records,
        )
        failures = CounterMetricFamily(
            "twinhub_accounting_tick_failures",
            "Steps of a tick that failed (meter, budgets, prune); see the service's log",
            labels=["step"],
        )
        for step in ("meter", "budgets", "prune"):
            failures.add_metric([step], t.failures.get(step, 0))
        yield failures
        yield GaugeMetricFamily(
            "twinhub_accounting_last_tick_timestamp_seconds",
            "Unix time the meter's last tick ended (0: none yet)",
            value=t.last_tick or 0.0,
        )
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, TICK_BUCKETS), "+Inf"), t.bucket_counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "twinhub_accounting_tick_seconds",
            "Seconds one tick took (meter, budget checks, pruning)",
            buckets=buckets,
            sum_value=t.duration_sum,
        )


def render(
    db_url: str, allocations: dict[str, dict[str, Any]], ticks: TickStats
) -> tuple[bytes, str]:
    """(body, content type) of the metrics page (blocking: the database is read)."""
    usage = usage_totals(db_url)
    budgets = query.budgets(db_url, allocations, sorted(allocations))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(usage, budgets, ticks))
    return generate_latest(registry), CONTENT_TYPE_LATEST

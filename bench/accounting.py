"""Accounting benchmarks: the usage API's queries on a year of 1000 users, the store's cost
per meter tick, and (``--meter``) the whole meter's overhead on 50 users' real processes.

    /opt/twinhub/venv/bin/python bench/accounting.py [--users 1000] [--days 365]
        [--queries 200] [--backends sqlite postgresql] [--json out.json]
    /opt/twinhub/venv/bin/python bench/accounting.py --meter [--meter-users 50]
        [--meter-clusters 5] [--duration 180] [--interval 15] [--json out.json]   (root)

1. Roll-ups for ``--users`` users x ``--days`` days are **synthesised directly** (not
   produced by metering that long): for every user and every hour of the year an hour row
   (random CPU, memory, energy, CO2e; what 120 samples of 30 s roll up to), the matching day
   rows, and the project (``--users``/20 projects of 20 members) and member scopes, exactly
   the rows ``UsageStore.apply`` writes. That the store writes the same roll-ups as the raw
   records it keeps is checked first on ``--equiv-days`` of one user metered at 30 s
   through ``UsageStore.apply`` (roll-up totals vs the sum of raw records vs the truth).
2. ``query.usage`` p50/p95 for one user-year (365 day rows), one project-month (744 hour
   rows, day series) and one project-month per member (admins' breakdown), on SQLite and on
   PostgreSQL 15 (a local cluster started here, fsync off). The anchor is the bare SELECT of
   the same roll-up rows (no aggregation): the ratio is what query.py adds on top.
   Target: user-year p95 <= 50 ms.
3. Store cost per meter tick: ``UsageStore.apply`` of 50 users' readings (server CPU
   counter + memory gauge, a cluster's CPU and worker count), process CPU time per tick as
   a share of one core at interval 15 s (the database part of the meter's overhead).
4. ``--meter`` (root; instead of 1-3): the whole meter's overhead on real sources, no
   platform. ``--meter-users`` servers opened as the spawner opens them
   (``charges.open_server_charge``: charge file + accounting cgroup leaf, no limits) and
   ``--meter-clusters`` clusters as the gateway opens them (a cluster leaf with a scheduler
   and two ``worker-*`` leaves), each leaf holding one real, sleeping Python process (it
   wakes once a second, so counters move). One real :class:`Meter` per database (its
   embedded backends: cgroup, /proc, NVML; storage, which samples buckets and homes in
   threads of its own every ``storage_interval``, needs an object store and is left out)
   ticks every ``--interval`` s for ``--duration`` s, SQLite and PostgreSQL ticks
   interleaved. Measured around each ``tick``: the process's CPU time
   (``time.process_time``; the store's share apart) and wall time, plus for PostgreSQL the
   server's CPU (its processes' and reaped children's times, psutil). Figure: CPU per tick /
   interval = % of one core (target <= 1 % at 50 users; ratio = figure / target). Anchor:
   reading the same cgroup files bare (in-process, and one ``cat`` of them all). The first
   tick (sources registered) is reported apart. Every cgroup and process made is removed at
   the end, also on Ctrl-C or SIGTERM. Code: ``bench/accounting_meter.py``.

Prints figures and ratios, writes them as JSON with ``--json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# bench/ is the script's own directory, first on sys.path: its sibling module.
from accounting_meter import bench_meter, local_postgres, pct, postmaster_pid  # noqa: E402

from twinhub import db  # noqa: E402
from twinhub.db.models import UsageRecord, UsageRollup, UsageSource  # noqa: E402
from twinhub.services.accounting import query, rollup  # noqa: E402
from twinhub.services.accounting.energy import EnergyModel  # noqa: E402
from twinhub.services.accounting.readings import Reading, Source  # noqa: E402
from twinhub.services.accounting.store import UsageStore  # noqa: E402

ROLLUPS = UsageRollup.__table__
YEAR_END = datetime(2026, 1, 1, tzinfo=UTC)
MEMBERS_PER_PROJECT = 20


def model() -> EnergyModel:
    return EnergyModel(
        cpu_watts=3.5, memory_watts_per_gib=0.392, gpu_watts=None, pue=1.5, carbon_intensity=300.0
    )


# -- 1. synthesis -----------------------------------------------------------------------------
def synthesise(db_url: str, users: int, days: int, seed: int = 1) -> int:
    """Insert the roll-ups of ``users`` x ``days`` (see module doc); the number of rows."""
    rng = random.Random(seed)
    start = YEAR_END - timedelta(days=days)
    bits = rollup.method_bits("cpu", "cgroup", "model") | rollup.method_bits(
        "memory", "cgroup", "model"
    )
    n_projects = max(1, users // MEMBERS_PER_PROJECT)
    cols = rollup.SUM_COLUMNS
    rows = 0
    with db.engine(db_url).begin() as conn:
        project_hours: dict[tuple[str, datetime], list[float]] = {}
        project_days: dict[tuple[str, datetime], list[float]] = {}
        batch: list[tuple] = []

        pg = conn.dialect.name == "postgresql"
        names = ["scope_kind", "scope", "step", "bucket_start", "methods", *cols]

        def flush(force: bool = False) -> None:
            nonlocal rows
            if batch and (force or len(batch) >= 20000):
                if pg:  # COPY: ~10x the rate of multi-row INSERTs, for 18 M rows
                    raw = conn.connection.driver_connection
                    with (
                        raw.cursor() as cur,
                        cur.copy(f"COPY usage_rollups ({', '.join(names)}) FROM STDIN") as cp,
                    ):
                        for r in batch:
                            cp.write_row(r)
                else:
                    conn.execute(insert(ROLLUPS), [dict(zip(names, r, strict=True)) for r in batch])
                rows += len(batch)
                batch.clear()

        def row(kind: str, scope: str, step: str, at: datetime, sums: list[float]) -> None:
            batch.append((kind, scope, step, at, bits, *sums))
            flush()

        conn.execute(
            insert(UsageSource.__table__),
            [
                {
                    "source_id": f"server:user{u:04d}/#{u:012x}",
                    "user": f"user{u:04d}",
                    "project": f"project{u % n_projects:03d}",
                    "kind": "server",
                    "name": "",
                    "started_at": start,
                    "final_read": False,
                    "created_at": start,
                }
                for u in range(users)
            ],
        )
        for u in range(users):
            user, project = f"user{u:04d}", f"project{u % n_projects:03d}"
            member = rollup.member_scope(project, user)
            for d in range(days):
                day = start + timedelta(days=d)
                day_sum = [0.0] * len(cols)
                for h in range(24):
                    at = day + timedelta(hours=h)
                    core_s = rng.uniform(0, 3600)
                    gib_s = rng.uniform(0, 4) * 3600
                    energy = (core_s * 3.5 + gib_s * 0.392) * 1.5
                    sums = [core_s, gib_s, 0.0, 0.0, 0.0, energy, energy / 3.6e6 * 300]
                    row(rollup.USER, user, "hour", at, sums)
                    row(rollup.MEMBER, member, "hour", at, sums)
                    acc = project_hours.setdefault((project, at), [0.0] * len(cols))
                    for i, v in enumerate(sums):
                        acc[i] += v
                        day_sum[i] += v
                row(rollup.USER, user, "day", day, day_sum)
                row(rollup.MEMBER, member, "day", day, day_sum)
                acc = project_days.setdefault((project, day), [0.0] * len(cols))
                for i, v in enumerate(day_sum):
                    acc[i] += v
        for (project, at), sums in project_hours.items():
            row(rollup.PROJECT, project, "hour", at, sums)
        for (project, at), sums in project_days.items():
            row(rollup.PROJECT, project, "day", at, sums)
        flush(force=True)
    if db_url.startswith("postgresql"):
        with db.engine(db_url).begin() as conn:
            conn.execute(text("ANALYZE usage_rollups"))
    return rows


def equivalence(db_url: str, days: float, interval: float = 30.0) -> dict:
    """Meter one user for ``days`` at ``interval`` through the store: roll-up totals, the
    sum of raw records and the truth of the readings must agree."""
    rng = random.Random(2)
    src = Source("server:eq/#000000000001", "eq", "eqproject", "server", started_at=YEAR_END)
    store = UsageStore(db_url, model(), interval)
    cpu = 0.0
    truth_mem = 0.0
    ticks = int(days * 86400 / interval)
    t0 = time.perf_counter()
    for i in range(ticks + 1):
        at = YEAR_END + timedelta(seconds=i * interval)
        gib = rng.uniform(0.5, 3.0)
        if i:
            cpu += rng.uniform(0, interval)
            truth_mem += gib * interval
        store.apply(
            [
                Reading(src, "cpu", "counter", cpu, "cgroup", at),
                Reading(src, "memory", "gauge", gib, "cgroup", at),
            ]
        )
    elapsed = time.perf_counter() - t0
    end = YEAR_END + timedelta(seconds=ticks * interval + 1)
    got = {
        scope: query.usage(db_url, start=YEAR_END, end=end, **{scope: name})["totals"]
        for scope, name in (("user", "eq"), ("project", "eqproject"))
    }
    with db.engine(db_url).connect() as conn:
        raw = dict(
            conn.execute(
                select(UsageRecord.resource, text("sum(quantity)")).group_by(UsageRecord.resource)
            ).all()
        )
    out = {
        "ticks": ticks,
        "apply_ms_per_tick": elapsed / (ticks + 1) * 1000,
        "truth_cpu_core_hours": cpu / 3600,
        "raw_cpu_core_hours": raw["cpu"] / 3600,
        "rollup_cpu_core_hours": got["user"]["cpu_core_hours"],
        "project_rollup_cpu_core_hours": got["project"]["cpu_core_hours"],
        "truth_memory_gib_hours": truth_mem / 3600,
        "raw_memory_gib_hours": raw["memory"] / 3600,
        "rollup_memory_gib_hours": got["user"]["memory_gib_hours"],
    }
    out["max_rel_error"] = max(
        abs(out[a] - out[b]) / out[b]
        for a, b in (
            ("raw_cpu_core_hours", "truth_cpu_core_hours"),
            ("rollup_cpu_core_hours", "raw_cpu_core_hours"),
            ("project_rollup_cpu_core_hours", "raw_cpu_core_hours"),
            ("raw_memory_gib_hours", "truth_memory_gib_hours"),
            ("rollup_memory_gib_hours", "raw_memory_gib_hours"),
        )
    )
    return out


# -- 2. queries -------------------------------------------------------------------------------
def timed(fn, n: int) -> list[float]:
    fn()  # warm: connection, statement cache
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def bench_queries(db_url: str, users: int, n: int, seed: int = 3) -> dict:
    rng = random.Random(seed)
    n_projects = max(1, users // MEMBERS_PER_PROJECT)
    year = (YEAR_END - timedelta(days=365), YEAR_END)
    month = (YEAR_END - timedelta(days=31), YEAR_END)
    results = {}

    def user_year():
        query.usage(db_url, user=f"user{rng.randrange(users):04d}", start=year[0], end=year[1])

    def bare_select(kind: str, scope: str, step: str, span: tuple[datetime, datetime]) -> None:
        """The anchor: the roll-up rows a query reads, fetched with nothing around."""
        with db.engine(db_url).connect() as conn:
            conn.execute(
                select(ROLLUPS).where(
                    ROLLUPS.c.scope_kind == kind,
                    ROLLUPS.c.scope == scope,
                    ROLLUPS.c.step == step,
                    ROLLUPS.c.bucket_start >= span[0],
                    ROLLUPS.c.bucket_start < span[1],
                )
            ).all()

    def user_year_anchor():
        bare_select("user", f"user{rng.randrange(users):04d}", "day", year)

    def project_month():
        p = f"project{rng.randrange(n_projects):03d}"
        query.usage(db_url, project=p, start=month[0], end=month[1], step="day")

    def project_month_anchor():
        bare_select("project", f"project{rng.randrange(n_projects):03d}", "hour", month)

    def project_month_members():
        p = f"project{rng.randrange(n_projects):03d}"
        query.usage(db_url, project=p, start=month[0], end=month[1], step="day", by_member=True)

    for name, fn, anchor in (
        ("user_year", user_year, user_year_anchor),
        ("project_month", project_month, project_month_anchor),
        ("project_month_by_member", project_month_members, None),
    ):
        t = timed(fn, n)
        r = {"p50_ms": pct(t, 0.5), "p95_ms": pct(t, 0.95)}
        if anchor is not None:
            a = timed(anchor, n)
            r |= {"anchor_p50_ms": pct(a, 0.5), "anchor_p95_ms": pct(a, 0.95)}
            r["ratio_p50"] = r["p50_ms"] / r["anchor_p50_ms"]
        results[name] = r
    return results


# -- 3. store cost per tick -------------------------------------------------------------------
def bench_store_tick(db_url: str, users: int = 50, ticks: int = 40, interval: float = 15.0) -> dict:
    store = UsageStore(db_url, model(), interval)
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    servers = [
        Source(f"server:tick{u}/#{u:012x}", f"tick{u}", "tickp", "server", started_at=t0)
        for u in range(users)
    ]
    clusters = [
        Source(f"cluster:tick{u}", f"tick{u}", "tickp", "cluster", f"c{u}", started_at=t0)
        for u in range(users)
    ]
    cpu = [0.0] * users
    cpu_times, walls = [], []
    for i in range(ticks + 1):
        at = t0 + timedelta(seconds=i * interval)
        readings = []
        for u in range(users):
            cpu[u] += 0.1 * u
            readings += [
                Reading(servers[u], "cpu", "counter", cpu[u], "cgroup", at),
                Reading(servers[u], "memory", "gauge", 0.5, "cgroup", at),
                Reading(clusters[u], "cpu", "counter", cpu[u] / 2, "cgroup", at),
                Reading(clusters[u], "dask_worker", "gauge", 2, "cgroup", at),
            ]
        c, w = time.process_time(), time.perf_counter()
        store.apply(readings)
        if i:  # the first tick inserts the sources
            cpu_times.append(time.process_time() - c)
            walls.append(time.perf_counter() - w)
    per_tick = statistics.mean(cpu_times)
    return {
        "users": users,
        "readings_per_tick": 4 * users,
        "cpu_ms_per_tick": per_tick * 1000,
        "wall_ms_per_tick": statistics.mean(walls) * 1000,
        "core_percent_at_interval": per_tick / interval * 100,
        "interval_s": interval,
    }


def run_backend(name: str, db_url: str, args) -> dict:
    out: dict = {"backend": name}
    db.upgrade(db_url)
    out["equivalence"] = equivalence(db_url, args.equiv_days)
    e = out["equivalence"]
    print(
        f"[{name}] equivalence over {e['ticks']} ticks of 30 s: truth {e['truth_cpu_core_hours']:.4f} "
        f"raw {e['raw_cpu_core_hours']:.4f} roll-up {e['rollup_cpu_core_hours']:.4f} core-h; "
        f"max relative difference {e['max_rel_error']:.2e}; apply {e['apply_ms_per_tick']:.2f} ms/tick"
    )
    out["store_tick"] = bench_store_tick(db_url)
    s = out["store_tick"]
    print(
        f"[{name}] store tick, 50 users ({s['readings_per_tick']} readings): "
        f"{s['cpu_ms_per_tick']:.1f} ms CPU, {s['wall_ms_per_tick']:.1f} ms wall = "
        f"{s['core_percent_at_interval']:.2f} % of a core at {s['interval_s']:.0f} s"
    )
    t = time.perf_counter()
    out["rows"] = synthesise(db_url, args.users, args.days)
    out["synthesis_s"] = time.perf_counter() - t
    print(f"[{name}] synthesised {out['rows']} roll-up rows in {out['synthesis_s']:.0f} s")
    out["queries"] = bench_queries(db_url, args.users, args.queries)
    print(f"[{name}] {'query':<26} {'p50 ms':>8} {'p95 ms':>8} {'anchor p50':>11} {'ratio':>6}")
    for q, r in out["queries"].items():
        anchor = f"{r['anchor_p50_ms']:11.2f} {r['ratio_p50']:6.1f}" if "anchor_p50_ms" in r else ""
        print(f"[{name}] {q:<26} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {anchor}")
    return out


def _terminate(signum, frame):  # SIGTERM: unwind like Ctrl-C, so everything is cleaned up
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--equiv-days", type=float, default=2.0)
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    ap.add_argument("--meter", action="store_true", help="the meter's overhead only (root)")
    ap.add_argument("--meter-users", type=int, default=50, help="--meter: servers (users)")
    ap.add_argument("--meter-clusters", type=int, default=5, help="--meter: 2-worker clusters")
    ap.add_argument("--duration", type=float, default=180.0, help="--meter: seconds of ticks")
    ap.add_argument("--interval", type=float, default=15.0, help="--meter: seconds per tick")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    if args.meter:
        results = {"meter": None}
        with tempfile.TemporaryDirectory(prefix="twinhub-bench-acct-", dir="/tmp") as tmp:
            base = Path(tmp)
            dbs: dict[str, tuple[str, int | None]] = {}
            if "sqlite" in args.backends:
                dbs["sqlite"] = (f"sqlite:///{base / 'meter.sqlite'}", None)
            with contextlib.ExitStack() as stack:
                if "postgresql" in args.backends:
                    pg = stack.enter_context(local_postgres(base))
                    if pg is not None:
                        dbs["postgresql"] = (pg.url, postmaster_pid(pg))
                results["meter"] = bench_meter(args, dbs)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        return
    results = {"users": args.users, "days": args.days, "queries": args.queries, "backends": []}
    with tempfile.TemporaryDirectory(prefix="twinhub-bench-acct-", dir="/tmp") as tmp:
        base = Path(tmp)
        if "sqlite" in args.backends:
            results["backends"].append(
                run_backend("sqlite", f"sqlite:///{base / 'acct.sqlite'}", args)
            )
        if "postgresql" in args.backends:
            with local_postgres(base) as pg:
                if pg is not None:
                    results["backends"].append(run_backend("postgresql", pg.url, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # every cgroup, process and database made is gone by now
        sys.exit("interrupted")

"""The accounting meter's overhead on real sources, no platform: ``bench/accounting.py --meter``
(see its doc, part 4). Root: real accounting cgroups and processes, all removed at the end."""

from __future__ import annotations

import contextlib
import glob
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from twinhub import db  # noqa: E402
from twinhub.process.postgres import PG_BIN, LocalPostgres  # noqa: E402
from twinhub.services.accounting.backend_cgroup import CgroupBackend  # noqa: E402
from twinhub.services.accounting.backend_proc import ProcBackend  # noqa: E402
from twinhub.services.accounting.config import TwinhubAccounting  # noqa: E402
from twinhub.services.accounting.energy import EnergyModel  # noqa: E402
from twinhub.services.accounting.meter import Meter  # noqa: E402
from twinhub.services.accounting.nvml import NvmlBackend  # noqa: E402
from twinhub.services.accounting.readings import Reading  # noqa: E402
from twinhub.services.accounting.store import UsageStore  # noqa: E402
from twinhub.spawn import charges, resource_limits  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# -- 4. meter overhead (--meter) --------------------------------------------------------------
#: A user's mostly idle process: wakes once a second (its CPU counter moves a little).
SLEEPER = "import time\nwhile True:\n    time.sleep(1)"


class Fleet:
    """``users`` servers and ``clusters`` 2-worker clusters as the spawner and the gateway
    make them (charge files, accounting cgroups), each leaf holding one sleeping process."""

    def __init__(self, directory: Path, users: int, clusters: int) -> None:
        self.directory = directory
        self.group = f"twinhub-bench{os.getpid()}-acct"
        self.users, self.clusters = users, clusters
        self.support = resource_limits.detect_accounting(self.group)
        self.procs: list[subprocess.Popen] = []
        self.leaves: list[resource_limits.AccountingCgroup] = []

    def _start(self, cg: resource_limits.AccountingCgroup) -> None:
        join = cg.join_paths()
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", SLEEPER],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                preexec_fn=lambda: resource_limits.join_cgroup(join),  # noqa: PLW1509
                start_new_session=True,  # a Ctrl-C in the terminal is ours to clean up
            )
        )

    def __enter__(self) -> Fleet:
        if not self.support.kind:
            raise SystemExit(f"--meter needs accounting cgroups: {self.support.reason}")
        try:
            for u in range(self.users):
                user = f"bench{u:03d}"
                acct, _ = charges.open_server_charge(
                    self.directory, user=user, name="", safe_name=user,
                    project=f"benchp{u % 5}", uid=os.getuid(), profile="default", gpus=0,
                    group=self.group, limits=None,
                )  # fmt: skip
                if acct is None:
                    raise SystemExit(f"no accounting cgroup made under {self.group}")
                self.leaves.append(acct)
                self._start(acct)
            for k in range(self.clusters):
                name = f"bench{k:03d}-c{k}"
                top = resource_limits.AccountingCgroup(self.support, f"dask-{name}")
                charges.write(
                    self.directory,
                    charges.Charge(
                        source_id=charges.cluster_source_id(name),
                        user=f"bench{k:03d}",
                        project=f"benchp{k % 5}",
                        kind="cluster",
                        name=name,
                        started_at=datetime.now(UTC),
                        cgroups=top.charge_cgroups(),
                        uid=os.getuid(),
                    ),
                )
                self.leaves.append(top)
                for proc in ("scheduler", "worker-0", "worker-1"):
                    cg = resource_limits.AccountingCgroup(self.support, f"dask-{name}/{proc}")
                    cg.create()
                    self.leaves.append(cg)
                    self._start(cg)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        dirs = {d for cg in self.leaves for d in cg.dirs}
        resource_limits.kill_cgroup_procs(sorted(dirs))
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()
        for parent in {self.support.cpu, self.support.memory} - {None}:
            with contextlib.suppress(FileNotFoundError):
                parent.rmdir()
        resource_limits.detect_accounting.cache_clear()

    def cgroup_files(self) -> list[str]:
        """The cgroup files the cgroup backend reads for these sources (the anchor's)."""
        files: list[str] = []
        for c in charges.list_charges(self.directory):
            cpu = Path(c.cgroups["cpu"])
            files.append(str(cpu / ("cpuacct.usage" if self.support.kind == "v1" else "cpu.stat")))
            for pattern in c.cgroups.get("memory", []):
                for d in sorted(glob.glob(pattern)):
                    usage = (
                        "memory.usage_in_bytes" if self.support.kind == "v1" else "memory.current"
                    )
                    files += [f"{d}/{usage}", f"{d}/memory.stat"]
            if c.kind == "cluster":
                files += sorted(glob.glob(f"{cpu}/worker-*/cgroup.procs"))
        return files


class TimedStore:
    """The real store, with the CPU time spent in ``apply`` (the database part) counted."""

    def __init__(self, store: UsageStore) -> None:
        self.store, self.cpu = store, 0.0

    def apply(self, readings: list[Reading]) -> int:
        t = time.process_time()
        try:
            return self.store.apply(readings)
        finally:
            self.cpu += time.process_time() - t

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def server_cpu(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server so far: the postmaster, its live children and the
    children it reaped."""
    try:
        root = psutil.Process(postmaster)
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in root.children():
            with contextlib.suppress(psutil.Error):
                ct = child.cpu_times()
                total += ct.user + ct.system
        return total
    except psutil.Error:
        return float("nan")


def bare_read(files: list[str]) -> None:
    for f in files:
        with contextlib.suppress(OSError), open(f, "rb") as fh:
            fh.read()


def bench_meter(args, dbs: dict[str, tuple[str, int | None]]) -> dict:
    """``dbs``: name -> (URL, postmaster pid or None). Figures per database."""
    settings = TwinhubAccounting(interval=args.interval)
    with tempfile.TemporaryDirectory(prefix="twinhub-bench-meter-", dir="/tmp") as tmp:
        state = Path(tmp)
        directory = state / charges.CHARGES_DIR
        with Fleet(directory, args.meter_users, args.meter_clusters) as fleet:
            files = fleet.cgroup_files()
            meters = {}
            for name, (url, _) in dbs.items():
                db.upgrade(url)
                store = TimedStore(
                    UsageStore(url, EnergyModel.from_settings(settings), settings.interval)
                )
                backends = [
                    CgroupBackend(),
                    ProcBackend(state / f"proc-state-{name}.json"),
                    NvmlBackend.from_settings(settings),
                ]
                meters[name] = Meter(None, settings, store, backends=backends, directory=directory)
            n_ticks = max(2, int(args.duration / args.interval))
            print(
                f"meter: {args.meter_users} servers + {args.meter_clusters} clusters "
                f"({len(fleet.procs)} processes, {len(files)} cgroup files), "
                f"{n_ticks} ticks at {args.interval:g} s on {', '.join(meters)}"
            )
            samples: dict[str, dict[str, list[float]]] = {
                n: {"cpu": [], "store_cpu": [], "wall": [], "server_cpu": [], "records": []}
                for n in meters
            }
            first: dict[str, dict] = {}
            bare, cat = [], []
            deadline = time.monotonic()
            for i in range(n_ticks + 1):  # tick 0: the sources are registered
                time.sleep(max(0.0, deadline - time.monotonic()))
                deadline += args.interval
                now = datetime.now(UTC)
                for name, meter in meters.items():
                    pid = dbs[name][1]
                    s0 = server_cpu(pid) if pid else 0.0
                    meter.store.cpu = 0.0
                    c, w = time.process_time(), time.perf_counter()
                    written = meter.tick(now)
                    cpu, wall = time.process_time() - c, time.perf_counter() - w
                    srv = server_cpu(pid) - s0 if pid else 0.0
                    if i == 0:
                        first[name] = {"cpu_ms": cpu * 1000, "wall_ms": wall * 1000}
                        continue
                    for key, v in (
                        ("cpu", cpu), ("store_cpu", meter.store.cpu), ("wall", wall),
                        ("server_cpu", srv), ("records", written),
                    ):  # fmt: skip
                        samples[name][key].append(v)
                c = time.process_time()
                bare_read(files)
                bare.append(time.process_time() - c)
                ru = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=False)
                ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cat.append(ru2.ru_utime + ru2.ru_stime - ru.ru_utime - ru.ru_stime)
    interval = args.interval
    anchor = {
        "bare_read_cpu_ms": statistics.mean(bare) * 1000,
        "cat_cpu_ms": statistics.mean(cat) * 1000,
        "cgroup_files": len(files),
    }
    out = {
        "users": args.meter_users,
        "clusters": args.meter_clusters,
        "processes": args.meter_users + 3 * args.meter_clusters,
        "interval_s": interval,
        "ticks": n_ticks,
        "target_core_percent": 1.0,
        "anchor": anchor,
        "databases": {},
    }
    print(
        f"anchor: bare read of the {len(files)} cgroup files {anchor['bare_read_cpu_ms']:.2f} ms "
        f"CPU, one cat of them {anchor['cat_cpu_ms']:.2f} ms CPU"
    )
    print(
        f"{'db':<11} {'cpu ms/tick':>11} {'store ms':>9} {'db srv ms':>9} {'% core':>7} "
        f"{'wall p50':>9} {'wall p95':>9} {'vs 1 %':>7} {'vs bare':>8} {'vs cat':>7}"
    )
    for name, s in samples.items():
        cpu = statistics.mean(s["cpu"])
        srv = statistics.mean(s["server_cpu"])
        pct_core = (cpu + srv) / interval * 100
        r = {
            "cpu_ms_per_tick": cpu * 1000,
            "cpu_ms_p95": pct(s["cpu"], 0.95) * 1000,
            "store_cpu_ms_per_tick": statistics.mean(s["store_cpu"]) * 1000,
            "db_server_cpu_ms_per_tick": srv * 1000 if dbs[name][1] else None,
            "records_per_tick": statistics.mean(s["records"]),
            "meter_core_percent": cpu / interval * 100,
            "core_percent": pct_core,
            "wall_p50_ms": pct(s["wall"], 0.5) * 1000,
            "wall_p95_ms": pct(s["wall"], 0.95) * 1000,
            "ratio_to_target": pct_core / 1.0,
            "ratio_to_bare_read": cpu / statistics.mean(bare),
            "ratio_to_cat": cpu / statistics.mean(cat),
            "first_tick": first[name],
        }
        out["databases"][name] = r
        srv_s = f"{srv * 1000:9.1f}" if dbs[name][1] else f"{'-':>9}"
        print(
            f"{name:<11} {r['cpu_ms_per_tick']:11.1f} {r['store_cpu_ms_per_tick']:9.1f} {srv_s} "
            f"{pct_core:7.3f} {r['wall_p50_ms']:9.1f} {r['wall_p95_ms']:9.1f} "
            f"{r['ratio_to_target']:7.3f} {r['ratio_to_bare_read']:8.1f} {r['ratio_to_cat']:7.1f}"
        )
    print(
        "% core = (meter CPU + database server CPU) per tick / interval; target <= 1 % "
        "(ratio vs 1 %); first tick (registering): "
        + ", ".join(f"{n} {f['cpu_ms']:.0f} ms CPU" for n, f in first.items())
    )
    return out


@contextlib.contextmanager
def local_postgres(base: Path):
    """A PostgreSQL 15 cluster under ``base`` (fsync off), or None when not installed."""
    if not (PG_BIN / "initdb").exists():
        print(f"PostgreSQL 15 not installed ({PG_BIN}): skipped")
        yield None
        return
    base.chmod(0o711)  # the postgres account must reach its data dir
    pg = LocalPostgres(base / "pg", settings={"fsync": "off", "synchronous_commit": "off"})
    pg.start()
    try:
        yield pg
    finally:
        db.dispose_engines()
        pg.stop()


def postmaster_pid(pg: LocalPostgres) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])

"""Charge files, accounting cgroups and the cgroup / /proc meter backends, on real processes.

The cgroup tests need root and a cpuacct (v1) or cgroup2 hierarchy (this project's build
machine has both); they skip with the reason elsewhere. The store is mostly a fake here
(``RecordingStore``: keeps what it is given); the restart test uses the real one on SQLite,
and tests/integration/test_accounting_meter.py the platform's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select
from traitlets.config import Config

from twinhub import db
from twinhub.db.models import UsageRecord
from twinhub.errors import StartError
from twinhub.process.runtime import Runtime
from twinhub.services.accounting import AccountingPart, charges_dir
from twinhub.services.accounting.backend_cgroup import CgroupBackend, cpu_seconds
from twinhub.services.accounting.backend_proc import ProcBackend
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.meter import Meter, to_source
from twinhub.services.accounting.readings import (
    CPU,
    DASK_WORKER,
    GPU,
    MEMORY,
    MeterBackend,
    MeteredSource,
)
from twinhub.services.accounting.store import UsageStore
from twinhub.spawn import charges, resource_limits

BURN = """
import os, sys, time
t = time.process_time()
x = bytearray({mib} * 2**20)
x[::4096] = b"x" * len(x[::4096])
while time.process_time() - t < {burn}:
    pass
if {child}:
    pid = os.fork()
    if pid == 0:
        t = time.process_time()
        while time.process_time() - t < {child}:
            pass
        os._exit(0)
    os.waitpid(pid, 0)
print(time.process_time() + os.times().children_user + os.times().children_system, flush=True)
time.sleep({hold})
"""


class RecordingStore:
    """A fake of the usage store: keeps the readings and the ends it is given."""

    def __init__(self) -> None:
        self.readings: list = []
        self.ended: dict[str, datetime] = {}
        self.probes: dict[str, dict] = {}
        self.final: list[str] = []

    def apply(self, readings):
        self.readings += readings
        return len(readings)

    def end_source(self, source_id, at):
        self.ended[source_id] = at

    def register(self, sources, probes=None):
        self.probes.update(probes or {})

    def mark_final_read(self, source_id):
        self.final.append(source_id)


def _ms(charge: charges.Charge) -> MeteredSource:
    return MeteredSource(to_source(charge, "personal"), charge)


# -- charge files --------------------------------------------------------------------------


def test_charge_files_round_trip_and_private(tmp_path):
    d = tmp_path / "charges"
    c = charges.Charge(
        source_id=charges.server_source_id("alice", "", "0123456789ab"),
        user="alice",
        project="ocean",
        kind="server",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        cgroups={"cpu": "/x"},
        uid=1234,
        gpus=1,
    )
    charges.write(d, c)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert charges.read(d, c.source_id) == c
    assert charges.list_charges(d) == [c]
    assert charges.find_open(d, user="alice", name="", kind="server") == [c]
    ended = charges.end(d, c.source_id, datetime(2026, 1, 2, tzinfo=UTC))
    assert ended is not None and ended.ended_at == datetime(2026, 1, 2, tzinfo=UTC)
    assert charges.find_open(d, user="alice", name="", kind="server") == []
    # Ending again keeps the first end.
    assert charges.end(d, c.source_id).ended_at == ended.ended_at
    # A partial file (no rename yet) is never listed; a broken one is skipped.
    (d / ".tmp-x.json").write_text("{")
    (d / "broken.json").write_text("{")
    assert [x.source_id for x in charges.list_charges(d)] == [c.source_id]
    charges.remove(d, c.source_id)
    assert charges.read(d, c.source_id) is None


def test_to_source_names_the_kind_and_defaults_the_project():
    c = charges.Charge("server:bob/gpu#1", "bob", None, "server", name="gpu")
    s = to_source(c, "personal")
    assert (s.kind, s.project, s.name) == ("named-server", "personal", "gpu")
    assert to_source(charges.Charge("cluster:c1", "bob", "x", "cluster"), "p").kind == "cluster"


def test_backends_follow_the_protocol(tmp_path):
    assert isinstance(CgroupBackend(), MeterBackend)
    assert isinstance(ProcBackend(tmp_path / "s.json"), MeterBackend)


# -- the /proc backend (no root needed) ------------------------------------------------------


def _burner(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **kw)


def test_proc_backend_counts_the_tree_and_reaped_children(tmp_path):
    p = _burner(BURN.format(mib=64, burn=0.4, child=0.3, hold=3))
    truth = float(p.stdout.readline())
    c = charges.Charge("server:u/#p1", "u", "x", "server", pid=p.pid, uid=os.getuid())
    backend = ProcBackend(tmp_path / "state.json")
    now = datetime.now(UTC)
    got = {r.resource: r for r in backend.read([_ms(c)], now)}
    p.kill()
    p.wait()
    assert got[CPU].kind == "counter" and got[CPU].method == "proc"
    # Interpreter start-up is counted too (the truth is measured inside, after it).
    assert truth - 0.03 <= got[CPU].value <= truth + 0.5  # /proc counts in 10 ms ticks
    assert 0.06 <= got[MEMORY].value <= 0.2  # 64 MiB touched, in GiB
    # The counter never goes back: the process is gone, its last value stays.
    again = {r.resource: r for r in ProcBackend(tmp_path / "state.json").read([_ms(c)], now)}
    assert again[CPU].value == got[CPU].value


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another account")
def test_proc_backend_charges_a_detached_process_of_the_users_account(tmp_path):
    # As a user's own account (multi-user mode): the server starts a burner detached with
    # setsid and a shell that exits at once (reparented away from the server's tree).
    uid = 40000 + uuid.uuid4().int % 20000  # an account nobody else's processes use
    burner = (
        "import time\nt=time.process_time()\nwhile time.process_time()-t<0.6: pass\ntime.sleep(1)"
    )
    code = 'import os, time\nos.system(\'setsid "$PY" -c "$BURN" &\')\ntime.sleep(30)'
    env = {"BURN": burner, "PY": sys.executable, "PATH": os.environ["PATH"]}
    p = subprocess.Popen([sys.executable, "-c", code], user=uid, group=uid, cwd="/", env=env)
    try:
        c = charges.Charge("server:u/#p2", "u", "x", "server", pid=p.pid, uid=uid)
        backend = ProcBackend(tmp_path / "state.json")
        values, seen_burner = [], False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = [r for r in backend.read([_ms(c)], datetime.now(UTC)) if r.resource == CPU]
            values.append(r[0].value)
            others = [q for q in _processes_of(uid) if q != p.pid]
            seen_burner = seen_burner or bool(others)
            if seen_burner and not others:
                break  # the burner exited
            time.sleep(0.1)
        assert seen_burner
        assert values == sorted(values), "the counter only goes up"
        # Sampled every 0.1 s while it burned 0.6 s then slept: all of it is kept.
        assert values[-1] >= 0.55
    finally:
        p.kill()
        p.wait()


def _processes_of(uid: int) -> list[int]:
    return [q.pid for q in psutil.process_iter(["uids"]) if q.info["uids"].real == uid]


# -- accounting cgroups (root) -----------------------------------------------------------------

support = resource_limits.detect_accounting(f"twinhub-test-{uuid.uuid4().hex[:6]}-acct")
needs_cgroups = pytest.mark.skipif(not support.kind, reason=support.reason or "no cgroups")


@pytest.fixture
def acct_group():
    yield support
    for parent in (support.cpu, support.memory):
        if parent is not None and parent.is_dir():
            for d in sorted(parent.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if d.is_dir():
                    resource_limits.kill_cgroup_procs([d])
                    d.rmdir()
            parent.rmdir()


def _run_in(cg: resource_limits.AccountingCgroup, code: str) -> subprocess.Popen:
    join = cg.join_paths()
    return _burner(code, preexec_fn=lambda: resource_limits.join_cgroup(join))


@needs_cgroups
def test_cgroup_backend_reads_cpu_memory_and_the_parent_keeps_removed_children(acct_group):
    leaf = resource_limits.AccountingCgroup(acct_group, "dask-c1/worker-a")
    parent = resource_limits.AccountingCgroup(acct_group, "dask-c1")
    leaf.create()
    p = _run_in(leaf, BURN.format(mib=200, burn=0.7, child=0.5, hold=2))
    truth = float(p.stdout.readline())
    c = charges.Charge("cluster:c1", "u", "x", "cluster", cgroups=parent.charge_cgroups(), gpus=2)
    got = {r.resource: r for r in CgroupBackend().read([_ms(c)], datetime.now(UTC))}
    assert truth - 0.01 <= got[CPU].value <= truth + 0.5, (truth, got[CPU].value)
    assert got[CPU].method == "cgroup" and got[CPU].kind == "counter"
    assert 0.19 <= got[MEMORY].value <= 0.3  # 200 MiB working set, in GiB
    assert got[DASK_WORKER].value == 1
    assert (got[GPU].value, got[GPU].method) == (2, "allocation")
    p.wait()
    leaf.kill()
    before = cpu_seconds(parent.cpu_dir)
    for d in leaf.dirs:
        d.rmdir()
    # The child is gone; its usage stays in the parent.
    assert cpu_seconds(parent.cpu_dir) == pytest.approx(before, abs=1e-3)
    assert before >= truth - 0.01
    again = {r.resource: r for r in CgroupBackend().read([_ms(c)], datetime.now(UTC))}
    assert again[DASK_WORKER].value == 0


@needs_cgroups
def test_meter_final_read_then_removes_leaves_and_charge(tmp_path, acct_group):
    d = tmp_path / "charges"
    cg = resource_limits.AccountingCgroup(acct_group, "alice-0123456789ab")
    c = charges.Charge(
        charges.server_source_id("alice", "", "0123456789ab"),
        "alice",
        None,
        "server",
        started_at=datetime.now(UTC),
        cgroups=cg.charge_cgroups(),
    )
    charges.write(d, c)
    cg.create()
    p = _run_in(cg, BURN.format(mib=1, burn=0.5, child=0, hold=30))
    truth = float(p.stdout.readline())
    store = RecordingStore()
    settings = TwinhubAccounting()
    meter = Meter(None, settings, store, backends=[CgroupBackend()], directory=d)
    assert meter.tick() >= 2
    assert {r.resource for r in store.readings} == {CPU, MEMORY}
    assert store.readings[0].source.project == "personal"
    # The spawner's stop: kill what is left, mark ended; the meter does the rest.
    p.kill()  # (the hub reaps its children; the test reaps this one before the kill waits)
    p.wait()
    cg.kill()
    charges.end(d, c.source_id)
    store.readings.clear()
    meter.tick(datetime.now(UTC) + timedelta(seconds=1))
    assert [r.resource for r in store.readings] == [CPU]  # final read: counters only
    # (less than a millisecond before the child joined its cgroup is not in it)
    assert store.readings[0].value >= truth - 0.01
    assert c.source_id in store.ended and store.final == [c.source_id]
    assert store.probes[c.source_id]["cgroups"] == cg.charge_cgroups()
    assert not any(x.exists() for x in cg.dirs)
    assert charges.read(d, c.source_id) is None
    # Nothing left to read.
    store.readings.clear()
    assert meter.tick() == 0


@needs_cgroups
def test_meter_keeps_a_busy_ended_source_for_the_next_tick(tmp_path, acct_group):
    d = tmp_path / "charges"
    cg = resource_limits.AccountingCgroup(acct_group, "bob-0123456789ab")
    c = charges.Charge(
        "server:bob/#0123456789ab", "bob", "x", "server", cgroups=cg.charge_cgroups()
    )
    charges.write(d, c)
    cg.create()
    p = _run_in(cg, "import time; print(1, flush=True); time.sleep(30)")
    p.stdout.readline()
    charges.end(d, c.source_id)
    store = RecordingStore()
    meter = Meter(None, TwinhubAccounting(), store, backends=[CgroupBackend()], directory=d)
    meter.tick()
    assert charges.read(d, c.source_id) is not None and all(x.exists() for x in cg.dirs)
    assert not store.ended
    p.kill()  # (the hub reaps its children; the test reaps this one before the kill waits)
    p.wait()
    cg.kill()
    meter.tick()
    assert charges.read(d, c.source_id) is None and c.source_id in store.ended


@needs_cgroups
def test_remove_stale_leaves_accounting_leaves_alone(acct_group):
    # remove_stale (at hub start) empties twinhub-<id>; unread accounting leaves, in
    # twinhub-<id>-acct, wait for the meter's final read.
    group = acct_group.cpu.name.removesuffix("-acct")
    cg = resource_limits.AccountingCgroup(acct_group, "carol-0123456789ab")
    cg.create()
    resource_limits.remove_stale(group)
    assert all(d.is_dir() for d in cg.dirs)


@needs_cgroups
def test_meter_ends_a_cluster_whose_gateway_died(tmp_path, acct_group):
    # The gateway keeps its clusters in memory: after a crash no stop comes; the meter ends
    # a cluster whose leaves have been empty since well after it started.
    d = tmp_path / "charges"
    cg = resource_limits.AccountingCgroup(acct_group, "dask-orphan")
    cg.create()
    old = datetime.now(UTC) - timedelta(minutes=10)
    young = resource_limits.AccountingCgroup(acct_group, "dask-young")
    young.create()
    for name, leaf, started in (("orphan", cg, old), ("young", young, datetime.now(UTC))):
        charges.write(
            d,
            charges.Charge(
                f"cluster:{name}",
                "u",
                "x",
                "cluster",
                name=name,
                started_at=started,
                cgroups=leaf.charge_cgroups(),
            ),
        )
    store = RecordingStore()
    Meter(None, TwinhubAccounting(), store, backends=[CgroupBackend()], directory=d).tick()
    assert list(store.ended) == ["cluster:orphan"]
    assert charges.read(d, "cluster:orphan") is None and not cg.cpu_dir.exists()
    assert charges.read(d, "cluster:young").ended_at is None  # just starting: kept


@needs_cgroups
def test_a_restarted_meter_counts_nothing_twice_with_the_real_store(tmp_path, acct_group):
    # The real store on SQLite: a meter killed after the store committed (or before it
    # removed an ended source) is replaced by a fresh one that reads the same counters.
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    store = UsageStore(url, EnergyModel.from_settings(TwinhubAccounting()), interval=15)
    d = tmp_path / "charges"
    cg = resource_limits.AccountingCgroup(acct_group, "dave-0123456789ab")
    c = charges.Charge(
        "server:dave/#0123456789ab",
        "dave",
        "x",
        "server",
        started_at=datetime.now(UTC),
        cgroups=cg.charge_cgroups(),
    )
    charges.write(d, c)
    cg.create()
    p = _run_in(cg, BURN.format(mib=1, burn=0.6, child=0, hold=30))
    truth = float(p.stdout.readline())
    t1 = datetime.now(UTC)
    Meter(None, TwinhubAccounting(), store, backends=[CgroupBackend()], directory=d).tick(t1)
    # Killed and restarted: the same tick again (same instant), then the source ends.
    fresh = Meter(None, TwinhubAccounting(), store, backends=[CgroupBackend()], directory=d)
    assert fresh.tick(t1) == 0
    p.kill()
    p.wait()
    cg.kill()
    charges.end(d, c.source_id)
    final = cpu_seconds(cg.cpu_dir)
    fresh.tick(t1 + timedelta(seconds=1))
    assert fresh.tick(t1 + timedelta(seconds=2)) == 0  # nothing left: no double final read
    with db.session(url) as s:
        rows = list(s.scalars(select(UsageRecord).where(UsageRecord.resource == CPU)))
    assert sum(r.quantity for r in rows) == pytest.approx(final, abs=1e-6)
    assert truth - 0.01 <= final
    assert len({r.start for r in rows}) == len(rows)


@needs_cgroups
def test_purge_removes_the_accounting_group(acct_group):
    group = acct_group.cpu.name
    leaf = resource_limits.AccountingCgroup(acct_group, "dask-c9/worker-1")
    leaf.create()
    p = _run_in(leaf, "import time; print(1, flush=True); time.sleep(30)")
    p.stdout.readline()
    resource_limits.remove_accounting_group(group)
    p.wait(10)  # killed (the test reaps its own child)
    assert not acct_group.cpu.exists()
    assert acct_group.memory is None or not acct_group.memory.exists()


# -- cgroup v1 with cpu,cpuacct co-mounted (a FAKE hierarchy: plain directories) -----------------


@pytest.fixture
def fake_v1(tmp_path, monkeypatch):
    """A FAKE cgroup v1 machine: /proc/self/mounts and /proc/self/cgroup stand-ins naming
    plain directories (the kernel's files are written as ordinary files there). Returns a
    function making it with cpu and cpuacct mounted together (systemd's default on v1 and
    hybrid machines) or apart (this build machine)."""

    def make(shared: bool) -> dict[str, Path]:
        root = tmp_path / ("shared" if shared else "apart")
        cpu = root / ("cpu,cpuacct" if shared else "cpu")
        cpuacct = cpu if shared else root / "cpuacct"
        memory = root / "memory"
        for d in (cpu, cpuacct, memory):
            d.mkdir(parents=True, exist_ok=True)
        lines = [f"cgroup {memory} cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0"]
        if shared:
            lines.append(f"cgroup {cpu} cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0")
            own = "4:memory:/\n3:cpu,cpuacct:/\n1:name=systemd:/\n"
        else:
            lines.append(f"cgroup {cpu} cgroup rw,relatime,cpu 0 0")
            lines.append(f"cgroup {cpuacct} cgroup rw,relatime,cpuacct 0 0")
            own = "4:memory:/\n2:cpuacct:/\n1:cpu:/\n"
        (root / "mounts").write_text(
            "proc /proc proc rw 0 0\ntmpfs /sys/fs/cgroup tmpfs rw 0 0\n" + "\n".join(lines) + "\n"
        )
        (root / "cgroup").write_text(own)
        monkeypatch.setattr(resource_limits, "MOUNTS_FILE", str(root / "mounts"))
        monkeypatch.setattr(resource_limits, "OWN_CGROUP_FILE", str(root / "cgroup"))
        monkeypatch.setattr(os, "geteuid", lambda: 0)  # detection is for root only
        resource_limits.detect.cache_clear()
        resource_limits.detect_accounting.cache_clear()
        return {"cpu": cpu, "cpuacct": cpuacct, "memory": memory}

    yield make
    resource_limits.detect.cache_clear()
    resource_limits.detect_accounting.cache_clear()


def _hierarchy(path: str, mounts: dict[str, Path]) -> Path:
    return next(m for m in set(mounts.values()) if Path(path).is_relative_to(m))


@pytest.mark.parametrize("shared", [True, False], ids=["cpu,cpuacct", "apart"])
def test_v1_accounting_never_takes_a_server_out_of_its_cpu_limits(tmp_path, fake_v1, shared):
    mounts = fake_v1(shared)
    limits_support = resource_limits.detect("twinhub-t")
    assert limits_support.kind == "v1"
    limits = resource_limits.ServerCgroup(
        limits_support, "alice", resource_limits.Limits(cpu=0.5, memory=2**30)
    )
    cpu_leaf = limits_support.parents["cpu"] / "alice"
    cpu_leaf.mkdir(parents=True)
    if shared:  # the kernel's counter, in a leaf a crash left behind
        (cpu_leaf / "cpuacct.usage").write_text("987654321")
    limits.create()
    assert (cpu_leaf / "cpu.cfs_quota_us").read_text() == "50000"
    acct_support = resource_limits.detect_accounting("twinhub-t-acct")
    assert (acct_support.kind, acct_support.cpu_shared) == ("v1", shared)
    assert acct_support.meters_in_limits(limits) is shared

    d = tmp_path / "charges"
    acct, charge = charges.open_server_charge(
        d,
        user="alice",
        name="",
        safe_name="alice",
        project="ocean",
        uid=61234,
        profile="small",
        gpus=0,
        group="twinhub-t-acct",
        limits=limits,
    )
    assert charges.read(d, charge.source_id) == charge
    # What the server's preexec joins (TwinhubSpawner.make_preexec_fn): at most one cgroup
    # per hierarchy, and the CPU-limited leaf is one of them -- joining a second cgroup of
    # the same hierarchy would move the process out of the first.
    join = limits.join_paths() + (acct.join_paths() if acct is not None else [])
    hierarchies = [_hierarchy(p, mounts) for p in join]
    assert len(hierarchies) == len(set(hierarchies)), join
    assert str(cpu_leaf / "cgroup.procs") in join
    if shared:
        assert acct is None  # no accounting leaf: the limits leaf is metered
        assert not (mounts["cpuacct"] / "twinhub-t-acct").exists()
        assert charge.cgroups == {
            "kind": "v1",
            "cpu": str(cpu_leaf),
            "memory": [str(limits_support.parents["memory"] / "alice")],
            "leaves": [],
        }
        # The counter restarted with the new run (not the crashed one's 0.99 s).
        assert (cpu_leaf / "cpuacct.usage").read_text() == "0"
    else:
        assert acct is not None and acct.cpu_dir is not None
        assert acct.cpu_dir.is_relative_to(mounts["cpuacct"] / "twinhub-t-acct")
        assert charge.cgroups["cpu"] == str(acct.cpu_dir)
        assert charge.cgroups["leaves"] == [str(acct.cpu_dir)]

    # The meter reads the counter the charge names (the kernel's files, faked).
    metered = Path(charge.cgroups["cpu"])
    (metered / "cpuacct.usage").write_text("2500000000")
    mem_leaf = limits_support.parents["memory"] / "alice"
    (mem_leaf / "memory.usage_in_bytes").write_text(str(3 * 2**29))
    (mem_leaf / "memory.stat").write_text(f"total_inactive_file {2**29}\n")
    got = {r.resource: r for r in CgroupBackend().read([_ms(charge)], datetime.now(UTC))}
    assert got[CPU].value == pytest.approx(2.5)
    assert got[MEMORY].value == pytest.approx(1.0)

    # At stop the hub removes the limits cgroup; its last counter goes into the charge so the
    # meter's final read (after the cgroup is gone) still has the last interval.
    (metered / "cpuacct.usage").write_text("3000000000")
    final = limits.kill_and_remove(timeout=0.1)
    # Apart, the limits leaf has no CPU counter (cpu hierarchy only).
    assert final == (pytest.approx(3.0) if shared else None)
    ended = charges.end(d, charge.source_id, final_cpu=final if shared else None)
    for leaf in limits.dirs:  # what rmdir does to a real (empty) cgroup
        shutil.rmtree(leaf)
    got = {r.resource: r for r in CgroupBackend().read([_ms(ended)], datetime.now(UTC))}
    # Shared: from the charge; apart: the accounting leaf (the meter's to remove) holds it.
    assert (got[CPU].value, set(got)) == (pytest.approx(3.0), {CPU})
    if shared:  # without the hub's last read there is nothing to read
        bare = charges.Charge(**{**ended.__dict__, "extra": {}})
        assert CgroupBackend().read([_ms(bare)], datetime.now(UTC)) == []


def test_v1_cluster_processes_with_limits_in_a_shared_hierarchy_get_no_accounting_leaf(fake_v1):
    """The gateway asks the same question per scheduler/worker (per-process accounting
    instead of a leaf that would lift the process's CPU limit)."""
    fake_v1(True)
    acct_support = resource_limits.detect_accounting("twinhub-g-acct")
    lim = resource_limits.Limits(cpu=1.0, memory=2**30)
    limited = resource_limits.ServerCgroup(resource_limits.detect("twinhub-g"), "dask-c-w", lim)
    assert acct_support.meters_in_limits(limited)
    assert not acct_support.meters_in_limits(None)  # no limits: an accounting leaf is fine
    advisory = resource_limits.ServerCgroup(resource_limits.CgroupSupport(""), "x", lim)
    assert not acct_support.meters_in_limits(advisory)


# -- no cgroups, multi-user mode: what a user's last source leaves behind ----------------------


def _spare_uids(n: int) -> list[int]:
    """uids no process runs as (accounts nobody else's tests or processes use)."""
    used = {q.info["uids"].real for q in psutil.process_iter(["uids"]) if q.info["uids"]}
    out: list[int] = []
    while len(out) < n:
        uid = 70000 + uuid.uuid4().int % 20000
        if uid not in used and uid not in out:
            out.append(uid)
    return out


def _alive_as(pid: int, uid: int) -> bool:
    try:
        q = psutil.Process(pid)
        return q.uids().real == uid and q.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as other accounts")
def test_the_users_last_source_ending_kills_what_is_left_of_their_account(tmp_path):
    uid, other = _spare_uids(2)
    # Processes of the user's account that no cgroup holds: one started directly, one
    # detached (setsid, its shell gone: reparented away from every tree).
    direct = subprocess.Popen(["sleep", "300"], user=uid, group=uid, cwd="/")
    sh = subprocess.Popen(
        ["bash", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"],
        user=uid,
        group=uid,
        cwd="/",
        stdout=subprocess.PIPE,
        text=True,
    )
    detached = int(sh.stdout.readline())
    sh.wait()
    stranger = subprocess.Popen(["sleep", "300"], user=other, group=other, cwd="/")
    d = tmp_path / "charges"
    t0 = datetime.now(UTC)
    server = charges.Charge(
        "server:w-al/#aaaaaaaaaaaa", "w-al", "ocean", "server", started_at=t0, uid=uid
    )
    cluster = charges.Charge("cluster:c1", "w-al", "ocean", "cluster", started_at=t0, uid=uid)
    for c in (server, cluster):
        charges.write(d, c)
    try:
        assert _alive_as(detached, uid) and _alive_as(direct.pid, uid)
        charges.end(d, server.source_id)
        # The cluster is still running: nothing of the account is touched.
        assert charges.end_leftovers(d, user="w-al", uid=uid) == 0
        assert _alive_as(detached, uid) and _alive_as(direct.pid, uid)
        charges.end(d, cluster.source_id)
        assert charges.end_leftovers(d, user="w-al", uid=uid) >= 2
        assert direct.wait(5) == -9  # killed, and left to its parent (this test) to reap
        deadline = time.monotonic() + 5
        while _alive_as(detached, uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive_as(detached, uid)
        # Another account's process is never touched.
        assert _alive_as(stranger.pid, other)
        # Never the platform's own account, root or a system account (personal mode).
        for never in (os.getuid(), 0, 999, None):
            assert charges.end_leftovers(d, user="w-al", uid=never) == 0
    finally:
        for p in (direct, stranger):
            p.kill()
            p.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(detached, 9)


# -- settings checked at `twinhub up` ----------------------------------------------------------


def test_up_refuses_the_prometheus_backend_without_its_url(tmp_path):
    cfg = Config()
    cfg.TwinhubAccounting.backend = "prometheus"
    rt = Runtime(state_dir=tmp_path, config=cfg, mode="multi-user")
    with pytest.raises(StartError, match=r"prometheus_url is empty"):
        AccountingPart().prepare_service(rt, print)
    assert not charges_dir(rt).exists()  # nothing made
    cfg.TwinhubAccounting.prometheus_url = "   "
    with pytest.raises(StartError, match=r"prometheus_url is empty"):
        AccountingPart().prepare_service(Runtime(state_dir=tmp_path, config=cfg), print)
    cfg.TwinhubAccounting.backend = "promethus"
    with pytest.raises(StartError, match=r"'promethus' is not one of 'cgroup', 'prometheus'"):
        AccountingPart().prepare_service(Runtime(state_dir=tmp_path, config=cfg), print)
    cfg.TwinhubAccounting.backend = "prometheus"
    cfg.TwinhubAccounting.prometheus_url = "http://prometheus.monitoring.svc:9090"
    AccountingPart().prepare_service(Runtime(state_dir=tmp_path, config=cfg), print)
    assert charges_dir(rt).is_dir()

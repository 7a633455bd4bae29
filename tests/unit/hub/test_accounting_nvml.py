"""services.accounting.nvml through a FAKE NVML (tests/helpers/fake_nvml.py: no GPU here),
chosen as in production by ``TwinhubAccounting.nvml_module``; the processes on the fake GPUs
are real processes, matched to sources through the real /proc."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.helpers import fake_nvml
from tests.helpers.fake_nvml import FakeGpu, FakeNvml
from twinhub import db
from twinhub.db.models import UsageRecord
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.meter import to_source
from twinhub.services.accounting.nvml import NvmlBackend, prefer_nvml
from twinhub.services.accounting.readings import GPU, MeteredSource, Reading
from twinhub.services.accounting.store import UsageStore
from twinhub.spawn.charges import Charge

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
FAKE = "tests.helpers.fake_nvml"


class Clock:
    """The fake GPUs' clock, moved by the test (their energy grows with it)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def at(self) -> datetime:
        return T0 + timedelta(seconds=self.t - 1000.0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def sleeper(procs: list[subprocess.Popen]) -> int:
    p = subprocess.Popen(["sleep", "120"])
    procs.append(p)
    return p.pid


def with_child(procs: list[subprocess.Popen]) -> tuple[int, int]:
    """A shell (a server's root process) and the pid of a child it started."""
    p = subprocess.Popen(
        ["bash", "-c", "sleep 120 & echo $!; wait"], stdout=subprocess.PIPE, text=True
    )
    procs.append(p)
    child = int(p.stdout.readline())
    return p.pid, child


def metered(sid: str, user: str, **kw) -> MeteredSource:
    c = Charge(sid, user, "ocean", "server", started_at=kw.pop("started_at", T0), **kw)
    return MeteredSource(to_source(c, "personal"), c)


def backend() -> NvmlBackend:
    return NvmlBackend.from_settings(TwinhubAccounting(nvml_module=FAKE))


def by_source(readings: list[Reading]) -> dict[str, Reading]:
    assert all(r.resource == GPU and r.method == "nvml" for r in readings)
    return {r.source.source_id: r for r in readings}


def test_energy_is_split_by_utilisation_and_strangers_take_their_share(clock, procs):
    alice_root, alice_child = with_child(procs)
    bob_pid = sleeper(procs)
    stranger = sleeper(procs)  # on the GPU but in no source: its share is nobody's
    gpu = FakeGpu("GPU-a", watts=300.0, processes={alice_child: 60, bob_pid: 20, stranger: 20})
    fake_nvml.install(FakeNvml([gpu], clock=clock))
    alice = metered("server:alice/#aaaaaaaaaaaa", "alice", pid=alice_root)
    bob = metered("server:bob/#bbbbbbbbbbbb", "bob", pid=bob_pid)
    b = backend()

    first = by_source(b.read([alice, bob], clock.at()))
    # The first sight of a device is its baseline: its counter since the driver loaded
    # is nobody's.
    assert {sid: (r.value, r.energy_j) for sid, r in first.items()} == {
        alice.source.source_id: (1.0, 0.0),
        bob.source.source_id: (1.0, 0.0),
    }
    clock.t += 10  # 300 W x 10 s = 3000 J
    got = by_source(b.read([alice, bob], clock.at()))
    assert got[alice.source.source_id].energy_j == pytest.approx(1800.0)
    assert got[bob.source.source_id].energy_j == pytest.approx(600.0)
    assert b.utilisation == {alice.source.source_id: 60.0, bob.source.source_id: 20.0}
    clock.t += 10
    got = by_source(b.read([alice, bob], clock.at()))
    assert got[alice.source.source_id].energy_j == pytest.approx(3600.0)  # cumulative


def test_an_allocated_gpu_is_charged_to_its_holder_even_idle(clock, procs, tmp_path):
    """Allocated (charge ``extra.gpu_uuids``): the device's energy goes to its holder with
    or without processes; an idle unallocated device is charged to nobody. Through the
    store: GPU-seconds and measured (``nvml``) joules x PUE, and a meter restart counts
    nothing twice."""
    fake_nvml.install(
        FakeNvml([FakeGpu("GPU-b", watts=200.0), FakeGpu("GPU-c", watts=50.0)], clock=clock)
    )
    carol = metered("server:carol/#cccccccccccc", "carol", gpus=1, extra={"gpu_uuids": ["GPU-b"]})
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    settings = TwinhubAccounting(nvml_module=FAKE, pue=1.25)
    store = UsageStore(url, EnergyModel.from_settings(settings), interval=15.0)

    b = NvmlBackend.from_settings(settings)
    store.apply(b.read([carol], clock.at()))
    clock.t += 5  # GPU-b: 1000 J
    got = by_source(b.read([carol], clock.at()))
    assert got[carol.source.source_id].energy_j == pytest.approx(1000.0)
    store.apply(list(got.values()))
    # The meter restarts: its per-source counters start from zero again.
    b = NvmlBackend.from_settings(settings)
    clock.t += 5
    store.apply(b.read([carol], clock.at()))  # a baseline again: 0 J
    clock.t += 5
    store.apply(b.read([carol], clock.at()))  # 1000 J more

    with db.session(url) as s:
        rows = list(s.scalars(select(UsageRecord).order_by(UsageRecord.start)))
    assert {(r.resource, r.method, r.energy_method) for r in rows} == {("gpu", "nvml", "nvml")}
    assert sum(r.quantity for r in rows) == pytest.approx(15.0)  # 1 GPU x 3 spans of 5 s
    assert sum(r.energy_j for r in rows) == pytest.approx(2000.0 * 1.25)


def test_a_process_in_the_sources_cgroup_is_its_own(clock, procs, tmp_path):
    """A detached process (not below the root pid) is matched by the source's accounting
    cgroup. FAKE cgroup hierarchy: a directory tree with ``cgroup.procs`` files, as the
    kernel's (a worker's leaf below the source's)."""
    detached = sleeper(procs)
    leaf = tmp_path / "twinhub-x-acct" / "dask-c1" / "worker-1"
    leaf.mkdir(parents=True)
    (leaf.parent / "cgroup.procs").write_text("")
    (leaf / "cgroup.procs").write_text(f"{detached}\n")
    fake_nvml.install(
        FakeNvml([FakeGpu("GPU-d", watts=100.0, processes={detached: 50})], clock=clock)
    )
    dana = metered(
        "cluster:dana.c1",
        "dana",
        cgroups={"cpu": str(leaf.parent), "leaves": [str(leaf.parent)]},
    )
    other = metered("server:erik/#eeeeeeeeeeee", "erik", pid=1)
    b = backend()
    b.read([dana, other], clock.at())
    clock.t += 2
    got = by_source(b.read([dana, other], clock.at()))
    assert set(got) == {dana.source.source_id}
    assert got[dana.source.source_id].energy_j == pytest.approx(200.0)


def test_by_uid_the_latest_source_of_the_account(clock, procs):
    pid = sleeper(procs)
    fake_nvml.install(FakeNvml([FakeGpu("GPU-e", watts=100.0, processes={pid: 0})], clock=clock))
    older = metered("server:fay/#111111111111", "fay", uid=os.getuid(), started_at=T0)
    newer = metered(
        "server:fay/gpu#222222222222", "fay", uid=os.getuid(), started_at=T0 + timedelta(hours=1)
    )
    b = backend()
    b.read([older, newer], clock.at())
    clock.t += 3
    got = by_source(b.read([older, newer], clock.at()))
    # No utilisation sample (0 %): an equal split among those present -- only newer.
    assert set(got) == {newer.source.source_id}
    assert got[newer.source.source_id].energy_j == pytest.approx(300.0)


def test_a_root_pid_of_another_account_is_not_trusted(clock, procs):
    """The charge's root pid now runs as another account (the server died and the pid was
    reused): what descends from it is not the source's. The same tree with the charge's
    own uid is."""
    root, child = with_child(procs)  # runs as this test's uid
    fake_nvml.install(FakeNvml([FakeGpu("GPU-u", watts=100.0, processes={child: 50})], clock=clock))
    other_uid = os.getuid() + 4242  # no process of ours runs as it
    reused = metered("server:gil/#333333333333", "gil", pid=root, uid=other_uid)
    b = backend()
    b.read([reused], clock.at())
    clock.t += 2
    assert b.read([reused], clock.at()) == []  # neither by ancestry nor by uid
    assert b.utilisation == {}

    own = metered("server:gil/#444444444444", "gil", pid=root, uid=os.getuid())
    b2 = backend()
    b2.read([own], clock.at())
    clock.t += 2
    got = by_source(b2.read([own], clock.at()))
    assert got[own.source.source_id].energy_j == pytest.approx(200.0)
    assert b2.utilisation == {own.source.source_id: 50.0}


def test_power_only_devices_and_no_process_utilisation(clock, procs):
    """No energy counter (older GPUs): power x time; no per-process utilisation: an equal
    split among the sources on the device."""
    a, b_pid = sleeper(procs), sleeper(procs)
    gpu = FakeGpu(
        "GPU-f",
        watts=250.0,
        processes={a: 90, b_pid: 10},
        energy_supported=False,
        process_util_supported=False,
    )
    fake_nvml.install(FakeNvml([gpu], clock=clock))
    s1 = metered("server:gus/#333333333333", "gus", pid=a)
    s2 = metered("server:hal/#444444444444", "hal", pid=b_pid)
    b = backend()
    b.read([s1, s2], T0)
    got = by_source(b.read([s1, s2], T0 + timedelta(seconds=4)))  # 1000 J
    assert got[s1.source.source_id].energy_j == pytest.approx(500.0)
    assert got[s2.source.source_id].energy_j == pytest.approx(500.0)


def test_no_nvml_no_readings(clock, procs):
    fake_nvml.install(FakeNvml([FakeGpu("GPU-g")], clock=clock, init_error=9))
    s = metered("server:ian/#555555555555", "ian", gpus=1, pid=sleeper(procs))
    b = backend()
    assert b.read([s], clock.at()) == []
    assert "nvmlInit failed" in (b.unavailable or "")
    missing = NvmlBackend("tests.helpers.no_such_nvml")
    assert missing.read([s], clock.at()) == []
    assert "no NVML module" in (missing.unavailable or "")


def test_ended_sources_and_gpu_less_sources_get_no_reading(clock, procs):
    pid = sleeper(procs)
    fake_nvml.install(FakeNvml([FakeGpu("GPU-h", processes={pid: 10})], clock=clock))
    ended = metered("server:jan/#666666666666", "jan", pid=pid, gpus=1, ended_at=T0)
    cpu_only = metered("server:kim/#777777777777", "kim", pid=sleeper(procs))
    assert backend().read([ended, cpu_only], clock.at()) == []


def test_prefer_nvml_drops_the_allocation_reading_nvml_replaces():
    s1 = metered("server:lea/#888888888888", "lea", gpus=1).source
    s2 = metered("server:max/#999999999999", "max", gpus=1).source
    alloc1 = Reading(s1, GPU, "gauge", 1.0, "allocation", T0)
    alloc2 = Reading(s2, GPU, "gauge", 1.0, "allocation", T0)
    nvml1 = Reading(s1, GPU, "gauge", 1.0, "nvml", T0, energy_j=5.0)
    cpu1 = Reading(s1, "cpu", "counter", 3.0, "cgroup", T0)
    assert prefer_nvml([alloc1, cpu1, alloc2, nvml1]) == [cpu1, alloc2, nvml1]

"""The meter against ground truth, on the real multi-user platform.

Real servers, kernels, Dask clusters and the platform's own ``accounting`` service (its
meter ticks every ``TwinhubAccounting.interval``, 15 s by default): what users burn is
measured inside (``time.process_time()``), what the meter charged is read back from the
platform's database (``usage_records``), and what the machine saw from the accounting
cgroups (``cpuacct.usage``) read directly by the test (root).

Start-up and idle cost, stated: a server's (or cluster's) CPU counter is read once its kernel
(or workers) are up (``base``, its start-up cost) and again after 10 idle seconds (its idle
rate: a Jupyter server's and a Dask scheduler's heartbeats). What the meter charged up to its
first tick after the work, minus the baseline and the idle rate over that time, must be
within 10 % of the truth. The figures are printed (``-s``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers import accounting as acct
from tests.helpers.kernel import execute, shutdown_kernel, start_kernel
from twinhub.process.runtime import Runtime
from twinhub.process.supervisor import processes_of_instance
from twinhub.services.accounting.backend_cgroup import cpu_seconds
from twinhub.spawn import resource_limits

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

GIB = 2**30

# A burner detached from the server's process tree: setsid, started by a shell that exits
# at once (reparented to init), its own CPU time written to a file when done.
DETACHED = """
import os, sys, pathlib
out = pathlib.Path.home() / "detached-{tag}.txt"
os.environ["BURN"] = ("import time, pathlib\\nt = time.process_time()\\n"
    "while time.process_time() - t < {s}: pass\\n"
    "pathlib.Path(%r).write_text(str(time.process_time()))" % str(out))
os.system('setsid "%s" -c "$BURN" >/dev/null 2>&1 &' % sys.executable)
"""

WAIT_DETACHED = """
import pathlib, time
out = pathlib.Path.home() / "detached-{tag}.txt"
deadline = time.monotonic() + 60
while not out.exists() and time.monotonic() < deadline:
    time.sleep(0.1)
print("DETACHED", out.read_text())
"""


def _rt(p) -> Runtime:
    return Runtime.load(p.state)


@pytest.fixture(scope="module")
def platform(multiuser_platform):
    return multiuser_platform


class _OtherSources:
    """The CPU the accounting group's other children (servers and clusters other modules of
    the session left running) used while a test ran: sampled every 0.2 s, so a child removed
    meanwhile still counts what it used until its last sample (0.2 s of an idle server's
    heartbeat at most is lost). Only children there before the test began: CPU in one that
    appears meanwhile (a process escaping its server's leaf) stays on the machine's side."""

    def __init__(self, group: Path | None) -> None:
        self.group = group
        self.first: dict[Path, float] = {}
        self.last: dict[Path, float] = {}
        self.ours: set[Path] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.begun = False
        self._sample()
        self.begun = True  # from now on, only the children seen at the start
        self._thread.start()

    def _sample(self) -> None:
        if self.group is None or not self.group.is_dir():
            return
        for child in self.group.iterdir():
            if not child.is_dir() or child in self.ours or (self.begun and child not in self.first):
                continue
            used = cpu_seconds(child)
            if used is not None:
                self.first.setdefault(child, used)
                self.last[child] = used

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def stop(self) -> float:
        """Their CPU seconds since the start."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(self.last[c] - self.first[c] for c in self.last if c not in self.ours)


def _user(p, tag: str) -> str:
    name = f"bm{tag}{uuid.uuid4().hex[:5]}"
    p.add_user(name)
    return name


def test_two_users_kernels_and_a_detached_burner_within_10_percent(platform):
    p = platform
    a, b = _user(p, "a"), _user(p, "b")
    # The platform's accounting group: a parent keeps the usage of removed leaves.
    group = resource_limits.detect_accounting(f"twinhub-{_rt(p).instance_id}-acct").cpu
    before = (cpu_seconds(group) if group and group.is_dir() else None) or 0.0
    others = _OtherSources(group)
    urls = {u: p.spawn(u) for u in (a, b)}
    charge = {u: acct.open_charge(p.state, u) for u in (a, b)}
    for u in (a, b):
        assert charge[u].cgroups.get("cpu"), "accounting cgroups on this (root) machine"
    assert Path(charge[a].cgroups["cpu"]).parent == group
    others.ours.update(Path(charge[u].cgroups["cpu"]) for u in (a, b))
    tokens = {u: p.token(u) for u in (a, b)}
    kernels = {u: start_kernel(urls[u], tokens[u]) for u in (a, b)}
    try:
        for u in (a, b):  # the kernel is up (its own start-up is part of the baseline)
            execute(urls[u], tokens[u], kernels[u], "1")
        base = {u: acct.Baseline.measure(Path(charge[u].cgroups["cpu"]), 10) for u in (a, b)}
        tag = uuid.uuid4().hex[:6]
        work = {
            a: DETACHED.format(tag=tag, s=3)
            + acct.BURN.format(s=5)
            + WAIT_DETACHED.format(tag=tag),
            b: acct.BURN.format(s=6),
        }
        outs: dict[str, str] = {}

        def run(u: str) -> None:
            outs[u] = execute(urls[u], tokens[u], kernels[u], work[u], timeout=180)

        threads = [threading.Thread(target=run, args=(u,)) for u in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done = datetime.now(UTC)
        at_tick = {u: acct.metered_after(p.state, charge[u].source_id, done) for u in (a, b)}
    finally:
        for u in (a, b):
            with contextlib.suppress(Exception):
                shutdown_kernel(urls[u], tokens[u], kernels[u])
    for u in (a, b):
        p.stop_server(u)
    for u in (a, b):
        acct.wait_finished(p.state, charge[u].source_id)

    truth = {
        a: acct.value(outs[a], "BURNED") + acct.value(outs[a], "DETACHED"),
        b: acct.value(outs[b], "BURNED"),
    }
    final = {}
    for u in (a, b):
        base[u].check(u, truth[u], *at_tick[u])
        rows = acct.records(p.state, charge[u].source_id, "cpu")
        assert {r["user"] for r in rows} == {u}  # never the other one's
        acct.no_overlap(rows)
        final[u] = sum(r["quantity"] for r in rows)
        assert final[u] >= at_tick[u][0]
    # What the machine's own counter saw meanwhile: the group holding both, less what the
    # session's other sources in it (idle servers and clusters of earlier modules) used.
    other = others.stop()
    machine = cpu_seconds(group) - before - other
    print(
        f"sum metered {sum(final.values()):.3f}, machine (accounting group) {machine:.3f}"
        f" after {other:.3f} s of {len(others.last)} other source(s)"
    )
    assert abs(sum(final.values()) - machine) <= 0.05 * machine


DASK = """
import time
from dask_gateway import Gateway
x = bytearray(500 * 2**20)  # held by the server (its kernel) during the cluster's work
x[::4096] = b"x" * len(x[::4096])
g = Gateway()
cluster = g.new_cluster()
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=180)
print("CLUSTER", cluster.name)
"""

DASK_WORK = """
def burn(s):
    import time
    t = time.process_time()
    while time.process_time() - t < s:
        pass
    return time.process_time() - t
futures = client.map(burn, [2.5] * 4, pure=False)
print("BURNED", sum(client.gather(futures)))
"""


def test_dask_cluster_workers_within_10_percent_and_server_memory(platform):
    p = platform
    u = _user(p, "d")
    url, token = p.spawn(u), p.token(u)
    server = acct.open_charge(p.state, u)
    kernel = start_kernel(url, token)
    try:
        out = execute(url, token, kernel, DASK, timeout=240)
        name = out.split("CLUSTER ", 1)[1].split()[0]
        charge = acct.open_charge(p.state, u, kind="cluster")
        assert charge.name == name and charge.uid is not None
        base = acct.Baseline.measure(Path(charge.cgroups["cpu"]), 10)
        out = execute(url, token, kernel, DASK_WORK, timeout=240)
        at_tick = acct.metered_after(p.state, charge.source_id, datetime.now(UTC))
        time.sleep(2 * acct.interval(p.state))  # two workers alive a while longer: worker-seconds
        execute(url, token, kernel, "cluster.shutdown()", timeout=120)
    finally:
        with contextlib.suppress(Exception):
            shutdown_kernel(url, token, kernel)
    acct.wait_finished(p.state, charge.source_id)
    p.stop_server(u)
    acct.wait_finished(p.state, server.source_id)
    rows = acct.records(p.state, charge.source_id, "cpu")
    assert {r["user"] for r in rows} == {u}
    acct.no_overlap(rows)
    assert sum(r["quantity"] for r in rows) >= at_tick[0]
    workers = acct.records(p.state, charge.source_id, "dask_worker")
    levels = [r["quantity"] / (r["end"] - r["start"]).total_seconds() for r in workers]
    print(f"cluster {name}: worker levels {[round(x, 2) for x in levels]}")
    assert max(levels) == pytest.approx(2.0)
    mem = acct.records(p.state, server.source_id, "memory")
    levels = [r["quantity"] / max(1e-9, (r["end"] - r["start"]).total_seconds()) for r in mem]
    print(f"{u}: server memory levels (GiB) {[round(x, 3) for x in levels]}")
    assert max(levels) >= 500 * 2**20 / GIB  # the 500 MiB held shows
    assert max(levels) <= 500 * 2**20 / GIB + 0.6  # plus the server and kernel, not more
    base.check(f"cluster {name}", acct.value(out, "BURNED"), *at_tick)


def _accounting_pids(p) -> list[int]:
    return [
        pid
        for pid, cmd in processes_of_instance(_rt(p).instance_id)
        if "services.accounting" in cmd or "accounting.app" in cmd
    ]


def test_meter_killed_mid_burn_loses_nothing_and_counts_nothing_twice(platform):
    p = platform
    u = _user(p, "k")
    url, token = p.spawn(u), p.token(u)
    charge = acct.open_charge(p.state, u)
    kernel = start_kernel(url, token)
    try:
        execute(url, token, kernel, "1")
        base = acct.Baseline.measure(Path(charge.cgroups["cpu"]), 10)
        outs: dict[str, str] = {}
        t = threading.Thread(
            target=lambda: outs.update(
                out=execute(url, token, kernel, acct.BURN.format(s=8), timeout=180)
            )
        )
        t.start()
        time.sleep(3)
        pids = _accounting_pids(p)
        assert pids, processes_of_instance(_rt(p).instance_id)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        t.join()
        # The supervisor restarts the service; the counter catches up from the cgroup.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not set(_accounting_pids(p)) - set(pids):
            time.sleep(0.5)
        assert set(_accounting_pids(p)) - set(pids), "the supervisor restarted the service"
        at_tick = acct.metered_after(p.state, charge.source_id, datetime.now(UTC), timeout=120)
    finally:
        with contextlib.suppress(Exception):
            shutdown_kernel(url, token, kernel)
    p.stop_server(u)
    acct.wait_finished(p.state, charge.source_id, timeout=120)
    base.check(f"{u} (meter killed)", acct.value(outs["out"], "BURNED"), *at_tick)
    rows = acct.records(p.state, charge.source_id, "cpu")
    acct.no_overlap(rows)
    assert sum(r["quantity"] for r in rows) >= at_tick[0]

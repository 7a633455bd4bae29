"""twinlab.clusters.client: dask-gateway's client objects collected on their own event loop.

The hang after a refused cluster (issue 18) comes down to this: the half-made cluster of a
refused ``new_cluster()`` is cyclic garbage, and the garbage collector often frees it on the
client's IO-loop thread, where upstream's ``Gateway.__del__`` waits for that same loop.  These
tests drop the last reference on the loop thread on purpose (no gateway is needed: the objects
never connect) and check that the loop keeps running.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from dask_gateway import Gateway, GatewayCluster

from twinlab.clusters import client


def _drop_on_loop(holder: list, loop) -> bool:
    """Drop the only reference in ``holder`` from a callback on ``loop``; True when that
    callback returned and the loop still runs callbacks afterwards."""
    dropped, alive = threading.Event(), threading.Event()

    def drop() -> None:
        holder.clear()  # the finalizer runs here, on the loop thread
        dropped.set()

    loop.add_callback(drop)
    if not dropped.wait(10):
        return False
    loop.add_callback(alive.set)
    return alive.wait(10)


def test_fixes_are_installed_once():
    assert GatewayCluster._twinhub_fixed
    before = Gateway.__del__
    client.install()
    assert Gateway.__del__ is before


def test_gateway_finalized_on_its_own_loop_does_not_deadlock_it():
    other = Gateway(address="http://127.0.0.1:9", auth="basic")  # keeps the loop running
    g = Gateway(address="http://127.0.0.1:9", auth="basic", loop=other.loop)
    loop = other.loop
    holder = [g]
    del g
    try:
        assert _drop_on_loop(holder, loop), "the loop deadlocked in Gateway.__del__"
    finally:
        other.close()


UNFIXED = """
import os, threading
from dask_gateway import Gateway
import twinlab.clusters.client as fix
other = Gateway(address="http://127.0.0.1:9", auth="basic")
g = Gateway(address="http://127.0.0.1:9", auth="basic", loop=other.loop)
holder = [g]
del g
upstream = Gateway.__del__.__wrapped__
ran = threading.Event()
other.loop.add_callback(lambda: upstream(holder.pop()))
other.loop.add_callback(ran.set)
print("alive" if ran.wait(3) else "deadlocked", flush=True)
os._exit(0)  # the deadlocked loop would block a normal exit
"""


def test_upstream_finalizer_deadlocks_its_loop():
    """The same drop with upstream's finalizer blocks the loop (what the fix is for); in a
    child process, whose deadlocked loop cannot hold up the tests."""
    out = subprocess.run(
        [sys.executable, "-c", UNFIXED], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "deadlocked", (out.stdout, out.stderr[-2000:])

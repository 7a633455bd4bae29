"""Dask clusters and kernels: how long the user waits, on a real multi-user platform.

    /opt/twinhub/venv/bin/python bench/gateway_kernels.py [--rounds 3]

(as root: multi-user mode makes OS accounts; $TWINHUB_TEST_USER_PREFIX is honoured.)
Per round, in a real kernel of a real user server:
- ``get_client()`` of an existing cluster after three refused clusters (limit 2), with the
  refused clusters collected on the clients' IO-loop thread (where it used to deadlock);
- seconds from a kernel's end (shut down through the kernels API; SIGKILL) until its cluster
  is STOPPED at the gateway (the lease's grace time, ``orphan_grace`` = 10 s, included).
Prints min/median/max; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.kernel import execute, shutdown_kernel, start_kernel  # noqa: E402
from tests.helpers.platform import Platform, purge_shared_dir, twinhub_cli  # noqa: E402
from tests.integration.test_gateway_kernels import (  # noqa: E402
    REFUSED_THEN_GET_CLIENT,
    status_of,
    stop_all,
    values,
)


def figure(name: str, xs: list[float]) -> None:
    print(
        f"{name:<36} min {min(xs):6.2f} s  median {statistics.median(xs):6.2f} s  "
        f"max {max(xs):6.2f} s  (n={len(xs)})"
    )


def gone_after(p: Platform, user: str, url: str, kill: bool) -> float:
    token = p.token(user)
    kid = start_kernel(url, token)
    code = "import os\nfrom dask_gateway import GatewayCluster\nc = GatewayCluster()\n"
    out = values(
        execute(url, token, kid, code + "print('NAME', c.name)\nprint('PID', os.getpid())")
    )
    t0 = time.monotonic()
    if kill:
        os.kill(int(out["PID"]), signal.SIGKILL)
    else:
        shutdown_kernel(url, token, kid)
    while status_of(p, user, out["NAME"]) not in ("STOPPED", "FAILED"):
        if time.monotonic() - t0 > 120:
            raise TimeoutError("cluster still running 120 s after its kernel ended")
        time.sleep(0.2)
    took = time.monotonic() - t0
    if kill:
        shutdown_kernel(url, token, kid)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    get_client, after_shutdown, after_kill = [], [], []
    with tempfile.TemporaryDirectory(prefix="twinhub-bench-", dir="/tmp") as tmp:
        state = Path(tmp) / "state"
        p = Platform.start(state, mode="multi-user")
        try:
            p.add_user("benchgk")
            url = p.spawn("benchgk")
            for _ in range(args.rounds):
                kid = start_kernel(url, p.token("benchgk"))
                out = values(execute(url, p.token("benchgk"), kid, REFUSED_THEN_GET_CLIENT, 240))
                shutdown_kernel(url, p.token("benchgk"), kid)
                get_client.append(float(out["GET_CLIENT"]))
                stop_all(p, "benchgk")
                after_shutdown.append(gone_after(p, "benchgk", url, kill=False))
                after_kill.append(gone_after(p, "benchgk", url, kill=True))
        finally:
            p.stop()
            twinhub_cli("down", "--state", str(state), "--purge-users")
            purge_shared_dir(state)
    print(f"Dask clusters and kernels, {args.rounds} rounds")
    figure("get_client after 3 refusals", get_client)
    figure("stopped after kernel shutdown", after_shutdown)
    figure("stopped after kernel SIGKILL", after_kill)


if __name__ == "__main__":
    main()

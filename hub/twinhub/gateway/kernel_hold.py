"""Dask preload run in every gateway scheduler: a cluster ends with the process that made it.

A process that creates a cluster with ``shutdown_on_close=True`` (dask-gateway's default;
``twinlab.clusters.client``) keeps one connection open to the scheduler and sends the op
``twinhub_hold`` on it: a lease.  The operating system closes that connection however the
process ends -- a kernel shut down, restarted, crashed, killed or OOM-killed, in this machine or
another pod -- so no heartbeat and no shared process table is needed.  When the last lease is
gone and none comes back within the grace time (``$TWINHUB_DASK_HOLD_GRACE`` seconds: a
dropped connection of a living client is re-taken within a second), the scheduler asks the
gateway to stop its cluster with the cluster's own API token, as upstream's idle timeout does.
A lease ended with ``{"op": "release"}`` (``close(shutdown=False)``) stops nothing; a cluster
never leased (``shutdown_on_close=False``, or made through the REST API) is never stopped here.

Loaded by file path (``--preload /path/kernel_hold.py``), after dask-gateway's own preload.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

HOLD_OP = "twinhub_hold"  # twinlab.clusters.client.HOLD_OP
RELEASE_OP = "release"
GRACE_ENV = "TWINHUB_DASK_HOLD_GRACE"

logger = logging.getLogger("twinhub.kernel_hold")


class Leases:
    def __init__(self, scheduler: Any, grace: float) -> None:
        self.scheduler = scheduler
        self.grace = grace
        self.active = 0
        self.timer: asyncio.Task | None = None

    async def hold(self, comm: Any) -> None:
        """The ``twinhub_hold`` handler: returns when the lease ends (the caller's loop then
        finds the connection closed)."""
        self.active += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        released = False
        try:
            while True:
                msg = await comm.read()
                if isinstance(msg, dict) and msg.get("op") == RELEASE_OP:
                    released = True
                    break
        except Exception:  # CommClosedError, OSError: the holder is gone
            pass
        finally:
            self.active -= 1
        if not released and self.active == 0:
            logger.info("The process holding this cluster is gone; stopping in %.0f s", self.grace)
            self.timer = asyncio.ensure_future(self.stop_later())

    async def stop_later(self) -> None:
        await asyncio.sleep(self.grace)
        if self.active:
            return
        service = self.scheduler.services.get("gateway")
        if service is None:  # no dask-gateway preload: nothing to ask
            return
        logger.warning("No process holds this cluster any more: shutting it down")
        await service.gateway.shutdown()


def dask_setup(scheduler: Any) -> None:
    if not hasattr(scheduler, "handlers") or "subscribe_worker_status" not in scheduler.handlers:
        return  # a worker: leases are the scheduler's
    grace = float(os.environ.get(GRACE_ENV) or 10)
    leases = Leases(scheduler, grace)
    scheduler.handlers[HOLD_OP] = leases.hold

"""The platform's Dask Gateway client: hub authentication, two fixes to dask-gateway's client.

Loaded through dask's config, not by users: the hub sets ``DASK_GATEWAY__AUTH__TYPE`` to
``twinlab.clusters.client.HubAuth`` for every user server, so the first ``Gateway()`` or
``GatewayCluster()`` of a process (no arguments) imports this module, which then

1. **makes dask-gateway's finalizers non-blocking.**  Upstream's ``Gateway.__del__`` and
   ``GatewayCluster.__del__`` call ``close()``, which blocks until a coroutine has run on the
   object's event loop, then takes ``LoopRunner``'s class-wide lock.  A refused
   ``new_cluster()`` leaves its half-made cluster in a reference cycle (the failed start task
   holds the traceback that holds the cluster), so the cyclic garbage collector frees it -- in
   whatever thread happens to allocate: often the clients' IO-loop thread, where ``close()``
   waits for its own loop (deadlocked for good: every cluster and ``Client`` of that
   ``Gateway`` hangs, ``cluster.get_client()`` first), or a new loop's thread while
   ``LoopRunner.start`` holds that lock for up to 10 s (the next ``Gateway()`` fails).  Here a
   finalizer hands ``close()`` to a short-lived thread and returns at once.
2. **holds each cluster the process created** (``shutdown_on_close=True``, the default): a
   connection to the cluster's scheduler that the scheduler treats as a lease (see
   ``twinhub.gateway.kernel_hold``).  When the process ends in any way (kernel shutdown,
   restart, crash, ``kill -9``, OOM), the operating system closes the connection and the
   scheduler stops the cluster after a short grace time.  ``close(shutdown=False)`` releases
   the lease first; clusters made with ``shutdown_on_close=False`` are never held.
3. **charges clusters like the server that makes them**: when the gateway offers a ``project``
   option, its default is the server's project (``$TWINHUB_PROJECT``), unless the caller or
   the dask config (``gateway.cluster.options.project``) chooses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import dask.config
from dask_gateway import client as gw_client
from dask_gateway.auth import JupyterHubAuth
from distributed.comm import connect

from twinlab import environment
from twinlab.contract import ENV_PROJECT

# The scheduler's comm handler (``twinhub.gateway.kernel_hold``) answers this op.
HOLD_OP = "twinhub_hold"
RELEASE_OP = "release"
RECONNECT_DELAY = 1.0  # seconds before re-taking a dropped lease (then doubling)
MAX_RECONNECT_DELAY = 30.0

log = logging.getLogger("twinlab.clusters")


class HubAuth(JupyterHubAuth):
    """JupyterHub token authentication (``$JUPYTERHUB_API_TOKEN``), as upstream's; importing
    its module installs the fixes above."""


# -- 1. finalizers that never block -----------------------------------------------------------
def _nonblocking_del(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def __del__(self: Any) -> None:
        if sys.is_finalizing() or getattr(self, "asynchronous", True):
            original(self)  # upstream does nothing then
            return
        # A finalizer runs in whichever thread the collector interrupted: on an IO-loop thread
        # close() waits for that very loop; on a thread starting a loop it waits for the lock
        # that LoopRunner.start holds meanwhile.  So close elsewhere (the thread keeps the
        # object alive until then; a finalizer runs only once).
        threading.Thread(
            target=_close_quietly, args=(self,), name="dask-gateway-close", daemon=True
        ).start()

    __del__.__wrapped__ = original  # type: ignore[attr-defined]
    return __del__


def _close_quietly(obj: Any) -> None:
    try:
        obj.close()
    except RuntimeError:
        # Upstream closes again an object already closed, whose loop has stopped
        # ("Accessing the loop property while the loop is not running"): nothing to do.
        pass
    except Exception:  # a finalizer's cleanup: nothing to report to
        log.debug("closing %r after it was collected failed", obj, exc_info=True)


# -- 2. the lease on a cluster's scheduler ----------------------------------------------------
async def _hold(ref: weakref.ref, address: str, connection_args: dict) -> None:
    """Keep one lease connection to the scheduler open while the cluster object is open."""
    delay = RECONNECT_DELAY
    while True:
        try:
            comm = await connect(address, **connection_args)
        except (TimeoutError, OSError):
            comm = None
        if comm is not None:
            cluster = ref()
            if cluster is None or cluster.status in ("closing", "closed"):
                await comm.close()
                return
            cluster._twinhub_hold_comm = comm
            del cluster
            delay = RECONNECT_DELAY
            try:
                await comm.write({"op": HOLD_OP, "reply": False})
                await comm.read()  # the scheduler never answers: returns when closed
            except (TimeoutError, OSError):
                pass
        cluster = ref()
        if cluster is None or cluster.status in ("closing", "closed"):
            return
        del cluster
        await asyncio.sleep(delay)
        # A cluster stopped elsewhere refuses every attempt: ask less and less often.
        delay = min(delay * 2, MAX_RECONNECT_DELAY)


async def _release(cluster: Any, shutdown: bool) -> None:
    task = getattr(cluster, "_twinhub_hold_task", None)
    comm = getattr(cluster, "_twinhub_hold_comm", None)
    cluster._twinhub_hold_task = cluster._twinhub_hold_comm = None
    if task is not None:
        task.cancel()
    if comm is not None and not comm.closed():
        try:
            if not shutdown:  # the user keeps the cluster: end the lease, not the cluster
                await comm.write({"op": RELEASE_OP})
            await comm.close()
        except OSError:
            pass


def _holding_init_internals(original: Callable) -> Callable:
    async def _init_internals(self: Any) -> None:
        await original(self)
        if self.shutdown_on_close and getattr(self, "_twinhub_hold_task", None) is None:
            args = self.security.get_connection_args("client")
            self._twinhub_hold_task = asyncio.ensure_future(
                _hold(weakref.ref(self), self.scheduler_address, args)
            )

    _init_internals.__wrapped__ = original  # type: ignore[attr-defined]
    return _init_internals


def _releasing_stop_internal(original: Callable) -> Callable:
    async def _stop_internal(self: Any, shutdown: bool | None = None) -> None:
        keep = shutdown is False or (shutdown is None and not self.shutdown_on_close)
        if keep:
            await _release(self, shutdown=False)
        await original(self, shutdown=shutdown)
        await _release(self, shutdown=True)

    _stop_internal.__wrapped__ = original  # type: ignore[attr-defined]
    return _stop_internal


# -- 3. the server's project as the clusters' default ---------------------------------------
PROJECT_OPTION = "project"


def _configured_project() -> bool:
    return PROJECT_OPTION in (dask.config.get("gateway.cluster.options", {}) or {})


def _default_project(options: Any) -> None:
    """Set the ``project`` option of ``options`` (a gateway's) to the server's project, when
    the gateway has that option and allows it; anything else is left to the gateway."""
    project = environment.text(ENV_PROJECT)
    if not project or PROJECT_OPTION not in options:
        return
    # Not one of this user's projects at the gateway (any more): the gateway's default holds.
    with contextlib.suppress(ValueError, TypeError):
        options[PROJECT_OPTION] = project


def _project_cluster_options(original: Callable) -> Callable:
    async def _cluster_options(self: Any, use_local_defaults: bool = True) -> Any:
        options = await original(self, use_local_defaults=use_local_defaults)
        if use_local_defaults and not _configured_project():
            _default_project(options)
        return options

    _cluster_options.__wrapped__ = original  # type: ignore[attr-defined]
    return _cluster_options


def _project_submit(original: Callable) -> Callable:
    async def _submit(self: Any, cluster_options: Any = None, **kwargs: Any) -> Any:
        if (
            cluster_options is None
            and PROJECT_OPTION not in kwargs
            and environment.text(ENV_PROJECT)
            and not _configured_project()
        ):
            # GatewayCluster() / new_cluster() without options (the Dask sidebar too): the
            # gateway's options with the project defaulted, the config's defaults included.
            cluster_options = await self._cluster_options()
        return await original(self, cluster_options=cluster_options, **kwargs)

    _submit.__wrapped__ = original  # type: ignore[attr-defined]
    return _submit


def install() -> None:
    """Apply both fixes to dask-gateway's client classes (idempotent)."""
    gw, cluster = gw_client.Gateway, gw_client.GatewayCluster
    if getattr(cluster, "_twinhub_fixed", False):
        return
    gw.__del__ = _nonblocking_del(gw.__del__)  # type: ignore[method-assign]
    cluster.__del__ = _nonblocking_del(cluster.__del__)  # type: ignore[method-assign]
    cluster._init_internals = _holding_init_internals(cluster._init_internals)  # type: ignore[method-assign]
    cluster._stop_internal = _releasing_stop_internal(cluster._stop_internal)  # type: ignore[method-assign]
    cluster._twinhub_hold_task = None
    cluster._twinhub_hold_comm = None
    gw._cluster_options = _project_cluster_options(gw._cluster_options)  # type: ignore[method-assign]
    gw._submit = _project_submit(gw._submit)  # type: ignore[method-assign]
    cluster._twinhub_fixed = True


install()

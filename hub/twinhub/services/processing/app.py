"""The ``processing`` service: OGC API - Processes, the pages, and runners' reports.

``uvicorn --factory twinhub.services.processing.app:create_app`` (the supervisor's
``processing`` component). Under ``/services/processing/``:

- ``internal/...``: the runners' reports (:mod:`.reports`), authenticated by each job's
  secret, not by the hub (a runner's token may reach only the gateway and the lake);
- ``health`` (no credentials) and ``metrics`` (its own token check: ``read:metrics``);
- everything else (:mod:`.api`, :mod:`.pages`) after hub auth: a token header, or the
  browser's sign-on cookie (writes with the page's XSRF header).

The request limits wrap it all. The lifespan opens the hub client (the service's token),
picks the job backend, recovers the jobs a restart interrupted (:meth:`JobManager.recover`)
and runs the job loop (:meth:`JobManager.run`), started again after a pause if it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from jupyterhub.services.auth import HubAuth
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from twinlab.contract import ENV_HUB_API_URL, ENV_HUB_TOKEN

from ... import __version__
from ...process.runtime import Runtime
from ..asgi import ASGIApp, BadRequest, Receive, RequestLimitsMiddleware, Scope, Send
from ..base import keep_running
from ..hubauth import HubAuthMiddleware, metrics_caller
from . import SERVICE_PREFIX, ProcessingPart, backend, metrics, store
from .api import api_router, exception_response
from .config import TwinhubProcessing
from .context import ProcessingContext
from .jobs import JobManager
from .model import STAGES
from .reports import reports_router

log = logging.getLogger("twinhub.processing")

#: Seconds the shutdown waits for the jobs' background work (see the lifespan).
SHUTDOWN_DRAIN = 20.0

#: Without hub auth: health checks, Prometheus (its own token check), and the runners'
#: reports (``internal/``: a job's secret; see :class:`InternalPaths`).
PUBLIC_PATHS = ("health", "metrics")
INTERNAL = "internal/"
#: Seconds before a failed job loop is started again.
RESTART_PAUSE = 5.0
#: Bodies other than a registration's code: a runner's report (1 MiB). An execute request
#: is held to TwinhubProcessing.max_input_bytes by its route (api.py).
BODY_OVERHEAD = 2 * 1024 * 1024


class InternalPaths:
    """``<prefix>internal/...`` straight to ``app`` (the runners' reports check their job's
    secret themselves); every other path through ``authed`` (hub auth)."""

    def __init__(self, prefix: str, app: ASGIApp, authed: ASGIApp) -> None:
        self.internal = prefix + INTERNAL
        self.app, self.authed = app, authed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        # dot segments never count as internal: ".../internal/../jobs" is not a report
        if path.startswith(self.internal) and "/." not in path[len(self.internal) - 1 :]:
            scope.setdefault("state", {})["hub_user"] = None
            await self.app(scope, receive, send)
        else:
            await self.authed(scope, receive, send)


def make_context(rt: Runtime, *, hub_api: str | None = None, token: str | None = None) -> ProcessingContext:  # fmt: skip
    """The context of this process: settings read from ``rt``, the hub's API and the
    service's token from the environment the hub gave it."""
    return ProcessingContext(
        rt=rt,
        settings=TwinhubProcessing(config=rt.config),
        db_url=rt.db_url,
        hub_api=(hub_api or os.environ.get(ENV_HUB_API_URL) or rt.hub_api_url).rstrip("/"),
        token=token if token is not None else os.environ.get(ENV_HUB_TOKEN, ""),
        prefix=SERVICE_PREFIX,
        internal_url=ProcessingPart().api_url(rt) if ProcessingPart.name in rt.ports else "",
    )


def job_counts(db_url: str) -> dict[tuple[str, str], int]:
    """Jobs by (status, stage) now."""
    return {(status, stage): n for status, stage, n in store.count_jobs(db_url)}


def render_metrics(counts: dict[tuple[str, str], int]) -> bytes:
    """The service's counters, then the jobs by status and stage (read now)."""
    now = CollectorRegistry()
    g = Gauge(
        "twinhub_processing_jobs",
        "Jobs by status and stage now.",
        ["status", "stage"],
        registry=now,
    )
    # The live series are always there (0 when idle): alerts need no absent() rules.
    live = [("accepted", "queued")] + [("running", s) for s in STAGES[1:-1]]
    for status, stage in live:
        g.labels(status=status, stage=stage).set(0)
    for (status, stage), n in counts.items():
        g.labels(status=status, stage=stage).set(n)
    return generate_latest(metrics.REGISTRY) + generate_latest(now)


def create_app(
    config: dict[str, Any] | None = None,
    *,
    rt: Runtime | None = None,
    ctx: ProcessingContext | None = None,
    hub_auth: Any = None,
    background: bool = True,
    manager: JobManager | None = None,
) -> ASGIApp:
    """The service app. ``rt`` defaults to the running platform's ($TWINHUB_STATE);
    ``config`` may name ``hub_api`` and ``token`` (else the environment's). Tests pass
    ``ctx``, a ``hub_auth`` (HubOAuth-like), ``background=False`` (no recovery, no loop)
    and a ``manager``."""
    config = config or {}
    if ctx is None:
        ctx = make_context(
            rt or Runtime.load(), hub_api=config.get("hub_api"), token=config.get("token")
        )
    if manager is None:
        manager = JobManager(ctx)
    p = ctx.prefix
    metrics_auth = hub_auth or HubAuth(api_token=ctx.token, api_url=ctx.hub_api, cache_max_age=60)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with contextlib.AsyncExitStack() as stack:
            if ctx.hub is None:  # (tests may bring their own)
                ctx.hub = await stack.enter_async_context(
                    httpx.AsyncClient(headers={"Authorization": f"token {ctx.token}"}, timeout=30)
                )
                stack.callback(setattr, ctx, "hub", None)  # closed: not to be used again
            if ctx.backend is None:
                ctx.backend = backend.backend_for(ctx)
            tasks: list[asyncio.Task] = []
            if background:
                try:
                    # Before serving: reports of adopted runners find their jobs running.
                    await manager.recover()
                    loop = manager.run
                except Exception:
                    log.exception("recovering jobs failed; trying again in the background")

                    async def loop() -> None:
                        await manager.recover()
                        await manager.run()

                tasks.append(
                    asyncio.create_task(
                        keep_running("jobs", loop, RESTART_PAUSE, log), name="processing-jobs"
                    )
                )
            try:
                yield
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                # Releases in flight (a cluster stopped, a token revoked after a job's end)
                # finish rather than die with the loop; bounded: a stop must not hang.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(manager.drain(), SHUTDOWN_DRAIN)

    app = FastAPI(
        title="twinhub processing",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx
    app.state.manager = manager

    # Refusals are JSON for browsers too: the request limits turn every 4xx/5xx answer
    # into the platform's JSON error, so an HTML error page would not survive anyway.
    @app.exception_handler(BadRequest)
    async def _refused(_request: Request, e: BadRequest) -> Response:
        return exception_response(e)

    @app.get(p + "health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get(p + "metrics", include_in_schema=False)
    async def metrics_page(request: Request) -> Response:
        await metrics_caller(metrics_auth, request)
        counts = await asyncio.to_thread(job_counts, ctx.db_url)
        return Response(render_metrics(counts), media_type=CONTENT_TYPE_LATEST)

    root = p.rstrip("/")
    app.include_router(reports_router(ctx, manager), prefix=root)
    app.include_router(api_router(ctx, manager), prefix=root)

    auth_kwargs: dict[str, Any] = {"hub_auth": hub_auth} if hub_auth is not None else {}
    authed = HubAuthMiddleware(
        app, prefix=p, public_paths=PUBLIC_PATHS, xsrf_writes=True, **auth_kwargs
    )
    service = RequestLimitsMiddleware(
        InternalPaths(p, app, authed),
        max_body_bytes=ctx.settings.max_code_bytes * 4 // 3 + BODY_OVERHEAD,
    )
    service.app_fastapi = app  # type: ignore[attr-defined]  # tests reach the FastAPI app
    return service

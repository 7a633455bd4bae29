"""The ``registry`` service: catalogue, onboarding API, pages, and the sign-on gateway.

``uvicorn --factory twinhub.services.registry.app:create_app`` (the supervisor's ``registry``
component). One process answers two kinds of path:

- under ``/services/registry/``: the request limits, then hub auth (tokens or the browser's
  sign-on; anonymous visitors only on the catalogue's read paths and the pages meant for
  them; cookie-authenticated writes need the page's XSRF header), then FastAPI with
  OGC API - Records (:mod:`.records`), the REST API (:mod:`.api`), ``sso`` (:mod:`.gateway`),
  the pages (:mod:`.pages`), ``health`` (no credentials) and ``metrics`` (its own token
  check: JupyterHub's ``read:metrics`` scope);
- every other path (``/services/<slug>/...``, where the hub's proxy sends an integrated web
  service's traffic): :class:`~.gateway.SsoGateway`, which authenticates by itself.

The lifespan opens the hub client (the service's own token) and the search index, then runs
in the background: the automatic evaluation (:func:`.evaluate.evaluation_loop`), the health
checks (:func:`.health.health_loop`), the reconciliation of the hub's routes at start and
every few minutes (:func:`.hubservices.reconcile_loop`), the search index's first build, and the refresh of the lake's collection list for
the landing page (:func:`.pages.refresh_lake`). A task that fails is logged and started again
after a pause: one broken check must not stop the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from jupyterhub.services.auth import HubAuth
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from twinlab.contract import ENV_HUB_API_URL, ENV_HUB_TOKEN

from ... import __version__
from ...process.runtime import Runtime
from ..asgi import ASGIApp, BadRequest, Receive, RequestLimitsMiddleware, Scope, Send, error_body
from ..base import keep_running
from ..hubauth import HubAuthMiddleware, metrics_caller
from . import SERVICE_PREFIX, metrics, store
from .api import api_router
from .config import TwinhubRegistry
from .context import RegistryContext
from .evaluate import evaluation_loop
from .gateway import SsoGateway
from .health import health_loop
from .hubservices import reconcile_loop
from .pages import pages_router, refresh_lake
from .records import records_router
from .search import SearchIndex, ensure_fresh
from .sso import sso_router
from .workflow import STATES

log = logging.getLogger("twinhub.registry")

PUBLIC_PATHS = ("health", "metrics")  # metrics: its own token check (read:metrics)
#: Paths anyone may read (the catalogue, the welcome page and its files); credentials sent
#: there are still checked, so a logged-in visitor is known.
ANONYMOUS_PATHS = (
    "",
    "conformance",
    "collections",
    "collections/",
    "welcome",
    "static/",
    "api/v1/entries",
    "api/v1/entries/",
    "api/v1/vocabulary",
)
#: Request bodies: an entry (description <= 20 000 characters) and a little more.
MAX_BODY_BYTES = 256 * 1024
#: Seconds before a failed background task is started again.
RESTART_PAUSE = 5.0


async def lake_loop(ctx: RegistryContext) -> None:
    """The lake's collection list for the landing page, every ``lake_refresh_interval``."""
    while True:
        try:
            await refresh_lake(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("refreshing the lake's collections failed")
        await asyncio.sleep(ctx.settings.lake_refresh_interval)


def background_tasks(ctx: RegistryContext) -> list[asyncio.Task]:
    s = ctx.settings
    jobs: dict[str, tuple[Callable[[], Awaitable[Any]], float]] = {
        "evaluation": (lambda: evaluation_loop(ctx), max(RESTART_PAUSE, s.evaluation_interval)),
        "health": (lambda: health_loop(ctx), max(RESTART_PAUSE, s.health_interval)),
        "routes": (lambda: reconcile_loop(ctx), RESTART_PAUSE),
        # The search index built once at start: the first visitor does not wait for it.
        "search": (lambda: ensure_fresh(ctx), RESTART_PAUSE),
        "lake": (lambda: lake_loop(ctx), s.lake_refresh_interval),
    }
    return [
        asyncio.create_task(keep_running(name, run, pause, log), name=f"registry-{name}")
        for name, (run, pause) in jobs.items()
    ]


class Dispatch:
    """The registry's prefix to ``registry``, every other path to ``gateway``; lifespan
    events to ``lifespan_app`` (the FastAPI app, whose lifespan opens the context)."""

    def __init__(self, prefix: str, registry: ASGIApp, gateway: ASGIApp, lifespan_app) -> None:
        self.prefix = prefix
        self.registry, self.gateway, self.lifespan_app = registry, gateway, lifespan_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan_app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.startswith(self.prefix) or path == self.prefix.rstrip("/"):
            await self.registry(scope, receive, send)
        else:
            await self.gateway(scope, receive, send)


def make_context(rt: Runtime, *, hub_api: str | None = None, token: str | None = None) -> RegistryContext:  # fmt: skip
    """The context of this process: settings read from ``rt``, the hub's API and the
    service's token from the environment the hub gave it."""
    return RegistryContext(
        rt=rt,
        settings=TwinhubRegistry(config=rt.config),
        db_url=rt.db_url,
        hub_api=(hub_api or os.environ.get(ENV_HUB_API_URL) or rt.hub_api_url).rstrip("/"),
        token=token if token is not None else os.environ.get(ENV_HUB_TOKEN, ""),
        prefix=SERVICE_PREFIX,
    )


def create_app(
    config: dict[str, Any] | None = None,
    *,
    rt: Runtime | None = None,
    ctx: RegistryContext | None = None,
    hub_auth: Any = None,
    background: bool = True,
) -> ASGIApp:
    """The service app. ``rt`` defaults to the running platform's ($TWINHUB_STATE);
    ``config`` may name ``hub_api`` and ``token`` (else the environment's). Tests pass
    ``ctx``, a ``hub_auth`` (HubOAuth-like) and ``background=False`` (no loops)."""
    config = config or {}
    if ctx is None:
        ctx = make_context(
            rt or Runtime.load(), hub_api=config.get("hub_api"), token=config.get("token")
        )
    p = ctx.prefix
    metrics_auth = HubAuth(api_token=ctx.token, api_url=ctx.hub_api, cache_max_age=60)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(
            headers={"Authorization": f"token {ctx.token}"}, timeout=30
        ) as client:
            ctx.hub = client
            if ctx.index is None:
                ctx.index = SearchIndex(ctx.settings.thematic_areas)
            tasks = background_tasks(ctx) if background else []
            try:
                yield
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await app.state.gateway.aclose()  # its upstream clients

    app = FastAPI(
        title="twinhub registry",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx
    # Routes exist before the lifespan runs (tests without one): an index to start with.
    ctx.index = ctx.index or SearchIndex(ctx.settings.thematic_areas)
    # One gateway for the sign-on route and /services/<slug>/: they share its caches.
    gateway = SsoGateway(ctx, hub_auth=hub_auth)
    app.state.gateway = gateway

    @app.exception_handler(BadRequest)
    async def _refused(_request: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(e.status, e.message), status_code=e.status)

    @app.get(p + "health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get(p + "metrics", include_in_schema=False)
    async def metrics_page(request: Request) -> Response:
        await metrics_caller(metrics_auth, request)
        counts = await asyncio.to_thread(store.counts_by_state, ctx.db_url)
        return Response(render_metrics(counts), media_type=CONTENT_TYPE_LATEST)

    # Routers define their paths relative to the prefix ("/", "/conformance", "/api/v1/...").
    root = p.rstrip("/")
    for router in (
        records_router(ctx),
        api_router(ctx),
        sso_router(ctx, gateway),
        pages_router(ctx),
    ):
        app.include_router(router, prefix=root)

    auth_kwargs: dict[str, Any] = {"hub_auth": hub_auth} if hub_auth is not None else {}
    registry = RequestLimitsMiddleware(
        HubAuthMiddleware(
            app,
            prefix=p,
            public_paths=PUBLIC_PATHS,
            anonymous_paths=ANONYMOUS_PATHS,
            xsrf_writes=True,
            **auth_kwargs,
        ),
        max_body_bytes=MAX_BODY_BYTES,
    )
    # The gateway answers for registered services: no request limits layer around it (it
    # would turn their own error pages into JSON and scan their bodies as JSON); it bounds
    # bodies and authenticates by itself.
    dispatch = Dispatch(p, registry, gateway, app)
    dispatch.app = app  # type: ignore[attr-defined]  # tests reach the FastAPI app
    return dispatch


def render_metrics(counts: dict[str, int]) -> bytes:
    """The service's metrics, then the requests by state (read now from the database)."""
    by_state = CollectorRegistry()
    g = Gauge(
        "twinhub_registry_requests",
        "Onboarding requests by their state now.",
        ["state"],
        registry=by_state,
    )
    for s in STATES:
        g.labels(state=s).set(counts.get(s, 0))
    return generate_latest(metrics.REGISTRY) + generate_latest(by_state)

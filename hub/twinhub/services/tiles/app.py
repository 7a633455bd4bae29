"""The ``tiles`` service: WMTS, OGC API - Tiles and EDR, views, the VizLab page (FastAPI).

``uvicorn --factory twinhub.services.tiles.app:create_app`` (the supervisor's ``tiles``
component). Under ``/services/tiles/``: ``health`` (no credentials), ``metrics`` (tokens
with ``read:metrics``), and the routers of :mod:`.ogcapi`, :mod:`.wmts`, :mod:`.views`,
:mod:`.edr` and :mod:`.pages` (each ``router(ctx)`` with full paths).

Layers, from outside in: the request limits (JSON errors), :class:`Counted` (request and
refusal metrics, ``X-Content-Type-Options: nosniff`` on every answer), hub auth (a token, or
the browser's sign-on cookie; ``metrics`` also needs ``read:metrics``; the data and
metadata routes are open to anonymous callers when ``TwinhubTiles.public_collections`` is
not empty, and then refuse every item outside those collections to them with 401), the app.
Who may view an item is :mod:`.access`'s decision, asked by :mod:`.layers` for every route
that reads one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from twinlab.contract import ENV_HUB_API_URL, ENV_HUB_TOKEN

from ... import __version__
from ...process.runtime import Runtime
from ..asgi import ASGIApp, BadRequest, Message, Receive, RequestLimitsMiddleware, Scope, Send
from ..datalake import StacPart
from ..hubauth import METRICS_SCOPE, HubAuthMiddleware, scope_refusal
from . import SERVICE_PREFIX, edr, layers, ogcapi, pages, tilecache, views, warmup, wmts
from .config import TwinhubTiles
from .context import TilesContext
from .metrics import REFUSAL_STATE, REFUSED, REGISTRY, REQUESTS

log = logging.getLogger("twinhub.tiles")

#: Without any credentials: the supervisor's readiness check.
PUBLIC_PATHS = ("health",)
#: Data and metadata routes (relative to the prefix) that anonymous callers may reach when
#: some collections are public; the page (``vizlab``) always needs a login.
ANONYMOUS_PATHS = (
    "",
    "conformance",
    "tileMatrixSets",
    "tileMatrixSets/",
    "collections",
    "collections/",
    "wmts",
    "wmts/",
    "legend/",
    "view/",
    "layers/",
    "edr",
    "edr/",
)
#: Request bodies: the service reads none (every route is a GET).
MAX_BODY_BYTES = 64 * 1024
#: HTTP client timeout (seconds) for the hub and the STAC API.
CLIENT_TIMEOUT = 30.0

#: The metrics' request kinds, by the first path segment under the prefix.
_KINDS = {
    "wmts": "capabilities",
    "legend": "legend",
    "view": "view",
    "vizlab": "page",
    "static": "page",
}


def make_context(rt: Runtime, *, hub_api: str | None = None, token: str | None = None) -> TilesContext:  # fmt: skip
    """The context of this process: settings read from ``rt``, the hub's API and the
    service's token from the environment the hub gave it, the STAC API straight."""
    return TilesContext(
        rt=rt,
        settings=TwinhubTiles(config=rt.config),
        hub_api=(hub_api or os.environ.get(ENV_HUB_API_URL) or rt.hub_api_url).rstrip("/"),
        token=token if token is not None else os.environ.get(ENV_HUB_TOKEN, ""),
        prefix=SERVICE_PREFIX,
        stac_url=StacPart().api_url(rt) if StacPart.name in rt.ports else "",
    )


def request_kind(prefix: str, path: str) -> str:
    """What a request asks for, for the metrics: tile, view, legend, capabilities,
    edr_position, edr_area, page, metadata."""
    rel = path[len(prefix) :] if path.startswith(prefix) else path.lstrip("/")
    parts = rel.split("/")
    if parts[0] == "edr":
        last = parts[-1]
        return {"position": "edr_position", "area": "edr_area"}.get(last, "metadata")
    if parts[0] == "wmts":
        if rel.endswith(".png"):
            return "tile"
        return "capabilities"
    if parts[0] == "collections" and len(parts) >= 8 and parts[3:5] == ["map", "tiles"]:
        return "tile"
    return _KINDS.get(parts[0], "metadata")


def status_reason(status: int) -> str:
    """The ``reason`` label of a refusal by its status alone (metrics)."""
    return {401: "auth", 403: "forbidden", 404: "not_found", 413: "limit"}.get(
        status, "bad_request"
    )


def refusal_reason(e: BadRequest) -> str:
    """The ``reason`` label of a refusal (metrics): a limit named in a 400 counts as one."""
    if e.status == 400 and "limit" in e.message:
        return "limit"
    return status_reason(e.status)


class Counted:
    """Counts every answer (kind, status class; refusals by reason) and marks it
    ``nosniff``: a tile or an error body is never to be read by a browser as anything but
    what it says it is. Outside hub auth, so that its refusals count too."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kind = request_kind(self.prefix, scope.get("path", ""))
        tilecache.begin_request()  # the chunk reads this request causes

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != b"x-content-type-options"
                ]
                headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
                status = int(message["status"])
                if 400 <= status < 500:
                    # the JSON handler names the reason; hub auth's and the WMTS reports'
                    # refusals are told by their status
                    reason = (scope.get("state") or {}).get(REFUSAL_STATE) or status_reason(status)
                    REFUSED.labels(reason).inc()
                REQUESTS.labels(kind, f"{status // 100}xx").inc()
            await send(message)

        await self.app(scope, receive, send_counted)


def build_api(ctx: TilesContext) -> FastAPI:
    """The routes (no authentication here: :func:`create_app` wraps it)."""
    p = ctx.prefix

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with contextlib.AsyncExitStack() as stack:
            headers = {"Authorization": f"token {ctx.token}"}
            if ctx.hub is None:  # (tests may bring their own)
                ctx.hub = await stack.enter_async_context(
                    httpx.AsyncClient(headers=headers, timeout=CLIENT_TIMEOUT)
                )
                stack.callback(setattr, ctx, "hub", None)
            if ctx.stac is None:
                ctx.stac = await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=ctx.stac_url, headers=headers, timeout=CLIENT_TIMEOUT
                    )
                )
                stack.callback(setattr, ctx, "stac", None)
            stack.callback(layers.shutdown, ctx)
            warmup.start(ctx)
            yield

    app = FastAPI(
        title="twinhub tiles",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.ctx = ctx
    tilecache.install(ctx)

    @app.exception_handler(BadRequest)
    async def _refused(request: Request, e: BadRequest) -> JSONResponse:
        request.scope.setdefault("state", {})[REFUSAL_STATE] = refusal_reason(e)
        headers = {k.decode().lower(): v.decode() for k, v in e.headers}
        if e.status == 401:
            headers["www-authenticate"] = 'token realm="jupyterhub"'
        return JSONResponse(
            {"code": e.status, "description": e.message},
            status_code=e.status,
            headers=headers or None,
        )

    @app.get(p + "health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get(p + "metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        who = request.state.hub_user
        if who is None:  # (metrics is no anonymous path; kept for safety)
            raise BadRequest(f"metrics need a token with the scope {METRICS_SCOPE!r}", 401)
        if METRICS_SCOPE not in (who.get("scopes") or ()):
            raise BadRequest(scope_refusal(who, METRICS_SCOPE, "reading metrics"), 403)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    for module in (ogcapi, wmts, views, edr, pages):
        app.include_router(module.router(ctx))
    return app


def create_app(
    config: dict[str, Any] | None = None,
    *,
    rt: Runtime | None = None,
    ctx: TilesContext | None = None,
    hub_auth: Any = None,
) -> ASGIApp:
    """The service app. ``rt`` defaults to the running platform's ($TWINHUB_STATE);
    ``config`` may name ``hub_api`` and ``token`` (else the environment's). Tests pass
    ``ctx`` and a ``hub_auth`` (HubOAuth-like)."""
    config = config or {}
    if ctx is None:
        ctx = make_context(
            rt or Runtime.load(), hub_api=config.get("hub_api"), token=config.get("token")
        )
    app = build_api(ctx)
    anonymous = ANONYMOUS_PATHS if ctx.settings.public_collections else ()
    auth_kwargs: dict[str, Any] = {"hub_auth": hub_auth} if hub_auth is not None else {}
    authed = HubAuthMiddleware(
        app,
        prefix=ctx.prefix,
        public_paths=PUBLIC_PATHS,
        anonymous_paths=anonymous,
        **auth_kwargs,
    )
    service = RequestLimitsMiddleware(Counted(authed, ctx.prefix), max_body_bytes=MAX_BODY_BYTES)
    service.app_fastapi = app  # type: ignore[attr-defined]  # tests reach the FastAPI app
    return service

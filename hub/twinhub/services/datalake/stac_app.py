"""The STAC API process: stac-fastapi-pgstac, wrapped for the platform.

``uvicorn --factory twinhub.services.datalake.stac_app:create_app`` (the supervisor's
``stac`` component, or the container of the ``stac`` deployment on Kubernetes).  Its config
file (``$TWINHUB_STAC_CONFIG``, written by :class:`twinhub.services.datalake.StacPart`) says
how to reach the database; the hub's service environment (``JUPYTERHUB_*``) how to check
users.  Layers, outermost first: request limits (:mod:`twinhub.services.asgi`), hub
authentication (:mod:`twinhub.services.hubauth`), the guard (:mod:`.guard`: bad input,
parser bounds, records, ownership of collections), federation (:mod:`.federation`:
search, collections and items across the lake and the configured sources; a pass-through
when there are none), then stac-fastapi-pgstac.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import Any

import cql2
import jsonpatch
import jsonpointer
from brotli_asgi import BrotliMiddleware
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from stac_fastapi.pgstac import core as _pgstac_core
from stac_fastapi.pgstac.app import instantiate_api
from stac_fastapi.pgstac.config import PostgresSettings, Settings
from stac_fastapi.pgstac.db import close_db_connection, connect_to_db
from stac_fastapi.pgstac.models.extensions import Extensions

from ... import __version__
from ..asgi import RequestLimitsMiddleware, error_body
from ..hubauth import HubAuthMiddleware
from ..service_config import read_service_config
from . import StacPart
from .database import Connection
from .federation import FederationMiddleware, federation_from_config
from .free_text import ITEM_FREE_TEXT, FreeTextMiddleware
from .guard import REFUSALS, UNAVAILABLE, GuardMiddleware

PUBLIC_PATHS = ("_mgmt/ping",)


class _SocketPostgresSettings(PostgresSettings):
    """stac-fastapi builds a TCP-only DSN; ours may be a unix socket directory."""

    dsn: str = ""

    @property
    def connection_string(self) -> str:
        return self.dsn


def load_config(path: str | None = None) -> dict[str, Any]:
    """The config file ``twinhub up`` wrote for this service (``$TWINHUB_STAC_CONFIG``)."""
    return read_service_config(StacPart.config_env(), path)


def create_app(config: dict[str, Any] | None = None) -> FastAPI:
    """The platform's STAC API: stac-fastapi-pgstac behind hub auth and the guard."""
    return _build(config or load_config(), wrapped=True)


def create_plain_app(config: dict[str, Any] | None = None) -> FastAPI:
    """stac-fastapi-pgstac on the same database with none of our layers: the anchor that
    bench/datalake.py measures the cost of authentication and guards against."""
    return _build(config or load_config(), wrapped=False)


def add_database_error_handlers(app: FastAPI) -> None:
    """Database errors caused by the request answer 400, an unreachable database 503 (both
    JSON): a 500 is for the service's own faults."""

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        return JSONResponse(error_body(400, f"the lake refused it: {message}"), 400)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body(503, "the lake's database is not available; try again"),
            503,
            headers={"Retry-After": "5"},
        )

    async def bad_patch(request: Request, exc: Exception) -> JSONResponse:
        message = f"the patch does not apply: {str(exc)[:300] or type(exc).__name__}"
        return JSONResponse(error_body(400, message), 400)

    for exc in REFUSALS:
        app.add_exception_handler(exc, refused)
    for exc in (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
        app.add_exception_handler(exc, bad_patch)
    for exc in UNAVAILABLE:
        app.add_exception_handler(exc, unavailable)


class _OnceValidatedExpr:
    """stac-fastapi-pgstac's ``cql2.Expr`` for GET searches, validating each distinct filter
    once: ``Expr.validate`` compiles the CQL2 JSON schema at every call (~15-30 ms, more than
    pgstac's whole search), and the same filters come again and again (a free-text ``q``'s
    ranking phases, page after page, the page's repeated searches)."""

    def __init__(self, value: Any) -> None:
        self._expr = cql2.Expr(value)
        self._key = value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    def validate(self) -> None:
        _validate(self._key, self._expr)

    def to_json(self) -> Any:
        return self._expr.to_json()


def _validate(key: str, expr: Any) -> None:
    if key in _VALID:
        _VALID.move_to_end(key)
        return
    expr.validate()  # raises on an invalid filter: only valid ones are remembered
    _VALID[key] = True
    if len(_VALID) > _MAX_VALID:
        _VALID.popitem(last=False)


_VALID: OrderedDict[str, bool] = OrderedDict()
_MAX_VALID = 4096


def _build(cfg: dict[str, Any], wrapped: bool) -> FastAPI:
    conn = Connection(**cfg["connection"])
    prefix = "/" + cfg["prefix"].strip("/")
    pg = _SocketPostgresSettings(
        pguser=conn.user,
        pgpassword="-",  # unused: the DSN below carries it
        pghost=conn.host,
        pgport=conn.port,
        pgdatabase=conn.dbname,
        dsn=conn.asyncpg_dsn(),
    )
    settings = Settings(
        enable_transactions_extensions=True,
        root_path=prefix,
        stac_fastapi_title=cfg.get("title", "twinhub data lake"),
        stac_fastapi_description="STAC API of the twinhub data lake (stac-fastapi-pgstac).",
        stac_fastapi_landing_id="twinhub-datalake",
        stac_fastapi_version=__version__,
        # The hub decides who may call: browsers come through the proxy, same origin.
        cors_origins=(),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await connect_to_db(app, postgres_settings=pg, add_write_connection_pool=True)
        yield
        await close_db_connection(app)

    api = instantiate_api(
        settings=settings, extensions=Extensions(settings=settings), lifespan=lifespan
    )
    app = api.app
    if not wrapped:
        return app
    # pgstac's item search ignores q; ours does it (FreeTextMiddleware), and says so
    api.client.base_conformance_classes = [*api.client.base_conformance_classes, ITEM_FREE_TEXT]
    add_database_error_handlers(app)
    _pgstac_core.Expr = _OnceValidatedExpr  # see _OnceValidatedExpr
    # Compression goes outermost (added last, below): every layer sees plain bodies (the JSON
    # errors of asgi rewrite them) and the federation's own answers get compressed too.
    app.user_middleware = [m for m in app.user_middleware if m.cls is not BrotliMiddleware]
    # Starlette: the last added runs first. Authentication wraps everything but the ping;
    # the guard checks input before federation splits a search among the sources.
    app.add_middleware(
        FederationMiddleware,
        prefix=prefix + "/",
        federation=federation_from_config(cfg),
        max_page_size=int(cfg.get("max_page_size", 1000)),
    )
    # Free text of item searches becomes a CQL2 filter (and a ranking) above the federation.
    app.add_middleware(FreeTextMiddleware, prefix=prefix + "/")
    app.add_middleware(
        GuardMiddleware,
        prefix=prefix + "/",
        max_page_size=int(cfg.get("max_page_size", 1000)),
        max_body_bytes=int(cfg.get("max_body_bytes", 16 * 1024 * 1024)),
    )
    app.add_middleware(HubAuthMiddleware, prefix=prefix + "/", public_paths=PUBLIC_PATHS)
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=int(cfg.get("max_body_bytes", 16 * 1024 * 1024)))  # fmt: skip
    app.add_middleware(BrotliMiddleware)
    return app

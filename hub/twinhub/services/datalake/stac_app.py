"""The STAC API process: stac-fastapi-pgstac, wrapped for the platform.

``uvicorn --factory twinhub.services.datalake.stac_app:create_app`` (the supervisor's
``stac`` component, or the container of the ``stac`` deployment on Kubernetes).  Its config
file (``$TWINHUB_STAC_CONFIG``, written by :func:`twinhub.services.datalake.prepare`) says
how to reach the database; the hub's service environment (``JUPYTERHUB_*``) how to check
users.  Layers, outermost first: hub authentication (:mod:`twinhub.services.hubauth`), the
guard (:mod:`.guard`: bad input, ownership of collections), federation (:mod:`.federation`:
search, collections and items across the lake and the configured sources; a pass-through
when there are none), then stac-fastapi-pgstac.
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from stac_fastapi.pgstac.app import instantiate_api
from stac_fastapi.pgstac.config import PostgresSettings, Settings
from stac_fastapi.pgstac.db import close_db_connection, connect_to_db
from stac_fastapi.pgstac.models.extensions import Extensions

from ... import __version__
from ..hubauth import HubAuthMiddleware
from .database import Connection
from .federation import FederationMiddleware, federation_from_config
from .guard import GuardMiddleware

PUBLIC_PATHS = ("_mgmt/ping",)


class _SocketPostgresSettings(PostgresSettings):
    """stac-fastapi builds a TCP-only DSN; ours may be a unix socket directory."""

    dsn: str = ""

    @property
    def connection_string(self) -> str:
        return self.dsn


def load_config(path: str | None = None) -> dict[str, Any]:
    path = path or os.environ.get("TWINHUB_STAC_CONFIG", "")
    if not path:
        raise RuntimeError("TWINHUB_STAC_CONFIG is not set: it names the STAC API's config file")
    with open(path) as f:
        return json.load(f)


def create_app(config: dict[str, Any] | None = None) -> FastAPI:
    """The platform's STAC API: stac-fastapi-pgstac behind hub auth and the guard."""
    return _build(config or load_config(), wrapped=True)


def create_plain_app(config: dict[str, Any] | None = None) -> FastAPI:
    """stac-fastapi-pgstac on the same database with none of our layers: the anchor that
    bench/datalake.py measures the cost of authentication and guards against."""
    return _build(config or load_config(), wrapped=False)


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
    # Starlette: the last added runs first. Authentication wraps everything but the ping;
    # the guard checks input before federation splits a search among the sources.
    app.add_middleware(
        FederationMiddleware,
        prefix=prefix + "/",
        federation=federation_from_config(cfg),
        max_page_size=int(cfg.get("max_page_size", 1000)),
    )
    app.add_middleware(
        GuardMiddleware,
        prefix=prefix + "/",
        max_page_size=int(cfg.get("max_page_size", 1000)),
        max_body_bytes=int(cfg.get("max_body_bytes", 16 * 1024 * 1024)),
    )
    app.add_middleware(HubAuthMiddleware, prefix=prefix + "/", public_paths=PUBLIC_PATHS)
    return app

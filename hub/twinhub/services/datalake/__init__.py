"""The data lake service: a STAC API over the object store's data (EDEN's role in DestinE).

Components (embedded): ``stac-db`` (PostgreSQL + PostGIS + pgstac, see :mod:`.database`) and
``stac`` (stac-fastapi-pgstac wrapped by :mod:`.stac_app`: hub auth, input guards, owned
collections), registered with the hub at ``/services/stac/``.  On first start the sample
collection (:mod:`.seed`) is built (or taken from its cache) and loaded (:mod:`.loader`) in
the background while the platform is already usable.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from twinlab.contract import ENV_STAC_URL

from ...errors import StartError
from ...plugin import Say
from ...process.components import Component
from ...process.runtime import Runtime
from ..base import AsgiService, running_public_url
from .database import (
    connection,
    initialize,
    local_cluster,
    migrate_external,
    prepare_local,
    server_argv,
)
from .lake_settings import SEED_SIZES, TwinhubDataLake, settings
from .seeding import seed_into, seed_state, start_seeding

SERVICE_NAME = "stac"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"
DB_COMPONENT = "stac-db"
CONFIG_FILE = "run/stac-api.json"
#: The rolling cache's name: its package imports this one, not the other way round.
CACHE_SERVICE = "cache"


class StacPart(AsgiService):
    """The data lake's STAC API at /services/stac/, its database and sample data."""

    name = SERVICE_NAME
    settings = (TwinhubDataLake,)
    start_rank = 20
    factory = "twinhub.services.datalake.stac_app:create_app"
    health_path = "_mgmt/ping"
    uvicorn_options = ("--proxy-headers", "--forwarded-allow-ips", "127.0.0.1")
    url_env = ENV_STAC_URL
    # In $TWINHUB_SERVICES (the info endpoint's list) like every service a user may use.
    listed = True
    config_path = CONFIG_FILE

    def enabled(self, rt: Runtime) -> bool:
        return settings(rt).enabled

    def prepare_service(self, rt: Runtime, say: Say) -> None:
        """The database cluster's files (embedded)."""
        if settings(rt).embedded_db:
            prepare_local(rt, say)

    def service_config(self, rt: Runtime) -> dict[str, Any]:
        lake = settings(rt)
        return {
            "connection": connection(rt, lake.database_url).to_dict(),
            "prefix": self.prefix(),
            "max_page_size": lake.max_page_size,
            "max_body_bytes": lake.max_body_mb * 1024 * 1024,
            "title": lake.title,
            # Federated sources (with their secret headers: this file is 0600) and the
            # rolling cache's public prefix that remote assets are read through ("" when it
            # does not run: then remote items get no cache links and twinlab says why it
            # cannot open them).
            "sources": [s.to_dict() for s in lake.stac_sources()],
            "cache_url": running_public_url(rt, CACHE_SERVICE),
        }

    def extra_components(self, rt: Runtime) -> list[Component]:
        """The embedded database (``stac-db``); an external one is migrated here instead."""
        lake = settings(rt)
        if not lake.embedded_db:
            try:
                migrate_external(connection(rt, lake.database_url))
            except Exception as e:
                raise StartError(
                    f"cannot prepare the STAC database {lake.database_url}: {e}"
                ) from e
            return []
        pg = local_cluster(rt)
        initialized: list[bool] = []

        def db_ready() -> bool:
            # A real connection: a killed server's socket file is no sign of a live one.
            if not pg.accepting():
                return False
            if not initialized:
                try:
                    initialize(rt, pg)
                except Exception as e:
                    if "starting up" in str(e) or "shutting down" in str(e):
                        return False
                    raise StartError(f"{DB_COMPONENT}: {e}") from e
                initialized.append(True)
            return True

        return [
            Component(
                name=DB_COMPONENT,
                argv=server_argv(pg),
                ready=db_ready,
                background=True,
                stop_signal=signal.SIGINT,
                before_restart=pg.clear_stale_locks,
            )
        ]

    def after_up(self, rt: Runtime, say: Say) -> threading.Thread | None:
        return start_seeding(rt, say) if self.active(rt) else None

    def status_lines(self, rt: Runtime) -> list[str]:
        seed = seed_state(rt)
        if not seed:
            return []
        detail = seed.get("error") or (f"{seed['items']} items" if "items" in seed else "")
        return [f"sample data    {seed.get('status')} ({seed.get('size')}) {detail}".rstrip()]


__all__ = [
    "SEED_SIZES",
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "StacPart",
    "TwinhubDataLake",
    "seed_into",
    "seed_state",
    "settings",
]

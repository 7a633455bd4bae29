"""What every module of the tiles service shares in its process (one per app)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...process.runtime import Runtime
from .config import TwinhubTiles

if TYPE_CHECKING:
    import httpx


@dataclass
class TilesContext:
    """The service's runtime, settings, clients and caches.

    ``hub`` and ``stac`` (``httpx.AsyncClient`` carrying the service's own token) are set by
    the app's lifespan (app.py); tests may set them themselves.
    """

    rt: Runtime
    settings: TwinhubTiles
    #: The hub's REST API (``http://.../hub/api``), no trailing slash.
    hub_api: str
    #: The service's own hub API token.
    token: str
    #: ``/services/tiles/``.
    prefix: str
    #: The STAC API straight (``http://127.0.0.1:<port>/services/stac/``).
    stac_url: str
    hub: httpx.AsyncClient | None = None
    stac: httpx.AsyncClient | None = None
    #: Anything a module keeps for the process's life (caches, executors), by name: each
    #: module owns its keys (``layers.*``, ``access.*``, ``tilecache``...).
    extras: dict[str, Any] = field(default_factory=dict)

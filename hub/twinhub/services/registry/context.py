"""What every part of the registry service shares in its process (one per app)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...process.runtime import Runtime
from .config import TwinhubRegistry

if TYPE_CHECKING:
    import httpx


@dataclass
class RegistryContext:
    """The service's runtime, settings, hub client and search index.

    ``hub`` (an ``httpx.AsyncClient`` carrying the service's own token) and ``index`` are
    set by the app's lifespan (app.py).
    """

    rt: Runtime
    settings: TwinhubRegistry
    #: twinhub's database (``rt.db_url``): requests, events, versions, health rows.
    db_url: str
    #: The hub's REST API (``http://.../hub/api``), no trailing slash.
    hub_api: str
    #: The service's own hub API token (role ``registry-service``).
    token: str
    #: ``/services/registry/``.
    prefix: str
    hub: httpx.AsyncClient | None = None
    #: The catalogue's :class:`~.search.SearchIndex` (typed loosely: search.py reads this
    #: context, and the two modules must not import each other).
    index: Any = None
    #: Anything a module keeps for the process's life (caches), by module name.
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def sso_key(self) -> bytes:
        """Key of the gateway's signed sign-on cookies: derived from the service's token,
        which every replica shares (no extra secret to distribute)."""
        return hmac.new(self.token.encode(), b"twinhub-registry-sso", hashlib.sha256).digest()

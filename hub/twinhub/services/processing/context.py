"""What every part of the processing service shares in its process (one per app)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...process.runtime import Runtime
from .config import TwinhubProcessing

if TYPE_CHECKING:
    import httpx


@dataclass
class ProcessingContext:
    """The service's runtime, settings, hub client and job backend.

    ``hub`` (an ``httpx.AsyncClient`` carrying the service's own token) and ``backend`` are
    set by the app's lifespan (app.py); tests may set them themselves.
    """

    rt: Runtime
    settings: TwinhubProcessing
    #: twinhub's database (``rt.db_url``): jobs, their logs, user processes.
    db_url: str
    #: The hub's REST API (``http://.../hub/api``), no trailing slash.
    hub_api: str
    #: The service's own hub API token (role ``processing-service``).
    token: str
    #: ``/services/processing/``.
    prefix: str
    #: Where runners reach the service straight (not through the proxy): its internal
    #: report endpoints are under ``<internal_url>internal/``.
    internal_url: str = ""
    hub: httpx.AsyncClient | None = None
    #: The :class:`~.backend.JobBackend` starting runners (typed loosely: backend.py reads
    #: this context).
    backend: Any = None
    #: Anything a module keeps for the process's life (wake-up events, caches), by name.
    extras: dict[str, Any] = field(default_factory=dict)

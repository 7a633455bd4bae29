"""Federated search: the lake and the configured STAC sources behind one STAC API.

Modules: :mod:`.params` (search parameters, checked), :mod:`.fetch` (HTTP to configured
origins only), :mod:`.api` (remote STAC APIs), :mod:`.static` (static catalogues, crawled
and indexed), :mod:`.matching` (item search in memory), :mod:`.local` (the lake, in-process),
:mod:`.merge` (merging pages, paging tokens), :mod:`.annotate` (source, cache alternates,
refusals, links), :mod:`.engine` (one federated search), :mod:`.middleware` (the ASGI layer
in :mod:`..stac_app`).
"""

from __future__ import annotations

from typing import Any

from ..sources import make_sources
from .engine import Federation
from .middleware import FederationMiddleware

#: Seconds between re-crawls of a static catalogue (it is also re-crawled when its root changes).
STATIC_REFRESH_S = 600.0


def federation_from_config(cfg: dict[str, Any]) -> Federation:
    """The federation described by the STAC API's config file (``sources``, ``cache_url``)."""
    return Federation(
        make_sources(cfg.get("sources") or []),
        cache_url=cfg.get("cache_url", "/services/cache/"),
        static_refresh_s=float(cfg.get("static_refresh_s", STATIC_REFRESH_S)),
    )


__all__ = ["Federation", "FederationMiddleware", "federation_from_config"]

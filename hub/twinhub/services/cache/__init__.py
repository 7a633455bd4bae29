"""The rolling cache (DestinE's DCMS role): assets of federated sources, fetched once, shared.

Remote assets are read at ``<proxy>/services/cache/assets/<source>/<host[:port]>/<path>``
(see :func:`twinhub.services.datalake.sources.cache_path`), with the user's hub token.  The
``cache`` component (:mod:`.app`, uvicorn) keeps what it fetched in one size-bounded store
(:mod:`.store`: LRU eviction, optional age limit, one upstream fetch for N concurrent
readers, nothing partial ever served, contents kept across restarts) and exposes its counts
at ``stats`` (JSON) and ``metrics`` (Prometheus).  Always on: it costs one small process,
and answers 404 for every source while none is configured.

Where it keeps objects: ``TwinhubCache.directory``, default ``<state>/cache`` (0700).  Only
the service process reads it (users reach objects over HTTP), so unlike the STAC database
it needs no world-traversable place even as root.  See docs/cache.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Int, TraitError, Unicode, validate
from traitlets.config import Configurable

from twinlab.contract import ENV_CACHE_URL

from ...errors import PlatformError, StartError
from ...plugin import Say
from ...process.runtime import Runtime
from ..base import AsgiService
from ..datalake.lake_settings import TwinhubDataLake
from .index import read_stats

SERVICE_NAME = "cache"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"
CONFIG_FILE = "run/cache.json"
GB = 1e9


class TwinhubCache(Configurable):
    """The rolling cache of remote (federated) assets at /services/cache/."""

    enabled = Bool(
        True, help="Run the cache service at /services/cache/ (remote assets go through it)."
    ).tag(config=True)
    directory = Unicode(
        "",
        help="Where cached objects and their index live (survives restarts). Empty: "
        "<state_dir>/cache. Give it a disk with room for max_size.",
    ).tag(config=True)
    max_size = Float(
        10.0,
        help="Most GB the cache holds; least recently used objects are evicted beyond it.",
    ).tag(config=True)
    max_age_hours = Float(
        0.0,
        help="Hours after which a cached object is fetched again from its source (0: never; "
        "objects then leave only by eviction).",
    ).tag(config=True)
    fetch_timeout = Float(
        60.0,
        help="Seconds the cache waits for a source to connect or to send the next bytes "
        "before the fetch fails (504).",
    ).tag(config=True)
    max_object_gb = Float(
        2.0,
        help="Largest object (GB) the cache keeps; larger ones are streamed from the source "
        "uncached (Range passed through). At most max_size.",
    ).tag(config=True)

    max_downloads = Int(
        8,
        help="Most upstream downloads the cache runs at once (each for a different object; "
        "readers of one object share one); a new miss beyond it is answered 503. Downloads "
        "together also hold at most half of max_size (at least max_object_gb), an unknown "
        "size counting as max_object_gb.",
    ).tag(config=True)
    max_user_downloads = Int(
        4,
        help="Most downloads one user's requests may have started and still running; a new "
        "miss beyond it is answered 429 (hits and joining a download are not limited).",
    ).tag(config=True)

    download_wait = Float(
        30.0,
        help="Seconds a new miss waits for a download to end when max_downloads or "
        "max_user_downloads is reached, before it is answered 503 or 429 (parallel chunk "
        "reads of one user queue up instead of failing).",
    ).tag(config=True)

    @validate("max_downloads", "max_user_downloads")
    def _at_least_one(self, proposal: Any) -> int:
        if proposal.value < 1:
            raise ValueError(
                f"TwinhubCache.{proposal.trait.name} must be at least 1, got {proposal.value!r}"
            )
        return proposal.value

    @validate("max_size", "max_object_gb", "fetch_timeout")
    def _positive(self, proposal: Any) -> float:
        if not proposal.value > 0:
            raise ValueError(
                f"TwinhubCache.{proposal.trait.name} must be positive, got {proposal.value!r}"
            )
        return proposal.value

    @validate("max_age_hours", "download_wait")
    def _not_negative(self, proposal: Any) -> float:
        if proposal.value < 0:
            raise ValueError(
                f"TwinhubCache.{proposal.trait.name} must be >= 0, got {proposal.value!r}"
            )
        return proposal.value


def settings(rt: Runtime) -> TwinhubCache:
    """The configuration; a bad value is a PlatformError naming it (no traceback)."""
    try:
        return TwinhubCache(config=rt.config)
    except (TraitError, ValueError) as e:
        raise PlatformError(f"bad cache configuration: {e}") from None


def cache_dir(rt: Runtime) -> Path:
    d = settings(rt).directory
    return Path(d).expanduser() if d else rt.path("cache")


class CachePart(AsgiService):
    """The rolling cache of remote assets at /services/cache/."""

    name = SERVICE_NAME
    settings = (TwinhubCache,)
    start_rank = 40
    factory = "twinhub.services.cache.app:create_app"
    url_env = ENV_CACHE_URL
    listed = True
    config_path = CONFIG_FILE

    def enabled(self, rt: Runtime) -> bool:
        return settings(rt).enabled

    def prepare_service(self, rt: Runtime, say: Say) -> None:
        """Where it keeps objects (0700: only the service process reads them)."""
        cache_dir(rt).mkdir(mode=0o700, parents=True, exist_ok=True)

    def service_config(self, rt: Runtime) -> dict[str, Any]:
        """Sources (with their secret headers: the file is 0600) and limits."""
        cfg = settings(rt)
        max_size = int(cfg.max_size * GB)
        try:
            sources = [s.to_dict() for s in TwinhubDataLake(config=rt.config).stac_sources()]
        except ValueError as e:  # a bad source definition (SourceError)
            raise StartError(str(e)) from None
        return {
            "prefix": self.prefix(),
            "directory": str(cache_dir(rt)),
            "max_size": max_size,
            "max_age": cfg.max_age_hours * 3600,
            "max_object": min(int(cfg.max_object_gb * GB), max_size),
            "fetch_timeout": cfg.fetch_timeout,
            "max_downloads": cfg.max_downloads,
            "max_user_downloads": cfg.max_user_downloads,
            "download_wait": cfg.download_wait,
            "sources": sources,
        }

    def status_line(self, rt: Runtime) -> str | None:
        """Counts and size, read from the cache's index (where and how large as the running
        service was told: its config file)."""
        if not self.active(rt):
            return None
        try:
            doc = json.loads(rt.path(CONFIG_FILE).read_text())
            s = read_stats(doc["directory"])
        except Exception as e:  # being written right now, or damaged: say so, do not fail status
            return f"unreadable ({type(e).__name__}: {e})"
        if s is None:
            return "empty (nothing fetched yet)"
        return (
            f"{s['hits']} hits, {s['misses']} misses, {s['evictions']} evicted, "
            f"{s['objects']} objects, {s['size'] / GB:.2f} of {doc['max_size'] / GB:g} GB"
        )

    def status_lines(self, rt: Runtime) -> list[str]:
        line = self.status_line(rt)
        return [f"cache          {line}"] if line else []


__all__ = ["SERVICE_NAME", "SERVICE_PREFIX", "CachePart", "TwinhubCache", "cache_dir", "settings"]

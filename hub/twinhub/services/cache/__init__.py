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

import functools
import json
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Int, TraitError, Unicode, validate
from traitlets.config import Configurable

from ...plugin import Part, Say
from ...process.components import Component
from ...process.runtime import Runtime
from ..registration import (
    grant_access,
    register_service,
    service_environment,
    uvicorn_argv,
    write_service_config,
)

SERVICE_NAME = "cache"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"
SECRET_NAME = "service-cache"
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
        from ...errors import PlatformError

        raise PlatformError(f"bad cache configuration: {e}") from None


def cache_dir(rt: Runtime) -> Path:
    d = settings(rt).directory
    return Path(d).expanduser() if d else rt.path("cache")


def port(rt: Runtime) -> int:
    return rt.ports[SERVICE_NAME]


def api_url(rt: Runtime) -> str:
    """The service on loopback, straight (the platform's own calls)."""
    return f"http://127.0.0.1:{port(rt)}{SERVICE_PREFIX}"


def public_url(rt: Runtime) -> str:
    """The service through the proxy on loopback (what user servers use)."""
    return rt.local_url + SERVICE_PREFIX.lstrip("/")


def active(rt: Runtime) -> bool:
    """Enabled for this run: the supervisor allocated its port (see allocate_ports).  Other
    processes (the hub) decide from runtime.json alone, without re-reading the options."""
    return SERVICE_NAME in rt.ports


def allocate_ports(rt: Runtime) -> None:
    from ...process.ports import PLATFORM_PORTS, pick_port

    if settings(rt).enabled:
        rt.ports[SERVICE_NAME] = pick_port(PLATFORM_PORTS)


def service_config(rt: Runtime) -> dict[str, Any]:
    """What the service process reads: sources (with their secret headers) and limits."""
    from ..datalake import TwinhubDataLake

    cfg = settings(rt)
    max_size = int(cfg.max_size * GB)
    return {
        "prefix": SERVICE_PREFIX,
        "directory": str(cache_dir(rt)),
        "max_size": max_size,
        "max_age": cfg.max_age_hours * 3600,
        "max_object": min(int(cfg.max_object_gb * GB), max_size),
        "fetch_timeout": cfg.fetch_timeout,
        "max_downloads": cfg.max_downloads,
        "max_user_downloads": cfg.max_user_downloads,
        "download_wait": cfg.download_wait,
        "sources": [s.to_dict() for s in TwinhubDataLake(config=rt.config).stac_sources()],
    }


def prepare(rt: Runtime) -> None:
    """Before start: the service's config file (0600: it holds the sources' headers)."""
    if not active(rt):
        return
    from ...errors import StartError

    try:
        doc = service_config(rt)
    except ValueError as e:  # a bad source definition (SourceError) or limit
        raise StartError(str(e)) from None
    Path(doc["directory"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    write_service_config(rt.path(CONFIG_FILE), doc)


def components(rt: Runtime) -> list[Component]:
    from ...process.supervisor import http_ok

    if not active(rt):
        return []
    env = service_environment(rt, SERVICE_NAME, rt.secret(SECRET_NAME))
    env["TWINHUB_CACHE_CONFIG"] = str(rt.path(CONFIG_FILE))
    return [
        Component(
            name=SERVICE_NAME,
            argv=uvicorn_argv("twinhub.services.cache.app:create_app", port(rt)),
            env=env,
            port=port(rt),
            ready=functools.partial(http_ok, api_url(rt) + "health"),
            background=True,
        )
    ]


def configure_hub(c: Any, rt: Runtime) -> None:
    """Register the service, let every user (and server) reach it, tell servers where."""
    if not active(rt):
        return
    register_service(c, SERVICE_NAME, f"http://127.0.0.1:{port(rt)}", rt.secret(SECRET_NAME))
    grant_access(c, SERVICE_NAME)
    c.Spawner.environment.update({"TWINHUB_CACHE_URL": public_url(rt)})
    c.TwinhubSpawner.services.update({SERVICE_NAME: rt.url + SERVICE_PREFIX.lstrip("/")})


def status_line(rt: Runtime) -> str | None:
    """One line for ``twinhub status``: counts and size, read from the cache's index (where
    and how large as the running service was told: its config file)."""
    if not active(rt):
        return None
    from .store import read_stats

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


__all__ = [
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "TwinhubCache",
    "active",
    "allocate_ports",
    "api_url",
    "cache_dir",
    "components",
    "configure_hub",
    "prepare",
    "public_url",
    "service_config",
    "settings",
    "status_line",
]


class CachePart(Part):
    """The rolling cache of remote assets at /services/cache/."""

    name = SERVICE_NAME
    settings = (TwinhubCache,)
    start_rank = 40

    def plan(self, rt: Runtime) -> None:
        allocate_ports(rt)

    def prepare(self, rt: Runtime, say: Say) -> None:
        prepare(rt)

    def components(self, rt: Runtime) -> list[Component]:
        return components(rt)

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        configure_hub(c, rt)

    def status_lines(self, rt: Runtime) -> list[str]:
        line = status_line(rt)
        return [f"cache          {line}"] if line else []

"""``c.TwinhubRegistry.*``: the registry service's configuration (docs/registry.md)."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Dict, Float, Integer, List, Unicode
from traitlets.config import Configurable

#: The default thematic vocabulary: DestinE's service areas (id -> label).
DEFAULT_THEMATIC_AREAS = {
    "climate-adaptation": "Climate adaptation",
    "extremes": "Weather and climate extremes",
    "ocean": "Ocean",
    "air-quality": "Air quality",
    "energy": "Energy",
    "water": "Water",
    "agriculture": "Agriculture and food",
    "health": "Health",
    "urban": "Urban",
    "biodiversity": "Biodiversity",
    "disaster-risk": "Disaster risk",
    "policy": "Policy support",
}

#: Names under /services/ an entry's slug may never take: the platform's own services
#: (also those of later issues) and JupyterHub's.
DEFAULT_RESERVED_SLUGS = [
    "accounting", "cache", "dask-gateway", "desk", "processing", "projects", "registry",
    "stac", "tiles", "vizlab", "hub", "user", "api", "static", "login", "logout",
]  # fmt: skip


class TwinhubRegistry(Configurable):
    """The service registry at /services/registry/: catalogue, onboarding, single sign-on."""

    enabled = Bool(
        None,
        allow_none=True,
        help="Run the registry service (catalogue, onboarding, the landing page, registered "
        "web services behind the platform's sign-on). None: on in multi-user mode and on "
        "Kubernetes, off in personal mode.",
    ).tag(config=True)

    thematic_areas = Dict(
        DEFAULT_THEMATIC_AREAS,
        help="The thematic vocabulary entries are filed under: id -> label. Ids are what "
        "entries and the facet carry (lower case, digits and '-').",
    ).tag(config=True)

    reviewers_group = Unicode(
        "registry-reviewers",
        help="Hub group whose members review onboarding requests (comment, ask for changes, "
        "approve, reject). Hub admins integrate, suspend and retire.",
    ).tag(config=True)

    reserved_slugs = List(
        Unicode(),
        DEFAULT_RESERVED_SLUGS,
        help="Slugs no entry may take (they are, or will be, the platform's own /services/ names).",
    ).tag(config=True)

    evaluation_interval = Float(
        10.0,
        help="Seconds between looks for submitted requests to evaluate automatically (the "
        "contract: evaluated within a minute).",
    ).tag(config=True)

    health_interval = Float(
        30.0,
        help="Seconds between health checks of each integrated entry's upstream.",
    ).tag(config=True)

    fetch_timeout = Float(
        10.0,
        help="Seconds any fetch of a provider-supplied URL may take in all (evaluation, "
        "health checks), through the outbound guard.",
    ).tag(config=True)

    fetch_max_bytes = Integer(
        2 * 1024 * 1024,
        help="Bytes of a provider's description document (OpenAPI, OGC landing page) read at "
        "most; a larger one is a finding, not fetched further.",
    ).tag(config=True)

    gateway_timeout = Float(
        60.0,
        help="Seconds the sign-on gateway waits for an integrated service's response to "
        "start (then 504).",
    ).tag(config=True)

    lake_refresh_interval = Float(
        60.0,
        help="Seconds the landing page keeps the data lake's collection list before asking "
        "the STAC service again.",
    ).tag(config=True)


def is_enabled(rt: Any) -> bool:
    """On when configured so; by default in multi-user mode and on Kubernetes."""
    enabled = TwinhubRegistry(config=rt.config).enabled
    if enabled is None:
        return rt.mode != "personal" or rt.kubernetes
    return bool(enabled)

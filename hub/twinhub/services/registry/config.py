"""``c.TwinhubRegistry.*``: the registry service's configuration (docs/registry.md)."""

from __future__ import annotations

import re
from typing import Any

from traitlets import Bool, Dict, Float, Integer, List, TraitError, Unicode, validate
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


#: Seconds at least for every interval and timeout: 0 would spin a loop (a database query
#: each turn) or refuse every fetch.
MIN_SECONDS = 0.5
#: Bytes at least a description fetch may read (an OGC landing page needs about this).
MIN_FETCH_BYTES = 1024
_AREA_ID = re.compile(r"[a-z0-9-]+")


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

    evaluation_budget = Float(
        30.0,
        help="Seconds one request's evaluation may spend fetching its endpoints and "
        "descriptions in all; what is left unfetched then is a finding. Up to 4 requests are "
        "evaluated at once, one per provider.",
    ).tag(config=True)

    max_open_requests = Integer(
        5,
        help="Requests one provider may have waiting for review at once (submitted, "
        "evaluated or changes-requested); another is refused (429) until one is decided.",
    ).tag(config=True)

    max_comments = Integer(
        200,
        help="Comments one request may hold; more are refused (429).",
    ).tag(config=True)

    gateway_timeout = Float(
        60.0,
        help="Seconds the sign-on gateway waits for an integrated service's response to "
        "start (then 504).",
    ).tag(config=True)

    max_websockets = Integer(
        1000,
        help="Websockets the sign-on gateway relays at once, all users together (each holds "
        "two connections of the registry's process: the cap keeps its file descriptors for "
        "the catalogue and the database). Beyond it a handshake is refused (HTTP 429 where "
        "the server supports it, else 403) naming the limit.",
    ).tag(config=True)

    max_websockets_per_user = Integer(
        20,
        help="Websockets one user may hold open through the sign-on gateway at once, over "
        "all services; beyond it a handshake is refused (HTTP 429 or 403) naming the limit.",
    ).tag(config=True)

    lake_refresh_interval = Float(
        60.0,
        help="Seconds the landing page keeps the data lake's collection list before asking "
        "the STAC service again.",
    ).tag(config=True)

    @validate(
        "evaluation_interval",
        "health_interval",
        "fetch_timeout",
        "evaluation_budget",
        "gateway_timeout",
        "lake_refresh_interval",
    )
    def _seconds(self, proposal: Any) -> float:
        value = proposal["value"]
        if not value >= MIN_SECONDS:  # (NaN too)
            raise TraitError(
                f"TwinhubRegistry.{proposal['trait'].name} must be at least {MIN_SECONDS} "
                f"seconds, not {value!r}"
            )
        return value

    @validate("max_websockets", "max_websockets_per_user")
    def _websockets(self, proposal: Any) -> int:
        value = proposal["value"]
        if value < 1:
            raise TraitError(
                f"TwinhubRegistry.{proposal['trait'].name} must be at least 1, not {value!r}"
            )
        return value

    @validate("fetch_max_bytes")
    def _fetch_bytes(self, proposal: Any) -> int:
        value = proposal["value"]
        if value < MIN_FETCH_BYTES:
            raise TraitError(
                f"TwinhubRegistry.fetch_max_bytes must be at least {MIN_FETCH_BYTES}, not {value!r}"
            )
        return value

    @validate("thematic_areas")
    def _areas(self, proposal: Any) -> dict[str, str]:
        areas = proposal["value"]
        if not areas:
            raise TraitError("TwinhubRegistry.thematic_areas needs at least one area (id: label)")
        for key, label in areas.items():
            if not isinstance(key, str) or not _AREA_ID.fullmatch(key):
                raise TraitError(
                    f"TwinhubRegistry.thematic_areas: id {key!r} must be lower case letters, "
                    "digits and '-'"
                )
            if not isinstance(label, str) or not label.strip():
                raise TraitError(
                    f"TwinhubRegistry.thematic_areas: {key!r} needs a label (a non-empty string)"
                )
        return areas


def is_enabled(rt: Any) -> bool:
    """On when configured so; by default in multi-user mode and on Kubernetes."""
    enabled = TwinhubRegistry(config=rt.config).enabled
    if enabled is None:
        return rt.mode != "personal" or rt.kubernetes
    return bool(enabled)

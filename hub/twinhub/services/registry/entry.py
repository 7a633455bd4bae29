"""A registry entry: its fields, their validation, and who may see it.

An entry arrives as JSON from a provider (submission, changes, updates); :func:`validate_entry`
returns it normalised (every field present, strings trimmed) or raises :class:`EntryError`
naming the field and what is allowed. Nothing here does I/O: URLs are checked for their
syntax only (:func:`twinhub.outbound.check_url`); fetching them is the evaluation's job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ...outbound import OutboundRefused, check_url
from ..hubauth import acts_as_admin, has_scope

KINDS = ("web-application", "api", "notebook", "dataset", "processing")
#: Kinds served behind the platform's sign-on at /services/<slug>/ (need an endpoint).
WEB_KINDS = ("web-application", "api")
ENDPOINT_TYPES = ("openapi", "ogcapi", "other")
FIELDS = (
    "name", "slug", "provider", "description", "thematic_areas", "kind", "endpoints",
    "documentation", "licence", "contact", "visibility", "keywords", "bbox", "temporal",
)  # fmt: skip

MAX_NAME = 200
MAX_DESCRIPTION = 20_000
MAX_LICENCE = 200
MAX_URL = 2048
MAX_ENDPOINTS = 10
MAX_KEYWORDS = 20
MAX_KEYWORD = 100
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{1,63}")
#: A project visibility names a hub group: no '/', no control characters, no spaces.
PROJECT_VISIBILITY = re.compile(r"project:([^\s/\x00-\x1f\x7f]{1,255})")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class EntryError(ValueError):
    """An entry is invalid; the message names the field and what is allowed."""


# -- validation ------------------------------------------------------------------------------
def validate_entry(doc: Any, settings: Any) -> dict[str, Any]:
    """``doc`` checked against the entry model and ``settings`` (a :class:`TwinhubRegistry`:
    vocabulary, reserved slugs); the normalised entry, or :class:`EntryError`."""
    if not isinstance(doc, Mapping):
        raise EntryError(f"entry must be an object, not {_type(doc)}")
    unknown = sorted(str(k) for k in doc if k not in FIELDS)
    if unknown:
        raise EntryError(f"entry: unknown field(s) {unknown}; allowed: {', '.join(FIELDS)}")
    out: dict[str, Any] = {
        "name": _text(doc, "name", MAX_NAME, required=True),
        "slug": _slug(doc.get("slug"), settings),
        "provider": _text(doc, "provider", MAX_NAME, required=True),
        "description": _text(doc, "description", MAX_DESCRIPTION, multiline=True),
        "thematic_areas": _areas(doc.get("thematic_areas"), settings),
        "kind": _choice(doc, "kind", KINDS),
    }
    out["endpoints"] = _endpoints(doc.get("endpoints", []), out["kind"])
    out["documentation"] = _url_or_empty(doc.get("documentation", ""), "documentation")
    out["licence"] = _text(doc, "licence", MAX_LICENCE)
    out["contact"] = _contact(doc.get("contact", ""))
    out["visibility"] = _visibility(doc.get("visibility", "public"))
    out["keywords"] = _keywords(doc.get("keywords", []))
    out["bbox"] = _bbox(doc.get("bbox"))
    out["temporal"] = _temporal(doc.get("temporal"))
    return out


def _type(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _text(
    doc: Mapping[str, Any], field: str, limit: int, *, required=False, multiline=False
) -> str:
    v = doc.get(field, "")
    if v is None:
        v = ""
    if not isinstance(v, str):
        raise EntryError(f"{field} must be a string, not {_type(v)}")
    v = v.strip()
    if required and not v:
        raise EntryError(f"{field} is required (1-{limit} characters)")
    if len(v) > limit:
        raise EntryError(f"{field} is {len(v)} characters long; at most {limit}")
    bad = _CONTROLS if multiline else re.compile(r"[\x00-\x1f\x7f]")
    if bad.search(v):
        raise EntryError(f"{field} holds control characters")
    return v


def _slug(v: Any, settings: Any) -> str:
    if not isinstance(v, str) or not SLUG.fullmatch(v):
        raise EntryError(
            f"slug {v!r} is not valid: 2-63 characters, lower-case letters, digits and '-', "
            "starting with a letter or digit (it becomes /services/<slug>/)"
        )
    if v in set(settings.reserved_slugs):
        raise EntryError(f"slug {v!r} is reserved for the platform; choose another")
    return v


def _areas(v: Any, settings: Any) -> list[str]:
    vocab = dict(settings.thematic_areas)
    if not isinstance(v, list) or not v or not all(isinstance(a, str) for a in v):
        raise EntryError(
            f"thematic_areas must be a non-empty list of ids among: {', '.join(vocab)}"
        )
    unknown = [a for a in v if a not in vocab]
    if unknown:
        raise EntryError(f"thematic_areas: unknown id(s) {unknown}; known: {', '.join(vocab)}")
    return list(dict.fromkeys(v))


def _choice(doc: Mapping[str, Any], field: str, allowed: tuple[str, ...]) -> str:
    v = doc.get(field)
    if v not in allowed:
        raise EntryError(f"{field} {v!r} is not one of: {', '.join(allowed)}")
    return v


def _url(v: Any, field: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise EntryError(f"{field} must be an http(s) URL, not {v!r}")
    v = v.strip()
    if len(v) > MAX_URL:
        raise EntryError(f"{field} is {len(v)} characters long; at most {MAX_URL}")
    try:
        check_url(v)
    except OutboundRefused as e:
        raise EntryError(f"{field}: {e}") from None
    return v


def _url_or_empty(v: Any, field: str) -> str:
    if v is None or v == "":
        return ""
    return _url(v, field)


def _endpoints(v: Any, kind: str) -> list[dict[str, str]]:
    if not isinstance(v, list):
        raise EntryError(f"endpoints must be a list, not {_type(v)}")
    if len(v) > MAX_ENDPOINTS:
        raise EntryError(f"endpoints: {len(v)} given; at most {MAX_ENDPOINTS}")
    if kind in WEB_KINDS and not v:
        raise EntryError(f"endpoints: a {kind} entry needs at least one endpoint")
    out = []
    for i, ep in enumerate(v):
        where = f"endpoints[{i}]"
        if not isinstance(ep, Mapping):
            raise EntryError(f"{where} must be an object with url, type, description_url")
        unknown = sorted(str(k) for k in ep if k not in ("url", "type", "description_url"))
        if unknown:
            raise EntryError(f"{where}: unknown field(s) {unknown}")
        etype = ep.get("type", "other")
        if etype not in ENDPOINT_TYPES:
            raise EntryError(f"{where}.type {etype!r} is not one of: {', '.join(ENDPOINT_TYPES)}")
        item = {"url": _url(ep.get("url"), f"{where}.url"), "type": etype}
        desc = _url_or_empty(ep.get("description_url", ""), f"{where}.description_url")
        if desc:
            item["description_url"] = desc
        out.append(item)
    return out


def _contact(v: Any) -> str:
    if v is None or v == "":
        return ""
    if not isinstance(v, str):
        raise EntryError(f"contact must be an e-mail address or a URL, not {_type(v)}")
    v = v.strip()
    if EMAIL.fullmatch(v):
        return v
    try:
        return _url(v, "contact")
    except EntryError:
        raise EntryError(
            f"contact {v[:80]!r} is neither an e-mail address nor an http(s) URL"
        ) from None


def _visibility(v: Any) -> str:
    if v in ("public", "users"):
        return v
    if isinstance(v, str) and PROJECT_VISIBILITY.fullmatch(v):
        return v
    raise EntryError(f"visibility {v!r} is not one of: public, users, project:<hub group>")


def _keywords(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(k, str) for k in v):
        raise EntryError("keywords must be a list of strings")
    if len(v) > MAX_KEYWORDS:
        raise EntryError(f"keywords: {len(v)} given; at most {MAX_KEYWORDS}")
    out = []
    for k in v:
        k = k.strip()
        if not k or len(k) > MAX_KEYWORD or re.search(r"[\x00-\x1f\x7f]", k):
            raise EntryError(f"keyword {k[:120]!r}: 1-{MAX_KEYWORD} printable characters")
        out.append(k)
    return list(dict.fromkeys(out))


def _bbox(v: Any) -> list[float] | None:
    if v is None:
        return None
    if (
        not isinstance(v, list)
        or len(v) != 4
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
        or not all(math.isfinite(x) for x in v)
    ):
        raise EntryError("bbox must be [west, south, east, north] in degrees, or null")
    w, s, e, n = (float(x) for x in v)
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= n <= 90):
        raise EntryError(f"bbox {v}: west/east within -180..180, south <= north within -90..90")
    return [w, s, e, n]


def _instant(v: Any, where: str) -> str | None:
    if v is None or v == "" or v == "..":
        return None
    if not isinstance(v, str) or len(v) > 64:
        raise EntryError(f"{where} must be an ISO 8601 date or date-time, or null")
    try:
        datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise EntryError(f"{where} {v!r} is not an ISO 8601 date or date-time") from None
    return v


def _temporal(v: Any) -> dict[str, str | None] | None:
    if v is None:
        return None
    if not isinstance(v, Mapping) or set(v) - {"start", "end"}:
        raise EntryError('temporal must be {"start": ISO 8601 or null, "end": ...} or null')
    start = _instant(v.get("start"), "temporal.start")
    end = _instant(v.get("end"), "temporal.end")
    if start is None and end is None:
        raise EntryError("temporal needs a start or an end (or temporal: null)")
    if start and end and _aware(start) > _aware(end):
        raise EntryError(f"temporal: start {start} is after end {end}")
    return {"start": start, "end": end}


def _aware(v: str) -> datetime:
    # A date or a naive date-time is taken as UTC, so that any two compare.
    d = datetime.fromisoformat(v.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=UTC)


# -- who is an admin here --------------------------------------------------------------------
#: The scope the registry's OAuth client asks for: JupyterHub grants it to admins only, and
#: it opens nothing but the hub's admin page, so a leaked browser token has no API power.
BROWSER_ADMIN_SCOPE = "admin-ui"


def registry_admin(user: Mapping[str, Any] | None) -> bool:
    """Whether ``user`` acts as the registry's admin: an admin whose token carries the hub's
    admin scope (API tokens, :func:`acts_as_admin`), or ``admin-ui`` (the registry's browser
    sign-on of an admin). A token narrowed to the access scope is not an admin's."""
    if user is None:
        return False
    u = dict(user)
    return acts_as_admin(u) or bool(u.get("admin")) and has_scope(u, BROWSER_ADMIN_SCOPE)


# -- visibility ------------------------------------------------------------------------------
def viewer_scope(user: Mapping[str, Any] | None) -> frozenset[str] | None:
    """The visibilities ``user`` (the hub's model; None: anonymous) may see; None: all."""
    if user is None:
        return frozenset({"public"})
    if registry_admin(user):
        return None
    groups = user.get("groups") or ()
    return frozenset({"public", "users", *(f"project:{g}" for g in groups)})


def can_see(visibility: str, user: Mapping[str, Any] | None) -> bool:
    """Whether ``user`` may see an entry of ``visibility``."""
    scope = viewer_scope(user)
    return scope is None or visibility in scope

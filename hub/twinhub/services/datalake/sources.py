"""Federated STAC sources: other catalogues searched through the platform's one STAC API.

A source is a STAC API (``kind="api"``) or a static catalogue served over HTTP
(``kind="static"``, its root ``catalog.json``/``collection.json``).  Configured by operators
only (``c.TwinhubDataLake.sources`` or ``twinhub up --stac-source NAME=URL``), never by
users: the platform contacts exactly the origins listed here (the source's own origin and its
``asset_origins``) and nothing a user or a remote document names.

Assets of remote items are read through the rolling cache (:mod:`twinhub.services.cache`) at
``<cache>/assets/<source>/<host[:port]>/<path>``: the source name and the host pick a
configured origin, so a cache URL can never name an address that is not configured.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from twinlab.contract import LOCAL_SOURCE

#: The local lake's name in ``twinhub:source`` and in the ``sources`` search parameter.
LOCAL = LOCAL_SOURCE
KINDS = ("api", "static")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
KEYS = ("name", "url", "kind", "collections", "headers", "asset_origins", "timeout")


class SourceError(ValueError):
    """A source definition (or a URL checked against the sources) is not acceptable."""


def origin(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL, lower-cased, default ports dropped.

    Raises SourceError for anything else, including what ``urlsplit`` itself cannot parse
    (``https://[``): URLs come from remote documents, and one bad one must not escape as a
    bare ValueError from deep inside a search.
    """
    if not isinstance(url, str):
        raise SourceError(f"{url!r} is not a URL (a {type(url).__name__})")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as e:
        raise SourceError(f"{url[:200]!r} is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not hostname:
        raise SourceError(f"{url!r} is not an http(s) URL with a host")
    if parts.username or parts.password:
        raise SourceError(f"{url!r} carries credentials in the URL: put them in 'headers'")
    host = hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError as e:
        raise SourceError(f"{url!r} has a bad port: {e}") from None
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def netloc(origin_url: str) -> str:
    """``host[:port]`` of an origin: the path segment that names it in cache URLs."""
    return origin_url.split("://", 1)[1]


@dataclass(frozen=True)
class StacSource:
    """One federated catalogue, as the operator configured it."""

    name: str
    url: str
    kind: str = "api"
    #: Collections exposed to users; empty: all the source has.
    collections: tuple[str, ...] = ()
    #: HTTP headers (e.g. Authorization; secret) sent only to the source's own origin: never to
    #: its ``asset_origins``, never after a redirect to another origin.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    #: Origins (``scheme://host[:port]``) assets may be fetched from, besides the source's own.
    asset_origins: tuple[str, ...] = ()
    #: Seconds a search of this source may take before the answer goes on without it.
    timeout: float = 5.0

    @property
    def origin(self) -> str:
        return origin(self.url)

    @property
    def origins(self) -> tuple[str, ...]:
        """Every origin the platform may contact for this source, its own first."""
        own = self.origin
        return (own, *(o for o in self.asset_origins if o != own))

    def allows(self, url: str) -> bool:
        """True when ``url`` is on one of this source's configured origins (assets)."""
        try:
            return origin(url) in self.origins
        except SourceError:
            return False

    def is_own(self, url: str) -> bool:
        """True when ``url`` is on the source's own origin: the only place API and crawl
        traffic (searches, next links, child/item links) and the source's headers go."""
        try:
            return origin(url) == self.origin
        except SourceError:
            return False

    def scrub(self, text: str) -> str:
        """``text`` (a remote error body, an exception) with the source's header values
        blanked, whole and their credential part (``Bearer <this>``): a remote server may
        echo what it was sent, and such text ends up in answers users read."""
        secrets: set[str] = set()
        for value in self.headers.values():
            secrets.add(value.strip())
            # the parts after an auth scheme ("Bearer", "Basic"): the scheme itself is no secret
            secrets.update(part for part in value.split()[1:] if len(part) >= 6)
        for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
            text = text.replace(secret, "[redacted]")
        return text

    def public(self) -> dict[str, Any]:
        """What users may see of the source (no headers)."""
        return {
            "name": self.name,
            "url": self.url,
            "kind": self.kind,
            "collections": list(self.collections),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, for the services' 0600 config files."""
        return {
            "name": self.name,
            "url": self.url,
            "kind": self.kind,
            "collections": list(self.collections),
            "headers": dict(self.headers),
            "asset_origins": list(self.asset_origins),
            "timeout": self.timeout,
        }


def make_source(spec: Mapping[str, Any]) -> StacSource:
    """A :class:`StacSource` from a config dict, checking every field (SourceError names it)."""
    if not isinstance(spec, Mapping):
        raise SourceError(f"a STAC source must be a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise SourceError(f"unknown key(s) {unknown} in STAC source; known: {', '.join(KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name) or name == LOCAL:
        raise SourceError(
            f"STAC source name {name!r} must be 1-40 characters a-z, 0-9, '-' (not {LOCAL!r})"
        )
    url = spec.get("url")
    if not isinstance(url, str):
        raise SourceError(f"STAC source {name!r}: 'url' must be a string")
    origin(url)  # raises on a non-http(s) URL or credentials in it
    kind = spec.get("kind") or ("static" if urlsplit(url).path.endswith(".json") else "api")
    if kind not in KINDS:
        raise SourceError(f"STAC source {name!r}: kind {kind!r} is not one of {KINDS}")
    collections = spec.get("collections") or ()
    if isinstance(collections, str) or not all(isinstance(c, str) and c for c in collections):
        raise SourceError(f"STAC source {name!r}: 'collections' must be a list of ids")
    headers = spec.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise SourceError(f"STAC source {name!r}: 'headers' must map strings to strings")
    asset_origins = tuple(origin(o) for o in (spec.get("asset_origins") or ()))
    timeout = spec.get("timeout", 5.0)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise SourceError(f"STAC source {name!r}: 'timeout' must be a positive number")
    return StacSource(
        name=name,
        url=url,
        kind=kind,
        collections=tuple(collections),
        headers=dict(headers),
        asset_origins=asset_origins,
        timeout=float(timeout),
    )


def make_sources(specs: Iterable[Mapping[str, Any]]) -> list[StacSource]:
    """All sources, checked; names must be unique."""
    out: list[StacSource] = []
    for spec in specs:
        src = make_source(spec)
        if any(s.name == src.name for s in out):
            raise SourceError(f"STAC source name {src.name!r} is configured twice")
        out.append(src)
    return out


def parse_source_arg(text: str) -> dict[str, Any]:
    """``NAME=URL`` (the ``--stac-source`` option) as a source dict."""
    name, sep, url = text.partition("=")
    if not sep or not name or not url:
        raise SourceError(f"--stac-source wants NAME=URL, got {text!r}")
    spec = {"name": name.strip(), "url": url.strip()}
    make_source(spec)
    return spec


# ---- cache URLs ------------------------------------------------------------------------------
def cache_path(source: StacSource, href: str) -> str:
    """``<source>/<host[:port]>/<path>[?query]`` for ``href``, the part after ``assets/`` in
    a cache URL; SourceError when ``href`` is not on one of the source's origins."""
    if not source.allows(href):
        raise SourceError(
            f"{href!r} is not on a configured origin of source {source.name!r} "
            f"({', '.join(source.origins)})"
        )
    parts = urlsplit(href)
    path = quote(unquote(parts.path.lstrip("/")), safe="/-_.~")
    out = f"{source.name}/{netloc(origin(href))}/{path}"
    return f"{out}?{parts.query}" if parts.query else out


def href_from_cache_path(sources: Mapping[str, StacSource], path: str, query: str = "") -> str:
    """The remote URL a cache path stands for (inverse of :func:`cache_path`).

    Refuses (SourceError) an unknown source, a host not among its origins, and '..' or empty
    segments: the result is always on a configured origin.
    """
    name, _, rest = path.partition("/")
    host, _, key = rest.partition("/")
    source = sources.get(name)
    if source is None:
        raise SourceError(f"unknown source {name!r}")
    matches = [o for o in source.origins if netloc(o) == host.lower()]
    if not matches:
        raise SourceError(f"{host!r} is not a configured origin of source {name!r}")
    segments = unquote(key).split("/")
    if not key or any(s in ("", ".", "..") for s in segments):
        raise SourceError(f"bad asset path {key!r}: empty, '.' or '..' segments")
    url = f"{matches[0]}/{quote('/'.join(segments), safe='/-_.~')}"
    return f"{url}?{query}" if query else url

"""Search parameters of a federated search, read once from a GET query or a POST body.

The lake's own search gets the request as the client sent it (stac-fastapi-pgstac parses it
again); remote sources and static catalogues get this normalised form: CQL2 always as JSON,
the datetime as an interval, lists as lists.  Bad input raises :class:`BadRequest` naming it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from twinlab.contract import FreeTextQuery

from ...asgi import BadRequest
from ..input_limits import check_bbox, check_filter, check_limit

#: stac-fastapi's default page size: the same here, so a federated page is as long as a local one.
DEFAULT_LIMIT = 10
#: Parameters this layer consumes; the lake never sees them.
OWN_KEYS = ("sources", "token")

Interval = tuple[dt.datetime | None, dt.datetime | None]
#: Key in the ASGI scope's state of a search's :class:`FreeText` (set by :mod:`..free_text`).
FREE_TEXT_STATE = "twinhub.free_text"


@dataclass(frozen=True)
class FreeText:
    """A search's free text (``q``) for the sources that are not the lake: the lake gets it
    as a CQL2 filter on its search text (:mod:`..free_text`); static catalogues and remote
    APIs get the request's own filter (``own``), remote APIs the client's ``q`` as it was
    written (they interpret it, the free-text extension), and every item they give is checked
    here by the platform's rules (:meth:`accepts`). ``exact``: the ranking phase (True: only
    items whose parameter ``q`` names, False: the others, None: no ranking)."""

    query: FreeTextQuery
    q: str
    own: dict[str, Any] | None
    exact: bool | None = None

    def accepts(self, item: Mapping[str, Any]) -> bool:
        if not self.query.matches(item):
            return False
        return self.exact is None or self.query.named(item) == self.exact


@dataclass
class SearchParams:
    method: str
    #: What the client sent, minus ``sources``/``token``: GET as (key, value) pairs, POST a dict.
    raw: Any
    collections: list[str] | None = None
    ids: list[str] | None = None
    bbox: list[float] | None = None
    datetime: str | None = None
    interval: Interval | None = None
    filter: dict[str, Any] | None = None
    limit: int = DEFAULT_LIMIT
    token: str | None = None
    sources: list[str] | None = None
    intersects: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: Free text, when the search has one: what the other sources get instead of ``filter``.
    free_text: FreeText | None = None

    @property
    def source_filter(self) -> dict[str, Any] | None:
        """The filter for sources other than the lake (without the lake's free-text filter)."""
        return self.free_text.own if self.free_text is not None else self.filter

    def fingerprint(self, sources: list[str]) -> str:
        """A digest of what decides the result set (not ``limit``, not the token), with the
        sources searched: the paging token is bound to it."""
        interval = [d.isoformat() if d else None for d in self.interval or ()]
        doc = [self.collections, self.ids, self.bbox, interval, self.filter, sorted(sources)]
        raw = json.dumps(doc, separators=(",", ":"), sort_keys=True, default=str)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def remote_body(self, limit: int, collections: list[str] | None) -> dict[str, Any]:
        """The POST /search body for a remote STAC API."""
        body: dict[str, Any] = {"limit": limit}
        if collections:
            body["collections"] = collections
        if self.ids:
            body["ids"] = self.ids
        if self.bbox:
            body["bbox"] = self.bbox
        if self.datetime:
            body["datetime"] = self.datetime
        if self.source_filter is not None:
            body["filter"] = self.source_filter
            body["filter-lang"] = "cql2-json"
        if self.free_text is not None:
            body["q"] = self.free_text.q
        return body

    def remote_query(self, limit: int, collections: list[str] | None) -> dict[str, str]:
        """The same search as GET parameters (APIs without POST /search)."""
        q = {"limit": str(limit)}
        if collections:
            q["collections"] = ",".join(collections)
        if self.ids:
            q["ids"] = ",".join(self.ids)
        if self.bbox:
            q["bbox"] = ",".join(f"{v:g}" for v in self.bbox)
        if self.datetime:
            q["datetime"] = self.datetime
        if self.source_filter is not None:
            q["filter"] = json.dumps(self.source_filter, separators=(",", ":"))
            q["filter-lang"] = "cql2-json"
        if self.free_text is not None:
            q["q"] = self.free_text.q
        return q


def _list(value: Any, name: str) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        out = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        out = [v for v in value if v]
    else:
        raise BadRequest(f"{name} must be a list of strings (or a comma-separated string)")
    return out or None


def parse_instant(text: str, whole: str) -> dt.datetime | None:
    t = text.strip()
    if t in ("", ".."):
        return None
    try:
        d = dt.datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise BadRequest(
            f"datetime {whole!r}: {t!r} is not an RFC 3339 timestamp (e.g. "
            "2020-01-01T00:00:00Z, 2020-01-01T00:00:00Z/.. for an open end)"
        ) from None
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


def parse_interval(value: Any) -> Interval | None:
    """``"a/b"`` (``..`` or empty: open), or one instant, as a (start, end) pair."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"datetime must be a string, got {value!r}")
    parts = value.split("/")
    if len(parts) == 1:
        d = parse_instant(parts[0], value)
        if d is None:
            raise BadRequest(f"datetime {value!r} is neither an instant nor an interval")
        return d, d
    if len(parts) != 2:
        raise BadRequest(f"datetime {value!r} must be one instant or 'start/end'")
    start, end = parse_instant(parts[0], value), parse_instant(parts[1], value)
    if start is None and end is None:
        raise BadRequest(f"datetime {value!r} has no start and no end")
    if start is not None and end is not None and start > end:
        raise BadRequest(f"datetime {value!r}: start is after end")
    return start, end


def parse_filter(value: Any, lang: str | None) -> dict[str, Any] | None:
    """A CQL2 filter (text or JSON, as the filter extension allows) as checked CQL2-JSON."""
    if value is None or value == "":
        return None
    # cql2 overflows the C stack on deep or very long filters: bound them before it parses
    check_filter(value)
    import cql2  # start-up cost: only searches with a filter need it

    try:
        if isinstance(value, Mapping):
            expr = cql2.parse_json(json.dumps(value))
        elif isinstance(value, str):
            text = value.strip()
            json_like = text.startswith("{")  # CQL2-JSON is an object, whatever the lang
            expr = cql2.parse_json(text) if json_like else cql2.parse_text(text)
        else:
            raise BadRequest(f"filter must be CQL2 text or CQL2-JSON, got {value!r}")
        expr.validate()
    except RecursionError:
        raise BadRequest("filter is nested too deeply") from None
    except (cql2.ParseError, cql2.ValidationError, ValueError) as e:
        if isinstance(e, BadRequest):
            raise
        raise BadRequest(f"filter is not valid CQL2: {str(e)[:300]}") from None
    return expr.to_json()


def from_query(query_string: str, max_limit: int) -> SearchParams:
    pairs = parse_qsl(query_string, keep_blank_values=True)
    last = dict(pairs)
    p = SearchParams(method="GET", raw=[(k, v) for k, v in pairs if k not in OWN_KEYS])
    _fill(p, last, max_limit, default_lang="cql2-text")
    return p


def from_body(body: Any, max_limit: int) -> SearchParams:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest("a search body must be a JSON object")
    p = SearchParams(method="POST", raw={k: v for k, v in body.items() if k not in OWN_KEYS})
    _fill(p, body, max_limit, default_lang="cql2-json")
    return p


def _fill(p: SearchParams, src: Mapping[str, Any], max_limit: int, default_lang: str) -> None:
    p.collections = _list(src.get("collections"), "collections")
    p.ids = _list(src.get("ids"), "ids")
    p.sources = _list(src.get("sources"), "sources")
    if src.get("bbox") not in (None, ""):
        p.bbox = check_bbox(src["bbox"])
    # Remote sources get no geometry filter: the middleware refuses it unless only the lake
    # is searched (stac-fastapi-pgstac handles it there).
    p.intersects = src.get("intersects") not in (None, "")
    dtv = src.get("datetime")
    p.interval = parse_interval(dtv)
    p.datetime = dtv or None
    p.filter = parse_filter(src.get("filter"), src.get("filter-lang") or default_lang)
    if src.get("limit") not in (None, ""):
        p.limit = check_limit(src["limit"], max_limit)
    token = src.get("token")
    if token is not None and not isinstance(token, str):
        raise BadRequest("token must be a string")
    p.token = token or None

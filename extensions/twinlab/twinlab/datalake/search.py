"""Finding data: a pystac-client for the platform's STAC API, and ``search``.

``search(param="2t", resolution="standard")`` turns keyword arguments into CQL2-JSON
equality filters ("and"-ed with ``filter=``), because that is what the STAC filter
extension standardises; text filters are parsed with the ``cql2`` library (the reference
CQL2 parser) so both kinds combine into one JSON expression the server checks once.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias

from twinlab import contract
from twinlab.contract import (
    FIELD_SOURCE,
    FIELD_SOURCES,
    FIELD_WARNINGS,
    LOCAL_SOURCE,
    BBox,
    DatetimeLike,
    Sources,
    check_datetime,
)

from .config import DatalakeError, StacAuthError, StacUnreachable, api_token, stac_url
from .freetext import FreeText, server_supports

#: The platform's name for its own lake in ``sources`` and ``twinhub:source``.
LOCAL = LOCAL_SOURCE
SOURCE_PROPERTY = FIELD_SOURCE


class SourceWarning(UserWarning):
    """A federated source did not answer (down, slow, refused): the results lack its items."""


@functools.cache
def _item_collection_class() -> Any:
    """SearchResult, defined on first use: pystac is imported lazily (notebook start-up)."""
    from pystac import ItemCollection  # start-up cost (see above)

    class SearchResult(ItemCollection):
        """The matching items (a ``pystac.ItemCollection``), plus what the federated search
        said: ``warnings`` (one string per source that failed) and ``sources`` (per source:
        ``status`` ok/error/timeout/skipped and how many items it ``returned``)."""

        warnings: list[str]
        sources: dict[str, dict[str, Any]]

        def by_source(self) -> dict[str, list[Any]]:
            """The items grouped by the source they come from (``local``: the lake)."""
            out: dict[str, list[Any]] = {}
            for item in self.items:
                out.setdefault(item_source(item), []).append(item)
            return out

    return SearchResult


def item_source(item: Any) -> str:
    """Where a search result comes from: ``local`` (the lake) or a federated source's name."""
    props = item.get("properties", {}) if isinstance(item, Mapping) else item.properties
    return str(props.get(SOURCE_PROPERTY) or LOCAL)


def check_sources(sources: Sources | None) -> list[str] | None:
    """``sources`` as a list of names (a comma-separated string is accepted)."""
    if sources is None:
        return None
    if isinstance(sources, str):
        sources = [s.strip() for s in sources.split(",") if s.strip()]
    if not isinstance(sources, Sequence) or not all(
        isinstance(s, str) and re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", s) for s in sources
    ):
        raise ValueError(
            f"sources must be source names like 'local' or 'my-source' (a list or a "
            f"comma-separated string), got {sources!r}"
        )
    if not sources:
        raise ValueError("sources is empty: leave it out to search every source")
    return list(sources)


#: A CQL2 filter: text (``"param = '2t'"``) or CQL2-JSON (a dict, or its JSON text).
FilterLike: TypeAlias = str | Mapping[str, Any]
#: Seconds to wait for the STAC service (connect, read).
TIMEOUT = (10, 120)
#: A property name usable in CQL2 (letters, digits, ``_``, ``:``, ``.``, ``-``).
_PROPERTY = re.compile(r"^[A-Za-z_][A-Za-z0-9_:.\-]*$")


@contextlib.contextmanager
def stac_errors(url: str) -> Iterator[None]:
    """Turn pystac-client's errors into ones that name the problem and what to do."""
    # start-up cost: pystac and pystac-client load on the first request, not on import
    from pystac import STACError
    from pystac_client.exceptions import APIError

    try:
        yield
    except APIError as e:
        status = getattr(e, "status_code", None)
        text = str(e).strip().replace("\n", " ")[:300]
        if status in (401, 403):
            raise StacAuthError(
                f"the STAC API at {url} refused the request (HTTP {status}): the token is "
                f"missing, wrong or lacks access to the service ({text})"
            ) from None
        if status is None:
            raise StacUnreachable(f"cannot reach the STAC API at {url}: {text}") from None
        raise DatalakeError(f"the STAC API at {url} answered HTTP {status}: {text}") from None
    except (STACError, KeyError, ValueError) as e:  # JSON that is not STAC
        if isinstance(e, DatalakeError):
            raise
        raise StacUnreachable(
            f"{url} does not answer like a STAC API ({type(e).__name__}: {e}); is the URL "
            "right, and is the token accepted (a login page instead of JSON)?"
        ) from None


def client(
    url: str | None = None,
    token: str | None = None,
    timeout: float | tuple[float, float] = TIMEOUT,
) -> Any:
    """A ``pystac_client.Client`` for the STAC API (``$TWINHUB_STAC_URL`` by default),
    sending ``Authorization: token $JUPYTERHUB_API_TOKEN`` with every request (and waiting
    ``timeout`` seconds for each answer)."""
    # start-up cost: on the first request
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    url = stac_url(url)
    tok = api_token(token)
    headers = {"Authorization": f"token {tok}"} if tok else {}
    io = StacApiIO(headers=headers, timeout=timeout)
    # The token goes to the platform's STAC API only: not through a proxy named in the
    # environment, not replaced from ~/.netrc, not after a redirect.
    io.session.trust_env = False
    io.session.max_redirects = 0
    with stac_errors(url):
        return Client.open(url, stac_io=io)


# ---- input checks and CQL2 assembly (pure functions) --------------------------------------
def check_bbox(bbox: BBox | None) -> list[float] | None:
    """``bbox`` as 4 (2-D) or 6 (3-D) floats, west/south/(low)/east/north/(high); None
    stays None. The rules are the hub's too (:func:`twinlab.contract.check_bbox`)."""
    return None if bbox is None else contract.check_bbox(bbox)


def _cql2_json(filter: FilterLike) -> dict[str, Any]:
    """A CQL2 filter (text, or JSON as dict/str) as a validated CQL2-JSON dict."""
    import cql2  # start-up cost: a compiled parser, needed only with a filter

    try:
        if isinstance(filter, Mapping):
            expr = cql2.parse_json(json.dumps(filter))
        elif isinstance(filter, str):
            text = filter.strip()
            expr = cql2.parse_json(text) if text.startswith("{") else cql2.parse_text(text)
        else:
            raise ValueError(f"filter must be CQL2 text or a CQL2-JSON dict, got {filter!r}")
        expr.validate()
    except (cql2.ParseError, cql2.ValidationError) as e:
        raise ValueError(f"filter {filter!r} is not valid CQL2: {e}") from None
    return expr.to_json()


def _equals(name: str, value: Any) -> dict[str, Any]:
    if not _PROPERTY.match(name):
        raise ValueError(f"property name {name!r} is not usable in a filter")
    prop = {"property": name}
    if isinstance(value, (list, tuple, set, frozenset)):
        values = list(value)
        if not values:
            raise ValueError(f"property {name}: an empty list matches nothing")
        for v in values:
            _scalar(name, v)
        return {"op": "in", "args": [prop, values]}
    if value is None:
        return {"op": "isNull", "args": [prop]}
    return {"op": "=", "args": [prop, _scalar(name, value)]}


def _scalar(name: str, value: Any) -> Any:
    if isinstance(value, bool | int | float | str):
        return value
    raise ValueError(
        f"property {name}={value!r}: only strings, numbers, booleans, None or lists of "
        "those can be matched (use filter= for anything else)"
    )


def build_filter(filter: FilterLike | None = None, **properties: Any) -> dict[str, Any] | None:
    """One CQL2-JSON expression: ``filter`` and ``property = value`` for each keyword
    (a list value means "in", ``None`` means "is null")."""
    parts = [] if filter is None else [_cql2_json(filter)]
    parts += [_equals(k, v) for k, v in sorted(properties.items())]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"op": "and", "args": parts}


def search(
    collections: str | Sequence[str] | None = None,
    bbox: BBox | None = None,
    datetime: DatetimeLike | None = None,
    filter: FilterLike | None = None,
    q: str | Sequence[str] | None = None,
    ids: str | Sequence[str] | None = None,
    max_items: int | None = 100,
    limit: int = 100,
    *,
    sources: Sources | None = None,
    url: str | None = None,
    token: str | None = None,
    **properties: Any,
) -> Any:
    """Search the lake's STAC API; returns a ``pystac.ItemCollection`` (a ``SearchResult``).

    The platform's search spans the lake and every federated source (``sources=["local",
    "name", ...]`` picks some; ``local`` is the lake).  Each item says where it comes from
    (:func:`item_source`, ``properties["twinhub:source"]``); a source that did not answer is
    reported as a :class:`SourceWarning` and in the result's ``warnings``.

    ``**properties`` are equality filters on item properties (``param="2t"``,
    ``resolution="standard"``; lists mean "any of").  ``q`` is free text: every word must
    match unless ``OR`` separates them (``"2t healpix"``, ``"2t OR tp"``), ``"quoted
    phrases"``, ``-word`` excludes; words match variables' long names and units
    (``"temperature"`` finds ``2t``), titles, descriptions, collections and grids, and items
    of the parameter named come first (:func:`twinlab.contract.parse_free_text`). An API
    without item-search free text gets it applied here.  ``max_items=None`` fetches every
    match, page by page (``limit`` items per page).
    """
    bbox = check_bbox(bbox)
    check_datetime(datetime)
    cql = build_filter(filter, **properties)
    if max_items is not None and (not isinstance(max_items, int) or max_items < 1):
        raise ValueError(f"max_items must be a positive integer or None, got {max_items!r}")
    if not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ValueError(f"limit (page size) must be an integer in 1..10000, got {limit!r}")
    if q is not None and not isinstance(q, str):
        q = ",".join(str(t) for t in q)  # the free-text extension's list: any of these terms
    text = FreeText.parse(q) if q is not None else None
    names = check_sources(sources)
    cat = client(url, token)
    kw: dict[str, Any] = dict(
        collections=collections,
        bbox=bbox,
        datetime=datetime,
        ids=ids,
        max_items=max_items,
        limit=limit,
    )
    if cql is not None:
        kw.update(filter=cql, filter_lang="cql2-json")
    kw = {k: v for k, v in kw.items() if v is not None}
    root = stac_url(url)
    with stac_errors(root):
        client_side = text is not None and not server_supports(cat)
        if client_side:
            kw["max_items"] = None  # the matches may be anywhere among the results
        found = cat.search(method="POST", **kw)  # checks the API's conformance classes
        # pystac-client 0.9's item search has no free-text or sources argument; for POST,
        # get_parameters() is the request body itself, so they are added there (tests check
        # that they reach the server)
        if q is not None and not client_side:
            found.get_parameters()["q"] = q
        if names is not None:
            found.get_parameters()["sources"] = names
        return _collect(found, max_items, text if client_side else None)


def _pages(found: Any) -> Iterator[dict[str, Any]]:
    """Every page of a search as JSON, the empty ones included: pystac-client's own page
    iterator stops silently at an empty page, whose warnings would be lost."""
    from pystac import Link  # start-up cost: on the first request

    io = found._stac_io  # the client's StacApiIO (headers, timeout) for the next links
    params = found.get_parameters()
    page = io.read_json(found.url, method=found.method, parameters=params)
    while True:
        yield page
        nxt = next((lk for lk in page.get("links", []) if lk.get("rel") == "next"), None)
        if nxt is None:
            return
        page = io.read_json(Link.from_dict(nxt), parameters=params)


def _collect(found: Any, max_items: int | None, text: FreeText | None) -> Any:
    """The matches (up to ``max_items``; only those matching ``text`` when the server has
    no free text) as a SearchResult, with every page's source warnings."""
    from pystac import Item  # start-up cost: on the first request

    kept: list[Any] = []
    said: list[str] = []
    statuses: dict[str, dict[str, Any]] = {}
    for page in _pages(found):
        for w in page.get(FIELD_WARNINGS) or ():
            if isinstance(w, str) and w not in said:
                said.append(w)
        for name, st in (page.get(FIELD_SOURCES) or {}).items():
            if not isinstance(st, Mapping):
                continue
            have = statuses.setdefault(name, {**st, "returned": 0})
            if st.get("status") != "ok":  # a failure on any page is what the user must see
                have.update({k: v for k, v in st.items() if k != "returned"})
            have["returned"] += int(st.get("returned") or 0)
        for d in page.get("features") or ():
            item = Item.from_dict(d, root=found.client, preserve_dict=False)
            if text is not None and not text.matches(item):
                continue
            kept.append(item)
            if text is None and max_items is not None and len(kept) >= max_items:
                break
        if text is None and max_items is not None and len(kept) >= max_items:
            break
    if text is not None:  # matched here: every match is read, exact parameters first
        kept.sort(key=text.rank)
        kept = kept if max_items is None else kept[:max_items]
    result = _item_collection_class()(kept)
    result.warnings, result.sources = said, statuses
    for w in said:
        warnings.warn(w, SourceWarning, stacklevel=3)
    return result

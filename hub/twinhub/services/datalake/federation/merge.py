"""Merging pages of several sources into one page, and the one ``next`` token that resumes.

Each source is a stream of items, newest first (pgstac's default order; static catalogues
are sorted so here; remote APIs are taken in the order they answer).  A federated page is a
k-way merge of the sources' heads by datetime, ``limit`` items long.  The token records, for
each source with more to give, the cursor of the page it last fetched, how many items of
that page were already returned and the page size used, so the next request fetches the
same page again and skips those: every match is returned exactly once, and a source that
failed on one page keeps its place and is tried again on the next.

Tokens are opaque to clients and signed (HMAC): they carry remote URLs, and although every
URL is checked against the source's origins before use, a forged token is refused outright.
A token is also bound to its search (a digest of the normalised parameters,
:meth:`.params.SearchParams.fingerprint`): sent with a changed filter it would resume each
source at a place that means nothing for the new query, so that is a 400.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import heapq
import hmac
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from ...asgi import BadRequest

TOKEN_PREFIX = "fed1."


@dataclass
class Cursor:
    """Where one source's stream stands."""

    #: The backend's own cursor for the page to fetch (None: the first page).
    page: Any = None
    #: Items of that page already returned to the client.
    skip: int = 0
    #: Page size that page was fetched with (None: the request's limit).
    size: int | None = None

    def to_list(self) -> list[Any]:
        return [self.page, self.skip, self.size]

    @classmethod
    def from_list(cls, value: Any) -> Cursor:
        if (
            not isinstance(value, list)
            or len(value) != 3
            or not isinstance(value[1], int)
            or value[1] < 0
            or not (value[2] is None or (isinstance(value[2], int) and value[2] > 0))
        ):
            raise BadRequest("the search token is malformed")
        return cls(value[0], value[1], value[2])


@dataclass
class Page:
    """What one source answered for one cursor."""

    items: list[dict[str, Any]]
    next: Any = None  # the backend cursor of the following page, None at the end
    matched: int | None = None  # numberMatched, when the source says
    extra: dict[str, Any] = field(default_factory=dict)


# ---- tokens ----------------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_token(cursors: dict[str, Cursor], key: bytes, query: str = "") -> str:
    """A token resuming ``cursors`` for the search whose fingerprint is ``query``."""
    doc = {"q": query, "c": {name: c.to_list() for name, c in cursors.items()}}
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    data = zlib.compress(raw, 6)
    sig = hmac.new(key, data, hashlib.sha256).digest()[:16]
    return f"{TOKEN_PREFIX}{_b64(data)}.{_b64(sig)}"


def decode_token(token: str, key: bytes, query: str = "") -> dict[str, Cursor]:
    """The cursors in a token made by :func:`encode_token` with the same key and query."""
    if not token.startswith(TOKEN_PREFIX):
        raise BadRequest("the search token was not made by this API")
    body, _, sig = token[len(TOKEN_PREFIX) :].partition(".")
    try:
        data, mac = _unb64(body), _unb64(sig)
    except (ValueError, TypeError):
        raise BadRequest("the search token is malformed") from None
    if not hmac.compare_digest(mac, hmac.new(key, data, hashlib.sha256).digest()[:16]):
        raise BadRequest("the search token is not valid (altered, or from another platform)")
    try:
        doc = json.loads(zlib.decompress(data, bufsize=1 << 16))
    except (zlib.error, ValueError):
        raise BadRequest("the search token is malformed") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("c"), dict):
        raise BadRequest("the search token is malformed")
    if doc.get("q") != query:
        raise BadRequest(
            "the search token belongs to another search: send it with the same parameters "
            "as the page it came from (or leave it out to start again)"
        )
    return {str(k): Cursor.from_list(v) for k, v in doc["c"].items()}


# ---- ordering and merging ----------------------------------------------------------------------
def timestamp(item: dict[str, Any]) -> float:
    """The item's datetime (or start) as seconds; -inf when it has none (sorted last)."""
    props = item.get("properties")
    if not isinstance(props, dict):  # a malformed remote item: sorted last, never a 500
        return float("-inf")
    text = props.get("datetime") or props.get("start_datetime")
    if not isinstance(text, str):
        return float("-inf")
    try:
        d = dt.datetime.fromisoformat(text.replace("z", "Z"))
        if d.tzinfo is None:
            d = d.replace(tzinfo=dt.UTC)
        return d.timestamp()
    except (ValueError, OverflowError):
        return float("-inf")


def merge(
    heads: dict[str, list[dict[str, Any]]],
    order: list[str],
    limit: int,
    more: frozenset[str] | set[str] = frozenset(),
):
    """Up to ``limit`` items from the sources' available items, newest first.

    ``more``: sources whose stream goes on after the items given here.  When one of them
    runs out, the merge stops: its next page may hold items newer than the other heads.
    Returns ``(taken, consumed)``: ``taken`` a list of ``(source, item)``, ``consumed`` how
    many items of each source were taken (always a prefix of its list).  Ties go to the
    source listed first in ``order``.
    """
    rank = {name: i for i, name in enumerate(order)}
    heap: list[tuple[float, int, int, str]] = []
    for name, items in heads.items():
        if items:
            heap.append((-timestamp(items[0]), rank.get(name, len(rank)), 0, name))
    heapq.heapify(heap)
    taken: list[tuple[str, dict[str, Any]]] = []
    consumed = {name: 0 for name in heads}
    while heap and len(taken) < limit:
        _, r, pos, name = heapq.heappop(heap)
        items = heads[name]
        taken.append((name, items[pos]))
        consumed[name] = pos + 1
        if pos + 1 < len(items):
            heapq.heappush(heap, (-timestamp(items[pos + 1]), r, pos + 1, name))
        elif name in more:
            break
    return taken, consumed


def advance(cursor: Cursor, page: Page, consumed: int, size: int) -> Cursor | None:
    """The cursor after returning ``consumed`` more items of ``page`` (fetched at ``cursor``
    with page size ``size``); None when the source has nothing more."""
    if cursor.skip + consumed < len(page.items):
        return Cursor(cursor.page, cursor.skip + consumed, size)
    if page.next is None:
        return None
    return Cursor(page.next, 0, None)

"""Remote STAC APIs: item search forwarded (POST /search, GET when POST is refused),
collections and single items read; every URL checked against the source's own origin, every
answer read up to :data:`.fetch.MAX_PAGE_BYTES`."""

from __future__ import annotations

import copy
import time
from typing import Any
from urllib.parse import quote, urljoin

import httpx

from ..sources import StacSource
from .fetch import MAX_PAGE_BYTES, SourceFailure, check_url, decode, request
from .merge import Page
from .params import SearchParams
from .shape import feature_problem, keep_valid

#: Seconds a remote API's collection list is reused.
COLLECTIONS_TTL = 30.0
MAX_COLLECTION_PAGES = 10


def _root(source: StacSource) -> str:
    return source.url if source.url.endswith("/") else source.url + "/"


class RemoteApi:
    def __init__(self, source: StacSource, client: httpx.AsyncClient) -> None:
        self.source = source
        self.client = client
        self._post_ok = True  # False once the API answered 405 to POST /search
        self._collections: tuple[float, list[tuple[dict[str, Any], str]]] | None = None

    def start(self) -> None:
        """Nothing to prepare: an API is asked at each search."""

    async def search(
        self, params: SearchParams, cursor: Any, size: int, collections: list[str] | None
    ) -> Page:
        src = self.source
        if cursor is None:
            url = urljoin(_root(src), "search")
            if self._post_ok:
                body = params.remote_body(size, collections)
                resp, raw = await request(
                    self.client, src, "POST", url, json_body=body, max_bytes=MAX_PAGE_BYTES
                )
                if resp.status_code == 405:
                    self._post_ok = False
            if not self._post_ok:
                query = params.remote_query(size, collections)
                resp, raw = await request(
                    self.client, src, "GET", url, params=query, max_bytes=MAX_PAGE_BYTES
                )
        else:
            method, url, body = _cursor_parts(cursor)
            check_url(src, url)
            resp, raw = await request(
                self.client, src, method, url, json_body=body, max_bytes=MAX_PAGE_BYTES
            )
        doc = decode(resp, raw, src, "its item search")
        feats = doc.get("features")
        if not isinstance(feats, list):
            raise SourceFailure(f"source {src.name!r}: the search answer has no 'features' list")
        items, dropped = keep_valid(feats, src)
        warnings = [dropped] if dropped else []
        if src.collections:  # whatever the API does with the filter, expose only these
            items = [f for f in items if f.get("collection") in src.collections]
        if params.free_text is not None:  # whatever the API made of q: the platform's rules
            items = [f for f in items if params.free_text.accepts(f)]
        matched = doc.get("numberMatched", (doc.get("context") or {}).get("matched"))
        nxt, warning = self._next_cursor(doc)
        if warning:
            warnings.append(warning)
        # All of them, even past `size`: an API that ignores `limit` puts the rest of this
        # page nowhere else, and the cursor's skip count walks through it
        return Page(
            items,
            next=nxt,
            matched=matched if isinstance(matched, int) else None,
            extra={"warnings": warnings},
        )

    def _next_cursor(self, doc: dict[str, Any]) -> tuple[Any, str | None]:
        """The remote ``next`` link as a cursor, only if it stays on the source's own origin: a
        link in a remote document must never make the platform contact another host (nor
        send the source's headers to one of its asset origins).
        Returns ``(cursor, warning)``; the warning says why a next link was not followed."""
        links = doc.get("links")
        for link in links if isinstance(links, list) else ():
            if not isinstance(link, dict) or link.get("rel") != "next":
                continue
            href = link.get("href")
            method = str(link.get("method") or "GET").upper()
            body = link.get("body") if method == "POST" else None
            if not isinstance(href, str) or not self.source.is_own(href):
                return None, (
                    f"source {self.source.name!r}: its next page link ({str(href)[:200]!r}) is "
                    f"not on the source's origin; not followed, results may be incomplete"
                )
            if method not in ("GET", "POST") or (method == "POST" and not isinstance(body, dict)):
                return None, f"source {self.source.name!r}: unusable next page link; not followed"
            return [method, href, body], None
        return None, None

    async def get_item(self, collection: str, item_id: str) -> tuple[dict[str, Any], str] | None:
        src = self.source
        if src.collections and collection not in src.collections:
            return None
        url = urljoin(
            _root(src), f"collections/{quote(collection, safe='')}/items/{quote(item_id, safe='')}"
        )
        resp, raw = await request(self.client, src, "GET", url, max_bytes=MAX_PAGE_BYTES)
        if resp.status_code == 404:
            return None
        doc = decode(resp, raw, src, url)
        why = feature_problem(doc)
        if why is not None:
            raise SourceFailure(
                src.scrub(f"source {src.name!r}: {url} is not a usable item: {why}")
            )
        return doc, url

    async def get_collections(self) -> list[tuple[dict[str, Any], str]]:
        if self._collections and time.monotonic() - self._collections[0] < COLLECTIONS_TTL:
            # copies: the caller annotates them in place, the cache must stay as read
            return copy.deepcopy(self._collections[1])
        src = self.source
        url: str | None = urljoin(_root(src), "collections")
        out: list[tuple[dict[str, Any], str]] = []
        for _ in range(MAX_COLLECTION_PAGES):
            if url is None:
                break
            resp, raw = await request(self.client, src, "GET", url, max_bytes=MAX_PAGE_BYTES)
            doc = decode(resp, raw, src, "its collection list")
            colls = doc.get("collections")
            for c in colls if isinstance(colls, list) else ():
                if not isinstance(c, dict) or not isinstance(c.get("id"), str):
                    continue
                if not src.collections or c["id"] in src.collections:
                    out.append((c, urljoin(_root(src), f"collections/{quote(c['id'], safe='')}")))
            url = None
            links = doc.get("links")
            for link in links if isinstance(links, list) else ():
                if isinstance(link, dict) and link.get("rel") == "next":
                    href = link.get("href")
                    if (
                        isinstance(href, str)
                        and src.is_own(href)
                        and link.get("method", "GET") == "GET"
                    ):
                        url = href
        self._collections = (time.monotonic(), out)
        return copy.deepcopy(out)


def _cursor_parts(cursor: Any) -> tuple[str, str, Any]:
    if (
        isinstance(cursor, list)
        and len(cursor) == 3
        and cursor[0] in ("GET", "POST")
        and isinstance(cursor[1], str)
        and (cursor[2] is None or isinstance(cursor[2], dict))
    ):
        return cursor[0], cursor[1], cursor[2]
    raise SourceFailure("the search token's cursor for this source is malformed")

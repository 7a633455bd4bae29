"""Remote STAC APIs: item search forwarded (POST /search, GET when POST is refused),
collections and single items read; every URL checked against the source's origins."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, urljoin

import httpx

from ..sources import StacSource
from .fetch import SourceFailure, check_url, decode, request
from .merge import Page
from .params import SearchParams

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
                resp, raw = await request(self.client, src, "POST", url, json_body=body)
                if resp.status_code == 405:
                    self._post_ok = False
            if not self._post_ok:
                query = params.remote_query(size, collections)
                resp, raw = await request(self.client, src, "GET", url, params=query)
        else:
            method, url, body = _cursor_parts(cursor)
            check_url(src, url)
            resp, raw = await request(self.client, src, method, url, json_body=body)
        doc = decode(resp, raw, src, "its item search")
        feats = doc.get("features")
        if not isinstance(feats, list):
            raise SourceFailure(f"source {src.name!r}: the search answer has no 'features' list")
        items = [f for f in feats if isinstance(f, dict) and f.get("type") == "Feature"]
        if src.collections:  # whatever the API does with the filter, expose only these
            items = [f for f in items if f.get("collection") in src.collections]
        matched = doc.get("numberMatched", (doc.get("context") or {}).get("matched"))
        nxt, warning = self._next_cursor(doc)
        # All of them, even past `size`: an API that ignores `limit` puts the rest of this
        # page nowhere else, and the cursor's skip count walks through it
        return Page(
            items,
            next=nxt,
            matched=matched if isinstance(matched, int) else None,
            extra={"warning": warning} if warning else {},
        )

    def _next_cursor(self, doc: dict[str, Any]) -> tuple[Any, str | None]:
        """The remote ``next`` link as a cursor, only if it stays on the source's origins: a
        link in a remote document must never make the platform contact another host.
        Returns ``(cursor, warning)``; the warning says why a next link was not followed."""
        for link in doc.get("links") or ():
            if not isinstance(link, dict) or link.get("rel") != "next":
                continue
            href = link.get("href")
            method = str(link.get("method") or "GET").upper()
            body = link.get("body") if method == "POST" else None
            if not isinstance(href, str) or not self.source.allows(href):
                return None, (
                    f"source {self.source.name!r}: its next page link ({str(href)[:200]!r}) is "
                    f"not on a configured origin; not followed, results may be incomplete"
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
        resp, raw = await request(self.client, src, "GET", url)
        if resp.status_code == 404:
            return None
        return decode(resp, raw, src, url), url

    async def get_collections(self) -> list[tuple[dict[str, Any], str]]:
        if self._collections and time.monotonic() - self._collections[0] < COLLECTIONS_TTL:
            return self._collections[1]
        src = self.source
        url: str | None = urljoin(_root(src), "collections")
        out: list[tuple[dict[str, Any], str]] = []
        for _ in range(MAX_COLLECTION_PAGES):
            if url is None:
                break
            resp, raw = await request(self.client, src, "GET", url)
            doc = decode(resp, raw, src, "its collection list")
            for c in doc.get("collections") or ():
                if not isinstance(c, dict) or not isinstance(c.get("id"), str):
                    continue
                if not src.collections or c["id"] in src.collections:
                    out.append((c, urljoin(_root(src), f"collections/{quote(c['id'], safe='')}")))
            url = None
            for link in doc.get("links") or ():
                if isinstance(link, dict) and link.get("rel") == "next":
                    href = link.get("href")
                    if (
                        isinstance(href, str)
                        and src.allows(href)
                        and link.get("method", "GET") == "GET"
                    ):
                        url = href
        self._collections = (time.monotonic(), out)
        return out


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

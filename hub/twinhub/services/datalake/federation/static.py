"""Static STAC catalogues served over HTTP: crawled, indexed in memory, searched here.

The crawl starts at the source's root (a Catalog or Collection document), follows ``child``
and ``item`` links whose targets are on the source's configured origins (relative hrefs are
resolved against the document they are in; anything else is skipped), and keeps every item
with the URL it was read from.  It runs when the service starts, again every
``refresh_s`` seconds, and when the root document changes.  Each search first re-reads the
root (conditionally, when it has an ETag): a catalogue that does not answer is reported as
down for that search, like an API source, rather than served from memory as if it were up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..sources import StacSource
from .annotate import absolute
from .fetch import SourceFailure, decode, request
from .matching import Matcher
from .merge import Page, timestamp
from .params import SearchParams

log = logging.getLogger("twinhub.federation")

#: At most this many documents are read in one crawl (a runaway or cyclic catalogue).
MAX_DOCUMENTS = 50_000
CONCURRENCY = 8


@dataclass
class Index:
    items: list[dict[str, Any]] = field(default_factory=list)  # sorted newest first
    urls: dict[tuple[str, str], str] = field(default_factory=dict)  # (collection, id) -> URL
    collections: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    built: float = 0.0
    skipped: list[str] = field(default_factory=list)


def _strip_fragment(url: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, p.path, p.query, ""))


class StaticCatalogue:
    def __init__(self, source: StacSource, client: httpx.AsyncClient, refresh_s: float) -> None:
        self.source = source
        self.client = client
        self.refresh_s = refresh_s
        self.index: Index | None = None
        self._root_digest = ""
        self._validators: dict[str, str] = {}
        self._crawl: asyncio.Task | None = None

    # -- crawling --------------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        """Crawl in the background (once at a time); the running crawl if there is one."""
        if self._crawl is None or self._crawl.done():
            self._crawl = asyncio.ensure_future(self._run_crawl())
            # a failed background crawl is logged by _run_crawl and reported by the next
            # search; retrieving it here keeps asyncio from logging it again at exit
            self._crawl.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._crawl

    async def _run_crawl(self) -> Index:
        try:
            idx = await self.crawl()
        except SourceFailure as e:
            log.warning("crawling %s failed: %s", self.source.name, e)
            raise
        self.index = idx
        log.info(
            "static source %s: %d items, %d collections",
            self.source.name,
            len(idx.items),
            len(idx.collections),
        )
        return idx

    async def _get(self, url: str) -> dict[str, Any]:
        resp, body = await request(self.client, self.source, "GET", url)
        return decode(resp, body, self.source, url)

    async def crawl(self) -> Index:
        src = self.source
        root_url = src.url
        root = await self._get(root_url)
        self._root_digest = hashlib.sha256(repr(sorted(root.items())).encode()).hexdigest()
        idx = Index()
        seen: set[str] = {_strip_fragment(root_url)}
        docs: list[tuple[str, dict[str, Any], str | None]] = [(root_url, root, None)]
        sem = asyncio.Semaphore(CONCURRENCY)
        count = 1

        async def fetch(url: str) -> tuple[str, dict[str, Any] | None]:
            async with sem:
                try:
                    return url, await self._get(url)
                except SourceFailure as e:
                    idx.skipped.append(str(e))
                    return url, None

        while docs:
            next_urls: list[tuple[str, str | None]] = []
            for url, doc, parent_coll in docs:
                kind = doc.get("type")
                coll_id = parent_coll
                if kind == "Collection" and isinstance(doc.get("id"), str):
                    coll_id = doc["id"]
                    if not src.collections or coll_id in src.collections:
                        idx.collections.setdefault(coll_id, (doc, url))
                if kind == "Feature":
                    self._add_item(idx, doc, url, parent_coll)
                    continue
                for link in doc.get("links") or ():
                    if not isinstance(link, dict) or link.get("rel") not in ("child", "item"):
                        continue
                    href = link.get("href")
                    if not isinstance(href, str):
                        continue
                    target = _strip_fragment(absolute(href, url))
                    if target in seen:
                        continue
                    seen.add(target)
                    if not src.allows(target):
                        idx.skipped.append(f"{target}: not on a configured origin, not read")
                        continue
                    next_urls.append((target, coll_id))
            if count + len(next_urls) > MAX_DOCUMENTS:
                raise SourceFailure(
                    f"source {src.name!r}: the catalogue has more than {MAX_DOCUMENTS} documents"
                )
            count += len(next_urls)
            fetched = await asyncio.gather(*(fetch(u) for u, _ in next_urls))
            parents = dict(next_urls)
            docs = [(u, d, parents[u]) for u, d in fetched if d is not None]
        idx.items.sort(key=lambda it: (timestamp(it), str(it.get("id"))), reverse=True)
        idx.built = time.monotonic()
        return idx

    def _add_item(self, idx: Index, item: dict[str, Any], url: str, coll: str | None) -> None:
        if not isinstance(item.get("id"), str):
            return
        item.setdefault("collection", coll)
        cid = item.get("collection")
        if self.source.collections and cid not in self.source.collections:
            return
        # hrefs become absolute now: the document's URL is not kept with the item
        for asset in (item.get("assets") or {}).values():
            if isinstance(asset, dict) and isinstance(asset.get("href"), str):
                asset["href"] = absolute(asset["href"], url)
        key = (str(cid), item["id"])
        if key in idx.urls:
            return
        idx.urls[key] = url
        idx.items.append(item)

    # -- availability ----------------------------------------------------------------------
    async def ready(self) -> Index:
        """The index, after checking that the catalogue answers (and re-crawling when its
        root changed or the index is older than ``refresh_s``)."""
        # An ETag saves re-reading an unchanged root; Last-Modified is not used: its
        # one-second resolution misses a change within the second of the last read.
        headers = {}
        if "etag" in self._validators:
            headers["If-None-Match"] = self._validators["etag"]
        resp, body = await request(
            self.client, self.source, "GET", self.source.url, headers=headers
        )
        changed = False
        if resp.status_code != 304:
            root = decode(resp, body, self.source, self.source.url)
            digest = hashlib.sha256(repr(sorted(root.items())).encode()).hexdigest()
            changed = digest != self._root_digest
            self._validators = {k: resp.headers[k] for k in ("etag",) if k in resp.headers}
        stale = self.index is not None and time.monotonic() - self.index.built > self.refresh_s
        if self.index is None or changed or stale:
            task = self.start()
            if self.index is None or changed:
                # shield: a search that times out must not cancel the crawl others wait for
                return await asyncio.shield(task)
        assert self.index is not None
        return self.index

    # -- searching -------------------------------------------------------------------------
    async def search(self, params: SearchParams, cursor: Any, size: int, collections) -> Page:
        idx = await self.ready()
        match = Matcher(params, collections)
        offset = cursor if isinstance(cursor, int) and cursor >= 0 else 0
        found = [it for it in idx.items if match(it)]
        page = found[offset : offset + size]
        more = offset + size < len(found)
        items = [
            _copy(it) | {"_twinhub_url": idx.urls[(str(it.get("collection")), it["id"])]}
            for it in page
        ]
        return Page(items, next=offset + size if more else None, matched=len(found))

    async def get_item(self, collection: str, item_id: str) -> tuple[dict[str, Any], str] | None:
        idx = await self.ready()
        url = idx.urls.get((collection, item_id))
        if url is None:
            return None
        for it in idx.items:
            if it.get("id") == item_id and it.get("collection") == collection:
                return _copy(it), url
        return None

    async def get_collections(self) -> list[tuple[dict[str, Any], str]]:
        idx = await self.ready()
        return [(_copy(doc), url) for doc, url in idx.collections.values()]


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(doc)

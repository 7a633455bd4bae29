"""Static STAC catalogues served over HTTP: crawled, indexed in memory, searched here.

The crawl starts at the source's root (a Catalog or Collection document), follows ``child``
and ``item`` links whose targets are on the source's own origin (relative hrefs are resolved
against the document they are in; anything else is not read), and keeps every item with the
URL it was read from.  It runs when the service starts, again every ``refresh_s`` seconds,
and when the root document changes.  Each search first re-reads the root (conditionally,
when it has an ETag): a catalogue that does not answer is reported as down for that search,
like an API source, rather than served from memory as if it were up.

One bad document, link or item costs only itself (counted, and shown in the search's
warnings with a sample); the crawl as a whole is bounded in documents, bytes and time, each
document in time too (a server that drips bytes).  A crawl that fails is not retried at
every search: the next try waits ``retry_s``, doubling up to ``refresh_s``; meanwhile the
last good index is served (with a warning saying so), or the source is reported down.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..sources import SourceError, StacSource
from .annotate import absolute
from .fetch import SourceFailure, decode, request
from .matching import Matcher
from .merge import Page, timestamp
from .params import SearchParams
from .shape import SAMPLES, feature_problem

log = logging.getLogger("twinhub.federation")

#: At most this many documents are read in one crawl (a runaway or cyclic catalogue).
MAX_DOCUMENTS = 50_000
#: At most this many bytes are read in one crawl, all documents together.
MAX_CRAWL_BYTES = 256 * 1024 * 1024
#: Seconds a whole crawl may take; one document may take the source's timeout, at least
#: DOCUMENT_TIMEOUT_S (a large document over a slow link is not a dead server).
CRAWL_DEADLINE_S = 300.0
DOCUMENT_TIMEOUT_S = 30.0
#: Seconds before a failed crawl is tried again (doubling up to ``refresh_s``).
RETRY_S = 30.0
CONCURRENCY = 8


@dataclass
class Index:
    items: list[dict[str, Any]] = field(default_factory=list)  # sorted newest first
    urls: dict[tuple[str, str], str] = field(default_factory=dict)  # (collection, id) -> URL
    collections: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    built: float = 0.0
    #: What could not be used: unreadable documents, bad links, malformed items (why each).
    skipped: list[str] = field(default_factory=list)
    #: Links to other origins, deliberately not read (the catalogue's choice, not a failure).
    refused: list[str] = field(default_factory=list)
    bytes: int = 0


def _strip_fragment(url: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, p.path, p.query, ""))


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(repr(sorted(doc.items())).encode()).hexdigest()


class StaticCatalogue:
    def __init__(
        self,
        source: StacSource,
        client: httpx.AsyncClient,
        refresh_s: float,
        *,
        deadline_s: float = CRAWL_DEADLINE_S,
        document_timeout_s: float | None = None,
        retry_s: float = RETRY_S,
        max_bytes: int = MAX_CRAWL_BYTES,
    ) -> None:
        self.source = source
        self.client = client
        self.refresh_s = refresh_s
        self.deadline_s = deadline_s
        self.document_timeout_s = document_timeout_s or max(source.timeout, DOCUMENT_TIMEOUT_S)
        self.retry_s = retry_s
        self.max_bytes = max_bytes
        self.index: Index | None = None
        #: Digest of the root the index was built from (set only when a crawl succeeded).
        self._root_digest = ""
        self._validators: dict[str, str] = {}
        self._crawl: asyncio.Task | None = None
        #: The last crawl's failure: (when, error, seconds before the next try).
        self._failed: tuple[float, SourceFailure, float] | None = None
        self._failures = 0

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
        name = self.source.name
        try:
            idx, digest = await asyncio.wait_for(self.crawl(), self.deadline_s)
        except Exception as e:
            if isinstance(e, SourceFailure):
                failure = e
            elif isinstance(e, TimeoutError):
                failure = SourceFailure(
                    f"source {name!r}: crawling the catalogue did not finish within "
                    f"{self.deadline_s:g} s",
                    "timeout",
                )
            else:
                failure = SourceFailure(
                    f"source {name!r}: crawling the catalogue failed: {type(e).__name__}: {e}"
                )
            self._failures += 1
            delay = min(self.refresh_s, self.retry_s * 2 ** (self._failures - 1))
            self._failed = (time.monotonic(), failure, delay)
            log.warning("crawling %s failed (next try in %g s): %s", name, delay, failure)
            raise failure from None
        self.index, self._root_digest = idx, digest
        self._failed, self._failures = None, 0
        log.info(
            "static source %s: %d items, %d collections, %d skipped, %d links not followed",
            name,
            len(idx.items),
            len(idx.collections),
            len(idx.skipped),
            len(idx.refused),
        )
        return idx

    async def _get(self, url: str, idx: Index) -> dict[str, Any]:
        try:
            resp, body = await asyncio.wait_for(
                request(self.client, self.source, "GET", url), self.document_timeout_s
            )
        except TimeoutError:
            raise SourceFailure(
                f"source {self.source.name!r}: {url} was not read within "
                f"{self.document_timeout_s:g} s",
                "timeout",
            ) from None
        idx.bytes += len(body)
        if idx.bytes > self.max_bytes:
            raise _TooLarge(
                f"source {self.source.name!r}: the catalogue is larger than "
                f"{self.max_bytes / 2**20:g} MB (all documents together); not indexed"
            )
        return decode(resp, body, self.source, url)

    async def crawl(self) -> tuple[Index, str]:
        """A new index and the digest of the root it was built from."""
        src = self.source
        idx = Index()
        root_url = src.url
        root = await self._get(root_url, idx)
        digest = _digest(root)
        seen: set[str] = {_strip_fragment(root_url)}
        docs: list[tuple[str, dict[str, Any], str | None]] = [(root_url, root, None)]
        sem = asyncio.Semaphore(CONCURRENCY)
        count = 1
        over: list[_TooLarge] = []  # the byte budget is spent: the rest are not read

        async def fetch(url: str) -> tuple[str, dict[str, Any] | None]:
            async with sem:
                if over:
                    return url, None
                try:
                    return url, await self._get(url, idx)
                except _TooLarge as e:
                    over.append(e)
                except Exception as e:  # noqa: BLE001 - one bad document costs itself only
                    idx.skipped.append(_why(e, url))
                return url, None

        while docs:
            next_urls: list[tuple[str, str | None]] = []
            for url, doc, parent_coll in docs:
                try:
                    next_urls += self._read_doc(idx, url, doc, parent_coll, seen)
                except Exception as e:  # noqa: BLE001 - e.g. a 'links' that is not a list
                    idx.skipped.append(_why(e, url))
            if count + len(next_urls) > MAX_DOCUMENTS:
                raise SourceFailure(
                    f"source {src.name!r}: the catalogue has more than {MAX_DOCUMENTS} documents"
                )
            count += len(next_urls)
            fetched = await asyncio.gather(*(fetch(u) for u, _ in next_urls))
            if over:
                raise over[0]
            parents = dict(next_urls)
            docs = [(u, d, parents[u]) for u, d in fetched if d is not None]
        idx.items.sort(key=lambda it: (timestamp(it), str(it.get("id"))), reverse=True)
        idx.built = time.monotonic()
        return idx, digest

    def _read_doc(
        self, idx: Index, url: str, doc: dict[str, Any], parent_coll: str | None, seen: set[str]
    ) -> list[tuple[str, str | None]]:
        """Index what ``doc`` is; the links to read next (with their collection)."""
        src = self.source
        kind = doc.get("type")
        coll_id = parent_coll
        if kind == "Collection" and isinstance(doc.get("id"), str):
            coll_id = doc["id"]
            if not src.collections or coll_id in src.collections:
                idx.collections.setdefault(coll_id, (doc, url))
        if kind == "Feature":
            self._add_item(idx, doc, url, parent_coll)
            return []
        links = doc.get("links", [])
        if not isinstance(links, list):
            raise ValueError("'links' is not a list")
        out: list[tuple[str, str | None]] = []
        for link in links:
            if not isinstance(link, dict) or link.get("rel") not in ("child", "item"):
                continue
            href = link.get("href")
            if not isinstance(href, str):
                continue
            try:
                target = _strip_fragment(absolute(href, url))
            except (SourceError, ValueError) as e:
                idx.skipped.append(f"{url}: bad link {href[:200]!r}: {e}")
                continue
            if target in seen:
                continue
            seen.add(target)
            if not src.is_own(target):
                idx.refused.append(target)
                continue
            out.append((target, coll_id))
        return out

    def _add_item(self, idx: Index, item: dict[str, Any], url: str, coll: str | None) -> None:
        why = feature_problem(item)
        if why is not None:
            idx.skipped.append(f"{url}: {why}")
            return
        item.setdefault("collection", coll)
        cid = item.get("collection")
        if self.source.collections and cid not in self.source.collections:
            return
        # hrefs become absolute now: the document's URL is not kept with the item
        for asset in item.get("assets", {}).values():
            if isinstance(asset.get("href"), str):
                # one that cannot be resolved is kept as it is: the annotations refuse it
                with contextlib.suppress(SourceError):
                    asset["href"] = absolute(asset["href"], url)
        key = (str(cid), item["id"])
        if key in idx.urls:
            return
        idx.urls[key] = url
        idx.items.append(item)

    # -- availability ----------------------------------------------------------------------
    async def ready(self) -> Index:
        """The index, after checking that the catalogue answers (and re-crawling when its
        root changed or the index is older than ``refresh_s``, unless a failed crawl's
        back-off is running)."""
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
            changed = _digest(root) != self._root_digest
            # the ETag stands for "the root the index was built from": kept only then, so a
            # 304 can never hide a root whose crawl failed
            self._validators = (
                {k: resp.headers[k] for k in ("etag",) if k in resp.headers} if not changed else {}
            )
        stale = self.index is not None and time.monotonic() - self.index.built > self.refresh_s
        if self.index is None or changed or stale:
            if self._failed is not None and time.monotonic() < self._failed[0] + self._failed[2]:
                if self.index is None:
                    when, failure, delay = self._failed
                    left = when + delay - time.monotonic()
                    raise SourceFailure(f"{failure} (next try in {left:.0f} s)", failure.status)
                return self.index  # the last good index; warnings() says so
            task = self.start()
            if self.index is None or changed:
                try:
                    # shield: a search that times out must not cancel the crawl others wait for
                    return await asyncio.shield(task)
                except SourceFailure:
                    if self.index is None:
                        raise
        assert self.index is not None
        return self.index

    def warnings(self) -> list[str]:
        """What a search of this catalogue must say: parts of it that could not be used, and
        a failed re-crawl while an older index is served."""
        out: list[str] = []
        name = self.source.name
        idx = self.index
        if idx is not None and idx.skipped:
            sample = "; ".join(s[:200] for s in idx.skipped[:SAMPLES])
            out.append(
                f"source {name!r}: {len(idx.skipped)} document(s), link(s) or item(s) of the "
                f"catalogue could not be used and are missing (e.g. {sample})"
            )
        if idx is not None and self._failed is not None:
            age = time.monotonic() - idx.built
            out.append(f"{self._failed[1]}; answering from the catalogue as read {age:.0f} s ago")
        return [self.source.scrub(w) for w in out]

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
        status = {"unusable": len(idx.skipped)} if idx.skipped else {}
        if idx.refused:
            status["links_not_followed"] = len(idx.refused)
        return Page(
            items,
            next=offset + size if more else None,
            matched=len(found),
            extra={"warnings": self.warnings(), "status": status},
        )

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
    return copy.deepcopy(doc)


class _TooLarge(SourceFailure):
    """The crawl's byte budget is spent: the whole crawl fails (not one document)."""


def _why(exc: BaseException, url: str) -> str:
    """One skipped document's reason (the URL and the error)."""
    if isinstance(exc, SourceFailure):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return f"{url}: no answer in time"
    return f"{url}: {type(exc).__name__}: {str(exc)[:200]}"

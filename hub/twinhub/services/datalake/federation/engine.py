"""One federated search: every chosen source asked concurrently, pages merged, annotated.

A source that fails, whatever the failure (an unreachable host, garbage, a malformed item
that makes something raise), or does not answer within its ``timeout`` is reported in
``twinhub:sources`` and ``twinhub:warnings``; the others' items are returned (HTTP 200).  A
client error from the lake itself (a bad filter) is the client's answer, unchanged.  Every
message from a source is scrubbed of its header values before users see it.

Remote requests of all searches together are limited (:data:`MAX_REMOTE_REQUESTS`, below
the HTTP pool's size): one user's burst of federated searches waits for a slot within each
source's timeout instead of taking every connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import httpx

from twinlab.contract import ENV_HUB_TOKEN

from ...asgi import BadRequest
from ..sources import LOCAL, StacSource
from .annotate import annotate_collection, annotate_item, tag_local
from .api import RemoteApi
from .fetch import SourceFailure
from .lake_source import LocalAnswer
from .merge import TOKEN_PREFIX, Cursor, Page, advance, decode_token, encode_token, merge
from .params import SearchParams
from .shape import keep_valid
from .static import StaticCatalogue

#: Seconds the lake's own search may take before the answer goes on without it.
LOCAL_TIMEOUT = 60.0
#: Remote source requests (searches, items, collection lists) in flight at once, across
#: all users' federated requests; the HTTP client's pool is larger (static crawls share it).
MAX_REMOTE_REQUESTS = 32
POOL_SIZE = 64


@dataclass
class Outcome:
    """What a federated search produced (the middleware turns it into a FeatureCollection)."""

    features: list[dict[str, Any]]
    statuses: dict[str, dict[str, Any]]
    warnings: list[str]
    token: str | None
    matched: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Federation:
    """The configured sources and their backends, for the life of the STAC API process."""

    def __init__(
        self,
        sources: list[StacSource],
        cache_url: str,
        token_key: bytes | None = None,
        static_refresh_s: float = 600.0,
    ) -> None:
        self.sources = {s.name: s for s in sources}
        # "" means no cache runs: remote assets then get no cache link
        self.cache_url = cache_url if not cache_url or cache_url.endswith("/") else cache_url + "/"
        if token_key is None:
            secret = os.environ.get(ENV_HUB_TOKEN, "")
            # The service's own secret makes tokens survive restarts; else a process key.
            token_key = hashlib.sha256(b"twinhub-federation:" + secret.encode()).digest()
            if not secret:
                token_key = os.urandom(32)
        self.key = token_key
        self.static_refresh_s = static_refresh_s
        self.client: httpx.AsyncClient | None = None
        self.backends: dict[str, Any] = {}
        self.max_remote_requests = MAX_REMOTE_REQUESTS
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Create the HTTP client and backends (inside the event loop), start crawls."""
        if self.client is not None:
            return
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=POOL_SIZE),
        )
        for s in self.sources.values():
            if s.kind == "static":
                b = StaticCatalogue(s, self.client, self.static_refresh_s)
                b.start()
            else:
                b = RemoteApi(s, self.client)
            self.backends[s.name] = b

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    # -- names -----------------------------------------------------------------------------
    def choose(self, names: list[str] | None) -> list[str]:
        """The sources a request names (all by default, the lake first); 400 for unknown."""
        everything = [LOCAL, *self.sources]
        if not names:
            return everything
        unknown = [n for n in names if n not in everything]
        if unknown:
            raise BadRequest(
                f"unknown source(s) {', '.join(repr(n) for n in unknown)}; this API searches "
                f"{', '.join(everything)}"
            )
        return [n for n in everything if n in names]

    def collections_for(self, name: str, wanted: list[str] | None) -> list[str] | None:
        """The collections to ask ``name`` for; [] when none of the wanted ones is exposed."""
        if name == LOCAL:
            return wanted
        exposed = self.sources[name].collections
        if not exposed:
            return wanted
        if wanted is None:
            return list(exposed)
        return [c for c in wanted if c in exposed]

    # -- asking one source ----------------------------------------------------------------
    def _failure(self, name: str, exc: BaseException) -> SourceFailure:
        """Any exception of source ``name`` as a SourceFailure whose message names the source
        and carries none of its header values."""
        timeout = self.sources[name].timeout if name in self.sources else LOCAL_TIMEOUT
        if isinstance(exc, SourceFailure):
            status, msg = exc.status, str(exc)
        elif isinstance(exc, TimeoutError):
            status, msg = "timeout", f"did not answer within {timeout:g} s"
        else:
            status, msg = "error", f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        label = "the lake" if name == LOCAL else f"source {name!r}"
        if f"source {name!r}" not in msg:
            msg = f"{label}: {msg}"
        if name in self.sources:
            msg = self.sources[name].scrub(msg)
        return SourceFailure(msg, status)

    async def _ask(self, name: str, call: Any) -> Any:
        """``call()`` of remote source ``name`` within its timeout, queueing for a slot among
        :data:`MAX_REMOTE_REQUESTS` (the wait counts against the timeout)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_remote_requests)
        slots, src = self._slots, self.sources[name]
        got_slot = False

        async def guarded() -> Any:
            nonlocal got_slot
            async with slots:
                got_slot = True
                return await call()

        try:
            return await asyncio.wait_for(guarded(), src.timeout)
        except TimeoutError:
            if got_slot:
                raise SourceFailure(
                    f"source {name!r} did not answer within {src.timeout:g} s", "timeout"
                ) from None
            raise SourceFailure(
                f"source {name!r} was not asked: the platform is busy with other federated "
                f"requests ({self.max_remote_requests} at once); try again",
                "timeout",
            ) from None

    # -- search ----------------------------------------------------------------------------
    async def search(self, params: SearchParams, local: Any, api_base: str) -> Outcome:
        names = self.choose(params.sources)
        if params.intersects and names != [LOCAL]:
            raise BadRequest(
                "'intersects' is not supported across federated sources: use bbox, or "
                "sources=local to search the lake alone"
            )
        query = params.fingerprint(names)
        statuses: dict[str, dict[str, Any]] = {}
        if params.token and params.token.startswith(TOKEN_PREFIX):
            given = decode_token(params.token, self.key, query)
            pending = {n: c for n, c in given.items() if n in names}
            first = False
        elif params.token:  # a token of the lake's own (a link made before sources existed)
            pending = {LOCAL: Cursor(page=params.token)} if LOCAL in names else {}
            first = False
        else:
            pending = {n: Cursor() for n in names}
            first = True
        asked: dict[str, list[str] | None] = {}
        for n in list(pending):
            cols = self.collections_for(n, params.collections)
            if cols == []:
                statuses[n] = {
                    "status": "skipped",
                    "returned": 0,
                    "message": "none of the requested collections is exposed by this source",
                }
                del pending[n]
            else:
                asked[n] = cols
        for n in names:
            statuses.setdefault(n, {"status": "ok", "returned": 0})

        limit = params.limit

        async def one(n: str) -> Page:
            c = pending[n]
            size = c.size or limit
            if n == LOCAL:
                try:
                    return await asyncio.wait_for(
                        local.search(params, c.page, size, asked[n]), LOCAL_TIMEOUT
                    )
                except TimeoutError:
                    raise SourceFailure(
                        f"the lake did not answer within {LOCAL_TIMEOUT:g} s", "timeout"
                    ) from None
            backend = self.backends[n]
            page = await self._ask(n, lambda: backend.search(params, c.page, size, asked[n]))
            if not isinstance(page, Page) or not isinstance(page.items, list):
                raise SourceFailure(f"source {n!r} gave no page of items")
            # malformed items never reach the merge or the annotations
            page.items, dropped = keep_valid(page.items, self.sources[n])
            if dropped:
                page.extra.setdefault("warnings", []).append(dropped)
            return page

        order = list(pending)
        results = await asyncio.gather(*(one(n) for n in order), return_exceptions=True)
        pages: dict[str, Page] = {}
        warnings: list[str] = []
        for n, r in zip(order, results, strict=True):
            if isinstance(r, Page):
                pages[n] = r
                continue
            if not isinstance(r, Exception):
                raise r  # cancellation, KeyboardInterrupt: not a source's failure
            if n == LOCAL and isinstance(r, LocalAnswer | BadRequest):
                raise r  # the lake's client errors are the client's answer
            f = self._failure(n, r)
            statuses[n] = {"status": f.status, "returned": 0, "message": str(f)}
            warnings.append(str(f))

        for n, p in pages.items():
            said = [w for w in p.extra.get("warnings") or () if isinstance(w, str)]
            if said and n in self.sources:
                said = [self.sources[n].scrub(w) for w in said]
                warnings.extend(said)
                statuses[n]["message"] = "; ".join(said)
            for k, v in (p.extra.get("status") or {}).items():
                statuses[n].setdefault(k, v)
        heads = {n: p.items[pending[n].skip :] for n, p in pages.items()}
        # a source whose page ends before the merge does must be read further before
        # anything older than its last item can be placed
        more = {n for n, p in pages.items() if p.next is not None}
        taken, consumed = merge(heads, [n for n in names if n in heads], limit, more)
        features = []
        unusable: dict[str, list[str]] = {}
        for n, item in taken:
            doc_url = item.pop("_twinhub_url", None)
            if n == LOCAL:
                features.append(tag_local(item))
            else:
                src = self.sources[n]
                try:
                    features.append(annotate_item(item, src, api_base, self.cache_url, doc_url))
                except Exception as e:  # noqa: BLE001 - one odd item costs that item only
                    unusable.setdefault(n, []).append(f"{type(e).__name__}: {str(e)[:200]}")
                    continue
            statuses[n]["returned"] += 1
        for n, problems in unusable.items():
            w = self.sources[n].scrub(
                f"source {n!r}: {len(problems)} item(s) could not be prepared and were left "
                f"out (e.g. {problems[0]})"
            )
            warnings.append(w)
            statuses[n]["message"] = w

        remaining: dict[str, Cursor] = {}
        for n, p in pages.items():
            nxt = advance(pending[n], p, consumed.get(n, 0), pending[n].size or limit)
            if nxt is not None:
                remaining[n] = nxt
        more = bool(remaining)  # only sources that answered keep a search going
        for n in order:
            if n not in pages:
                remaining[n] = pending[n]  # a failed source resumes where it was
        token = encode_token(remaining, self.key, query) if more else None
        matched = None
        if first and not warnings and all(p.matched is not None for p in pages.values()):
            matched = sum(p.matched or 0 for p in pages.values())
        return Outcome(features, statuses, warnings, token, matched)

    # -- collections and single items ------------------------------------------------------
    async def remote_collections(self, names: list[str], api_base: str):
        """Collections of the remote sources among ``names``: (list, statuses, warnings)."""
        remote = [n for n in names if n != LOCAL]

        async def one(n: str) -> list[dict[str, Any]]:
            src = self.sources[n]
            found = await self._ask(n, self.backends[n].get_collections)
            return [annotate_collection(doc, src, api_base, url) for doc, url in found]

        results = await asyncio.gather(*(one(n) for n in remote), return_exceptions=True)
        out: list[dict[str, Any]] = []
        statuses: dict[str, dict[str, Any]] = {}
        warnings: list[str] = []
        for n, r in zip(remote, results, strict=True):
            if isinstance(r, list):
                out += r
                statuses[n] = {"status": "ok", "returned": len(r)}
            elif isinstance(r, Exception):
                f = self._failure(n, r)
                statuses[n] = {"status": f.status, "returned": 0, "message": str(f)}
                warnings.append(str(f))
            else:
                raise r
        return out, statuses, warnings

    async def find_collection(self, cid: str, names: list[str], api_base: str):
        cols, _, warnings = await self.remote_collections(names, api_base)
        for c in cols:
            if c.get("id") == cid:
                return c, warnings
        return None, warnings

    async def find_item(self, cid: str, iid: str, names: list[str], api_base: str):
        """Item ``iid`` of collection ``cid`` from the first of ``names`` that has it; every
        source is asked at once (a slow one costs its timeout once, not in turn)."""
        remote = [n for n in names if n != LOCAL]

        async def one(n: str) -> dict[str, Any] | None:
            src = self.sources[n]
            found = await self._ask(n, lambda: self.backends[n].get_item(cid, iid))
            if found is None:
                return None
            item, url = found
            if item.get("collection") not in (None, cid) or item.get("id") != iid:
                return None
            item["collection"] = cid
            return annotate_item(item, src, api_base, self.cache_url, url)

        results = await asyncio.gather(*(one(n) for n in remote), return_exceptions=True)
        warnings: list[str] = []
        for n, r in zip(remote, results, strict=True):
            if isinstance(r, dict):
                return r, warnings
            if isinstance(r, Exception):
                warnings.append(str(self._failure(n, r)))
            elif r is not None:
                raise r
        return None, warnings

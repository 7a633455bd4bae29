"""One federated search: every chosen source asked concurrently, pages merged, annotated.

A source that fails or does not answer within its ``timeout`` is reported in
``twinhub:sources`` and ``twinhub:warnings``; the others' items are returned (HTTP 200).  A
client error from the lake itself (a bad filter) is the client's answer, unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..guard import BadRequest
from ..sources import LOCAL, StacSource
from .annotate import annotate_item, tag_local
from .api import RemoteApi
from .fetch import SourceFailure
from .merge import TOKEN_PREFIX, Cursor, Page, advance, decode_token, encode_token, merge
from .params import SearchParams
from .static import StaticCatalogue

#: Seconds the lake's own search may take before the answer goes on without it.
LOCAL_TIMEOUT = 60.0


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
            secret = os.environ.get("JUPYTERHUB_API_TOKEN", "")
            # The service's own secret makes tokens survive restarts; else a process key.
            token_key = hashlib.sha256(b"twinhub-federation:" + secret.encode()).digest()
            if not secret:
                token_key = os.urandom(32)
        self.key = token_key
        self.static_refresh_s = static_refresh_s
        self.client: httpx.AsyncClient | None = None
        self.backends: dict[str, Any] = {}

    def start(self) -> None:
        """Create the HTTP client and backends (inside the event loop), start crawls."""
        if self.client is not None:
            return
        self.client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, limits=httpx.Limits(max_connections=64)
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

    # -- search ----------------------------------------------------------------------------
    async def search(self, params: SearchParams, local: Any, api_base: str) -> Outcome:
        names = self.choose(params.sources)
        if params.intersects and names != [LOCAL]:
            raise BadRequest(
                "'intersects' is not supported across federated sources: use bbox, or "
                "sources=local to search the lake alone"
            )
        statuses: dict[str, dict[str, Any]] = {}
        if params.token and params.token.startswith(TOKEN_PREFIX):
            given = decode_token(params.token, self.key)
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
            backend = local if n == LOCAL else self.backends[n]
            timeout = LOCAL_TIMEOUT if n == LOCAL else self.sources[n].timeout
            try:
                return await asyncio.wait_for(
                    backend.search(params, c.page, size, asked[n]), timeout
                )
            except TimeoutError:
                raise SourceFailure(
                    f"source {n!r} did not answer within {timeout:g} s", "timeout"
                ) from None

        order = list(pending)
        results = await asyncio.gather(*(one(n) for n in order), return_exceptions=True)
        pages: dict[str, Page] = {}
        warnings: list[str] = []
        for n, r in zip(order, results, strict=True):
            if isinstance(r, Page):
                pages[n] = r
                continue
            if not isinstance(r, SourceFailure):
                if isinstance(r, BaseException) and not isinstance(r, Exception):
                    raise r
                from .local import LocalAnswer

                if isinstance(r, LocalAnswer | BadRequest):
                    raise r
                r = SourceFailure(f"source {n!r} failed: {type(r).__name__}: {r}")
            label = "the lake" if n == LOCAL else f"source {n!r}"
            msg = str(r)
            statuses[n] = {"status": r.status, "returned": 0, "message": msg}
            warnings.append(msg if repr(n) in msg else f"{label}: {msg}")

        for n, p in pages.items():
            if p.extra.get("warning"):
                warnings.append(p.extra["warning"])
                statuses[n]["message"] = p.extra["warning"]
        heads = {n: p.items[pending[n].skip :] for n, p in pages.items()}
        # a source whose page ends before the merge does must be read further before
        # anything older than its last item can be placed
        more = {n for n, p in pages.items() if p.next is not None}
        taken, consumed = merge(heads, [n for n in names if n in heads], limit, more)
        features = []
        for n, item in taken:
            doc_url = item.pop("_twinhub_url", None)
            if n == LOCAL:
                features.append(tag_local(item))
            else:
                src = self.sources[n]
                features.append(annotate_item(item, src, api_base, self.cache_url, doc_url))
            statuses[n]["returned"] += 1

        remaining: dict[str, Cursor] = {}
        for n, p in pages.items():
            nxt = advance(pending[n], p, consumed.get(n, 0), pending[n].size or limit)
            if nxt is not None:
                remaining[n] = nxt
        more = bool(remaining)  # only sources that answered keep a search going
        for n in order:
            if n not in pages:
                remaining[n] = pending[n]  # a failed source resumes where it was
        token = encode_token(remaining, self.key) if more else None
        matched = None
        if first and not warnings and all(p.matched is not None for p in pages.values()):
            matched = sum(p.matched or 0 for p in pages.values())
        return Outcome(features, statuses, warnings, token, matched)

    # -- collections and single items ------------------------------------------------------
    async def remote_collections(self, names: list[str], api_base: str):
        """Collections of the remote sources among ``names``: (list, statuses, warnings)."""
        from .annotate import annotate_collection

        remote = [n for n in names if n != LOCAL]

        async def one(n: str):
            src = self.sources[n]
            return await asyncio.wait_for(self.backends[n].get_collections(), src.timeout)

        results = await asyncio.gather(*(one(n) for n in remote), return_exceptions=True)
        out: list[dict[str, Any]] = []
        statuses: dict[str, dict[str, Any]] = {}
        warnings: list[str] = []
        for n, r in zip(remote, results, strict=True):
            if isinstance(r, list):
                for doc, url in r:
                    out.append(annotate_collection(doc, self.sources[n], api_base, url))
                statuses[n] = {"status": "ok", "returned": len(r)}
            else:
                status = getattr(r, "status", "timeout" if isinstance(r, TimeoutError) else "error")
                msg = str(r) or f"source {n!r} did not answer within {self.sources[n].timeout:g} s"
                statuses[n] = {"status": status, "returned": 0, "message": msg}
                warnings.append(msg if repr(n) in msg else f"source {n!r}: {msg}")
        return out, statuses, warnings

    async def find_collection(self, cid: str, names: list[str], api_base: str):
        cols, _, warnings = await self.remote_collections(names, api_base)
        for c in cols:
            if c.get("id") == cid:
                return c, warnings
        return None, warnings

    async def find_item(self, cid: str, iid: str, names: list[str], api_base: str):
        warnings: list[str] = []
        for n in names:
            if n == LOCAL:
                continue
            src = self.sources[n]
            try:
                found = await asyncio.wait_for(self.backends[n].get_item(cid, iid), src.timeout)
            except (SourceFailure, TimeoutError) as e:
                warnings.append(str(e) or f"source {n!r} did not answer within {src.timeout:g} s")
                continue
            if found is not None:
                item, url = found
                if item.get("collection") not in (None, cid) or item.get("id") != iid:
                    continue
                item["collection"] = cid
                return annotate_item(item, src, api_base, self.cache_url, url), warnings
        return None, warnings

"""Hot PNGs (tiles, views, legends) and the HTTP caching of every PNG the service answers.

:func:`png_response` answers a PNG from the in-memory LRU (bounded by
``TwinhubTiles.tile_cache_bytes``), or renders it once (concurrent requests for the same
PNG wait for one render) in the render pool. Every answer carries:

- a strong ``ETag`` (a hash of the key and the bytes; the key holds the field's identity:
  its store, variable, item and the item's ``updated``), and ``If-None-Match`` gets a 304;
- ``Cache-Control: public, max-age=N`` for public layers, ``private, max-age=N`` otherwise
  (``TwinhubTiles.max_age``): shared caches never keep a private item's tiles;
- ``X-Twinhub-Chunk-Reads``: the data chunks read from storage for this request (its default
  colour range and its render; 0 when the PNG was kept or every chunk was in the
  decoded-chunk cache; the bench reads it).

Chunks are counted by :class:`CountingChunkCache` (the layers' shared chunk cache, put in
place by :func:`install`): per request (:data:`REQUEST_READS`, which the app's request layer
starts) for the header, in all for the metrics.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextvars import ContextVar

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from twinlab.viz.field import ChunkCache

from . import layers, opening
from .context import TilesContext
from .metrics import CHUNK_HITS, CHUNK_READS, RENDER_SECONDS, TILE_SECONDS

#: ``ctx.extras`` keys owned here.
KEPT, RENDERING, KEPT_VIEWS = "tilecache", "tilecache.rendering", "tilecache.views"
#: Views' PNGs are kept apart, in at most 1/VIEW_SHARE of tile_cache_bytes and this many bytes.
VIEW_SHARE, VIEW_CACHE_BYTES = 16, 16 * 1024 * 1024
CHUNK_READS_HEADER = "X-Twinhub-Chunk-Reads"


class Reads:
    """Chunks read from storage for one request (renders of it may run in several pool
    threads: a lock keeps the count)."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.n += 1


#: The current request's :class:`Reads` (set by :func:`begin_request`; the render pool runs
#: each call in a copy of the caller's context, so its reads count for that request).
REQUEST_READS: ContextVar[Reads | None] = ContextVar("tiles_request_reads", default=None)


def begin_request() -> Reads:
    """A fresh count of chunk reads for the request running in this context."""
    reads = Reads()
    REQUEST_READS.set(reads)
    return reads


class CountingChunkCache(ChunkCache):
    """The layers' decoded-chunk cache, counting each load for the request it serves
    (:data:`REQUEST_READS`) and loads and hits in the metrics."""

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        arr, loaded = super().get(key, load)
        if loaded:
            CHUNK_READS.inc()
            reads = REQUEST_READS.get()
            if reads is not None:
                reads.add()
        else:
            CHUNK_HITS.inc()
        return arr, loaded


def install(ctx: TilesContext) -> None:
    """The layers' chunk cache is a counting one (the app does this before serving)."""
    ctx.extras.setdefault(opening.CHUNKS, CountingChunkCache(ctx.settings.chunk_cache_bytes))


class PngLru:
    """Thread-safe LRU of (PNG, ETag) bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[Hashable, tuple[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[bytes, str] | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: Hashable, png: bytes, etag: str) -> None:
        if len(png) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= len(old[0])
            self._items[key] = (png, etag)
            self.nbytes += len(png)
            while self.nbytes > self.max_bytes:
                _, (gone, _tag) = self._items.popitem(last=False)
                self.nbytes -= len(gone)


def etag_of(key: tuple, png: bytes) -> str:
    """A strong ETag: a hash of the request's key and the bytes."""
    h = hashlib.sha256(repr(key).encode("utf-8", "backslashreplace"))
    h.update(b"\0")
    h.update(png)
    return '"' + h.hexdigest()[:40] + '"'


def matches(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, as RFC 9110 asks for
    it; ``*`` matches any)."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def _kept(ctx: TilesContext, kind: str = "tile") -> PngLru:
    """Where PNGs of ``kind`` are kept: views (any size, centre and zoom: easily all
    different) in their own small LRU, so that they never push the hot tiles out."""
    if kind == "view":
        budget = min(ctx.settings.tile_cache_bytes // VIEW_SHARE, VIEW_CACHE_BYTES)
        return ctx.extras.setdefault(KEPT_VIEWS, PngLru(budget))
    return ctx.extras.setdefault(KEPT, PngLru(ctx.settings.tile_cache_bytes))


def _render(make: Callable[[], bytes], kind: str) -> bytes:
    """In a pool thread: ``make()``, timed."""
    start = time.perf_counter()
    png = make()
    RENDER_SECONDS.labels(kind).observe(time.perf_counter() - start)
    return png


async def _make_once(
    ctx: TilesContext, key: tuple, make: Callable[[], bytes], kind: str
) -> tuple[bytes, str]:
    """Render ``key`` once however many ask at once: (PNG, ETag). The render's chunk reads
    count for the request that started it (its task runs in that request's context)."""
    rendering: dict[tuple, asyncio.Future] = ctx.extras.setdefault(RENDERING, {})
    fut = rendering.get(key)
    if fut is not None:
        return await asyncio.shield(fut)

    async def run() -> tuple[bytes, str]:
        png = await layers.run_render(ctx, _render, make, kind)
        etag = etag_of(key, png)
        if ctx.settings.tile_cache_bytes > 0:
            _kept(ctx, kind).put(key, png, etag)
        return png, etag

    fut = asyncio.ensure_future(run())
    rendering[key] = fut
    fut.add_done_callback(lambda _f: rendering.pop(key, None))
    return await asyncio.shield(fut)


async def png_response(
    request: Request,
    ctx: TilesContext,
    key: tuple,
    make: Callable[[], bytes],
    *,
    public: bool,
    kind: str,
) -> Response:
    """The PNG for ``key`` (kept, or ``make()`` in the render pool), with ETag,
    Cache-Control and ``X-Twinhub-Chunk-Reads``; 304 when ``If-None-Match`` has it.
    ``kind``: tile, view, legend (metrics)."""
    start = time.perf_counter()
    reads = REQUEST_READS.get() or begin_request()
    hit = _kept(ctx, kind).get(key) if ctx.settings.tile_cache_bytes > 0 else None
    png, etag = hit if hit is not None else await _make_once(ctx, key, make, kind)
    headers = {
        "ETag": etag,
        "Cache-Control": f"{'public' if public else 'private'}, max-age={ctx.settings.max_age}",
        CHUNK_READS_HEADER: str(reads.n),
    }
    if kind == "tile":
        TILE_SECONDS.labels("hit" if hit is not None else "miss").observe(
            time.perf_counter() - start
        )
    if matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    return Response(png, media_type="image/png", headers=headers)


__all__ = ["CountingChunkCache", "PngLru", "begin_request", "install", "png_response"]

"""Hot PNGs: rendered once, kept (bytes-bounded), ETag and 304, Cache-Control public vs
private, the chunk reads of each answer."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from starlette.requests import Request

from twinhub.services.tiles import layers, opening, tilecache
from twinhub.services.tiles.tilecache import CountingChunkCache, PngLru, matches, png_response

from .conftest import make_ctx

pytestmark = pytest.mark.anyio


def request(if_none_match: str = "") -> Request:
    headers = [(b"if-none-match", if_none_match.encode())] if if_none_match else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


async def answer(*args, **kw):
    """One request's answer (the app's request layer starts each request's count)."""
    tilecache.begin_request()
    return await png_response(*args, **kw)


class Maker:
    """A render that reads ``chunks`` new chunks through the layers' cache and counts calls."""

    def __init__(self, ctx, chunks: int, png: bytes = b"\x89PNG-fake") -> None:
        self.ctx, self.chunks, self.png = ctx, chunks, png
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> bytes:
        with self.lock:
            self.calls += 1
            n = self.calls
        cache = self.ctx.extras[opening.CHUNKS]
        for k in range(self.chunks):
            cache.get(("chunk", n, k), lambda: np.zeros(4))
            cache.get(("chunk", n, k), lambda: np.zeros(4))  # a hit: not a read
        return self.png


async def test_rendered_once_then_kept(tmp_path):
    ctx = make_ctx(tmp_path)
    tilecache.install(ctx)
    make = Maker(ctx, chunks=3)
    first = await answer(request(), ctx, ("tile", 1), make, public=False, kind="tile")
    again = await answer(request(), ctx, ("tile", 1), make, public=False, kind="tile")
    assert make.calls == 1
    assert first.status_code == again.status_code == 200
    assert first.body == again.body == make.png
    assert first.headers["content-type"] == "image/png"
    assert first.headers["x-twinhub-chunk-reads"] == "3"
    assert again.headers["x-twinhub-chunk-reads"] == "0"
    assert first.headers["etag"] == again.headers["etag"]
    assert first.headers["etag"].startswith('"') and not first.headers["etag"].startswith("W/")
    assert first.headers["cache-control"] == "private, max-age=300"
    other = await answer(request(), ctx, ("tile", 2), make, public=True, kind="tile")
    assert other.headers["cache-control"] == "public, max-age=300"
    assert other.headers["etag"] != first.headers["etag"]  # the key is in the hash


async def test_if_none_match_gets_304(tmp_path):
    ctx = make_ctx(tmp_path, max_age=60)
    make = Maker(ctx, chunks=0)
    tilecache.install(ctx)
    r = await answer(request(), ctx, ("k",), make, public=True, kind="view")
    tag = r.headers["etag"]
    for sent in (tag, f'"other", {tag}', f"W/{tag}", "*"):
        r304 = await answer(request(sent), ctx, ("k",), make, public=True, kind="view")
        assert r304.status_code == 304, sent
        assert r304.body == b""
        assert r304.headers["etag"] == tag
        assert r304.headers["cache-control"] == "public, max-age=60"
    r = await answer(request('"stale"'), ctx, ("k",), make, public=True, kind="view")
    assert r.status_code == 200


async def test_nothing_kept_with_no_bytes(tmp_path):
    ctx = make_ctx(tmp_path, tile_cache_bytes=0)
    tilecache.install(ctx)
    make = Maker(ctx, chunks=1)
    for _ in range(2):
        r = await answer(request(), ctx, ("t",), make, public=False, kind="tile")
        assert r.headers["x-twinhub-chunk-reads"] == "1"
    assert make.calls == 2


async def test_concurrent_requests_render_once(tmp_path):
    ctx = make_ctx(tmp_path, render_threads=4)
    tilecache.install(ctx)
    gate = threading.Event()
    make = Maker(ctx, chunks=2)

    def slow() -> bytes:
        gate.wait(5)
        return make()

    tasks = [
        asyncio.ensure_future(answer(request(), ctx, ("t",), slow, public=False, kind="tile"))
        for _ in range(5)
    ]
    await asyncio.sleep(0.05)
    gate.set()
    answers = await asyncio.gather(*tasks)
    assert make.calls == 1
    assert {a.body for a in answers} == {make.png}
    # the chunks were read once: one answer says so, the waiters read none
    assert sorted(a.headers["x-twinhub-chunk-reads"] for a in answers) == ["0"] * 4 + ["2"]


def test_png_lru_is_bounded_in_bytes():
    lru = PngLru(100)
    for n in range(5):
        lru.put(n, b"x" * 30, f'"{n}"')
    assert lru.nbytes <= 100
    assert lru.get(0) is None and lru.get(4) == (b"x" * 30, '"4"')
    lru.put("big", b"x" * 101, '"big"')  # larger than the whole cache: not kept
    assert lru.get("big") is None


def test_counting_cache_counts_per_request():
    cache = CountingChunkCache(1 << 20)
    mine = tilecache.begin_request()
    cache.get("a", lambda: np.zeros(2))
    cache.get("a", lambda: np.zeros(2))  # a hit

    def other_request() -> None:
        tilecache.begin_request()  # (a thread starts with an empty context)
        cache.get("b", lambda: np.zeros(2))

    t = threading.Thread(target=other_request)
    t.start()
    t.join()
    assert mine.n == 1 and cache.reads == 2 and cache.hits == 1


async def test_reads_before_the_render_count_for_the_request(tmp_path):
    """The default colour range reads chunks before the render: the header says so."""
    ctx = make_ctx(tmp_path)
    tilecache.install(ctx)
    tilecache.begin_request()
    cache = ctx.extras[opening.CHUNKS]
    await layers.run_render(ctx, cache.get, "range-chunk", lambda: np.zeros(2))
    r = await png_response(request(), ctx, ("t",), Maker(ctx, chunks=1), public=False, kind="tile")
    assert r.headers["x-twinhub-chunk-reads"] == "2"


def test_matches():
    assert matches('"a", "b"', '"b"') and matches("*", '"x"') and matches('W/"x"', '"x"')
    assert not matches("", '"x"') and not matches('"y"', '"x"')

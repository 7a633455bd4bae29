"""The rolling cache's store against a real local HTTP origin (tests.helpers.counting_origin):
hits and misses, LRU eviction at the limit, age expiry, one upstream fetch for N concurrent
readers, nothing served from a cut or killed fetch, contents kept across restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers.counting_origin import start_origin
from twinhub.services.cache.app import parse_range
from twinhub.services.cache.store import Busy, CacheError, CacheStore, TooLarge, read_stats
from twinhub.services.cache.upstream import fetcher, make_client
from twinhub.services.datalake.sources import make_source

KB = 1000


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("origin")
    for name, size in {"a": KB, "b": KB, "c": KB, "d": KB, "big": 2_000_000}.items():
        (root / f"{name}.bin").write_bytes(os.urandom(size))
    return root


@pytest.fixture(scope="module")
def origin(files):
    o = start_origin(files)
    yield o
    o.stop()


@pytest.fixture(scope="module")
def slow_origin(files):
    o = start_origin(files, rate=4_000_000)  # 2 MB takes 0.5 s: requests overlap
    yield o
    o.stop()


def source_of(o):
    return make_source({"name": "origin", "url": o.url + "/catalog.json"})


async def fetch_all(store: CacheStore, o, path: str, start: int = 0, end=None) -> bytes:
    src = source_of(o)
    async with make_client(10) as client:
        h = await store.get(f"origin {o.url}{path}", fetcher(client, src, o.url + path))
        return b"".join([b async for b in h.read(start, end)])


def run(coro):
    return asyncio.run(coro)


def test_miss_then_hit_serves_the_origin_bytes_once(tmp_path, origin, files):
    store = CacheStore(tmp_path / "c", max_size=10 * KB)
    before = origin.hits("/a.bin")
    assert run(fetch_all(store, origin, "/a.bin")) == (files / "a.bin").read_bytes()
    assert run(fetch_all(store, origin, "/a.bin")) == (files / "a.bin").read_bytes()
    assert origin.hits("/a.bin") == before + 1
    s = store.stats()
    assert (s["hits"], s["misses"], s["objects"], s["size"]) == (1, 1, 1, KB)
    assert s["bytes_fetched"] == KB


def test_concurrent_readers_share_one_upstream_fetch(tmp_path, slow_origin, files):
    store = CacheStore(tmp_path / "c", max_size=10_000_000)
    before = slow_origin.hits("/big.bin")

    async def many() -> list[bytes]:
        return await asyncio.gather(*(fetch_all(store, slow_origin, "/big.bin") for _ in range(20)))

    bodies = run(many())
    assert slow_origin.hits("/big.bin") == before + 1
    want = (files / "big.bin").read_bytes()
    assert all(b == want for b in bodies)
    s = store.stats()
    assert (s["misses"], s["hits"], s["joined"]) == (1, 19, 19)  # all joined the one flight


def test_lru_eviction_order_at_the_size_limit(tmp_path, origin):
    store = CacheStore(tmp_path / "c", max_size=3 * KB)
    t = [1000.0]
    store.clock = lambda: t[0]  # distinct access times, in order (same-second accesses tie)
    for name in ("a", "b", "c", "a", "d"):  # a touched again: b is the least recently used
        t[0] += 1
        run(fetch_all(store, origin, f"/{name}.bin"))
    keys = {f"origin {origin.url}/{n}.bin": n for n in "abcd"}
    held = {n for k, n in keys.items() if store.entry(k)}
    assert held == {"a", "c", "d"}
    assert store.size == 3 * KB and store.stats()["evictions"] == 1
    on_disk = read_stats(tmp_path / "c")  # the running totals agree with the index
    assert (on_disk["size"], on_disk["objects"]) == (store.size, store.count) == (3 * KB, 3)
    # the evicted object's files are gone too
    assert len([f for f in (tmp_path / "c" / "objects").rglob("*") if f.is_file()]) == 6


def test_objects_older_than_max_age_are_fetched_again(tmp_path, origin):
    store = CacheStore(tmp_path / "c", max_size=10 * KB, max_age=0.5)
    before = origin.hits("/b.bin")
    run(fetch_all(store, origin, "/b.bin"))
    run(fetch_all(store, origin, "/b.bin"))
    assert origin.hits("/b.bin") == before + 1
    time.sleep(0.7)
    run(fetch_all(store, origin, "/b.bin"))
    assert origin.hits("/b.bin") == before + 2
    assert store.stats()["expired"] == 1 and store.stats()["objects"] == 1


def test_a_cut_transfer_serves_nothing_and_the_next_request_refetches(tmp_path, origin, files):
    store = CacheStore(tmp_path / "c", max_size=10_000_000)
    with pytest.raises(CacheError) as e:
        run(fetch_all(store, origin, "/cut-once/big.bin"))
    assert e.value.status == 502 and "broke off" in e.value.message
    assert store.entry(f"origin {origin.url}/cut-once/big.bin") is None
    assert list((tmp_path / "c" / "tmp").iterdir()) == []
    assert store.stats()["errors"] == 1 and store.stats()["objects"] == 0
    body = run(fetch_all(store, origin, "/cut-once/big.bin"))
    assert body == (files / "big.bin").read_bytes()
    assert origin.hits("/cut-once/big.bin") == 2


KILLED_FETCH = """
import asyncio, sys
from twinhub.services.cache.store import CacheStore
from twinhub.services.cache.upstream import fetcher, make_client
from twinhub.services.datalake.sources import make_source

async def main():
    store = CacheStore(sys.argv[1], max_size=10_000_000)
    url = sys.argv[2]
    src = make_source({"name": "origin", "url": url.rsplit("/", 1)[0] + "/catalog.json"})
    async with make_client(10) as client:
        h = await store.get("origin " + url, fetcher(client, src, url))
        async for block in h.read():
            print("reading", flush=True)

asyncio.run(main())
"""


def test_a_killed_fetch_leaves_nothing_served_after_restart(tmp_path, files):
    slow = start_origin(files, rate=200_000)  # 2 MB: 10 s, killed long before the end
    try:
        d = tmp_path / "c"
        url = slow.url + "/big.bin"
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(KILLED_FETCH), str(d), url],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "reading"  # bytes are arriving
        partial = list((d / "tmp").iterdir())
        assert len(partial) == 1 and partial[0].stat().st_size > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        slow.stop()
    store = CacheStore(d, max_size=10_000_000)
    assert store.entry(f"origin {url}") is None and store.stats()["objects"] == 0
    assert list((d / "tmp").iterdir()) == []
    assert [f for f in (d / "objects").rglob("*") if f.is_file()] == []


def test_contents_survive_a_restart_even_without_the_index(tmp_path, origin, files):
    d = tmp_path / "c"
    store = CacheStore(d, max_size=10 * KB)
    run(fetch_all(store, origin, "/c.bin"))
    run(fetch_all(store, origin, "/d.bin"))
    run(store.close())
    before = origin.hits("/c.bin")

    again = CacheStore(d, max_size=10 * KB)
    assert run(fetch_all(again, origin, "/c.bin")) == (files / "c.bin").read_bytes()
    assert origin.hits("/c.bin") == before  # a hit: no upstream request
    assert again.stats()["hits"] == 1 and again.stats()["misses"] == 2  # counters kept
    assert read_stats(d)["objects"] == 2  # what `twinhub status` reads, from outside
    run(again.close())

    for f in d.glob("index.sqlite*"):
        f.unlink()
    rebuilt = CacheStore(d, max_size=10 * KB)  # from the objects' own metadata
    assert rebuilt.stats()["objects"] == 2 and rebuilt.size == 2 * KB
    assert run(fetch_all(rebuilt, origin, "/d.bin")) == (files / "d.bin").read_bytes()
    assert origin.hits("/c.bin") == before and rebuilt.stats()["hits"] == 1


def test_a_smaller_limit_at_restart_evicts_down_to_it(tmp_path, origin):
    d = tmp_path / "c"
    store = CacheStore(d, max_size=10 * KB)
    for n in "abc":
        run(fetch_all(store, origin, f"/{n}.bin"))
    run(store.close())
    smaller = CacheStore(d, max_size=2 * KB)
    assert smaller.size == 2 * KB and smaller.stats()["evictions"] == 1


def test_ranges_on_a_hit_and_during_the_download(tmp_path, slow_origin, files):
    store = CacheStore(tmp_path / "c", max_size=10_000_000)
    want = (files / "big.bin").read_bytes()

    async def both() -> list[bytes]:
        # the first reads the whole object, the second a range of the same download
        return await asyncio.gather(
            fetch_all(store, slow_origin, "/big.bin"),
            fetch_all(store, slow_origin, "/big.bin", 1_500_000, 1_500_100),
        )

    whole, part = run(both())
    assert whole == want and part == want[1_500_000:1_500_100]
    assert run(fetch_all(store, slow_origin, "/big.bin", 10, 20)) == want[10:20]


def test_redirects_only_within_the_sources_origins(tmp_path, origin, files):
    store = CacheStore(tmp_path / "c", max_size=10 * KB)
    with pytest.raises(CacheError) as e:
        run(fetch_all(store, origin, "/redirect-away/x"))
    assert e.value.status == 502 and "http://127.0.0.2:9/elsewhere" in e.value.message
    assert run(fetch_all(store, origin, "/redirect-here/a.bin")) == (files / "a.bin").read_bytes()


def test_missing_objects_and_too_large_ones_are_refused_and_not_kept(tmp_path, origin):
    store = CacheStore(tmp_path / "c", max_size=10 * KB)
    for _ in range(3):
        with pytest.raises(CacheError) as e:
            run(fetch_all(store, origin, "/nope.bin"))
        assert e.value.status == 404 and "nope.bin" in e.value.message
    assert origin.hits("/nope.bin") == 1  # the 404 is remembered for a while
    with pytest.raises(TooLarge) as big:
        run(fetch_all(store, origin, "/big.bin"))
    assert big.value.status == 413 and "max_object_gb" in big.value.message
    assert store.stats()["objects"] == 0 and list((tmp_path / "c" / "tmp").iterdir()) == []


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_size must be positive"):
        CacheStore("/tmp/never-made", max_size=0)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("", None),
        ("bytes=0-9", (0, 10)),
        ("bytes=90-", (90, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=95-200", (95, 100)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole object
        ("items=0-1", None),
    ],
)
def test_range_headers(value, want):
    assert parse_range(value, 100) == want


@pytest.mark.parametrize("value", ["bytes=100-", "bytes=50-10", "bytes=-0"])
def test_unsatisfiable_ranges(value):
    with pytest.raises(ValueError):
        parse_range(value, 100)


def test_downloads_in_flight_cannot_empty_the_cache(tmp_path):
    """Three concurrent downloads that together need more than the in-flight budget (half
    the cache here): one runs, the others are refused 503, and the cache keeps what the one
    does not need."""
    root = tmp_path / "files"
    root.mkdir()
    for n in range(4):
        (root / f"s{n}.bin").write_bytes(os.urandom(100 * KB))
    for n in range(3):
        (root / f"m{n}.bin").write_bytes(os.urandom(200 * KB))
    o = start_origin(root, rate=400_000)  # 0.5 s per 200 kB: the three overlap
    try:
        store = CacheStore(tmp_path / "c", max_size=400 * KB, max_object=200 * KB)
        assert store.flight_budget == 200 * KB
        for n in range(4):
            run(fetch_all(store, o, f"/s{n}.bin"))
        assert store.size == 400 * KB

        async def three():
            paths = [f"/m{n}.bin" for n in range(3)]
            return await asyncio.gather(
                *(fetch_all(store, o, p) for p in paths), return_exceptions=True
            )

        results = run(three())
    finally:
        o.stop()
    done = [r for r in results if isinstance(r, bytes)]
    busy = [r for r in results if isinstance(r, Busy)]
    assert len(done) == 1 and len(busy) == 2, results
    assert all(b.status == 503 and "busy" in b.message for b in busy)
    held = [n for n in range(4) if store.entry(f"origin {o.url}/s{n}.bin")]
    assert held == [2, 3]  # only the two least recently used made room
    assert store.size == 400 * KB and store.stats()["errors"] == 0


def test_the_last_reader_hanging_up_cancels_the_download(tmp_path, slow_origin, files):
    store = CacheStore(tmp_path / "c", max_size=10_000_000)
    src = source_of(slow_origin)
    url = slow_origin.url + "/big.bin"

    async def scenario() -> None:
        async with make_client(10) as client:
            one = await store.get(f"origin {url}", fetcher(client, src, url))
            two = await store.get(f"origin {url}", fetcher(client, src, url))
            first, second = one.read(), two.read()
            assert await anext(first) and await anext(second)
            await first.aclose()  # one leaves: the other still reads it to the end
            assert [b async for b in second] and store.stats()["objects"] == 1
            # again, but now the only reader leaves
            store._delete(f"origin {url}", store.entry(f"origin {url}").digest)
            three = await store.get(f"origin {url}", fetcher(client, src, url))
            blocks = three.read()
            assert await anext(blocks)
            await blocks.aclose()
            for _ in range(100):
                if not store.stats()["downloading"]:
                    break
                await asyncio.sleep(0.01)

    run(scenario())
    s = store.stats()
    assert s["downloading"] == 0 and s["cancelled"] == 1 and s["errors"] == 0
    assert s["objects"] == 0 and list((tmp_path / "c" / "tmp").iterdir()) == []
    assert run(fetch_all(store, slow_origin, "/big.bin")) == (files / "big.bin").read_bytes()

"""Data lake benchmarks: STAC search latency and field read throughput.

    /opt/twinhub/venv/bin/python bench/datalake.py [--items 10000 100000] [--queries 200]

1. STAC search p50/p95 at each catalogue size, through the platform (proxy -> hub auth ->
   guard -> stac-fastapi-pgstac) and straight to a plain stac-fastapi-pgstac on the same
   database (the anchor): the ratio is the cost of our auth and guard layers.  The same
   searches with a free-text ``q`` (a CQL2 filter on the items' search text; ranked) are timed
   against the searches without it, and over the whole lake (no bbox, no time: more than a
   page matches, so the ranking takes its two phases).  Queries are
   GET /search with a random 20x20 degree bbox, a random 10-day window and limit=100, as
   pystac-client sends them.  Items are synthetic (random footprints and days over 3 years).
2. Read throughput of a field from the lake: ``twinlab.datalake.open`` on the seeded Zarr
   and GRIB assets (decoded values in memory) vs a raw ``s3fs`` read of the same objects'
   bytes (the anchor): the ratio is what decoding and our layer cost.
3. The rolling cache (/services/cache/): read throughput of one large remote asset through
   the proxy, first read (a miss: fetched from the source while streamed) vs later reads
   (hits, from the cache's disk).  The source is a local HTTP server
   (tests.helpers.counting_origin) on loopback, so a miss here costs almost nothing more
   than a hit; a second source capped at ``--wan-mbps`` (a simulated WAN link, labelled as
   such) shows what the cache saves when the source is far away.

Starts its own embedded platform (personal mode) with the small sample data.  Prints
figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers.platform import (  # noqa: E402
    Platform,
    free_port,
    purge_shared_dir,
    wait_for_seed,
)
from twinhub.process.runtime import Runtime  # noqa: E402
from twinhub.services import datalake  # noqa: E402
from twinhub.services.datalake.loader import insert  # noqa: E402

BENCH_COLLECTION = "bench-synthetic"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def synthetic_items(start: int, n: int, rng: random.Random):
    t0 = datetime(2022, 1, 1, tzinfo=UTC)
    for i in range(start, start + n):
        w, s = rng.uniform(-180, 170), rng.uniform(-90, 80)
        e, north = w + rng.uniform(1, 10), s + rng.uniform(1, 10)
        day = t0 + timedelta(days=rng.randrange(3 * 365))
        yield {
            "type": "Feature",
            "stac_version": "1.1.0",
            "id": f"synthetic-{i:07d}",
            "collection": BENCH_COLLECTION,
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[w, s], [e, s], [e, north], [w, north], [w, s]]],
            },
            "bbox": [w, s, e, north],
            "properties": {
                "datetime": day.isoformat().replace("+00:00", "Z"),
                "param": rng.choice(["2t", "tp", "10u", "10v", "msl", "sst"]),
            },
            "assets": {"data": {"href": f"s3://lake/bench/{i}.grib2", "roles": ["data"]}},
            "links": [],
        }


def collection() -> dict:
    return {
        "type": "Collection",
        "id": BENCH_COLLECTION,
        "stac_version": "1.1.0",
        "description": "synthetic items for bench/datalake.py",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [["2022-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]]},
        },
        "links": [],
    }


def queries(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    out = []
    t0 = datetime(2022, 1, 1)
    for _ in range(n):
        w, s = rng.uniform(-180, 160), rng.uniform(-90, 70)
        d = t0 + timedelta(days=rng.randrange(3 * 365 - 10))
        span = f"{d:%Y-%m-%d}T00:00:00Z/{d + timedelta(days=10):%Y-%m-%d}T00:00:00Z"
        out.append(
            f"search?bbox={w:.2f},{s:.2f},{w + 20:.2f},{s + 20:.2f}&datetime={span}&limit=100"
        )
    return out


def time_queries(base: str, qs: list[str], headers: dict[str, str]) -> list[float]:
    s = requests.Session()
    s.headers.update(headers)
    for q in qs[:10]:  # warm-up: connection pools, plans, caches
        s.get(base + q, timeout=60).raise_for_status()
    times = []
    for q in qs:
        t = time.perf_counter()
        r = s.get(base + q, timeout=60)
        r.raise_for_status()
        r.json()
        times.append(time.perf_counter() - t)
    return times


def bench_search(p: Platform, rt: Runtime, sizes: list[int], n_queries: int) -> None:
    port = free_port()
    plain = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "twinhub.services.datalake.stac_app:create_plain_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],  # fmt: skip
        env={**os.environ, "TWINHUB_STAC_CONFIG": str(rt.path(datalake.CONFIG_FILE))},
    )
    try:
        plain_url = f"http://127.0.0.1:{port}{datalake.SERVICE_PREFIX}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(plain_url + "_mgmt/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        hub_url = p.url + "services/stac/"
        token = {"Authorization": f"token {p.token('admin')}"}
        rng = random.Random(42)
        have = 0
        insert(rt, [collection()], [])
        print(f"{'items':>8} {'path':<22} {'p50 ms':>8} {'p95 ms':>8}  ratio p50/p95 (vs plain)")
        for size in sizes:
            t = time.perf_counter()
            while have < size:
                n = min(20000, size - have)
                insert(rt, [], synthetic_items(have, n, rng))
                have += n
            load_s = time.perf_counter() - t
            qs = queries(n_queries)
            direct = time_queries(plain_url, qs, {})
            through = time_queries(hub_url, qs, token)
            d50, d95 = pct(direct, 0.5) * 1e3, pct(direct, 0.95) * 1e3
            h50, h95 = pct(through, 0.5) * 1e3, pct(through, 0.95) * 1e3
            print(
                f"{size:>8} {'plain stac-fastapi':<22} {d50:8.1f} {d95:8.1f}  (loaded in {load_s:.0f} s)"
            )
            print(
                f"{size:>8} {'twinhub /services/stac':<22} {h50:8.1f} {h95:8.1f}  {h50 / d50:.2f} / {h95 / d95:.2f}"
            )
            # free text (q: a CQL2 filter, exact parameters first) on the same searches; the
            # plain API ignores q for items, so the anchor is the same search without q
            words = ("temperature", "2t healpix", "2t OR tp")
            texts = [f"{q}&q={quote(words[i % len(words)])}" for i, q in enumerate(qs)]
            free = time_queries(hub_url, texts, token)
            f50, f95 = pct(free, 0.5) * 1e3, pct(free, 0.95) * 1e3
            print(
                f"{size:>8} {'  + q (free text)':<22} {f50:8.1f} {f95:8.1f}  {f50 / h50:.2f} / {f95 / h95:.2f} (vs without q)"
            )
            # the same words over the whole lake (more than a page matches: two ranked phases)
            wide = [f"search?limit=100&q={quote(words[i % len(words)])}" for i in range(len(qs))]
            every = time_queries(hub_url, ["search?limit=100"] * len(qs), token)
            many = time_queries(hub_url, wide, token)
            e50, e95 = pct(every, 0.5) * 1e3, pct(every, 0.95) * 1e3
            m50, m95 = pct(many, 0.5) * 1e3, pct(many, 0.95) * 1e3
            print(f"{size:>8} {'  whole lake, no q':<22} {e50:8.1f} {e95:8.1f}")
            print(
                f"{size:>8} {'  whole lake + q':<22} {m50:8.1f} {m95:8.1f}  {m50 / e50:.2f} / {m95 / e95:.2f} (vs without q)"
            )
    finally:
        plain.terminate()
        plain.wait(10)


def bench_read(p_url: str, token: str, rt: Runtime, repeats: int) -> None:
    """Whole variables as a user reads them vs s3fs.cat of the same objects' bytes."""
    wait_for_seed(rt.state_dir)
    from twinhub import objectstore

    creds = objectstore.ensure_user(rt, "admin")
    os.environ.update(objectstore.user_environment(rt, creds))
    os.environ["TWINHUB_STAC_URL"] = p_url + "services/stac/"
    os.environ["JUPYTERHUB_API_TOKEN"] = token
    import s3fs

    import twinlab.datalake as dl

    items = dl.search(collections=["climate-dt"], param="2t", max_items=200)
    h128 = [i for i in items if i.properties["twinhub:grid"]["id"] == "healpix-h128"]
    fs = s3fs.S3FileSystem()
    zarr_href = h128[0].assets["zarr"].href
    cases = [
        # the Zarr store's 2t, every time step (one chunk per step)
        ("zarr 2t, 7 days", zarr_href, fs.find(zarr_href.removeprefix("s3://") + "/2t")),
        # one day's GRIB file of 2t (4 messages, CCSDS-packed)
        ("grib 2t, 1 day", h128[0].assets["grib"].href, [h128[0].assets["grib"].href]),
    ]
    print(f"\n{'read':<16} {'stored MB':>9} {'raw s3fs s':>11} {'datalake.open s':>16}  ratio")
    for name, href, files in cases:
        files = [f.removeprefix("s3://") for f in files]
        nbytes = sum(fs.size(f) for f in files)
        raw, opened = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            fs.cat(files)
            raw.append(time.perf_counter() - t)
            t = time.perf_counter()
            ds = dl.open(href, variable="2t")
            ds.load()
            opened.append(time.perf_counter() - t)
        r, o = statistics.median(raw), statistics.median(opened)
        print(
            f"{name:<16} {nbytes / 1e6:9.2f} {r:11.3f} {o:16.3f}  {o / r:5.1f}x time"
            f"   (decoded {ds.nbytes / 1e6:.1f} MB: {ds.nbytes / 1e6 / o:.0f} MB/s of values)"
        )


def cache_origins(root: Path, mb: int, wan_mbps: float) -> list[tuple[str, str, subprocess.Popen]]:
    """(label, url, process) of the bench's sources: loopback, and a simulated WAN link."""
    (root / "asset.bin").write_bytes(os.urandom(mb * 1_000_000))
    out = []
    for label, rate in (("loopback", 0.0), (f"simulated WAN {wan_mbps:g} MB/s", wan_mbps * 1e6)):
        port = free_port()
        argv = [sys.executable, "-m", "tests.helpers.counting_origin", "--root", str(root)]
        argv += ["--port", str(port), "--rate", str(rate)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        proc.stdout.readline()  # "serving ...": listening
        out.append((label, f"http://127.0.0.1:{port}", proc))
    return out


def bench_cache(
    p: Platform, rt: Runtime, origins: list[tuple[str, str, subprocess.Popen]], repeats: int
) -> None:
    """MB/s of GET /services/cache/assets/... (streamed, discarded): first read vs hits, and
    hits straight from the service's port (what the proxy costs)."""
    from twinhub.services.datalake.sources import cache_path, make_source

    headers = {"Authorization": f"token {p.token('admin')}"}

    def read(url: str) -> tuple[float, int, str]:
        t = time.perf_counter()
        n = 0
        with requests.get(url, headers=headers, stream=True, timeout=600) as r:
            r.raise_for_status()
            for block in r.iter_content(1 << 20):
                n += len(block)
        return time.perf_counter() - t, n, r.headers.get("x-twinhub-cache", "?")

    direct = f"http://127.0.0.1:{rt.ports['cache']}/"
    print(
        f"\n{'cache read (via proxy)':<28} {'MB':>6} {'miss MB/s':>10} {'hit MB/s':>9}  "
        "hit/miss   hit MB/s without the proxy"
    )
    for i, (label, origin_url, _) in enumerate(origins):
        src = make_source({"name": f"bench{i}", "url": origin_url + "/catalog.json"})
        url = p.url + "services/cache/assets/" + cache_path(src, origin_url + "/asset.bin")
        miss_s, n, kind = read(url)
        assert kind == "miss", f"first read was a {kind}"
        hits = [read(url) for _ in range(repeats)]
        assert all(h[2] == "hit" for h in hits)
        hit_s = statistics.median(h[0] for h in hits)
        raw_s = statistics.median(read(url.replace(p.url, direct))[0] for _ in range(repeats))
        miss, hit, raw = n / 1e6 / miss_s, n / 1e6 / hit_s, n / 1e6 / raw_s
        print(
            f"{label:<28} {n / 1e6:6.0f} {miss:10.0f} {hit:9.0f}  {hit / miss:6.1f}x   {raw:9.0f}"
        )
    print(
        "  (loopback: the source is on this machine, so a miss is nearly as fast as a hit; "
        "the WAN line's source is throttled on purpose to stand for a remote one)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-read", action="store_true")
    ap.add_argument("--skip-cache", action="store_true")
    ap.add_argument("--cache-mb", type=int, default=200, help="size of the remote asset")
    ap.add_argument("--wan-mbps", type=float, default=50, help="MB/s of the simulated WAN source")
    ap.add_argument(
        "--read-only", nargs=3, metavar=("STATE", "URL", "TOKEN"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.read_only:
        # A process of its own: ecCodes (GRIB) and libpq (the loader) must not share one
        # (their bundled libldap copies crash at exit; see tests/conftest.py).
        state, url, token = args.read_only
        bench_read(url, token, Runtime.load(Path(state)), args.repeats)
        return
    with tempfile.TemporaryDirectory(prefix="twinhub-bench-", dir="/tmp") as tmp:
        state = Path(tmp) / "state"
        origins = [] if args.skip_cache else cache_origins(Path(tmp), args.cache_mb, args.wan_mbps)
        if origins:  # the cache's sources, in the config file read at start
            state.mkdir()
            specs = [
                {"name": f"bench{i}", "url": u + "/catalog.json"}
                for i, (_, u, _) in enumerate(origins)
            ]
            (state / "twinhub_config.py").write_text(
                f"c.TwinhubDataLake.sources = {specs!r}\n"
                f"c.TwinhubCache.max_size = {2 * len(origins) * args.cache_mb / 1000}\n"
            )
        p = Platform.start(state, mode="personal", seed="" if args.skip_read else "small")
        try:
            rt = Runtime.load(state)
            if origins:
                bench_cache(p, rt, origins, args.repeats)
            bench_search(p, rt, sorted(args.items), args.queries)
            if not args.skip_read:
                argv = [sys.executable, __file__, "--repeats", str(args.repeats)]
                argv += ["--read-only", str(state), p.url, p.token("admin")]
                subprocess.run(argv, check=True)
        finally:
            p.stop()
            purge_shared_dir(state)
            for _, _, proc in origins:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()

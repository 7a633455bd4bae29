"""VizLab rendering on the native grid: first global view, cold and warm tiles, chunk reads.

    /opt/twinhub/venv/bin/python bench/vizlab.py [--local] [--nside 1024] [--times 16]
        [--tiles 60] [--state DIR] [--json FILE]

The field: HEALPix nested, nside ``--nside`` (1024: 12.6 M cells), float32, ``--times``
time steps of a smooth pattern (zonal gradient and moving waves) plus noise, twinlab's grid
attributes (``twinlab.grids.grid_attrs``), written as Zarr v3 (Blosc zstd) in chunks of one
time step x ``3 nside^2`` cells: four chunks per time step, each three HEALPix base pixels,
so no raster of one time step ever needs more than four chunks.

Through the platform (default): a personal-mode platform without sample data is started
(or, with ``--state DIR``, the running one of that state dir is used), the Zarr store is
written to the lake bucket with the platform's S3 admin keys and a STAC item for it is put
in a collection of its own (``bench-vizlab``); every figure is then taken over HTTP through
the proxy as the admin user (``/services/tiles/``):

1. **first global view**: ``view/<item>/<var>.png``, 1024x512 plate carree, nearest, the
   first request for the item (the field not open yet, no chunk cached, no PNG kept); then
   the **next view**, the same at the last time step (kept from the tiles): the field open
   and the view's pixel-to-cell lookup kept, so the chunk reads, colours and PNG alone.
2. **cold tiles**: ``collections/<item>/<var>/map/tiles/WebMercatorQuad/{z}/{row}/{col}``
   for zooms 2 to the native zoom + 3, at time steps neither view reads; each tile
   is picked (from where its pixel centres fall, healpy's ang2pix) so that every chunk it
   needs is one no earlier request read: a real storage read, a real render, a new PNG.
3. **warm tiles**: the same tiles again (the service's kept PNGs; what a map pans back to).
4. **chunk reads per tile**: the service's ``X-Twinhub-Chunk-Reads`` header of each cold tile.

``--local`` runs the renderer in this process on a local Zarr store (no platform): the same
field, view and tiles with ``twinlab.viz`` (``Field`` over ``xarray.open_zarr``, a
``ChunkCache`` of 1 GiB); "warm" there is the same tile rendered again from cached chunks
(there is no PNG cache outside the service), and chunk reads are ``Field.chunk_reads``.

The anchor: hvplot's way of drawing unstructured cells, datashader rasterising the field's
12.6 M cell centres (``Canvas.points`` with mean aggregation, then ``tf.shade``) to the same
1024x512 plate carree, best of three: once with the values already in memory, once with
reading time step 0 from the same store counted in (as the view's time counts its reads).
The ratios printed are anchor seconds / first-view seconds (above 1: the native-grid view
is faster). The two do not draw the same thing: datashader bins cell centres, so each of
its pixels here is the mean of the cells whose centres fall in it (and zoomed in past the
cells it leaves holes), where the view shows the one native cell under each pixel's
centre. Targets: first global view <= 1 s, warm tile
p95 <= 50 ms, cold tile p95 <= 500 ms, <= 4 chunk reads per tile. Prints a table;
``--json`` writes the figures. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import healpy
import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from twinlab.contract import FIELD_GRID, FIELD_VARIABLE  # noqa: E402
from twinlab.grids import HEALPix, grid_attrs  # noqa: E402
from twinlab.viz import tms  # noqa: E402

COLLECTION = "bench-vizlab"
VARIABLE = "t2m"
TMS = "WebMercatorQuad"
T0 = datetime(2030, 1, 1, tzinfo=UTC)
STEP_HOURS = 6
VIEW_SIZE = (1024, 512)
TARGETS = {"first_view_s": 1.0, "warm_p95_s": 0.050, "cold_p95_s": 0.500, "chunk_reads_max": 4}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# -- the field ----------------------------------------------------------------------------------
def cell_lonlat(nside: int) -> tuple[np.ndarray, np.ndarray]:
    lon, lat = healpy.pix2ang(nside, np.arange(12 * nside * nside), nest=True, lonlat=True)
    return np.where(lon >= 180, lon - 360, lon).astype(np.float32), lat.astype(np.float32)


def step_values(lon: np.ndarray, lat: np.ndarray, t: int, rng: np.random.Generator) -> np.ndarray:
    """A temperature-like field (K): pole-to-equator gradient, waves moving east, noise."""
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    v = 250.0 + 50.0 * np.cos(la) ** 2
    v += 8.0 * np.sin(4 * lo + 0.4 * t) * np.cos(la) * np.sin(2 * la)
    v += 3.0 * np.cos(9 * lo - 0.7 * t + 3 * la)
    v += rng.normal(0.0, 0.6, lon.shape)
    return v.astype(np.float32)


def write_store(store: Any, nside: int, ntimes: int, storage_options: dict | None) -> float:
    """Writes the field one time step at a time (memory: one step); returns seconds."""
    grid = HEALPix(nside, nest=True)
    attrs = grid_attrs(grid)
    lon, lat = cell_lonlat(nside)
    rng = np.random.default_rng(1024)
    chunk = 3 * nside * nside
    cells = xr.Variable(
        grid.dims,
        np.arange(grid.size, dtype=np.int64),
        {"grid_name": "healpix", "level": grid.order, "indexing_scheme": "nested"},
    )
    t = time.perf_counter()
    for i in range(ntimes):
        naive = (T0 + timedelta(hours=STEP_HOURS * i)).replace(tzinfo=None)
        when = np.array([naive], dtype="datetime64[ns]")
        values = step_values(lon, lat, i, rng)[None]
        ds = xr.Dataset(
            {
                VARIABLE: xr.Variable(
                    ("time", *grid.dims),
                    values,
                    {"units": "K", "long_name": "synthetic 2 m temperature", **attrs},
                )
            },
            coords={"time": ("time", when), "cell_ids": cells},
            attrs={**attrs, "title": f"bench/vizlab.py H{nside} field"},
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            if i == 0:
                encoding = {
                    VARIABLE: {
                        "chunks": (1, chunk),
                        "compressors": (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),),
                    },
                    "time": {
                        "units": "hours since 2030-01-01",
                        "dtype": "int64",
                        "chunks": (1024,),
                    },
                    "cell_ids": {"chunks": (chunk,)},
                }
                ds.to_zarr(
                    store,
                    mode="w",
                    zarr_format=3,
                    encoding=encoding,
                    consolidated=True,
                    storage_options=storage_options,
                )
            else:
                ds.drop_vars("cell_ids").to_zarr(
                    store,
                    append_dim="time",
                    zarr_format=3,
                    consolidated=True,
                    storage_options=storage_options,
                )
    return time.perf_counter() - t


def stac_item(item_id: str, href: str, nside: int, ntimes: int) -> dict[str, Any]:
    grid = HEALPix(nside, nest=True)
    end = T0 + timedelta(hours=STEP_HOURS * (ntimes - 1))
    iso = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": ["https://stac-extensions.github.io/datacube/v2.2.0/schema.json"],
        "id": item_id,
        "collection": COLLECTION,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]],
        },
        "bbox": [-180.0, -90.0, 180.0, 90.0],
        "properties": {
            "datetime": T0.strftime(iso),
            "start_datetime": T0.strftime(iso),
            "end_datetime": end.strftime(iso),
            "param": VARIABLE,
            FIELD_GRID: {"id": f"healpix-h{nside}", **grid_attrs(grid)},
            "cube:dimensions": {
                "time": {
                    "type": "temporal",
                    "extent": [T0.strftime(iso), end.strftime(iso)],
                    "step": f"PT{STEP_HOURS}H",
                },
                "cell": {"type": "other", "extent": [0, grid.size - 1], "step": 1},
            },
            "cube:variables": {
                VARIABLE: {"type": "data", "dimensions": ["time", "cell"], "unit": "K"}
            },
        },
        "assets": {
            "zarr": {
                "href": href,
                "type": "application/vnd+zarr",
                "roles": ["data"],
                FIELD_VARIABLE: VARIABLE,
            }
        },
        "links": [],
    }


def stac_collection() -> dict[str, Any]:
    return {
        "type": "Collection",
        "id": COLLECTION,
        "stac_version": "1.1.0",
        "description": "bench/vizlab.py's synthetic HEALPix field",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [["2030-01-01T00:00:00Z", "2031-01-01T00:00:00Z"]]},
        },
        "links": [],
    }


# -- which tiles ----------------------------------------------------------------------------------
def tile_chunks(nside: int, z: int, row: int, col: int) -> set[int]:
    """The chunks (of 3 nside^2 cells) holding the cells under a tile's pixel centres."""
    lon, lat = tms.tile_lonlat(TMS, z, row, col)
    pix = healpy.ang2pix(nside, lon.ravel(), lat.ravel(), nest=True, lonlat=True)
    return {int(c) for c in np.unique(pix // (3 * nside * nside))}


def cold_tiles(
    nside: int, times: range, n: int, zooms: range, seed: int = 5
) -> list[tuple[int, int, int, int, int]]:
    """Up to ``n`` (t, z, row, col, chunks needed) whose chunks no earlier one needs: for each
    time step, tiles in chunks of that step not yet taken."""
    rng = random.Random(seed)
    out = []
    for t in times:
        taken: set[int] = set()
        for _ in range(40):  # tries per time step; most tiles lie in one or two chunks
            if len(out) >= n or len(taken) == 4:
                break
            z = rng.choice(list(zooms))
            cols, rows = tms.matrix_size(TMS, z)
            # Web Mercator rows beyond ~±80 degrees are thin slivers: keep to the bulk
            row = rng.randrange(rows // 8, rows - rows // 8) if rows >= 8 else rng.randrange(rows)
            col = rng.randrange(cols)
            need = tile_chunks(nside, z, row, col)
            if need & taken:
                continue
            taken |= need
            out.append((t, z, row, col, len(need)))
    return out


def datashader_anchor(nside: int, load: Callable[[], np.ndarray], rounds: int = 3) -> dict:
    """Best seconds of Canvas.points (mean) + tf.shade over every cell centre, 1024x512:
    with the values in memory, and with ``load()`` (reading time step 0 from the same
    store, opened afresh) counted in."""
    import datashader as ds
    import datashader.transfer_functions as tf
    import pandas as pd

    lon, lat = cell_lonlat(nside)
    width, height = VIEW_SIZE
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=(-180, 180), y_range=(-90, 90))

    def draw(values: np.ndarray) -> None:
        df = pd.DataFrame({"lon": lon, "lat": lat, "v": values})
        agg = canvas.points(df, "lon", "lat", agg=ds.mean("v"))
        tf.shade(agg, cmap=["#440154", "#21918c", "#fde725"], how="linear")

    values = load()
    draw(values)  # the first call compiles numba's kernels: not counted
    in_memory, with_read = math.inf, math.inf
    for _ in range(rounds):
        t = time.perf_counter()
        draw(values)
        in_memory = min(in_memory, time.perf_counter() - t)
        t = time.perf_counter()
        draw(load())
        with_read = min(with_read, time.perf_counter() - t)
    return {"anchor_datashader_s": in_memory, "anchor_datashader_with_read_s": with_read}


# -- the measurements -----------------------------------------------------------------------------
def measure(
    view: Callable[[int], tuple[float, int]],
    tile: Callable[[int, int, int, int], tuple[float, int]],
    tiles: list[tuple[int, int, int, int, int]],
    last: int,
) -> dict[str, Any]:
    """``view(t)``/``tile(t, z, row, col)`` -> (seconds, chunk reads); ``last``: the time
    step kept for the second view (no tile reads it)."""
    load = os.getloadavg()[0]
    first_s, first_reads = view(0)
    # the same view at a time step nothing read yet: the field is open and the view's
    # pixel-to-cell lookup kept, so this is the reads, colours and PNG alone
    next_s, next_reads = view(last)
    cold, reads, expected = [], [], []
    for t, z, row, col, need in tiles:
        s, r = tile(t, z, row, col)
        cold.append(s)
        reads.append(r)
        expected.append(need)
    warm = [tile(t, z, row, col)[0] for t, z, row, col, _ in tiles]
    return {
        "first_view_s": first_s,
        "first_view_chunk_reads": first_reads,
        "next_view_s": next_s,
        "next_view_chunk_reads": next_reads,
        "load_average_1min_before": load,
        "load_average_1min_after": os.getloadavg()[0],
        "tiles": len(tiles),
        "zooms": sorted({z for _, z, _, _, _ in tiles}),
        "cold_p50_s": pct(cold, 50),
        "cold_p95_s": pct(cold, 95),
        "warm_p50_s": pct(warm, 50),
        "warm_p95_s": pct(warm, 95),
        "chunk_reads_max": max(reads),
        "chunk_reads_mean": sum(reads) / len(reads),
        "chunks_under_tiles_mean": sum(expected) / len(expected),
    }


def run_local(args: argparse.Namespace) -> dict[str, Any]:
    from twinlab.viz import ChunkCache, Field, View, render_tile, render_view
    from twinlab.viz.colour import encode_png

    with tempfile.TemporaryDirectory(prefix="twinhub-bench-vizlab-", dir="/tmp") as tmp:
        store = str(Path(tmp) / "field.zarr")
        wrote = write_store(store, args.nside, args.times, None)
        print(f"wrote H{args.nside} x {args.times} steps to a local Zarr in {wrote:.1f} s")
        ds = xr.open_zarr(store, chunks=None)
        field = Field.from_dataset(ds, VARIABLE, cache=ChunkCache(1 << 30), key="bench")
        vmin, vmax = 240.0, 305.0

        def counted(make: Callable[[], np.ndarray]) -> tuple[float, int]:
            before = field.chunk_reads
            t = time.perf_counter()
            encode_png(make())
            return time.perf_counter() - t, field.chunk_reads - before

        width, height = VIEW_SIZE
        v = View("platecarree", width, height)
        style = {"method": "nearest", "cmap": "viridis", "vmin": vmin, "vmax": vmax}

        def view(t: int) -> tuple[float, int]:
            return counted(lambda: render_view(field, t, v, **style))

        def tile(t: int, z: int, row: int, col: int) -> tuple[float, int]:
            return counted(lambda: render_tile(field, t, TMS, z, row, col, **style))

        zooms = range(2, tms.native_zoom(TMS, field.grid) + 4)
        tiles = cold_tiles(args.nside, range(1, args.times - 1), args.tiles, zooms)
        out = measure(view, tile, tiles, args.times - 1)

        def load() -> np.ndarray:
            step = xr.open_zarr(store, chunks=None)[VARIABLE].isel(time=0)
            return np.asarray(step.values, dtype=np.float32)

        out.update(datashader_anchor(args.nside, load))
    return out


@contextlib.contextmanager
def platform(state_dir: str | None) -> Iterator[tuple[str, str, Any]]:
    """(hub URL, the admin's token, Runtime): the running platform of ``state_dir``, else a
    personal-mode one started here without sample data (stopped and removed after)."""
    from tests.helpers.platform import Platform, purge_shared_dir, twinhub_cli
    from twinhub.process.runtime import Runtime

    if state_dir:
        rt = Runtime.load(Path(state_dir))
        token = twinhub_cli("user", "token", "admin", "--state", state_dir, check=True)
        yield rt.public_url.rstrip("/") + "/", token.stdout.strip(), rt
        return
    with tempfile.TemporaryDirectory(prefix="twinhub-bench-", dir="/tmp") as tmp:
        state = Path(tmp) / "state"
        p = Platform.start(state, mode="personal")
        try:
            yield p.url, p.token("admin"), Runtime.load(state)
        finally:
            p.stop()
            purge_shared_dir(state)


def run_platform(args: argparse.Namespace) -> dict[str, Any]:
    import requests

    from twinhub.objectstore import admin_keys, endpoint
    from twinhub.objectstore.options import TwinhubObjectStore
    from twinhub.services.datalake.loader import insert

    with platform(args.state) as (url, token, rt):
        key, secret = admin_keys(rt)
        opts = {"key": key, "secret": secret, "endpoint_url": endpoint(rt)}
        bucket = TwinhubObjectStore(config=rt.config).lake_bucket
        item_id = f"bench-vizlab-h{args.nside}-{int(time.time())}"
        href = f"s3://{bucket}/bench/{item_id}.zarr"
        wrote = write_store(href, args.nside, args.times, opts)
        print(f"wrote H{args.nside} x {args.times} steps to {href} in {wrote:.1f} s")
        insert(rt, [stac_collection()], [stac_item(item_id, href, args.nside, args.times)])
        base = url + "services/tiles/"
        session = requests.Session()
        session.headers["Authorization"] = f"token {token}"
        times = [T0 + timedelta(hours=STEP_HOURS * i) for i in range(args.times)]
        style = {"cmap": "viridis", "vmin": "240", "vmax": "305", "method": "nearest"}

        def get(path: str, params: dict[str, str]) -> tuple[float, int]:
            t = time.perf_counter()
            r = session.get(base + path, params=params, timeout=120)
            took = time.perf_counter() - t
            if r.status_code != 200 or r.headers.get("content-type") != "image/png":
                raise RuntimeError(f"GET {r.url}: {r.status_code} {r.text[:300]}")
            return took, int(r.headers.get("X-Twinhub-Chunk-Reads", "-1"))

        def view(t: int) -> tuple[float, int]:
            width, height = VIEW_SIZE
            params = {"projection": "platecarree", "width": str(width), "height": str(height)}
            when = {"time": times[t].strftime("%Y-%m-%dT%H:%M:%SZ")}
            return get(f"view/{item_id}/{VARIABLE}.png", {**params, **style, **when})

        def tile(t: int, z: int, row: int, col: int) -> tuple[float, int]:
            path = f"collections/{item_id}/{VARIABLE}/map/tiles/{TMS}/{z}/{row}/{col}"
            return get(path, {**style, "datetime": times[t].strftime("%Y-%m-%dT%H:%M:%SZ")})

        native = tms.native_zoom(TMS, HEALPix(args.nside, nest=True))
        tiles = cold_tiles(args.nside, range(1, args.times - 1), args.tiles, range(2, native + 4))
        out = measure(view, tile, tiles, args.times - 1)

        def load() -> np.ndarray:
            step = xr.open_zarr(href, chunks=None, storage_options=opts)[VARIABLE].isel(time=0)
            return np.asarray(step.values, dtype=np.float32)

        out.update(datashader_anchor(args.nside, load))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local", action="store_true", help="the renderer in-process, no platform")
    ap.add_argument("--nside", type=int, default=1024)
    ap.add_argument("--times", type=int, default=16, help="time steps of the field")
    ap.add_argument("--tiles", type=int, default=60, help="cold tiles to time")
    ap.add_argument("--state", help="use the running platform of this state dir")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    out = run_local(args) if args.local else run_platform(args)
    out.update(
        mode="local" if args.local else "platform",
        nside=args.nside,
        cells=12 * args.nside**2,
        ratio_anchor_over_first_view=out["anchor_datashader_s"] / out["first_view_s"],
        ratio_anchor_with_read_over_first_view=(
            out["anchor_datashader_with_read_s"] / out["first_view_s"]
        ),
    )
    ms = 1e3
    where = "in-process renderer" if args.local else "through /services/tiles/"
    print(f"\nVizLab, H{args.nside} nested ({out['cells']:,} cells), {where}")
    print(f"{'figure':<34} {'value':>10}  target")
    rows = [
        ("first global view 1024x512 (s)", out["first_view_s"], "<= 1 s"),
        ("  its chunk reads", out["first_view_chunk_reads"], ""),
        ("next view, a new time step (s)", out["next_view_s"], ""),
        (f"cold tile p50 (ms), n={out['tiles']}", out["cold_p50_s"] * ms, ""),
        ("cold tile p95 (ms)", out["cold_p95_s"] * ms, "<= 500 ms"),
        ("warm tile p50 (ms)", out["warm_p50_s"] * ms, ""),
        ("warm tile p95 (ms)", out["warm_p95_s"] * ms, "<= 50 ms"),
        ("chunk reads per cold tile, max", out["chunk_reads_max"], "<= 4"),
        ("chunk reads per cold tile, mean", out["chunk_reads_mean"], ""),
        ("  chunks under the tiles, mean", out["chunks_under_tiles_mean"], ""),
        (f"datashader {out['cells'] / 1e6:.1f} M points (s)", out["anchor_datashader_s"], "anchor"),
        ("  + reading the time step (s)", out["anchor_datashader_with_read_s"], "anchor"),
    ]
    for name, value, target in rows:
        print(f"{name:<34} {value:10.3f}  {target}")
    print(
        f"ratio datashader / first view: {out['ratio_anchor_over_first_view']:.2f}x with the "
        f"anchor's values in memory, {out['ratio_anchor_with_read_over_first_view']:.2f}x "
        f"with its read counted (the view reads its own; zooms {out['zooms']})"
    )
    print(
        f"load average (1 min) {out['load_average_1min_before']:.1f} before, "
        f"{out['load_average_1min_after']:.1f} after, on {os.cpu_count()} CPUs"
    )
    met = {
        "first view": out["first_view_s"] <= TARGETS["first_view_s"],
        "warm p95": out["warm_p95_s"] <= TARGETS["warm_p95_s"],
        "cold p95": out["cold_p95_s"] <= TARGETS["cold_p95_s"],
        "chunk reads": out["chunk_reads_max"] <= TARGETS["chunk_reads_max"],
    }
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()

"""What the tile APIs parse alike (params.py, views.parse_view): ids, styles, tile addresses
and their limits, grids from items, times; every refusal names the parameter and what is
allowed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

import twinlab.viz.tms as tmsmod
from twinhub.services.asgi import BadRequest
from twinhub.services.tiles.params import (
    FALLBACK_NATIVE_ZOOM,
    Style,
    TileOutOfRange,
    check_id,
    check_tile,
    grid_of,
    iso,
    matrix_limits,
    max_zoom,
    native_zoom,
    parse_int,
    parse_style,
    split_layer_id,
)
from twinhub.services.tiles.views import parse_center, parse_view
from twinlab.grids import Gaussian, HEALPix, LatLon, Octahedral, grid_attrs
from twinlab.viz.colour import COLORMAPS

from .conftest import lake_item, make_ctx
from .test_wmts import memory_layer


def refused(fn, *args) -> BadRequest:
    with pytest.raises(BadRequest) as e:
        fn(*args)
    return e.value


def test_ids_and_layers():
    assert check_id("climate-dt-healpix-h128-2t-20300101") == "climate-dt-healpix-h128-2t-20300101"
    assert check_id("a.b_c:d-1") == "a.b_c:d-1"
    for bad in ("", "a/b", "a b", "é", "x" * 257, "a?b"):
        e = refused(check_id, bad)
        assert e.status == 400 and "[A-Za-z0-9._:-]+, at most 256 characters" in e.message
    assert split_layer_id("item-1/2t") == ("item-1", "2t")
    assert "'<item id>/<variable>'" in refused(split_layer_id, "item-1").message
    assert "variable" in refused(split_layer_id, "item-1/2 t").message


def test_styles():
    assert parse_style(None, None, None) == Style("viridis", "nearest", None, None)
    assert parse_style("turbo", "1.5", "", "bilinear") == Style("turbo", "bilinear", 1.5, None)
    e = refused(parse_style, "jet", None, None)
    assert all(name in e.message for name in COLORMAPS)
    assert "nearest, bilinear" in refused(parse_style, None, None, None, "cubic").message
    assert "vmin (3) must be less than vmax (2)" in refused(parse_style, None, "3", "2").message
    assert "vmax must be a number" in refused(parse_style, None, None, "warm").message
    assert "finite" in refused(parse_style, None, "inf", None).message


def test_integers():
    assert parse_int("TILEROW", " 7 ") == 7
    for bad in ("", "1.5", "0x1", "1e3", "9" * 12):
        assert "TILEROW" in refused(parse_int, "TILEROW", bad).message


def test_grids_from_items():
    for grid in (HEALPix(128, True), HEALPix(32, False), Octahedral(96), Gaussian(48)):
        assert grid_of(_info(grid_attrs(grid))) == grid
    # the short names some items carry (tests/unit/hub/tiles/conftest.lake_item)
    short = lake_item("x")["properties"]["twinhub:grid"]
    assert grid_of(_info(short)) == HEALPix(128, True)
    latlon = LatLon(0.25)
    assert grid_of(_info(grid_attrs(latlon))).size == latlon.size
    assert grid_of(_info({})) is None
    assert grid_of(_info({"grid_type": "healpix"})) is None  # no nside: not guessed
    assert native_zoom(_info({}), "WebMercatorQuad") == FALLBACK_NATIVE_ZOOM
    assert native_zoom(_info({}), "WebMercatorQuad", HEALPix(1024)) == tmsmod.native_zoom(
        "WebMercatorQuad", HEALPix(1024)
    )


def _info(grid: dict):
    return dataclasses.replace(memory_layer().info, grid=grid)


def test_tile_limits(tmp_path):
    ctx = make_ctx(tmp_path, max_zoom_beyond_native=2)
    info = _info(grid_attrs(HEALPix(1024, True)))
    native = tmsmod.native_zoom("WebMercatorQuad", HEALPix(1024, True))
    assert max_zoom(ctx, info, "WebMercatorQuad") == native + 2
    check_tile(ctx, info, "WebMercatorQuad", native + 2, 0, 0)
    e = refused(check_tile, ctx, info, "WebMercatorQuad", native + 3, 0, 0)
    assert e.message == (
        f"zoom {native + 3} is beyond the limit: native zoom {native} + "
        f"TwinhubTiles.max_zoom_beyond_native 2 = {native + 2}"
    )
    with pytest.raises(TileOutOfRange) as out:
        check_tile(ctx, info, "WorldCRS84Quad", 1, 0, 4)
    assert out.value.status == 404 and out.value.locator == "TileCol"
    assert "columns 0..3" in out.value.message
    with pytest.raises(TileOutOfRange) as out:
        check_tile(ctx, info, "WorldCRS84Quad", 1, -1, 0)
    assert out.value.locator == "TileRow"
    with pytest.raises(TileOutOfRange):
        check_tile(ctx, info, "WorldCRS84Quad", -1, 0, 0)
    assert "WorldCRS84Quad" in refused(check_tile, ctx, info, "EPSG:4326", 0, 0, 0).message
    limits = matrix_limits("WorldCRS84Quad", 2)
    assert limits[-1] == {"z": 2, "minrow": 0, "maxrow": 3, "mincol": 0, "maxcol": 7}


def test_iso_times():
    t = datetime(2030, 1, 1, 6, tzinfo=UTC)
    assert iso(t) == "2030-01-01T06:00:00Z"
    assert iso(t.astimezone(timezone(timedelta(hours=2)))) == "2030-01-01T06:00:00Z"
    assert iso(np.datetime64("2030-01-01T06:00:00.000000000")) == "2030-01-01T06:00:00Z"


def test_views():
    v = parse_view({"projection": "robinson", "center": "190,10", "zoom": "2", "width": "300",
                    "height": "150"}, 1_000_000)  # fmt: skip
    assert (v.projection, v.width, v.height, v.zoom) == ("robinson", 300, 150, 2.0)
    assert (v.center_lon, v.center_lat) == pytest.approx((-170.0, 10.0))
    assert parse_view({}, 1_000_000).projection == "platecarree"
    e = refused(parse_view, {"width": "2000", "height": "1000"}, 1_000_000)
    assert e.message == (
        "view of 2000 x 1000 = 2000000 pixels is beyond the limit: "
        "TwinhubTiles.max_view_pixels 1000000"
    )
    assert parse_center("") == (0.0, 0.0)
    assert "lon,lat" in refused(parse_center, "1,2,3").message


# -- finding 2: grid sizes from item metadata, by formula, before anything is built ------------
def test_grid_cells_by_formula_match_the_grids():
    from twinhub.services.tiles.gridsize import grid_cells
    from twinlab.grids import ReducedGaussian

    reduced = ReducedGaussian(4, [8, 12, 16, 20, 20, 16, 12, 8])
    for grid in (HEALPix(64, True), HEALPix(8, False), Octahedral(48), Gaussian(24), reduced,
                 LatLon(2.5), LatLon(1.0, 0.5), LatLon(5.0, nodes=False)):  # fmt: skip
        assert grid_cells(grid_attrs(grid)) == grid.size, grid.key
    half = {"grid_type": "reduced_gaussian", "gaussian_N": 4, "gaussian_pl": [8, 12, 16, 20]}
    assert grid_cells(half) == reduced.size  # N entries: mirrored
    assert grid_cells({"grid_type": "healpix", "nside": 128}) == HEALPix(128).size
    for bad in ({}, {"grid_type": "healpix"}, {"grid_type": "octahedral", "gaussian_N": -3},
                {"grid_type": "octahedral", "gaussian_N": "x"}, {"grid_type": "latlon", "latlon_dlon": 0},
                {"grid_type": "latlon", "latlon_dlon": 1e-320}, {"grid_type": "regular_gaussian", "N": 1.5},
                {"grid_type": "reduced_gaussian", "gaussian_N": 4, "gaussian_pl": [1, 2]}):  # fmt: skip
        assert grid_cells(bad) is None, bad


def test_huge_grid_in_item_metadata_is_refused_fast_and_builds_nothing(tmp_path):
    import time
    import tracemalloc

    from twinhub.services.tiles import params
    from twinhub.services.tiles.gridsize import grid_cells

    ctx = make_ctx(tmp_path)
    cap = ctx.settings.max_grid_cells
    huge = {
        "octahedral": {"grid_type": "octahedral", "gaussian_N": 2e8},
        "regular_gaussian": {"grid_type": "regular_gaussian", "gaussian_N": 200_000_000},
        "healpix": {"grid_type": "healpix", "healpix_nside": 2**20},
        "latlon": {"grid_type": "latlon", "latlon_dlon": 1e-6},
        "reduced_gaussian": {"grid_type": "reduced_gaussian", "gaussian_N": 2e8, "gaussian_pl": [4]},
    }  # fmt: skip
    built = params._grid_of.cache_info().currsize
    tracemalloc.start()
    start = time.perf_counter()
    try:
        for kind, g in huge.items():
            info = _info(g)
            if kind != "reduced_gaussian":  # (its pl has the wrong length: not understood)
                e = refused(check_tile, ctx, info, "WebMercatorQuad", 0, 0, 0)
                assert e.status == 422, kind
                assert f"TwinhubTiles.max_grid_cells = {cap}" in e.message and kind in e.message
                assert refused(grid_of, info).status == 422
                # listings (capabilities, tilesets) still answer: the zoom comes from the count
                z = tmsmod.native_zoom_cells("WebMercatorQuad", grid_cells(g))
                assert native_zoom(info, "WebMercatorQuad") == z >= 10
                assert max_zoom(ctx, info, "WebMercatorQuad") == min(z + 3, tmsmod.MAX_ZOOM)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 1 << 20, (elapsed, peak)  # no grid: not even its rings
    assert params._grid_of.cache_info().currsize == built
    # a long pl is refused by its length (>= one cell per ring) before it is summed
    long_pl = _info({"grid_type": "reduced_gaussian", "gaussian_N": 10, "gaussian_pl": [1] * 20})
    assert refused(grid_of, long_pl, 19).status == 422


def test_native_zoom_from_the_item_grid_is_the_grids():
    for grid in (HEALPix(1024, True), Octahedral(1280), Gaussian(320), LatLon(0.25)):
        for tms_id in tmsmod.TMS_IDS:
            assert native_zoom(_info(grid_attrs(grid)), tms_id) == tmsmod.native_zoom(tms_id, grid)


def test_huge_grid_item_over_the_routes(monkeypatch, tmp_path):
    """A tile of an item whose metadata claims O(2e8): 422 naming the limit; the listing
    (WMTS capabilities) still answers for everyone."""
    from .test_wmts import P, memory_layer, serve_layers

    good = memory_layer()
    bad = memory_layer("huge", 8, 1)
    bad = dataclasses.replace(bad, info=dataclasses.replace(
        bad.info, grid={"grid_type": "octahedral", "gaussian_N": 2e8}))  # fmt: skip
    client = serve_layers(monkeypatch, tmp_path, [good, bad])
    r = client.get(P + "collections/huge/2t/map/tiles/WebMercatorQuad/0/0/0")
    assert r.status_code == 422 and "TwinhubTiles.max_grid_cells" in r.json()["description"]
    r = client.get(P + "layers/huge")
    assert r.status_code == 422 and "TwinhubTiles.max_grid_cells" in r.json()["description"]
    caps = client.get(P + "wmts", params={"SERVICE": "WMTS", "REQUEST": "GetCapabilities"})
    assert caps.status_code == 200 and "huge/2t" in caps.text and "it-h16/2t" in caps.text


# -- finding 7: bounded variables per layers/{item}, rounded view keys --------------------------
def test_layers_summary_is_bounded_by_max_variables(monkeypatch, tmp_path):
    from .test_wmts import P, memory_layer, serve_layers

    base = memory_layer("many", 8, 1)
    layers = [
        dataclasses.replace(base, info=dataclasses.replace(base.info, variable=f"v{k}"))
        for k in range(3)
    ]
    client = serve_layers(monkeypatch, tmp_path, layers, max_variables=2)
    r = client.get(P + "layers/many")
    assert r.status_code == 400
    assert "3 variables" in r.json()["description"]
    assert "TwinhubTiles.max_variables = 2" in r.json()["description"]
    client = serve_layers(monkeypatch, tmp_path, layers, max_variables=3)
    assert len(client.get(P + "layers/many").json()["variables"]) == 3


def test_view_centre_and_zoom_are_rounded():
    a = parse_view({"center": "10.123456789,-20.000049999", "zoom": "2.00049"}, 1_000_000)
    b = parse_view({"center": "10.12346,-20.00001", "zoom": "2.0001"}, 1_000_000)
    assert (a.center_lon, a.center_lat, a.zoom) == (10.1235, -20.0, 2.0)
    assert a == b  # the same view, the same cache key
    assert parse_view({"zoom": "0.0001"}, 1_000_000).zoom == 0.001  # never 0
    assert parse_view({"center": "179.99999,0"}, 1_000_000).center_lon == -180.0


def test_views_never_push_tiles_out_of_the_png_cache(tmp_path):
    """Views (every centre/zoom/size a new PNG) are kept in their own small LRU: the hot tiles
    stay kept however many views are asked for."""
    import asyncio

    from starlette.requests import Request

    from twinhub.services.tiles import tilecache

    ctx = make_ctx(tmp_path, tile_cache_bytes=64 * 1024)
    tilecache.install(ctx)
    req = Request({"type": "http", "method": "GET", "path": "/", "headers": []})

    async def answer(key, kind, size):
        return await tilecache.png_response(req, ctx, key, lambda: b"p" * size, public=False, kind=kind)  # fmt: skip

    async def run():
        await answer(("tile", 0), "tile", 32 * 1024)
        for k in range(40):  # 40 x 2 KiB of views: more than the views' share (64 KiB / 16)
            await answer(("view", k), "view", 2048)

    asyncio.run(run())
    tiles, views = ctx.extras[tilecache.KEPT], ctx.extras[tilecache.KEPT_VIEWS]
    assert tiles.get(("tile", 0)) is not None and tiles.nbytes == 32 * 1024
    assert views.max_bytes == 4096 and views.nbytes <= 4096 and views.get(("view", 39)) is not None

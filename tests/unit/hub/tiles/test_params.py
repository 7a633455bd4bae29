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

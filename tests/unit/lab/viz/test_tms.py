"""Tile matrix sets: addressing, pixel centres, bounds and the OGC 2DTMS documents."""

from __future__ import annotations

import math

import numpy as np
import pytest

import twinlab.grids as tg
from twinlab.viz import tms


def test_matrix_sizes() -> None:
    assert tms.matrix_size("WebMercatorQuad", 0) == (1, 1)
    assert tms.matrix_size("WebMercatorQuad", 5) == (32, 32)
    assert tms.matrix_size("WorldCRS84Quad", 0) == (2, 1)
    assert tms.matrix_size("WorldCRS84Quad", 3) == (16, 8)


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (("Nope", 0, 0, 0), "tile matrix set"),
        (("WebMercatorQuad", -1, 0, 0), "zoom"),
        (("WebMercatorQuad", 25, 0, 0), "zoom"),
        (("WebMercatorQuad", 2, 4, 0), "row"),
        (("WorldCRS84Quad", 2, 0, 8), "col"),
        (("WorldCRS84Quad", 2, 4, 0), "row"),
    ],
)
def test_check_tile_names_the_problem(args: tuple, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        tms.check_tile(*args)


def test_valid_tiles_pass() -> None:
    tms.check_tile("WorldCRS84Quad", 2, 3, 7)
    tms.check_tile("WebMercatorQuad", 24, 0, 2**24 - 1)


def test_tile_lonlat_pixel_centres_webmercator() -> None:
    lon, lat = tms.tile_lonlat("WebMercatorQuad", 0, 0, 0)
    assert lon.shape == lat.shape == (256, 256)
    assert lon[0, 0] == pytest.approx(-180 + 360 / 512)
    assert (np.diff(lat[:, 0]) < 0).all()  # row 0 north
    assert lat[0, 0] < 85.0512 and lat[-1, 0] > -85.0512
    # pixel centre y in metres is exactly the middle of the pixel
    pyproj = pytest.importorskip("pyproj")
    t = pyproj.Transformer.from_crs(4326, 3857, always_xy=True)
    x, y = t.transform(lon[5, 7], lat[5, 7])
    size = 2 * math.pi * 6378137.0 / 256
    assert x == pytest.approx(-math.pi * 6378137.0 + 7.5 * size, abs=1e-6)
    assert y == pytest.approx(math.pi * 6378137.0 - 5.5 * size, abs=1e-6)


def test_tile_lonlat_crs84_and_wrap() -> None:
    lon, lat = tms.tile_lonlat("WorldCRS84Quad", 1, 1, 3)
    w, s, e, n = tms.tile_bounds_lonlat("WorldCRS84Quad", 1, 1, 3)
    assert (w, s, e, n) == (90.0, -90.0, 180.0, 0.0)
    assert lon.min() > 90 and lon.max() < 180
    assert lat.min() > -90 and lat.max() < 0
    assert ((lon >= -180) & (lon < 180)).all()


def test_bounds_crs_vs_lonlat() -> None:
    b = tms.tile_bounds_crs("WebMercatorQuad", 1, 0, 1)
    assert b[0] == 0 and b[3] == pytest.approx(math.pi * 6378137.0)
    bl = tms.tile_bounds_lonlat("WebMercatorQuad", 1, 0, 1)
    assert bl[0] == 0 and bl[2] == pytest.approx(180) and bl[1] == pytest.approx(0, abs=1e-9)
    assert bl[3] == pytest.approx(85.0511287798066)


@pytest.mark.parametrize("tms_id", tms.TMS_IDS)
def test_tms_document(tms_id: str) -> None:
    doc = tms.tms_document(tms_id, max_zoom=5)
    assert doc["id"] == tms_id and doc["uri"].endswith(tms_id)
    assert len(doc["tileMatrices"]) == 6
    m0, m3 = doc["tileMatrices"][0], doc["tileMatrices"][3]
    assert m3["id"] == "3"
    assert (m3["matrixWidth"], m3["matrixHeight"]) == tms.matrix_size(tms_id, 3)
    assert m0["cornerOfOrigin"] == "topLeft" and m0["tileWidth"] == 256
    # the OGC-registered zoom-0 scale denominators
    expect = 559082264.0287178 if tms_id == "WebMercatorQuad" else 279541132.0143589
    assert m0["scaleDenominator"] == pytest.approx(expect, rel=1e-9)
    assert m3["scaleDenominator"] == pytest.approx(expect / 8, rel=1e-9)
    # origin + matrix span covers the CRS bounds the tiles were cut from
    b = tms.tile_bounds_crs(tms_id, 3, m3["matrixHeight"] - 1, m3["matrixWidth"] - 1)
    assert m3["pointOfOrigin"][0] + m3["cellSize"] * 256 * m3["matrixWidth"] == pytest.approx(b[2])


def test_native_zoom() -> None:
    # HEALPix n1024 cells are ~0.057 deg: zoom 4 pixels (0.088 deg) are the last not smaller
    assert tms.native_zoom("WebMercatorQuad", tg.HEALPix(1024)) == 4
    assert tms.native_zoom("WorldCRS84Quad", tg.HEALPix(1024)) == 3
    assert tms.native_zoom("WebMercatorQuad", tg.HEALPix(2048)) == 5
    assert tms.native_zoom("WebMercatorQuad", tg.HEALPix(1)) == 0


def test_native_zoom_from_a_cell_count() -> None:
    """The same zoom as from the grid, from its cell count alone, for any count (an item's
    metadata may claim anything: nothing is built, no float overflow)."""
    for grid in (tg.HEALPix(1), tg.HEALPix(1024), tg.Octahedral(1280), tg.Gaussian(640)):
        for tms_id in tms.TMS_IDS:
            assert tms.native_zoom_cells(tms_id, grid.size) == tms.native_zoom(tms_id, grid)
    assert tms.native_zoom_cells("WebMercatorQuad", 10**400) == tms.MAX_ZOOM
    assert tms.native_zoom_cells("WorldCRS84Quad", 1) == 0
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="cell count"):
            tms.native_zoom_cells("WebMercatorQuad", bad)

"""Rendering: every nearest pixel is its native cell's colour; caches; polar tiles."""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import twinlab.grids as tg
from twinlab.viz import (
    PROJECTIONS,
    Field,
    View,
    colourize,
    nearest_index,
    render,
    render_tile,
    render_view,
    sample,
    tile_lonlat,
    view_lonlat,
)
from twinlab.viz import locate as locate_mod

# the module (twinlab.viz.render, the attribute, is the function render())
render_mod = importlib.import_module("twinlab.viz.render")

GRIDS = [
    tg.HEALPix(16),
    tg.HEALPix(16, nest=False),
    tg.Octahedral(24),
    tg.Gaussian(12),
    tg.LatLon(4.0),
    tg.LatLon(6.0, nodes=False, lon0=-177.0),
]


def _field(grid: tg.Grid, nt: int = 2, nan_frac: float = 0.0) -> Field:
    rng = np.random.default_rng(grid.size)
    data = rng.normal(0, 1, (nt, grid.size))
    data[rng.random(data.shape) < nan_frac] = np.nan
    da = xr.DataArray(data.reshape(nt, *grid.shape), dims=("time", *grid.dims), name="x")
    return Field(da, grid)


def _exact(f: Field, t: int, lon: np.ndarray, lat: np.ndarray, got: np.ndarray) -> None:
    ref = colourize(f.read(t, nearest_index(f.grid, lon, lat)), "viridis", -1.5, 1.5)
    assert got.shape == ref.shape and (got == ref).all()


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize(
    "tile",
    [
        ("WebMercatorQuad", 0, 0, 0),
        ("WebMercatorQuad", 3, 2, 7),
        ("WorldCRS84Quad", 0, 0, 1),
        ("WorldCRS84Quad", 4, 15, 0),
        ("WorldCRS84Quad", 5, 0, 63),
    ],  # fmt: skip
)
def test_nearest_tile_is_exact(grid: tg.Grid, tile: tuple[str, int, int, int]) -> None:
    f = _field(grid, nan_frac=0.05)
    for t in (0, 1):  # the second step reuses the cached indices
        img = render_tile(f, t, *tile, cmap="viridis", vmin=-1.5, vmax=1.5)
        assert img.shape == (256, 256, 4) and img.dtype == np.uint8
        _exact(f, t, *tile_lonlat(*tile), img)


@pytest.mark.parametrize("proj", PROJECTIONS)
@pytest.mark.parametrize("grid", [GRIDS[0], GRIDS[2], GRIDS[4]], ids=str)
def test_nearest_view_is_exact(grid: tg.Grid, proj: str) -> None:
    f = _field(grid)
    view = View(proj, 240, 130, center_lon=160.0, center_lat=20.0, zoom=1.3)
    img = render_view(f, 1, view, vmin=-1.5, vmax=1.5)
    lon, lat = view_lonlat(view)
    _exact(f, 1, lon, lat, img)
    assert (img[np.isnan(lon)] == 0).all() and (img[~np.isnan(lon)][:, 3] == 255).all()
    bil = render_view(f, 1, view, method="bilinear", vmin=-1.5, vmax=1.5)
    assert ((bil[..., 3] == 0) == np.isnan(lon)).all()  # off the map: transparent, else drawn


@pytest.mark.parametrize("grid", GRIDS, ids=str)
@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_polar_crs84_tiles_have_no_gaps(grid: tg.Grid, method: str) -> None:
    f = _field(grid)
    for z, rows, cols in ((0, (0,), (0, 1)), (3, (0, 7), (0, 5, 15))):
        for row in rows:
            for col in cols:
                img = render_tile(f, 0, "WorldCRS84Quad", z, row, col, method=method)
                assert (img[..., 3] == 255).all(), (z, row, col)


def test_nan_data_transparent_and_default_range() -> None:
    g = tg.HEALPix(8)
    f = _field(g, nan_frac=0.3)
    lon, lat = tile_lonlat("WorldCRS84Quad", 0, 0, 0)
    img = render(f, 0, lon, lat)
    vals = sample(f, 0, lon, lat)
    assert ((img[..., 3] == 0) == np.isnan(vals)).all()
    assert np.isnan(vals).any() and (~np.isnan(vals)).any()
    lo, hi = f.value_range(0)
    assert (img == colourize(vals, "viridis", lo, hi)).all()


def test_bilinear_tile_matches_sample() -> None:
    g = tg.Octahedral(16)
    f = _field(g)
    tile = ("WebMercatorQuad", 2, 1, 3)
    img = render_tile(f, 1, *tile, method="bilinear", cmap="coolwarm", vmin=-2, vmax=2)
    vals = sample(f, 1, *tile_lonlat(*tile), method="bilinear")
    assert (img == colourize(vals, "coolwarm", -2, 2)).all()
    # bilinear is smooth: neighbouring pixels differ less than nearest ones
    near = sample(f, 1, *tile_lonlat(*tile))
    assert np.abs(np.diff(vals, axis=1)).mean() < np.abs(np.diff(near, axis=1)).mean()


def test_indices_cached_across_time_and_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    render_mod.index_cache.clear()
    calls: list[int] = []
    real = locate_mod.nearest_index

    def counting(grid: Any, lon: Any, lat: Any) -> np.ndarray:
        calls.append(1)
        return real(grid, lon, lat)

    monkeypatch.setattr(render_mod, "nearest_index", counting)
    g = tg.HEALPix(32)
    f1 = _field(g)
    f2 = Field(-f1.da, g)
    a = render_tile(f1, 0, "WebMercatorQuad", 1, 0, 0, vmin=-1, vmax=1)
    render_tile(f1, 1, "WebMercatorQuad", 1, 0, 0, vmin=-1, vmax=1)
    b = render_tile(f2, 0, "WebMercatorQuad", 1, 0, 0, vmin=-1, vmax=1)
    assert len(calls) == 1
    assert (a != b).any()  # different data, same geometry
    key = (g.key, "nearest", ("tile", "WebMercatorQuad", 1, 0, 0))
    idx = render_mod.index_cache.get(key)[0]
    assert idx.dtype == np.int32


def test_index_cache_bounded() -> None:
    cache = render_mod._IndexCache(1000)
    for k in range(5):
        cache.put(k, np.zeros(50), 400)
    assert cache.nbytes <= 1000 and cache.get(0) is None and cache.get(4) is not None


def test_bad_method() -> None:
    f = _field(tg.HEALPix(2))
    with pytest.raises(ValueError, match="bilinear"):
        render_tile(f, 0, "WebMercatorQuad", 0, 0, 0, method="cubic")
    with pytest.raises(ValueError, match="row"):
        render_tile(f, 0, "WebMercatorQuad", 0, 1, 0)
    with pytest.raises(ValueError, match="viridis"):
        render_tile(f, 0, "WebMercatorQuad", 0, 0, 0, cmap="nope")
    with pytest.raises(ValueError, match="vmax > vmin"):
        render_view(f, 0, View("mollweide", 10, 10), vmin=3, vmax=2)


@pytest.mark.parametrize("name", ["reduced_gg.grib", "regular_gg_sfc.grib", "regular_ll_sfc.grib"])
def test_grib_fields_render_exactly(name: str) -> None:
    """Real ECMWF GRIB (cfgrib): grid detected, every pixel its cell's value."""
    pytest.importorskip("pyproj")  # before ecCodes: its bundled libproj must not load first
    pytest.importorskip("cfgrib")
    path = Path(__file__).resolve().parents[3] / "data" / "grids" / name
    ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    var = next(iter(ds.data_vars))
    f = Field.from_dataset(ds, var)
    assert f.ntimes == 1 and f.grid.size == ds[var].size
    tile = ("WorldCRS84Quad", 1, 0, 3)
    lon, lat = tile_lonlat(*tile)
    vals = np.asarray(ds[var].values, dtype=np.float64).ravel()
    assert (sample(f, 0, lon, lat) == vals[nearest_index(f.grid, lon, lat)]).all()
    lo, hi = f.value_range(0)
    img = render_tile(f, 0, *tile)
    assert (img == colourize(vals[nearest_index(f.grid, lon, lat)], "viridis", lo, hi)).all()
    assert len(np.unique(img.reshape(-1, 4), axis=0)) > 10  # a real picture, not one colour


def test_concurrent_renders_read_each_chunk_once() -> None:
    """Render threads of the tiles service share fields and caches: same pictures as one
    thread, and every chunk read once however many threads want it at the same time."""
    g = tg.HEALPix(32)
    vals = np.random.default_rng(9).normal(size=(2, g.size))
    da = xr.DataArray(vals, dims=("time", "cell"), name="c")
    da.encoding["preferred_chunks"] = {"time": 1, "cell": 1024}
    tiles = [("WorldCRS84Quad", 1, r, c) for r in range(2) for c in range(4)]
    ref_field = Field(da, g)
    want = {tl: render_tile(ref_field, 1, *tl, vmin=-2, vmax=2) for tl in tiles}
    f = Field(da, g)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda tl: render_tile(f, 1, *tl, vmin=-2, vmax=2), tiles * 3))
    for tl, img in zip(tiles * 3, got, strict=True):
        assert (img == want[tl]).all()
    assert f.chunk_reads == ref_field.chunk_reads == 12  # all of time step 1, once each

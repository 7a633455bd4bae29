"""Pixel -> native cell: exact nearest (healpy / ops.nearest_cells) and bilinear stencils."""

from __future__ import annotations

import healpy as hp
import numpy as np
import pytest
import xarray as xr

import twinlab.grids as tg
from twinlab.grids.ops import nearest_cells
from twinlab.grids.regrid.builders import bilinear as bilinear_weights
from twinlab.viz import Field, cell_centers, nearest_index, sample
from twinlab.viz.locate import bilinear_stencil

RNG = np.random.default_rng(42)


def _points(grid: tg.Grid, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Random points plus edge cases: poles, antimeridian, ring latitudes and midpoints,
    longitudes on cell boundaries and centres."""
    lon = list(RNG.uniform(-180, 180, n))
    lat = list(np.rad2deg(np.arcsin(RNG.uniform(-1, 1, n))))
    rings = grid.rings()
    mids = (rings.lat[1:] + rings.lat[:-1]) / 2
    edge_lat = np.concatenate([[90.0, -90.0, 0.0], rings.lat[:40], rings.lat[-40:], mids[:40]])
    for la in edge_lat:
        for lo in (-180.0, 180.0, 179.999999, -0.0, 0.0, 45.0, 90.0, 360.0 / rings.nlon[0] / 2):
            lon.append(lo)
            lat.append(la)
    return np.asarray(lon), np.asarray(lat)


@pytest.mark.parametrize("nest", [True, False])
@pytest.mark.parametrize("nside", [1, 8, 1024])
def test_healpix_nearest_is_ang2pix(nside: int, nest: bool) -> None:
    g = tg.HEALPix(nside, nest=nest)
    lon, lat = _points(g)
    idx = nearest_index(g, lon, lat)
    assert idx.dtype == np.int64
    assert (idx == hp.ang2pix(nside, lon, lat, nest=nest, lonlat=True)).all()


@pytest.mark.parametrize("nest", [True, False])
def test_healpix_cap_boundary_negative_longitudes(nest: bool) -> None:
    """Points exactly on the z = +-2/3 cap boundary at negative longitudes (e.g. -67.5)."""
    zlat = np.rad2deg(np.arcsin(2.0 / 3.0))
    lon, lat = np.meshgrid(np.arange(-180.0, 180.0, 22.5), [zlat, -zlat])
    idx = nearest_index(tg.HEALPix(8, nest=nest), lon, lat)
    assert (idx == hp.ang2pix(8, lon, lat, nest=nest, lonlat=True)).all()


GRIDS = [
    tg.Octahedral(48),
    tg.ReducedGaussian(4, [20, 24, 24, 24]),
    tg.Gaussian(24),
    tg.LatLon(2.5),
    tg.LatLon(3.0, 2.0, nodes=False),
    tg.LatLon(5.0, descending=False),
]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.key)
def test_other_grids_nearest_is_nearest_cells(grid: tg.Grid) -> None:
    lon, lat = _points(grid)
    assert (nearest_index(grid, lon, lat) == nearest_cells(grid, lon, lat)).all()


def test_nan_points_and_shape() -> None:
    g = tg.Octahedral(16)
    lon = np.array([[0.0, np.nan], [10.0, 20.0]])
    lat = np.array([[0.0, 0.0], [np.nan, 89.0]])
    idx = nearest_index(g, lon, lat)
    assert idx.shape == (2, 2)
    assert idx[0, 1] == -1 and idx[1, 0] == -1 and idx[0, 0] >= 0 and idx[1, 1] >= 0
    hidx = nearest_index(tg.HEALPix(4), lon, lat)
    assert (hidx[np.isnan(lon) | np.isnan(lat)] == -1).all() and hidx[0, 0] >= 0


@pytest.mark.parametrize("grid", [tg.HEALPix(16), tg.HEALPix(8, nest=False), *GRIDS], ids=str)
def test_cell_centers(grid: tg.Grid) -> None:
    idx = RNG.integers(0, grid.size, 500)
    lon, lat = cell_centers(grid, np.append(idx, -1))
    clon, clat = grid.centers()
    assert np.isnan(lon[-1]) and np.isnan(lat[-1])
    assert ((lon[:-1] >= -180) & (lon[:-1] < 180)).all()
    dl = np.mod(lon[:-1] - clon[idx] + 180, 360) - 180
    assert np.abs(dl).max() < 1e-9 and np.abs(lat[:-1] - clat[idx]).max() < 1e-9
    # the centre of a cell is in that cell
    assert (nearest_index(grid, lon[:-1], lat[:-1]) == idx).all()


def _field(grid: tg.Grid, values: np.ndarray) -> Field:
    return Field(xr.DataArray(values.reshape(grid.shape), dims=grid.dims, name="v"), grid)


@pytest.mark.parametrize("nest", [True, False])
@pytest.mark.parametrize("nside", [2, 32])
def test_bilinear_is_get_interp_val(nside: int, nest: bool) -> None:
    g = tg.HEALPix(nside, nest=nest)
    m = RNG.normal(280, 10, g.size)
    lon, lat = _points(g, 3000)
    got = sample(_field(g, m), 0, lon, lat, method="bilinear")
    ref = hp.get_interp_val(m, lon, lat, nest=nest, lonlat=True)
    assert np.allclose(got, ref, rtol=1e-10, atol=0)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.key)
def test_bilinear_equals_regrid_weights(grid: tg.Grid) -> None:
    """The same rule as the regridder's bilinear weights (polar caps included)."""
    target = tg.LatLon(1.0)  # node grid: rows at the poles and in both caps
    w = bilinear_weights(grid, target)
    m = RNG.normal(0, 1, grid.size)
    ref = np.add.reduceat(w.data * m[w.indices], w.indptr[:-1])
    lon, lat = target.centers()
    got = sample(_field(grid, m), 0, lon, lat, method="bilinear")
    assert np.allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_bilinear_stencil_weights_sum_to_one() -> None:
    g = tg.Octahedral(8)
    lon, lat = _points(g, 500)
    st = bilinear_stencil(g, lon, lat)
    assert np.allclose(st.weight.sum(-1) + st.pole_weight, 1.0)
    assert ((st.index >= 0) | (st.weight == 0)).all()
    assert (st.pole[lat > g.rings().lat[0]] == 1).all()


@pytest.mark.parametrize("grid", [tg.HEALPix(8), tg.Octahedral(8), tg.LatLon(10.0)], ids=str)
def test_scalar_points(grid: tg.Grid) -> None:
    f = _field(grid, np.arange(grid.size, dtype=float))
    i = nearest_index(grid, 12.0, 21.0)
    assert np.ndim(i) == 0 and i == nearest_index(grid, np.array([12.0]), np.array([21.0]))[0]
    assert sample(f, 0, 12.0, 21.0) == float(i)
    assert np.isnan(sample(f, 0, np.nan, 21.0, method="bilinear"))
    assert np.isfinite(sample(f, 0, 12.0, 21.0, method="bilinear"))

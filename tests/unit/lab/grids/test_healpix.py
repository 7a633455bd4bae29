"""HEALPix maths against healpy (the reference C++ implementation) and ecCodes."""

from __future__ import annotations

import numpy as np
import pytest

from twinlab.grids import EARTH_RADIUS_M, HEALPix
from twinlab.grids import _healpix as hpx

hp = pytest.importorskip("healpy")

RNG = np.random.default_rng(20261124)
SMALL = [1, 2, 4, 8, 32]
LARGE = [1024, 8192, 2**20, 2**29]


def _lon_diff(a, b):
    return np.abs((a - b + 180.0) % 360.0 - 180.0)


def _pixels(nside: int) -> np.ndarray:
    npix = 12 * nside * nside
    if npix <= 200_000:
        return np.arange(npix)
    # random pixels plus the ones at every region boundary (caps, belt, faces)
    special = [0, 1, 2 * nside * (nside - 1) - 1, 2 * nside * (nside - 1), npix // 2, npix - 1]
    return np.concatenate([RNG.integers(0, npix, 1_000_000 if nside <= 8192 else 200_000), special])


@pytest.mark.parametrize("nest", [True, False], ids=["nested", "ring"])
@pytest.mark.parametrize("nside", SMALL + LARGE)
def test_pix2lonlat_matches_healpy(nside: int, nest: bool) -> None:
    pix = _pixels(nside)
    grid = HEALPix(nside, nest)
    lon, lat = grid.pix2lonlat(pix)
    hlon, hlat = hp.pix2ang(nside, pix, nest=nest, lonlat=True)
    assert lon.dtype == np.float64 and lat.dtype == np.float64
    assert ((lon >= 0) & (lon < 360)).all()
    np.testing.assert_allclose(lat, hlat, rtol=0, atol=1e-12)
    assert _lon_diff(lon, hlon).max() < 1e-12
    # and back: a centre lies in its own pixel
    np.testing.assert_array_equal(grid.lonlat2pix(lon, lat), pix)


@pytest.mark.parametrize("nest", [True, False], ids=["nested", "ring"])
@pytest.mark.parametrize("nside", [1, 4, 64, 8192, 2**29])
def test_lonlat2pix_matches_healpy_on_random_points(nside: int, nest: bool) -> None:
    n = 1_000_000 if nside == 8192 else 100_000
    lon = RNG.uniform(-360.0, 720.0, n)
    lat = np.rad2deg(np.arcsin(RNG.uniform(-1.0, 1.0, n)))
    # the awkward places: poles, cap/belt boundary (z = 2/3), equator, face meridians
    edge_lat = np.r_[90.0, -90.0, np.rad2deg(np.arcsin(2 / 3)), -np.rad2deg(np.arcsin(2 / 3)), 0.0]
    lat = np.concatenate([lat, np.repeat(edge_lat, 9)])
    lon = np.concatenate([lon, np.tile([0, 45, 90, 135, 180, 270, 360, -90, 359.999999], 5)])
    ours = HEALPix(nside, nest).lonlat2pix(lon, lat)
    ref = hp.ang2pix(nside, lon, lat, nest=nest, lonlat=True)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("nside", SMALL + LARGE)
def test_nest_ring_permutation(nside: int) -> None:
    pix = _pixels(nside)
    ring = hpx.nest2ring(nside, pix)
    np.testing.assert_array_equal(ring, hp.nest2ring(nside, pix))
    np.testing.assert_array_equal(hpx.ring2nest(nside, pix), hp.ring2nest(nside, pix))
    np.testing.assert_array_equal(hpx.ring2nest(nside, ring), pix)
    if pix.size == 12 * nside * nside:  # a true permutation of the whole sphere
        assert np.array_equal(np.sort(ring), pix)


@pytest.mark.parametrize("nest", [True, False], ids=["nested", "ring"])
@pytest.mark.parametrize("nside", [1, 2, 4, 16, 8192])
def test_neighbours_match_healpy(nside: int, nest: bool) -> None:
    grid = HEALPix(nside, nest)
    pix = np.arange(grid.size) if grid.size < 10_000 else RNG.integers(0, grid.size, 200_000)
    ours = grid.neighbours(pix)
    assert ours.shape == (pix.size, 8)
    np.testing.assert_array_equal(ours, hp.get_all_neighbours(nside, pix, nest=nest).T)


@pytest.mark.parametrize("nest", [True, False], ids=["nested", "ring"])
@pytest.mark.parametrize("nside", [1, 2, 16, 64])
def test_rings_and_ring_order_describe_the_same_cells(nside: int, nest: bool) -> None:
    grid = HEALPix(nside, nest)
    rings = grid.rings()
    assert rings.nrings == 4 * nside - 1 and rings.size == grid.size
    assert np.all(np.diff(rings.lat) < 0)  # north -> south
    rlon, rlat = rings.centers()
    lon, lat = grid.centers()
    order = grid.ring_order()
    if nest:
        lon, lat = lon[order], lat[order]
    else:
        assert order is None
    np.testing.assert_allclose(rlat, lat, atol=1e-12)
    assert _lon_diff(rlon, lon).max() < 1e-12
    ids = grid.ring_ids()
    np.testing.assert_array_equal(ids, hp.pix2ring(nside, np.arange(grid.size), nest=nest) - 1)


def test_areas_are_equal_and_sum_to_the_sphere() -> None:
    grid = HEALPix(64)
    a = grid.areas()
    assert a.shape == (grid.size,) and np.ptp(a) == 0
    assert abs(a.sum() / (4 * np.pi * EARTH_RADIUS_M**2) - 1) < 1e-12
    assert grid.lat_bounds() is None


def test_keys_and_equality() -> None:
    assert HEALPix(1024).key == "healpix-n1024-nested"
    assert HEALPix(1024, nest=False).key == "healpix-n1024-ring"
    assert HEALPix(8) == HEALPix(8, dims=("values",))
    assert HEALPix(8) != HEALPix(8, nest=False)
    assert HEALPix(2**10).order == 10


@pytest.mark.parametrize(
    ("args", "exc", "match"),
    [
        ((3,), ValueError, "power of two"),
        ((0,), ValueError, "power of two"),
        ((2**30,), ValueError, "2\\*\\*29"),
        ((4.0,), TypeError, "integer"),
        ((4, "yes"), TypeError, "nest"),
    ],
)
def test_bad_construction(args: tuple, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        HEALPix(*args)


def test_bad_pixels_and_points() -> None:
    grid = HEALPix(4)
    with pytest.raises(ValueError, match="out of range"):
        grid.pix2lonlat(np.array([192]))
    with pytest.raises(ValueError, match="out of range"):
        grid.neighbours(np.array([-1]))
    with pytest.raises(TypeError, match="integers"):
        grid.pix2lonlat(np.array([1.5]))
    with pytest.raises(ValueError, match="latitude"):
        grid.lonlat2pix(0.0, 91.0)
    with pytest.raises(ValueError, match="dims"):
        HEALPix(4, dims=("a", "b"))


@pytest.mark.parametrize("ordering", ["nested", "ring"])
def test_centres_match_eccodes_geoiterator(gribtools, ordering: str) -> None:
    h = gribtools.healpix(64, ordering)
    lat, lon = gribtools.geo(h)
    glon, glat = HEALPix(64, ordering == "nested").centers()
    np.testing.assert_allclose(glat, lat, atol=1e-9)
    assert gribtools.lon_diff(glon, lon).max() < 1e-9


@pytest.mark.gpu
def test_cupy_arrays_stay_on_device() -> None:
    cp = pytest.importorskip("cupy")
    try:
        cp.cuda.runtime.getDeviceCount()
    except Exception:  # pragma: no cover - no driver
        pytest.skip("no CUDA device")
    for nest in (True, False):
        grid = HEALPix(8192, nest)
        pix = RNG.integers(0, grid.size, 1_000_000)
        lon, lat = grid.pix2lonlat(cp.asarray(pix))
        assert isinstance(lon, cp.ndarray)
        hlon, hlat = hp.pix2ang(8192, pix, nest=nest, lonlat=True)
        np.testing.assert_allclose(cp.asnumpy(lat), hlat, atol=1e-12)
        assert _lon_diff(cp.asnumpy(lon), hlon).max() < 1e-12
        back = grid.lonlat2pix(lon, lat)
        assert isinstance(back, cp.ndarray)
        np.testing.assert_array_equal(cp.asnumpy(back), pix)
        nb = grid.neighbours(cp.asarray(pix[:1000]))
        np.testing.assert_array_equal(
            cp.asnumpy(nb), hp.get_all_neighbours(8192, pix[:1000], nest=nest).T
        )

"""Gaussian and lat-lon grid geometry against ecCodes (ECMWF's own) and NumPy quadrature."""

from __future__ import annotations

import numpy as np
import pytest

from twinlab.grids import (
    EARTH_RADIUS_M,
    Gaussian,
    LatLon,
    Octahedral,
    ReducedGaussian,
    gaussian_latitudes,
    octahedral_pl,
)
from twinlab.grids.gaussian import gaussian_lat_bounds, gaussian_weights

SPHERE = 4 * np.pi * EARTH_RADIUS_M**2


@pytest.mark.parametrize("N", [1, 2, 16, 96, 320])
def test_latitudes_and_weights_match_legendre_gauss(N: int) -> None:
    x, w = np.polynomial.legendre.leggauss(2 * N)  # ascending nodes
    np.testing.assert_allclose(gaussian_latitudes(N), np.rad2deg(np.arcsin(x[::-1])), atol=1e-12)
    # leggauss' near-pole weights carry ~1e-10 relative error (see the Decimal test below)
    np.testing.assert_allclose(gaussian_weights(N), w[::-1], rtol=1e-9, atol=0)
    assert abs(gaussian_weights(N).sum() - 2.0) < 1e-13


def test_nodes_and_weights_against_40_digit_newton() -> None:
    from decimal import Decimal, getcontext

    getcontext().prec = 40
    n = 192  # N = 96

    def legendre(x: Decimal) -> tuple[Decimal, Decimal]:
        p0, p1 = Decimal(1), x
        for k in range(1, n):
            p0, p1 = p1, (Decimal(2 * k + 1) * x * p1 - Decimal(k) * p0) / Decimal(k + 1)
        return p1, Decimal(n) * (x * p1 - p0) / (x * x - 1)

    lat, w = gaussian_latitudes(96), gaussian_weights(96)
    for i in (0, 1, 47, 95):  # the polar rings are where float recurrences lose digits
        x = Decimal(float(np.sin(np.deg2rad(lat[i]))))
        for _ in range(4):
            p, dp = legendre(x)
            x -= p / dp
        p, dp = legendre(x)
        exact_w = float(2 / ((1 - x * x) * dp * dp))
        assert abs(np.sin(np.deg2rad(lat[i])) - float(x)) < 1e-15
        assert abs(w[i] / exact_w - 1) < 1e-12


@pytest.mark.parametrize("N", [96, 320, 1280])
def test_octahedral_matches_eccodes(gribtools, ec, N: int) -> None:
    grid = Octahedral(N)
    h = gribtools.reduced_gg(N, grid.pl)
    try:
        # ecCodes recognises our pl as its own octahedral grid ...
        assert ec.codes_get(h, "isOctahedral") == 1
        assert ec.codes_get(h, "gridName") == f"O{N}"
        assert ec.codes_get(h, "numberOfDataPoints") == grid.size
        # ... and computes latitudes and every point's position itself
        distinct = ec.codes_get_array(h, "distinctLatitudes")
        lat, lon = gribtools.geo(h)
    finally:
        ec.codes_release(h)
    distinct = np.sort(distinct)[::-1]
    np.testing.assert_allclose(grid.rings().lat, distinct, rtol=0, atol=1e-9)
    glon, glat = grid.centers()
    np.testing.assert_allclose(glat, lat, rtol=0, atol=1e-9)
    assert gribtools.lon_diff(glon, lon).max() < 1e-9


def test_octahedral_pl_formula() -> None:
    pl = octahedral_pl(1280)
    assert pl[0] == 20 and pl[1279] == 4 * 1280 + 16 and pl[1280] == pl[1279] and pl[-1] == 20
    assert Octahedral(1280).size == 6_599_680  # IFS 9 km
    assert Octahedral(96).key == "octahedral-O96"


def test_classic_reduced_grid_from_eccodes_pl(gribtools, ec) -> None:
    h = gribtools.reduced_gg(96)  # the sample's classic N96 pl
    try:
        pl = ec.codes_get_array(h, "pl")
        lat, lon = gribtools.geo(h)
    finally:
        ec.codes_release(h)
    grid = ReducedGaussian(96, pl)
    assert not grid.is_octahedral and grid.key.startswith("reduced_gg-N96-")
    glon, glat = grid.centers()
    np.testing.assert_allclose(glat, lat, atol=1e-9)
    assert gribtools.lon_diff(glon, lon).max() < 1e-9
    # half a pl is mirrored
    assert ReducedGaussian(96, pl[:96]) == grid


def test_regular_gaussian_matches_eccodes(ec, gribtools) -> None:
    h = ec.codes_grib_new_from_samples("regular_gg_sfc_grib2")
    try:
        N = ec.codes_get(h, "N")
        lat, lon = gribtools.geo(h)
    finally:
        ec.codes_release(h)
    grid = Gaussian(N)
    assert grid.shape == (2 * N, 4 * N) and grid.key == f"regular_gg-F{N}"
    glon, glat = grid.centers()
    np.testing.assert_allclose(glat, lat, atol=1e-9)
    assert gribtools.lon_diff(glon, lon).max() < 1e-9


@pytest.mark.parametrize(("d", "nodes"), [(2.0, True), (3.0, False), (0.25, True)])
def test_latlon_matches_eccodes(gribtools, ec, d: float, nodes: bool) -> None:
    h = gribtools.regular_ll(d, d, nodes)
    try:
        lat, lon = gribtools.geo(h)
    finally:
        ec.codes_release(h)
    grid = LatLon(d, d, nodes=nodes)
    assert grid.size == lat.size
    glon, glat = grid.centers()
    np.testing.assert_allclose(glat, lat, atol=1e-9)
    assert gribtools.lon_diff(glon, lon).max() < 1e-9


def test_era5_shape_and_key() -> None:
    grid = LatLon(0.25)
    assert grid.shape == (721, 1440) and grid.key == "latlon-0.25x0.25-nodes"
    assert LatLon(1.0, nodes=False).shape == (180, 360)


GRIDS = [
    Octahedral(96),
    Octahedral(1280),
    ReducedGaussian(3, [4, 8, 12]),
    Gaussian(48),
    LatLon(0.25),
    LatLon(1.0, nodes=False),
    LatLon(1.5, 2.0, descending=False, lon0=-180),
]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: g.key)
def test_areas_sum_to_sphere_and_bands_are_consistent(grid) -> None:
    a = grid.areas()
    assert a.shape == (grid.size,) and (a > 0).all()
    assert abs(a.sum() / SPHERE - 1) < 1e-12
    bounds = grid.lat_bounds()
    lat = grid.rings().lat
    assert bounds[0, 0] == 90.0 and bounds[-1, 1] == -90.0
    np.testing.assert_array_equal(bounds[1:, 0], bounds[:-1, 1])  # bands tile the sphere
    assert ((bounds[:, 0] >= lat) & (lat >= bounds[:, 1])).all()
    # cells of one ring share its band equally
    ring_area = np.bincount(grid.ring_ids(), weights=a)
    band = 2 * np.pi * EARTH_RADIUS_M**2 * np.diff(-np.sin(np.deg2rad(bounds)), axis=1)[:, 0]
    np.testing.assert_allclose(ring_area, band, rtol=1e-10)


def test_gaussian_bands_are_the_quadrature_weights() -> None:
    N = 96
    s = np.sin(np.deg2rad(gaussian_lat_bounds(N)))
    np.testing.assert_allclose(s[:, 0] - s[:, 1], gaussian_weights(N), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("grid", GRIDS[:1] + GRIDS[2:], ids=lambda g: g.key)
def test_ring_order_and_centres_agree(grid) -> None:
    lon, lat = grid.centers()
    rlon, rlat = grid.rings().centers()
    order = grid.ring_order()
    if order is not None:
        lon, lat = lon[order], lat[order]
    np.testing.assert_array_equal(lat, rlat)
    np.testing.assert_allclose(lon, rlon)
    assert ((lon >= 0) & (lon < 360)).all()


def test_ascending_latlon_is_stored_south_first() -> None:
    grid = LatLon(1.0, descending=False)
    lon, lat = grid.centers()
    assert lat[0] == -90.0 and lat[-1] == 90.0
    assert grid.key.endswith("-ascending")


def test_ring_neighbours_on_a_regular_grid() -> None:
    grid = LatLon(1.0, nodes=False)  # 180 x 360
    i = 10 * 360 + 0  # row 10, first column
    nb = grid.neighbours(i)[0]
    expect = [
        11 * 360 + 359,
        10 * 360 + 359,
        9 * 360 + 359,
        9 * 360,
        9 * 360 + 1,
        10 * 360 + 1,
        11 * 360 + 1,
        11 * 360,
    ]
    np.testing.assert_array_equal(nb, expect)
    top = grid.neighbours(np.array([5]))[0]
    assert (top[[2, 3, 4]] == -1).all() and top[1] == 4 and top[5] == 6


def test_reduced_ring_neighbours_are_nearest_in_longitude() -> None:
    grid = Octahedral(8)
    lon, lat = grid.centers()
    nb = grid.neighbours(np.arange(grid.size))
    for col in (3, 7):  # N and S: nearest centre in longitude on the adjacent ring
        ok = nb[:, col] >= 0
        d = np.abs((lon[nb[ok, col]] - lon[ok] + 180) % 360 - 180)
        spacing = 360.0 / grid.pl[grid.ring_ids()[nb[ok, col]]]
        assert (d <= spacing / 2 + 1e-9).all()
    assert (nb[: grid.pl[0], 2:5] == -1).all()  # nothing north of the first ring


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: LatLon(0.7), ValueError, "does not divide"),
        (lambda: LatLon(1.0, 0.0), ValueError, "> 0"),
        (lambda: LatLon("1"), TypeError, "number"),
        (lambda: Octahedral(0), ValueError, ">= 1"),
        (lambda: Gaussian(1.5), TypeError, "integer"),
        (lambda: ReducedGaussian(2, [4, 8, 8]), ValueError, "needs 4"),
        (lambda: ReducedGaussian(2, [4.0, 8.0]), TypeError, "integer"),
        (lambda: ReducedGaussian(2, [4, 0]), ValueError, "positive"),
    ],
)
def test_bad_construction(make, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make()

"""Regridding: healpy agreement, exact conservative geometry, masks, round-trip bounds."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from twinlab.grids import (
    EARTH_RADIUS_M,
    Gaussian,
    HEALPix,
    LatLon,
    Octahedral,
    from_dataset,
    grid_attrs,
)
from twinlab.grids.regrid import _plane, regrid
from twinlab.grids.regrid.conservative import _boxes, overlaps

METHODS = ("nearest", "bilinear", "conservative")


@pytest.fixture(autouse=True)
def weights_dir(tmp_path_factory, monkeypatch):
    """Disk cache in the session's tmp dir, never the user's ~/.cache."""
    path = tmp_path_factory.getbasetemp() / "regrid-weights"
    monkeypatch.setenv("TWINLAB_WEIGHTS_DIR", str(path))
    return path


def analytic(grid, which=None):
    """Smooth Y_l^m-like fields (|f| <= 1) at the grid's cell centres, native shape."""
    lon, lat = (np.deg2rad(a) for a in grid.centers())
    s = np.sin(lat)
    fields = {
        "y22": np.cos(lat) ** 2 * np.cos(2 * lon),
        "y43": np.cos(lat) ** 3 * s * np.cos(3 * lon + 0.3) * 2,
        "y60": (231 * s**6 - 315 * s**4 + 105 * s**2 - 5) / 16,
    }
    if which is not None:
        return fields[which].reshape(grid.shape)
    return np.stack(list(fields.values())).reshape((3,) + grid.shape)


def regrid_nc(values, source, target, method):
    return regrid(values, source, target, method=method, cache_dir=False)


# ---- nearest -----------------------------------------------------------------------------
def test_nearest_healpix_source_is_healpy_ang2pix():
    hp = pytest.importorskip("healpy")
    for nest in (True, False):
        src = HEALPix(32, nest=nest)
        tgt = LatLon(1.0)  # nodes: includes both poles and lon 0
        f = np.random.default_rng(1).standard_normal(src.size)
        lon, lat = tgt.centers()
        expect = f[hp.ang2pix(32, lon, lat, nest=nest, lonlat=True)].reshape(tgt.shape)
        np.testing.assert_array_equal(regrid_nc(f, src, tgt, "nearest"), expect)


def test_nearest_other_grids_pick_the_great_circle_nearest_centre():
    src, tgt = Octahedral(16), LatLon(7.5, nodes=False)
    f = np.arange(src.size, dtype=np.float64)  # value == native index: reveals the choice
    got = regrid_nc(f, src, tgt, "nearest").ravel().astype(np.int64)
    slon, slat = (np.deg2rad(a) for a in src.centers())
    tlon, tlat = (np.deg2rad(a) for a in tgt.centers())
    # brute force: cosine of the angular distance to every source centre
    cosd = np.sin(tlat)[:, None] * np.sin(slat)[None] + np.cos(tlat)[:, None] * np.cos(slat)[
        None
    ] * np.cos(tlon[:, None] - slon[None])
    best = cosd.max(1)
    np.testing.assert_allclose(cosd[np.arange(tgt.size), got], best, rtol=0, atol=1e-12)


# ---- bilinear ----------------------------------------------------------------------------
@pytest.mark.parametrize("nest", [True, False])
@pytest.mark.parametrize(
    "target", [LatLon(1.0), Octahedral(48), HEALPix(64, nest=False), Gaussian(40)]
)
def test_bilinear_healpix_matches_healpy_get_interp_val(nest, target):
    hp = pytest.importorskip("healpy")
    src = HEALPix(32, nest=nest)
    lon, lat = target.centers()
    for f in analytic(src):
        ref = hp.get_interp_val(f, lon, lat, nest=nest, lonlat=True)
        got = regrid_nc(f, src, target, "bilinear").ravel()
        assert np.abs(got - ref).max() < 1e-6


def test_bilinear_ring_grids_interpolate_linearly_in_theta_between_rings():
    # a zonal field is constant along rings, so only the theta interpolation remains
    src, tgt = Octahedral(24), LatLon(0.75, nodes=False)
    rings = src.rings()
    f = np.cos(np.deg2rad(src.centers()[1]) * 3)
    got = regrid_nc(f, src, tgt, "bilinear")[:, 0]
    theta_r = 90.0 - rings.lat
    ring_vals = np.cos(np.deg2rad(rings.lat) * 3)
    # the poles hold the mean of the outermost ring, i.e. its (constant) value
    theta = np.r_[0.0, theta_r, 180.0]
    vals = np.r_[ring_vals[0], ring_vals, ring_vals[-1]]
    expect = np.interp(90.0 - tgt.latitudes(), theta, vals)
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12)


def test_bilinear_reproduces_source_values_at_source_nodes():
    src, tgt = LatLon(2.0), LatLon(6.0)  # every target node is a source node
    f = analytic(src, "y43")
    got = regrid_nc(f, src, tgt, "bilinear")
    np.testing.assert_allclose(got[1:-1], f[3:-3:3, ::3], rtol=0, atol=1e-12)
    # pole rows: the pole value is the mean of the source pole row (all cells at one point)
    np.testing.assert_allclose(got[0], f[0].mean(), atol=1e-12)


# ---- conservative: exact geometry ----------------------------------------------------------
GEOMETRY_PAIRS = [
    (HEALPix(16), LatLon(2.5, nodes=False)),
    (LatLon(3.0), HEALPix(32, nest=False)),  # node grid: half-height polar caps
    (HEALPix(32), Octahedral(40)),
    (HEALPix(8, nest=False), HEALPix(32)),
    (Gaussian(24), Octahedral(32)),
    (Octahedral(32), LatLon(2.0)),
]


@pytest.mark.parametrize("source,target", GEOMETRY_PAIRS, ids=lambda g: g.key)
def test_conservative_overlaps_tile_both_grids_exactly(source, target):
    rows, cols, area = overlaps(source, target)
    area = area * EARTH_RADIUS_M**2
    by_source = np.bincount(cols, area, minlength=source.size)
    by_target = np.bincount(rows, area, minlength=target.size)
    np.testing.assert_allclose(by_source, source.areas(), rtol=1e-10)
    np.testing.assert_allclose(by_target, target.areas(), rtol=1e-10)


@pytest.mark.parametrize("source,target", GEOMETRY_PAIRS, ids=lambda g: g.key)
def test_conservative_preserves_global_mean_and_constants(source, target):
    f = analytic(source, "y43") + 0.3
    out = regrid_nc(f, source, target, "conservative")
    mean_s = np.sum(f.ravel() * source.areas()) / source.areas().sum()
    mean_t = np.sum(out.ravel() * target.areas()) / target.areas().sum()
    assert abs(mean_t - mean_s) <= 1e-10 * abs(mean_s)
    const = regrid_nc(np.full(source.shape, 273.15), source, target, "conservative")
    np.testing.assert_allclose(const, 273.15, rtol=1e-12)


def _box_region_integral(source, f, west, east, south, north):
    """Source integral over a lon/lat box, by direct geometry (independent of the weights)."""
    if source.lat_bounds() is None:  # HEALPix: clip the diamonds by the box in the plane
        region = _plane.box_pieces(
            *(np.array([v], dtype=float) for v in (west, east, south, north))
        )
        _, cols, area = _plane.intersect(region, _plane.diamonds(source))
        return np.sum(f.ravel()[cols] * area) / _plane.AREA_SCALE * EARTH_RADIUS_M**2
    w, e, s, n = _boxes(source)
    shift = 360.0 * np.round(((west + east) / 2 - (w + e) / 2) / 360.0)
    dlon = np.clip(np.minimum(e + shift, east) - np.maximum(w + shift, west), 0, None)
    dz = np.clip(
        np.sin(np.deg2rad(np.minimum(n, north))) - np.sin(np.deg2rad(np.maximum(s, south))), 0, None
    )
    return np.sum(f.ravel() * np.deg2rad(dlon) * dz) * EARTH_RADIUS_M**2


@pytest.mark.parametrize(
    "source,target,box",
    [
        (
            HEALPix(16),
            LatLon(5.0, nodes=False),
            (-40.0, 35.0, 25.0, 90.0),
        ),  # crosses lon 0, polar cap
        (HEALPix(16, nest=False), LatLon(5.0, nodes=False), (100.0, 150.0, -60.0, 10.0)),
        (Octahedral(32), LatLon(2.0, nodes=False), (0.0, 90.0, -20.0, 40.0)),
    ],
    ids=["hpx-cap", "hpx-equator", "octahedral"],
)
def test_conservative_preserves_integrals_over_target_regions(source, target, box):
    west, east, south, north = box
    f = analytic(source, "y22") + 2.0
    out = regrid_nc(f, source, target, "conservative").ravel()
    tlon, tlat = target.centers()
    in_box = (np.mod(tlon - west, 360.0) < east - west) & (tlat > south) & (tlat < north)
    got = np.sum(out[in_box] * target.areas()[in_box])
    expect = _box_region_integral(source, f, west, east, south, north)
    assert abs(got - expect) <= 1e-10 * abs(expect)


def test_conservative_preserves_integral_over_a_healpix_base_pixel():
    # region = nested base pixel 0 of the target (a big diamond), source octahedral
    source, target = Octahedral(48), HEALPix(16, nest=True)
    f = analytic(source, "y60") + 1.5
    out = regrid_nc(f, source, target, "conservative")
    n0 = target.size // 12
    got = np.sum(out[:n0] * target.areas()[:n0])
    big = _plane.Quads(
        np.array([0]),
        np.pi / 4 + np.array([[np.pi / 4, 0.0, -np.pi / 4, 0.0]]),
        np.pi / 4 + np.array([[0.0, np.pi / 4, 0.0, -np.pi / 4]]),
    )
    cols, _, area = _plane.intersect(_plane.box_pieces(*_boxes(source)), big)
    expect = np.sum(f[cols] * area) / _plane.AREA_SCALE * EARTH_RADIUS_M**2
    assert abs(got - expect) <= 1e-10 * abs(expect)


# ---- masks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_nan_mask_does_not_bleed(method):
    source, target = LatLon(2.0, nodes=False), HEALPix(16)
    lon, lat = source.centers()
    land = ((lon > 20) & (lon < 80) & (lat > -30) & (lat < 40)).reshape(source.shape)
    f = np.where(land, np.nan, 5.0)
    out = regrid_nc(f, source, target, method)
    tlon, tlat = target.centers()
    deep = (tlon > 30) & (tlon < 70) & (tlat > -20) & (tlat < 30)
    assert np.isnan(out[deep]).all()  # targets entirely over land stay masked
    ocean = ~np.isnan(out)
    assert ocean.sum() > 0.8 * target.size
    np.testing.assert_allclose(out[ocean], 5.0, rtol=1e-12)  # no NaN and no dilution


def test_conservative_partial_cells_are_means_over_valid_overlap():
    source, target = LatLon(1.0, nodes=False), LatLon(3.0, nodes=False)
    f = np.arange(source.size, dtype=np.float64).reshape(source.shape)
    f[0, 0] = np.nan  # one of the 9 sources of target (0, 0)
    out = regrid_nc(f, source, target, "conservative")
    block = f[:3, :3].ravel()[1:]
    area = source.areas().reshape(source.shape)[:3, :3].ravel()[1:]
    assert out[0, 0] == pytest.approx(np.sum(block * area) / area.sum(), rel=1e-12)


# ---- arrays, dtypes, errors -----------------------------------------------------------------
def test_leading_dims_and_float32():
    source, target = HEALPix(16), Octahedral(24)
    f = np.stack([analytic(source), analytic(source) * 2])  # (2, 3, npix)
    for method in METHODS:
        out = regrid_nc(f, source, target, method)
        assert out.shape == (2, 3, target.size)
        np.testing.assert_allclose(
            out[1, 2], regrid_nc(f[1, 2], source, target, method), rtol=1e-12
        )
        ints = regrid_nc(np.full(source.size, 7, dtype=np.int16), source, target, method)
        assert ints.dtype == np.float64 and np.allclose(ints, 7.0)
        out32 = regrid_nc(f.astype(np.float32), source, target, method)
        assert out32.dtype == np.float32
        np.testing.assert_allclose(out32, out, atol=1e-5)


def test_two_dimensional_source_grid():
    source, target = Gaussian(16), LatLon(4.0)
    f = np.stack([analytic(source, "y22"), analytic(source, "y60")])
    assert f.shape == (2, 32, 64)
    out = regrid_nc(f, source, target, "bilinear")
    assert out.shape == (2,) + target.shape
    assert np.abs(out[0] - analytic(target, "y22")).max() < 0.02


def test_bad_input_raises_clear_errors():
    h = HEALPix(4)
    with pytest.raises(
        ValueError, match=r"do not end with source grid healpix-n4-nested shape \(192,\)"
    ):
        regrid(np.zeros(191), h, LatLon(10.0))
    with pytest.raises(ValueError, match=r"do not end with source grid"):
        regrid(np.zeros((18, 36)), LatLon(10.0), h)  # nodes grid: 19 rows
    with pytest.raises(ValueError, match="unknown regrid method 'cubic'"):
        regrid(np.zeros(192), h, LatLon(10.0), method="cubic")
    with pytest.raises(ValueError, match="target must be a twinlab.grids Grid.*str"):
        regrid(np.zeros(192), h, "latlon-1")
    with pytest.raises(ValueError, match="source must be a twinlab.grids Grid"):
        regrid(np.zeros(192), None, h)
    with pytest.raises(ValueError, match="dtype complex128"):
        regrid(np.zeros(192, dtype=complex), h, LatLon(10.0), cache_dir=False)


# ---- round trips A -> B -> A (bounds stated in docs/regrid.md) ------------------------------
# max / rms absolute error on the unit-amplitude fields of ``analytic``
BOUNDS = {"nearest": (0.1, 0.02), "bilinear": (0.005, 0.001), "conservative": (0.04, 0.006)}
ROUND_TRIP_PAIRS = [
    (HEALPix(64), Octahedral(96)),
    (Octahedral(96), LatLon(1.0)),
    (HEALPix(64), LatLon(1.0)),
]


@pytest.mark.parametrize("a,b", ROUND_TRIP_PAIRS, ids=lambda g: g.key)
@pytest.mark.parametrize("method", METHODS)
def test_round_trip_error_bounds(a, b, method):
    for s, t in ((a, b), (b, a)):
        f = analytic(s)
        back = regrid(regrid(f, s, t, method), t, s, method)
        err = np.abs(back - f).reshape(3, -1)
        max_bound, rms_bound = BOUNDS[method]
        assert err.max() < max_bound, (s.key, t.key, err.max(1))
        assert np.sqrt((err**2).mean(1)).max() < rms_bound, (s.key, t.key)


def test_polygon_clip_numpy_and_numba_agree_on_known_areas():
    from twinlab.grids.regrid import _kernels

    square_x = np.array([[-1.0, 1.0, 1.0, -1.0]])
    square_y = np.array([[-1.0, -1.0, 1.0, 1.0]])
    dx, dy = np.array([1.0, 0.0, -1.0, 0.0]), np.array([0.0, 1.0, 0.0, -1.0])
    # a diamond of area 2 inside the square, half out of it, a quarter in, touching, outside
    centres = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [3.0, 3.0]])
    expect = np.array([2.0, 1.0, 0.5, 0.0, 0.0])
    cx, cy = centres[:, :1] + dx, centres[:, 1:] + dy
    sx, sy = np.repeat(square_x, 5, 0), np.repeat(square_y, 5, 0)
    implementations = [_plane._clip_area] + ([_kernels.clip_area] if _kernels.HAVE_NUMBA else [])
    rng = np.random.default_rng(5)
    # random convex quads (trapezoids) against random diamonds
    n = 2000
    y0, y1 = rng.uniform(-1, 0, n), rng.uniform(0, 1, n)
    x0, x1 = rng.uniform(-1, -0.2, n), rng.uniform(0.2, 1, n)  # keeps the trapezoid convex
    tx, ty = np.stack([x0, x1, x1 - 0.2, x0 + 0.1], 1), np.stack([y0, y0, y1, y1], 1)
    c = rng.uniform(-1, 1, (n, 2))
    h = rng.uniform(0.1, 1, (n, 1))
    rx, ry = c[:, :1] + h * dx, c[:, 1:] + h * dy
    results = []
    for area_of in implementations:
        np.testing.assert_allclose(area_of(sx, sy, cx, cy), expect, atol=1e-15)
        got = area_of(tx, ty, rx, ry)
        assert (got >= -1e-15).all() and (got <= 2 * h[:, 0] ** 2 + 1e-12).all()
        results.append(got)
    if len(results) == 2:
        np.testing.assert_allclose(results[0], results[1], atol=1e-13)


@pytest.mark.parametrize("method", METHODS)
def test_south_to_north_latlon_is_the_flipped_north_to_south_result(method):
    down, up = LatLon(5.0), LatLon(5.0, descending=False)
    src = HEALPix(8)
    f = analytic(src, "y43")
    np.testing.assert_allclose(
        regrid_nc(f, src, up, method), regrid_nc(f, src, down, method)[::-1], rtol=1e-12, atol=1e-15
    )
    g = analytic(down, "y43")
    np.testing.assert_allclose(
        regrid_nc(g[::-1], up, src, method), regrid_nc(g, down, src, method), rtol=1e-12, atol=1e-15
    )


def test_accessor_regrid_leaves_no_source_grid_attributes() -> None:
    """A dataset read from the lake carries its grid's attributes on every variable: after a
    regrid they describe the target only, so the result's grid reads back (a variable still
    saying "healpix" over lat-lon dimensions made from_dataset fail)."""
    src = HEALPix(8)
    attrs = grid_attrs(src)
    ds = xr.Dataset({"t": (("time", "cell"), np.zeros((2, src.size)), attrs)}, attrs=attrs)
    out = ds.grid.regrid(LatLon(30.0))
    for obj in (out, out["t"], ds["t"].grid.regrid(LatLon(30.0))):
        assert obj.attrs["grid_type"] == "latlon"
        assert not any(k.startswith("healpix_") for k in obj.attrs), obj.attrs
    assert isinstance(from_dataset(out), LatLon)
    assert isinstance(from_dataset(out, "t"), LatLon)

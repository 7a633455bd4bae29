"""Region selection, nearest cell, area-weighted and zonal means: ring-wise fast paths
against brute force over every cell centre; the xarray accessor, eager and on Dask."""

from __future__ import annotations

import threading

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
dask_array = pytest.importorskip("dask.array")

from twinlab.grids import (  # noqa: E402
    Gaussian,
    HEALPix,
    LatLon,
    Octahedral,
    ReducedGaussian,
    ops,
)

GRIDS = [
    HEALPix(16),
    HEALPix(16, nest=False),
    Octahedral(32),
    ReducedGaussian(2, [5, 9, 9, 5]),
    Gaussian(16),
    LatLon(2.5),
    LatLon(3.0, 2.0, nodes=False, lon0=-180, descending=False),
]
IDS = [g.key for g in GRIDS]
BBOXES = [
    (10.0, 35.0, 30.0, 60.0),
    (170.0, -20.0, -170.0, 20.0),  # across the antimeridian
    (-180.0, -90.0, 180.0, 90.0),  # the whole globe
    (0.0, 80.0, 360.0, 90.0),  # a polar cap
    (45.0, 0.0, 45.0, 0.0),  # a single point-sized box: cells exactly on it
]


def _brute_bbox(grid, bbox) -> np.ndarray:
    west, south, east, north = bbox
    width = (east - west) % 360.0 if east - west not in (360.0,) else 360.0
    lon, lat = grid.centers()
    rel = np.mod(lon - west + 1e-9, 360.0) - 1e-9
    inside = (lat >= south - 1e-9) & (lat <= north + 1e-9) & (rel <= width + 1e-9)
    return np.nonzero(inside)[0]


def _field(grid, seed: int = 0) -> xr.DataArray:
    data = np.random.default_rng(seed).normal(size=(2, *grid.shape))
    return xr.DataArray(data, dims=("time", *grid.dims)).grid.assign(grid)


@pytest.mark.parametrize("bbox", BBOXES)
@pytest.mark.parametrize("grid", GRIDS, ids=IDS)
def test_bbox_cells_equal_brute_force(grid, bbox) -> None:
    np.testing.assert_array_equal(ops.bbox_cells(grid, bbox), _brute_bbox(grid, bbox))


def _in_triangle(lon, lat, tri) -> np.ndarray:
    (x1, y1), (x2, y2), (x3, y3) = tri
    den = (y2 - y3) * (x1 - x3) + (x3 - x2) * (y1 - y3)
    a = ((y2 - y3) * (lon - x3) + (x3 - x2) * (lat - y3)) / den
    b = ((y3 - y1) * (lon - x3) + (x1 - x3) * (lat - y3)) / den
    return (a > 0) & (b > 0) & (1 - a - b > 0)


@pytest.mark.parametrize("grid", GRIDS, ids=IDS)
def test_polygon_cells_equal_barycentric_brute_force(grid) -> None:
    lon, lat = grid.centers()
    # crosses the antimeridian; vertices off any grid's centres so no centre is on an edge
    tri = [(160.3, -30.2), (200.1, -10.3), (175.2, 40.1)]
    given = [(160.3, -30.2), (-159.9, -10.3), (175.2, 40.1)]  # the same, written with -159.9
    expect = np.nonzero(_in_triangle(lon, lat, tri))[0]
    np.testing.assert_array_equal(ops.polygon_cells(grid, given), expect)
    # concave L shape = union of two boxes (edges off the cell centres)
    ell = [(0.3, 0.3), (40.3, 0.3), (40.3, 10.3), (10.3, 10.3), (10.3, 50.3), (0.3, 50.3)]
    box1 = (lon > 0.3) & (lon < 40.3) & (lat > 0.3) & (lat < 10.3)
    box2 = (lon > 0.3) & (lon < 10.3) & (lat > 0.3) & (lat < 50.3)
    np.testing.assert_array_equal(ops.polygon_cells(grid, ell), np.nonzero(box1 | box2)[0])


@pytest.mark.parametrize("grid", GRIDS, ids=IDS)
def test_nearest_cell_equals_brute_force(grid) -> None:
    rng = np.random.default_rng(3)
    plon = np.concatenate([rng.uniform(-180, 360, 300), [0.0, 359.99, 12.0, 0.0]])
    plat = np.concatenate(
        [np.rad2deg(np.arcsin(rng.uniform(-1, 1, 300))), [90.0, -90.0, 89.9, -89.99]]
    )
    lon, lat = grid.centers()
    d = ops._haversine(plon[:, None], plat[:, None], lon[None, :], lat[None, :])
    ours = ops.nearest_cells(grid, plon, plat)
    # equal distance to the brute-force minimum (ties may pick either cell)
    np.testing.assert_allclose(d[np.arange(plon.size), ours], d.min(axis=1), atol=1e-12)


@pytest.mark.parametrize("grid", GRIDS, ids=IDS)
def test_zonal_mean_and_area_mean_against_loops(grid) -> None:
    da = _field(grid)
    values = da.values.reshape(2, -1).copy()
    values[0, ::7] = np.nan
    da = da.copy(data=values.reshape(da.shape))
    ids = grid.ring_ids()
    rings = grid.rings()
    # zonal: one value per ring (1-D grids) or per row (2-D grids)
    zm = da.grid.zonal_mean()
    expect = np.stack([[np.nanmean(v[ids == r]) for r in range(rings.nrings)] for v in values])
    if len(grid.shape) == 2 and grid.ring_order() is not None:
        expect = expect[:, ::-1]  # 2-D grids keep their native row order
    np.testing.assert_allclose(zm.values, expect, rtol=1e-12)
    if len(grid.shape) == 1:
        np.testing.assert_array_equal(zm.latitude.values, rings.lat)
    # area-weighted, NaN-aware mean
    a = grid.areas()
    valid = ~np.isnan(values)
    expect_mean = np.nansum(values * a, axis=1) / (valid * a).sum(axis=1)
    np.testing.assert_allclose(da.grid.mean().values, expect_mean, rtol=1e-12)


def test_area_mean_of_known_fields() -> None:
    for grid in (HEALPix(32), Octahedral(48), LatLon(1.0)):
        lon, lat = grid.centers()
        one = xr.DataArray(np.ones(grid.shape), dims=grid.dims).grid.assign(grid)
        assert one.grid.mean().item() == pytest.approx(1.0, abs=1e-14)
        # the northern hemisphere only: NaN elsewhere must not dilute the mean
        nh = one.where(xr.DataArray((lat > 0).reshape(grid.shape), dims=grid.dims))
        assert nh.grid.mean().item() == pytest.approx(1.0, abs=1e-14)
        # sin(lat) is odd: its area mean is ~0 (unweighted it would not be on lat-lon)
        s = one.copy(data=np.sin(np.deg2rad(lat)).reshape(grid.shape))
        assert abs(s.grid.mean().item()) < 1e-3


class _Counter:
    """Counts chunk computations: proves operations stay lazy until asked."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self, block: np.ndarray) -> np.ndarray:
        with self.lock:
            self.n += 1
        return block


@pytest.mark.parametrize("grid", [HEALPix(16), Octahedral(16), LatLon(5.0)], ids=lambda g: g.key)
def test_accessor_is_lazy_on_dask(grid) -> None:
    eager = _field(grid)
    counter = _Counter()
    chunks = {"time": 1, **{d: max(1, n // 3) for d, n in zip(grid.dims, grid.shape, strict=True)}}
    lazy = eager.chunk(chunks)
    meta = np.empty((0,) * lazy.ndim, dtype=lazy.dtype)  # no trial call to infer it
    lazy = lazy.copy(data=lazy.data.map_blocks(counter, dtype=lazy.dtype, meta=meta))
    results = {
        "mean": (lazy.grid.mean(), eager.grid.mean()),
        "zonal": (lazy.grid.zonal_mean(), eager.grid.zonal_mean()),
        "bbox": (
            lazy.grid.sel_region(bbox=(170, -20, -170, 20)),
            eager.grid.sel_region(bbox=(170, -20, -170, 20)),
        ),
        "polygon": (
            lazy.grid.sel_region(polygon=[(0, 0), (60, 0), (30, 50)]),
            eager.grid.sel_region(polygon=[(0, 0), (60, 0), (30, 50)]),
        ),
        "point": (lazy.grid.sel_region(point=(10, 45)), eager.grid.sel_region(point=(10, 45))),
    }
    for name, (lz, _) in results.items():
        assert lz.chunks is not None, name
    assert counter.n == 0
    for name, (lz, ez) in results.items():
        xr.testing.assert_allclose(lz.compute(), ez)
        assert lz.dims == ez.dims, name
    assert counter.n > 0


def test_sel_region_results_on_healpix() -> None:
    grid = HEALPix(16)
    da = _field(grid)
    cells = ops.bbox_cells(grid, (170, -20, -170, 20))
    sub = da.grid.sel_region(bbox=(170, -20, -170, 20))
    np.testing.assert_array_equal(sub.cell_index.values, cells)
    np.testing.assert_array_equal(sub.values, da.values[:, cells])
    pt = da.grid.sel_region(point=(10.0, 45.0))
    assert int(pt.cell_index) == grid.lonlat2pix(10.0, 45.0)
    pts = da.grid.sel_region(point=[(10.0, 45.0), (200.0, -30.0)])
    assert pts.sizes["point"] == 2


def test_sel_region_on_latlon_keeps_rows_and_columns_across_dateline() -> None:
    grid = LatLon(1.0)
    lon, lat = grid.centers()
    da = xr.DataArray(
        np.zeros(grid.shape),
        dims=grid.dims,
        coords={"latitude": lat.reshape(grid.shape)[:, 0], "longitude": lon.reshape(grid.shape)[0]},
    )
    sub = da.grid.sel_region(bbox=(355, -2, 5, 2))
    np.testing.assert_array_equal(sub.longitude.values, np.r_[355:360, 0:6].astype(float))
    np.testing.assert_array_equal(sub.latitude.values, [2.0, 1.0, 0.0, -1.0, -2.0])
    poly = da.grid.sel_region(polygon=[(0.5, 0.5), (10.5, 0.5), (0.5, 10.5)])
    assert int(poly.notnull().sum()) == int(
        _in_triangle(lon, lat, [(0.5, 0.5), (10.5, 0.5), (0.5, 10.5)]).sum()
    )
    one = da.grid.sel_region(point=(359.7, -0.2))
    assert float(one.longitude) == 0.0 and float(one.latitude) == 0.0


def test_regrid_delegates_to_the_regrid_package() -> None:
    pytest.importorskip("twinlab.grids.regrid")
    from twinlab.grids import from_dataset, regrid

    src, dst = LatLon(5.0), HEALPix(8)
    da = _field(src)
    out = da.grid.regrid(dst, method="nearest")
    np.testing.assert_allclose(
        out.values, np.asarray(regrid(da.values, src, dst, method="nearest"))
    )
    assert from_dataset(out) == dst  # the result is detectable as its new grid


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({}, ValueError, "exactly one"),
        ({"bbox": (0, 0, 1, 1), "point": (0, 0)}, ValueError, "exactly one"),
        ({"bbox": (0, 10, 1, 0)}, ValueError, "south <= north"),
        ({"bbox": (0, 0, 1)}, ValueError, "west, south, east, north"),
        ({"bbox": (0, 0, np.nan, 1)}, ValueError, "non-finite"),
        ({"bbox": "abcd"}, TypeError, "4 numbers"),
        ({"bbox": (0, -95, 10, 0)}, ValueError, "-90"),
        ({"polygon": [(0, 0), (1, 1)]}, ValueError, "at least 3"),
        ({"polygon": [(0, 0), (1, 1), (2, 100)]}, ValueError, "latitudes"),
        ({"polygon": [(0, 80), (120, 80), (240, 80)]}, ValueError, "pole"),
        ({"point": (1, 2, 3)}, ValueError, "\\(lon, lat\\)"),
        ({"point": (0, 95)}, ValueError, "latitudes"),
    ],
)
def test_sel_region_errors(kwargs, exc: type, match: str) -> None:
    da = _field(HEALPix(4))
    with pytest.raises(exc, match=match):
        da.grid.sel_region(**kwargs)


def test_assign_rejects_mismatched_data() -> None:
    da = xr.DataArray(np.zeros(100), dims="cell")
    with pytest.raises(ValueError, match="size 100, the grid needs 192"):
        da.grid.assign(HEALPix(4))
    with pytest.raises(TypeError, match="twinlab Grid"):
        da.grid.assign("healpix")


def test_dataset_with_variables_off_the_grid() -> None:
    grid = HEALPix(2)
    ds = xr.Dataset(
        {"t": ("cell", np.arange(48.0), {"units": "K"}), "time_bnds": ("time", np.ones(3))},
        attrs={"title": "mixed"},
    ).grid.assign(grid)
    assert ds.t.attrs["grid_type"] == "healpix" and "grid_type" not in ds.time_bnds.attrs
    assert ds.t.grid.grid == grid and ds.grid.grid == grid  # per variable and per dataset
    m = ds.grid.mean()
    assert list(m.data_vars) == ["t"] and m.t.item() == pytest.approx(23.5)
    # reductions leave the grid: its attributes go, the others stay
    assert "grid_type" not in m.attrs and m.attrs["title"] == "mixed"
    assert m.t.attrs == {"units": "K"}
    assert ds.t.attrs["grid_type"] == "healpix" == ds.attrs["grid_type"]  # input untouched
    zm = ds.grid.zonal_mean()
    assert zm.t.sizes == {"latitude": 7} and "grid_type" not in zm.t.attrs
    assert ds.grid.sel_region(bbox=(0, 0, 90, 90)).sizes["time"] == 3
    with pytest.raises(ValueError, match="no data variable has the grid's dims"):
        ds[["time_bnds"]].grid.assign(grid)

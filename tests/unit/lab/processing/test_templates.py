"""twinlab.processing.templates: numerics of each templated process on small synthetic
grids, against healpy, the grids' own lookups, shapely and plain NumPy.

The job's cluster is an in-process ``dask.distributed`` client; the reporter is a real
:class:`Reporter` whose thread is not started (its queue holds what would be sent).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from twinlab.grids import HEALPix, LatLon, Octahedral, grid_attrs
from twinlab.processing import templates
from twinlab.processing.context import JobContext, Reporter
from twinlab.processing.schemas import TEMPLATED, validate_inputs

healpy = pytest.importorskip("healpy")
distributed = pytest.importorskip("distributed")

TIMES = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")


@pytest.fixture(scope="module")
def client() -> Any:
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2) as c:
        yield c


def dataset(grid: Any, *, seed: int = 0, nan: bool = False) -> xr.Dataset:
    """A (time, grid dims) field on ``grid`` with twinlab's grid attributes, chunked per step."""
    rng = np.random.default_rng(seed)
    values = rng.normal(280.0, 10.0, (TIMES.size, *grid.shape))
    if nan:
        values.reshape(TIMES.size, -1)[:, ::7] = np.nan
    da = xr.DataArray(values, dims=("time", *grid.dims), attrs={"units": "K", **grid_attrs(grid)})
    ds = xr.Dataset({"2t": da}, coords={"time": TIMES}, attrs=grid_attrs(grid))
    return ds.chunk({"time": 1})


def context(
    tmp_path: Path, pid: str, inputs: dict, ds: xr.Dataset | None, client: Any = None
) -> JobContext:
    spec = {
        "id": "job1",
        "process": TEMPLATED[pid],
        "inputs": validate_inputs(TEMPLATED[pid], inputs),
        "owner": "alice",
        "output_prefix": f"{tmp_path}/out/job1/",
        "limits": {"max_time_steps": 100},
    }
    reporter = Reporter("http://127.0.0.1:9/services/processing/", "job1", "s")
    ctx = JobContext(spec, reporter, client=client)
    if ds is not None:
        ctx.data["item"] = ctx.select_time(ds, spec["inputs"].get("datetime"))
    return ctx


def events(ctx: JobContext, kind: str) -> list[dict]:
    return [e for e in ctx.reporter._queue if e["type"] == kind]


# -- zonal mean --------------------------------------------------------------------------------
@pytest.mark.parametrize("nest", [True, False])
def test_zonal_mean_on_healpix_matches_healpy_rings(
    tmp_path: Path, client: Any, nest: bool
) -> None:
    nside = 8
    grid = HEALPix(nside, nest=nest)
    ds = dataset(grid, nan=True)
    ctx = context(tmp_path, "zonal-mean", {"item": "i", "variable": "2t"}, ds, client)
    out = templates.zonal_mean(ctx, **ctx.inputs)["zonal_mean"]

    theta, _ = healpy.pix2ang(nside, np.arange(grid.size), nest=nest)
    rings = np.unique(np.round(theta, 12))  # north -> south
    assert len(rings) == 4 * nside - 1 == len(out["latitude"])
    np.testing.assert_allclose(out["latitude"], 90.0 - np.degrees(rings), atol=1e-9)
    values = ds["2t"].values
    ring_of = np.searchsorted(rings, np.round(theta, 12))
    expect = np.array([[np.nanmean(v[ring_of == r]) for r in range(rings.size)] for v in values])
    np.testing.assert_allclose(np.array(out["values"], dtype=float), expect, rtol=1e-12)
    assert out["time"] == ["2020-01-01T00:00:00Z", "2020-01-01T06:00:00Z", "2020-01-01T12:00:00Z"]

    # written as NetCDF and JSON, same numbers
    assert set(ctx.files) == {"netcdf", "json"}
    nc = xr.open_dataset(ctx.files["netcdf"]["href"], engine="h5netcdf")
    np.testing.assert_allclose(nc["2t"].values, expect, rtol=1e-12)
    assert json.loads(Path(ctx.files["json"]["href"]).read_text()) == out
    progress = [e["progress"] for e in events(ctx, "progress")]
    assert progress == sorted(progress) and progress[-1] == 100.0


def test_zonal_mean_on_octahedral_is_per_grid_row(tmp_path: Path, client: Any) -> None:
    grid = Octahedral(6)
    ds = dataset(grid, seed=1)
    ctx = context(tmp_path, "zonal-mean", {"item": "i", "variable": "2t"}, ds, client)
    out = templates.zonal_mean(ctx, **ctx.inputs)["zonal_mean"]
    pl = grid.pl
    assert len(out["latitude"]) == pl.size == 12
    bounds = np.concatenate([[0], np.cumsum(pl)])
    values = ds["2t"].values
    expect = [[v[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:], strict=True)] for v in values]
    np.testing.assert_allclose(out["values"], expect, rtol=1e-12)
    lon, lat = grid.centers()
    np.testing.assert_allclose(out["latitude"], lat[bounds[:-1]])


def test_zonal_mean_on_latlon_rows_within_a_time_range(tmp_path: Path) -> None:
    grid = LatLon(30.0)
    ds = dataset(grid, seed=2)
    inputs = {"item": "i", "variable": "2t", "datetime": "2020-01-01T06:00:00Z/.."}
    ctx = context(tmp_path, "zonal-mean", inputs, ds)  # no cluster: computed in the runner
    out = templates.zonal_mean(ctx, **ctx.inputs)["zonal_mean"]
    assert out["time"] == ["2020-01-01T06:00:00Z", "2020-01-01T12:00:00Z"]
    np.testing.assert_allclose(out["values"], ds["2t"].values[1:].mean(axis=2))
    np.testing.assert_allclose(out["latitude"], np.arange(90.0, -91.0, -30.0))


# -- area mean --------------------------------------------------------------------------------
def test_area_mean_bbox_on_healpix_is_the_plain_mean_of_cells_inside(
    tmp_path: Path, client: Any
) -> None:
    nside = 16
    grid = HEALPix(nside)
    ds = dataset(grid, seed=3)
    bbox = [-20.0, 10.0, 40.0, 50.0]
    ctx = context(tmp_path, "area-mean", {"item": "i", "variable": "2t", "bbox": bbox}, ds, client)
    out = templates.area_mean(ctx, **ctx.inputs)["area_mean"]
    lon, lat = healpy.pix2ang(nside, np.arange(grid.size), nest=True, lonlat=True)
    lon180 = np.where(lon > 180, lon - 360, lon)
    inside = (lon180 >= -20) & (lon180 <= 40) & (lat >= 10) & (lat <= 50)
    assert out["cells"] == int(inside.sum()) > 0
    assert out["weights"].startswith("equal-area")
    np.testing.assert_allclose(out["values"], ds["2t"].values[:, inside].mean(axis=1), rtol=1e-12)
    assert set(ctx.files) == {"netcdf", "json"}


def test_area_mean_polygon_with_hole_on_latlon_is_area_weighted(
    tmp_path: Path, client: Any
) -> None:
    shapely = pytest.importorskip("shapely")
    grid = LatLon(5.0)
    ds = dataset(grid, seed=4)
    outer = [[-30.0, -20.0], [50.0, -20.0], [50.0, 40.0], [-30.0, 40.0], [-30.0, -20.0]]
    hole = [[0.0, 0.0], [20.0, 0.0], [20.0, 20.0], [0.0, 20.0], [0.0, 0.0]]
    polygon = {"type": "Polygon", "coordinates": [outer, hole]}
    inputs = {"item": "i", "variable": "2t", "polygon": polygon}
    ctx = context(tmp_path, "area-mean", inputs, ds, client)
    out = templates.area_mean(ctx, **ctx.inputs)["area_mean"]

    lon, lat = grid.centers()
    lon180 = np.where(lon > 180, lon - 360, lon)
    # centres strictly inside the shell and not strictly inside the hole (no centre lies on
    # an edge here: edges at multiples of 10, centres at multiples of 5 off them are tested)
    shell, inner = shapely.Polygon(outer), shapely.Polygon(hole)
    inside = shapely.contains_xy(shell, lon180, lat) & ~shapely.contains_xy(inner, lon180, lat)
    on_edge = shapely.intersects_xy(shell.boundary, lon180, lat) | shapely.intersects_xy(
        inner.boundary, lon180, lat
    )
    cells = templates.region_cells(grid, polygon=polygon)
    chosen = np.zeros(grid.size, bool)
    chosen[cells] = True
    assert (chosen[~on_edge] == inside[~on_edge]).all()
    assert out["weights"] == "cell area"
    w = grid.areas()[chosen]
    flat = ds["2t"].values.reshape(TIMES.size, -1)[:, chosen]
    np.testing.assert_allclose(out["values"], (flat * w).sum(axis=1) / w.sum(), rtol=1e-12)
    # cell areas of a lat-lon grid follow cos(latitude)
    band = np.abs(lat) < 80
    ratio = grid.areas()[band] / np.cos(np.radians(lat[band]))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-3)


def test_area_mean_of_an_empty_region_fails(tmp_path: Path) -> None:
    grid = HEALPix(1)
    ds = dataset(grid)
    ctx = context(
        tmp_path, "area-mean", {"item": "i", "variable": "2t", "bbox": [10, 60, 11, 61]}, ds
    )
    with pytest.raises(ValueError, match="no cell centre"):
        templates.area_mean(ctx, **ctx.inputs)


# -- point series -------------------------------------------------------------------------------
def test_point_series_on_healpix_reads_the_pixel_holding_each_point(
    tmp_path: Path, client: Any
) -> None:
    nside = 32
    grid = HEALPix(nside)
    ds = dataset(grid, seed=5)
    points = [[2.35, 48.85], [-74.0, 40.7], [359.9, -89.9], [180.0, 0.0], [0.0, 90.0]]
    inputs = {"item": "i", "variable": "2t", "points": points}
    ctx = context(tmp_path, "point-series", inputs, ds, client)
    out = templates.point_series(ctx, **ctx.inputs)["point_series"]
    lon = np.array([p[0] for p in points])
    lat = np.array([p[1] for p in points])
    pix = healpy.ang2pix(nside, lon, lat, nest=True, lonlat=True)
    assert out["cells"] == pix.tolist()
    np.testing.assert_allclose(out["values"], ds["2t"].values[:, pix])
    clon, clat = healpy.pix2ang(nside, pix, nest=True, lonlat=True)
    np.testing.assert_allclose(out["cell_lat"], clat)
    np.testing.assert_allclose(np.mod(out["cell_lon"], 360), np.mod(clon, 360), atol=1e-9)
    rows = Path(ctx.files["csv"]["href"]).read_text().splitlines()
    assert rows[0] == "time,point,lon,lat,cell,cell_lon,cell_lat,value"
    assert len(rows) == 1 + TIMES.size * len(points)
    assert float(rows[1].split(",")[-1]) == ds["2t"].values[0, pix[0]]


def test_point_series_on_octahedral_reads_the_nearest_cell(tmp_path: Path, client: Any) -> None:
    grid = Octahedral(8)
    ds = dataset(grid, seed=6)
    points = [[10.0, 45.0], [-100.0, -30.0]]
    ctx = context(
        tmp_path, "point-series", {"item": "i", "variable": "2t", "points": points}, ds, client
    )
    out = templates.point_series(ctx, **ctx.inputs)["point_series"]
    lon, lat = grid.centers()
    expect = []
    for plon, plat in points:  # brute force: the great-circle nearest centre
        p1, p2 = np.radians(plat), np.radians(lat)
        d = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(np.radians(lon - plon))
        expect.append(int(np.argmax(d)))
    assert out["cells"] == expect
    np.testing.assert_allclose(out["values"], ds["2t"].values[:, expect])


# -- climatology --------------------------------------------------------------------------------
# every 7th cell is NaN at every time: its statistic is NaN, as NumPy's reference warns
@pytest.mark.filterwarnings("ignore:(Mean of empty|All-NaN) slice:RuntimeWarning")
@pytest.mark.parametrize(
    ("statistic", "percentile", "reference"),
    [
        ("mean", None, lambda v: np.nanmean(v, axis=0)),
        ("min", None, lambda v: np.nanmin(v, axis=0)),
        ("max", None, lambda v: np.nanmax(v, axis=0)),
        ("percentile", 90.0, lambda v: np.nanpercentile(v, 90.0, axis=0)),
    ],
)
def test_climatology_per_cell(
    tmp_path: Path, client: Any, statistic: str, percentile: float | None, reference: Any
) -> None:
    grid = HEALPix(4)
    ds = dataset(grid, seed=7, nan=True)
    inputs = {"item": "i", "variable": "2t", "statistic": statistic}
    if percentile is not None:
        inputs["percentile"] = percentile
    ctx = context(tmp_path, "climatology", inputs, ds, client)
    assert templates.climatology(ctx, **ctx.inputs) == {}
    href = ctx.files["climatology"]["href"]
    assert href.endswith("/out/job1/climatology.zarr")
    got = xr.open_zarr(href)
    np.testing.assert_allclose(got["2t"].values, reference(ds["2t"].values), rtol=1e-12)
    assert got.attrs["statistic"] == statistic and got.attrs["time_steps"] == 3
    assert got.grid.grid == grid  # the output still says its grid


# -- regrid -----------------------------------------------------------------------------------
def test_regrid_healpix_to_latlon_matches_twinlab_grids(tmp_path: Path, client: Any) -> None:
    from twinlab.grids import regrid

    src = HEALPix(8)
    ds = dataset(src, seed=8)
    target = {"type": "latlon", "resolution": 30}
    inputs = {"item": "i", "variables": ["2t"], "target": target, "method": "bilinear"}
    ctx = context(tmp_path, "regrid", inputs, ds, client)
    templates.regrid(ctx, **ctx.inputs)
    got = xr.open_zarr(ctx.files["regridded"]["href"])
    expect = regrid(ds["2t"].values, src, LatLon(30.0), method="bilinear")
    np.testing.assert_allclose(got["2t"].values, expect, rtol=1e-10)
    assert got.grid.grid == LatLon(30.0)


def test_target_grids() -> None:
    assert templates.target_grid({"type": "healpix", "nside": 4, "nest": False}) == HEALPix(
        4, False
    )
    assert templates.target_grid({"type": "octahedral", "n": 3}) == Octahedral(3)
    assert templates.target_grid({"type": "latlon", "resolution": 2.5}) == LatLon(2.5)


# -- echo and limits -----------------------------------------------------------------------------
def test_echo_returns_its_inputs_after_the_pause(tmp_path: Path) -> None:
    import time

    inputs = {"stringInput": "teststring", "arrayInput": [1, 2], "pause": 1}
    ctx = context(tmp_path, "echo", inputs, None)
    t0 = time.monotonic()
    out = templates.echo(ctx, **ctx.inputs)
    assert time.monotonic() - t0 >= 1.0
    assert out == {"stringInput": "teststring", "arrayInput": [1, 2]}
    assert ctx.files == {}


def test_time_selection_limits_and_errors(tmp_path: Path) -> None:
    ds = dataset(HEALPix(1))
    ctx = context(tmp_path, "zonal-mean", {"item": "i", "variable": "2t"}, None)
    ctx.limits["max_time_steps"] = 2
    with pytest.raises(ValueError, match="3 time steps; a job may read 2"):
        ctx.select_time(ds, None)
    with pytest.raises(ValueError, match="no times"):
        ctx.select_time(ds, "2021-01-01")
    one = ctx.select_time(ds, "2020-01-01T06:00:00Z")
    assert one.sizes["time"] == 1


def test_grib_like_data_is_read_on_valid_time(tmp_path: Path) -> None:
    # cfgrib's layout: dims (time, step, cell), valid_time = time + step on "time"
    grid = HEALPix(2)
    ds = dataset(grid, seed=9).expand_dims(step=[np.timedelta64(6, "h")], axis=1)
    ds = ds.assign_coords(valid_time=("time", TIMES + np.timedelta64(6, "h")))
    inputs = {
        "item": "i",
        "variable": "2t",
        "datetime": "2020-01-01T06:00:00Z/2020-01-01T12:00:00Z",
    }
    ctx = context(tmp_path, "zonal-mean", inputs, ds)
    assert ctx.data["item"]["2t"].dims == ("valid_time", "step", "cell")
    out = templates.zonal_mean(ctx, **ctx.inputs)["zonal_mean"]
    assert out["time"] == ["2020-01-01T06:00:00Z", "2020-01-01T12:00:00Z"]  # valid times
    assert len(out["values"]) == 2 and len(out["values"][0]) == 4 * 2 - 1
    two_levels = dataset(grid).expand_dims(level=[500, 850])
    ctx = context(tmp_path, "zonal-mean", {"item": "i", "variable": "2t"}, two_levels)
    with pytest.raises(ValueError, match=r"extra dimensions \['level'\]"):
        templates.zonal_mean(ctx, **ctx.inputs)

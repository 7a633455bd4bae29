"""The templated processes: one function ``(ctx, **inputs) -> outputs`` per process id.

They run in the job's runner (as the user); the Dask work runs on the job's cluster
through ``ctx.client``. Every computation keeps the data's native grid semantics
(:mod:`twinlab.grids`): a zonal mean is a mean per iso-latitude ring, a point's value is
the value of the native cell holding it. :func:`fetch` opens the inputs' lake items
lazily (the runner's *fetching* stage) before a function runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from twinlab.grids import HEALPix, LatLon, Octahedral, from_dataset, grid_attrs, ops

from .context import JobContext, iso_times, time_name, to_json_value
from .schemas import ECHO_OUTPUTS


# -- fetching -----------------------------------------------------------------------------
def fetch(ctx: JobContext) -> None:
    """Open every item input lazily, within the ``datetime`` input: ``ctx.data[name]``."""
    inputs, process = ctx.inputs, ctx.process
    names = list(process.get("twinhub:item_inputs") or [])
    dt_input = process.get("twinhub:datetime_input")
    variables = inputs.get("variables") or ([inputs["variable"]] if "variable" in inputs else [])
    for k, name in enumerate(names):
        ctx.progress(100.0 * k / max(1, len(names)), f"opening {inputs[name]}")
        parts = []
        item = None
        for var in variables or [None]:
            item, ds = ctx.open_item(inputs[name], inputs.get("collection"), var)
            parts.append(ds)
        ds = parts[0] if len(parts) == 1 else xr.merge(parts, compat="override")
        ds = ctx.select_time(ds, inputs.get(dt_input) if dt_input else None)
        ctx.data[name], ctx.items[name] = ds, item
        ctx.log(f"{inputs[name]}: {dict(ds.sizes)} {', '.join(map(str, ds.data_vars))}")
    ctx.reporter.emit("sources", items=list(ctx.sources))
    ctx.progress(100.0, "inputs opened")


def _field(ctx: JobContext, variable: str) -> tuple[xr.DataArray, Any, str]:
    """(DataArray with a time dimension, its grid, the time dimension's name)."""
    ds = ctx.data["item"]
    if variable not in ds.data_vars:
        raise KeyError(f"the item has no variable {variable!r} (it has {', '.join(ds.data_vars)})")
    da = ds[variable]
    grid = from_dataset(ds, variable)
    tname = time_name(da)
    if tname is None:
        da = da.expand_dims(time=[np.datetime64("NaT", "ns")])
        tname = "time"
    # single-valued extra dimensions (a GRIB step, one level) go; others are not supported
    extra = [d for d in da.dims if d != tname and d not in grid.dims]
    da = da.squeeze([d for d in extra if da.sizes[d] == 1], drop=True)
    if more := [d for d in extra if d in da.dims]:
        raise ValueError(f"variable {variable!r} has extra dimensions {more}: select one value")
    return da.transpose(tname, *grid.dims), grid, tname


def _times(da: xr.DataArray, tname: str) -> list[str]:
    return iso_times(da[tname].values)


# -- echo --------------------------------------------------------------------------------
def echo(ctx: JobContext, pause: int = 0, **inputs: Any) -> dict:
    """Its inputs back (all but ``pause``), after ``pause`` seconds."""
    end = time.monotonic() + float(pause or 0)
    while (left := end - time.monotonic()) > 0:
        ctx.progress(100.0 * (1 - left / pause), f"pausing {left:.0f} s")
        time.sleep(min(0.5, left))
    return {name: inputs[name] for name in ECHO_OUTPUTS if name in inputs}


# -- zonal mean ----------------------------------------------------------------------------
def zonal_mean_latitudes(grid: Any) -> np.ndarray:
    """Latitude of each zonal band, in the order the zonal mean returns them."""
    if len(grid.shape) == 2:  # one band per native row
        return np.asarray(grid.centers()[1]).reshape(grid.shape)[:, 0]
    return np.asarray(grid.rings().lat)  # one band per ring, north -> south


def zonal_mean(ctx: JobContext, variable: str, **_: Any) -> dict:
    """Mean over each iso-latitude ring (HEALPix: 4 nside - 1 rings of equal-area cells;
    Gaussian/octahedral/lat-lon: each grid row), per time step."""
    da, grid, tname = _field(ctx, variable)
    zonal = da.grid.zonal_mean()
    band = [d for d in zonal.dims if d != tname][-1]
    zonal = zonal.transpose(tname, band)
    zonal = ctx.compute(zonal, start=0.0, end=80.0, message="zonal means")
    lat = zonal_mean_latitudes(grid)
    result = {
        "latitude": to_json_value(lat),
        "time": _times(zonal, tname),
        "values": to_json_value(np.asarray(zonal.values)),
    }
    out = xr.Dataset(
        {variable: ((tname, "latitude"), np.asarray(zonal.values), dict(da.attrs))},
        coords={tname: zonal[tname].values, "latitude": ("latitude", lat)},
        attrs={"process": "zonal-mean", "grid": grid.key, "job": ctx.id},
    )
    _clean_attrs(out)
    ctx.progress(85.0, "writing NetCDF")
    ctx.write_netcdf("zonal_mean", out, output="netcdf")
    ctx.write_json("zonal_mean", result, output="json")
    ctx.progress(100.0, "zonal means written")
    return {"zonal_mean": result}


# -- area mean -----------------------------------------------------------------------------
def region_cells(grid: Any, bbox: Any = None, polygon: dict | None = None) -> np.ndarray:
    """Sorted native indices of the cells whose centre is inside the bbox or polygon
    (a GeoJSON Polygon: outer ring less its holes)."""
    if bbox is not None:
        return ops.bbox_cells(grid, bbox)
    assert polygon is not None
    rings = [[(p[0], p[1]) for p in ring] for ring in polygon["coordinates"]]
    cells = ops.polygon_cells(grid, rings[0])
    for hole in rings[1:]:
        cells = np.setdiff1d(cells, ops.polygon_cells(grid, hole))
    return cells


def area_mean(
    ctx: JobContext, variable: str, bbox: Any = None, polygon: dict | None = None, **_: Any
) -> dict:
    """Cell-area-weighted mean over the region, per time step (HEALPix cells have equal
    areas: the plain mean)."""
    da, grid, tname = _field(ctx, variable)
    cells = region_cells(grid, bbox, polygon)
    if cells.size == 0:
        raise ValueError("no cell centre of the item's grid lies inside the region")
    # HEALPix cells all have one area: no need for the grid's (large) area array
    weights = np.ones(cells.size) if isinstance(grid, HEALPix) else np.asarray(grid.areas())[cells]
    if len(grid.shape) == 1:
        (dim,) = grid.dims
        sub = da.isel({dim: cells})
    else:
        dim = "_cell"
        sub = da.stack({dim: grid.dims}).isel({dim: cells})
    w = xr.DataArray(weights / weights.sum(), dims=dim)
    mean = sub.weighted(w).mean(dim, skipna=True)
    mean = ctx.compute(mean, start=0.0, end=80.0, message="area means")
    how = "equal-area cells (plain mean)" if isinstance(grid, HEALPix) else "cell area"
    result = {
        "time": _times(mean, tname),
        "values": to_json_value(np.asarray(mean.values)),
        "cells": int(cells.size),
        "weights": how,
    }
    out = xr.Dataset(
        {variable: ((tname,), np.asarray(mean.values), dict(da.attrs))},
        coords={tname: mean[tname].values},
        attrs={"process": "area-mean", "grid": grid.key, "cells": int(cells.size)},
    )
    out.attrs["weights"] = how
    _clean_attrs(out)
    ctx.progress(85.0, "writing outputs")
    ctx.write_netcdf("area_mean", out, output="netcdf")
    ctx.write_json("area_mean", result, output="json")
    ctx.progress(100.0, "area means written")
    return {"area_mean": result}


# -- point series --------------------------------------------------------------------------
def point_cells(grid: Any, points: list) -> np.ndarray:
    """Native index of the cell holding each [lon, lat] (HEALPix: the pixel containing
    it; other grids: the cell whose centre is nearest)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lon = np.mod(pts[:, 0], 360.0)
    if isinstance(grid, HEALPix):
        return np.asarray(grid.lonlat2pix(lon, pts[:, 1]), dtype=np.int64)
    return np.asarray(ops.nearest_cells(grid, lon, pts[:, 1]), dtype=np.int64)


def point_series(ctx: JobContext, variable: str, points: list, **_: Any) -> dict:
    """Values of the native cells holding the points, per time step."""
    da, grid, tname = _field(ctx, variable)
    cells = point_cells(grid, points)
    if isinstance(grid, HEALPix):
        clon, clat = grid.pix2lonlat(cells)
    else:
        lon_all, lat_all = grid.centers()
        clon, clat = lon_all[cells], lat_all[cells]
    index = np.unravel_index(cells, grid.shape)
    sel = {d: xr.DataArray(i, dims="point") for d, i in zip(grid.dims, index, strict=True)}
    picked = da.isel(sel).transpose(tname, "point")
    picked = ctx.compute(picked, start=0.0, end=80.0, message="point values")
    values = np.asarray(picked.values)
    times = _times(picked, tname)
    result = {
        "points": to_json_value(np.asarray(points, dtype=np.float64)),
        "cells": to_json_value(cells),
        "cell_lon": to_json_value(np.asarray(clon)),
        "cell_lat": to_json_value(np.asarray(clat)),
        "time": times,
        "values": to_json_value(values),
    }
    lines = ["time,point,lon,lat,cell,cell_lon,cell_lat,value"]
    for t, row in zip(times, values, strict=True):
        for k, v in enumerate(row):
            p = points[k]
            value = "" if not np.isfinite(v) else repr(float(v))
            lines.append(
                f"{t},{k},{p[0]},{p[1]},{int(cells[k])},{float(clon[k])!r},"
                f"{float(clat[k])!r},{value}"
            )
    ctx.progress(85.0, "writing CSV")
    ctx.write_csv("point_series", "\n".join(lines) + "\n", output="csv")
    ctx.progress(100.0, "point series written")
    return {"point_series": result}


# -- climatology ---------------------------------------------------------------------------
def climatology(
    ctx: JobContext,
    variable: str,
    statistic: str = "mean",
    percentile: float | None = None,
    **_: Any,
) -> dict:
    """The statistic over the time window, per native cell, as Zarr."""
    da, grid, tname = _field(ctx, variable)
    if statistic == "percentile":
        one = da.chunk({tname: -1}) if da.chunks else da
        stat = one.quantile(float(percentile or 0) / 100.0, dim=tname, skipna=True)
        stat = stat.drop_vars("quantile", errors="ignore")
    else:
        stat = getattr(da, statistic)(tname, skipna=True)
    out = stat.to_dataset(name=variable)
    out[variable].attrs.update({k: v for k, v in da.attrs.items() if not k.startswith("_")})
    out[variable].attrs.update(grid_attrs(grid))
    out = out.assign_attrs(grid_attrs(grid))
    times = _times(da, tname)
    out.attrs.update(
        process="climatology",
        statistic=statistic,
        time_start=times[0] if times else "",
        time_end=times[-1] if times else "",
        time_steps=len(times),
        job=ctx.id,
    )
    if percentile is not None:
        out.attrs["percentile"] = float(percentile)
    _clean_attrs(out)
    ctx.write_zarr("climatology", out, start=0.0, end=100.0)
    return {}


# -- regrid --------------------------------------------------------------------------------
def target_grid(target: dict) -> Any:
    """The twinlab grid of a regrid ``target`` input."""
    if target["type"] == "latlon":
        return LatLon(float(target["resolution"]))
    if target["type"] == "healpix":
        return HEALPix(int(target["nside"]), bool(target.get("nest", True)))
    return Octahedral(int(target["n"]))


def regrid(
    ctx: JobContext, variables: list, target: dict, method: str = "nearest", **_: Any
) -> dict:
    """The variables on the target grid (twinlab.grids.regrid), as Zarr."""
    ds = ctx.data["item"][list(variables)]
    grid = target_grid(target)
    ctx.progress(0.0, f"weights {from_dataset(ds).key} -> {grid.key} ({method})")
    out = _with_grid(ds.grid.regrid(grid, method=method), grid)
    out.attrs.update(process="regrid", method=method, job=ctx.id)
    _clean_attrs(out)
    ctx.write_zarr("regridded", out, start=10.0, end=100.0)
    return {}


_GRID_ATTR_PREFIXES = ("grid_", "healpix_", "gaussian_", "latlon_")


def _with_grid(ds: xr.Dataset, grid: Any) -> xr.Dataset:
    """``ds`` whose attributes (its own and its variables') describe ``grid`` alone: the
    regridded variables keep the source grid's keys otherwise, which then misdescribe them."""
    attrs = grid_attrs(grid)

    def clean(old: dict) -> dict:
        return {k: v for k, v in old.items() if not k.startswith(_GRID_ATTR_PREFIXES)}

    out = ds.copy()
    for name, var in out.data_vars.items():
        if set(grid.dims) <= set(var.dims):
            out[name].attrs = {**clean(var.attrs), **attrs}
    out.attrs = {**clean(out.attrs), **attrs}
    return out


def _clean_attrs(ds: xr.Dataset) -> None:
    """Attributes NetCDF and Zarr can store (no None, no nested dicts)."""
    for obj in [ds, *ds.variables.values()]:
        for key, value in list(obj.attrs.items()):
            if value is None or isinstance(value, dict):
                del obj.attrs[key]
            elif isinstance(value, bool):
                obj.attrs[key] = int(value)


TEMPLATES: dict[str, Callable[..., dict]] = {
    "echo": echo,
    "regrid": regrid,
    "zonal-mean": zonal_mean,
    "area-mean": area_mean,
    "climatology": climatology,
    "point-series": point_series,
}

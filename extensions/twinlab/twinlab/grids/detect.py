"""Detect the grid of an xarray object, and write the attributes that make it detectable.

Sources, tried in order (see docs/grids.md):

1. twinlab attributes (``grid_type`` ...) on the variable, then on the dataset;
2. the xdggs convention: a ``cell_ids`` coordinate with ``grid_name``/``level``/
   ``indexing_scheme`` attributes;
3. ecCodes metadata as cfgrib/earthkit present it (``GRIB_gridType`` ...);
4. plain 1-D ``latitude``/``longitude`` coordinates (regular lat-lon or regular Gaussian),
   or 1-D per-cell coordinates matching a HEALPix grid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import Grid
from .gaussian import Gaussian, Octahedral, ReducedGaussian, gaussian_latitudes
from .healpix import HEALPix
from .latlon import LatLon

#: 1-D spatial dimension names we recognise, most specific first.
CELL_DIMS = ("cell", "cells", "cell_ids", "values", "ncells", "point", "points", "rgrid")
LAT_NAMES = ("latitude", "lat", "nav_lat", "y")
LON_NAMES = ("longitude", "lon", "nav_lon", "x")


#: Every attribute of the twinlab convention (docs/grids.md).
GRID_ATTRS = frozenset(
    {
        "grid_type",
        "grid_dims",
        "healpix_nside",
        "healpix_order",
        "gaussian_N",
        "gaussian_pl",
        "latlon_dlon",
        "latlon_dlat",
        "latlon_nodes",
        "latlon_lon0",
        "latlon_descending",
    }
)


def grid_attrs(grid: Grid) -> dict[str, Any]:
    """The twinlab attributes describing ``grid`` (write them on variables or datasets)."""
    attrs: dict[str, Any] = {"grid_type": "", "grid_dims": " ".join(grid.dims)}
    if isinstance(grid, HEALPix):
        attrs.update(grid_type="healpix", healpix_nside=grid.nside)
        attrs["healpix_order"] = "nested" if grid.nest else "ring"
    elif isinstance(grid, ReducedGaussian):
        if grid.is_octahedral:
            attrs.update(grid_type="octahedral", gaussian_N=grid.N)
        else:
            attrs.update(grid_type="reduced_gaussian", gaussian_N=grid.N)
            attrs["gaussian_pl"] = grid.pl.tolist()
    elif isinstance(grid, Gaussian):
        attrs.update(grid_type="regular_gaussian", gaussian_N=grid.N)
    elif isinstance(grid, LatLon):
        attrs.update(grid_type="latlon", latlon_dlon=grid.dlon, latlon_dlat=grid.dlat)
        attrs.update(latlon_nodes=int(grid.nodes), latlon_lon0=grid.lon0)
        attrs["latlon_descending"] = int(grid.descending)
    else:
        raise TypeError(f"no attribute convention for {type(grid).__name__}")
    return attrs


def from_dataset(obj: Any, variable: str | None = None) -> Grid:
    """Detect the grid of an ``xarray.Dataset``/``DataArray``; its ``dims`` name the data's."""
    import xarray as xr  # optional for the grid maths (the hub's sample data has no need)

    if isinstance(obj, xr.Dataset):
        if variable is not None:
            return _detect(obj[variable], [obj[variable].attrs, obj.attrs])
        # the largest variables are the fields; coordinates-like 1-D variables come last
        fields = sorted((v for v in obj.data_vars.values() if v.ndim > 0), key=lambda v: -v.size)
        if not fields:
            raise ValueError("dataset has no data variables to detect a grid from")
        first_error: ValueError | None = None
        for da in fields:
            try:
                return _detect(da, [da.attrs, obj.attrs])
            except ValueError as e:
                first_error = first_error or e
        raise first_error  # type: ignore[misc]
    if isinstance(obj, xr.DataArray):
        return _detect(obj, [obj.attrs])
    raise TypeError(f"from_dataset needs an xarray Dataset or DataArray, got {type(obj).__name__}")


def _detect(da: Any, attr_sources: list[Mapping[str, Any]]) -> Grid:
    grid = (
        _from_twinlab_attrs(da, attr_sources)
        or _from_xdggs(da)
        or _from_grib_attrs(da, attr_sources)
        or _from_coords(da)
    )
    if grid is None:
        raise ValueError(
            f"cannot detect the grid of variable {da.name!r} (dims {da.dims}): no grid_type/"
            "GRIB_gridType attributes, no xdggs cell_ids, no global latitude/longitude coordinates"
        )
    return grid


# ---- helpers -----------------------------------------------------------------------------
def _get(sources: list[Mapping[str, Any]], key: str) -> Any:
    for attrs in sources:
        if key in attrs:
            return attrs[key]
    return None


def _int(value: Any, what: str) -> int:
    try:
        f = float(np.asarray(value).item())
    except (TypeError, ValueError):
        raise ValueError(f"attribute {what}={value!r} is not a number") from None
    if f != int(f):
        raise ValueError(f"attribute {what}={value!r} is not an integer")
    return int(f)


def _cell_dim(da: Any, size: int, hint: Any = None) -> tuple[str, ...]:
    """The one dimension of ``da`` holding ``size`` cells."""
    if hint:
        names = tuple(str(hint).split()) if isinstance(hint, str) else tuple(hint)
        missing = [d for d in names if d not in da.dims]
        if missing:
            raise ValueError(f"grid_dims {names} not all in the data's dims {da.dims}")
        return names
    candidates = [d for d in da.dims if da.sizes[d] == size]
    if not candidates:
        raise ValueError(f"data dims {dict(da.sizes)} have no dimension of the grid's size {size}")
    for name in CELL_DIMS:
        if name in candidates:
            return (name,)
    return (candidates[-1],)


def _with_dims(grid_cls: Any, da: Any, hint: Any, *args: Any, **kw: Any) -> Grid:
    probe = grid_cls(*args, **kw)
    if len(probe.shape) == 1:
        dims = _cell_dim(da, probe.size, hint)
    else:
        dims = tuple(str(hint).split()) if hint else _latlon_dims(da) or probe.dims
    grid: Grid = grid_cls(*args, dims=dims, **kw)
    check_data(grid, da)
    return grid


def check_data(grid: Grid, da: Any) -> None:
    """Raise ValueError unless ``da`` has ``grid``'s spatial dims with the right sizes."""
    for dim, n in zip(grid.dims, grid.shape, strict=True):
        if dim not in da.dims:
            raise ValueError(f"{grid.key}: data has no dimension {dim!r} (dims {da.dims})")
        if da.sizes[dim] != n:
            raise ValueError(
                f"{grid.key}: dimension {dim!r} has size {da.sizes[dim]}, the grid needs {n}"
            )


def _latlon_dims(da: Any) -> tuple[str, str] | None:
    lat = _coord(da, LAT_NAMES, "latitude", "degrees_north")
    lon = _coord(da, LON_NAMES, "longitude", "degrees_east")
    if lat is None or lon is None or lat.ndim != 1 or lon.ndim != 1 or lat.dims == lon.dims:
        return None
    return (lat.dims[0], lon.dims[0])


def _coord(da: Any, names: tuple[str, ...], standard_name: str, units: str) -> Any:
    for c in da.coords.values():
        if c.attrs.get("standard_name") == standard_name or c.attrs.get("units") == units:
            return c
    for n in names:
        if n in da.coords:
            return da.coords[n]
    return None


# ---- 1. twinlab attributes ---------------------------------------------------------------
def _from_twinlab_attrs(da: Any, sources: list[Mapping[str, Any]]) -> Grid | None:
    gtype = _get(sources, "grid_type")
    if gtype is None:
        return None
    gtype = str(gtype).lower()
    hint = _get(sources, "grid_dims")
    if gtype == "healpix":
        nside = _get(sources, "healpix_nside")
        if nside is None:
            raise ValueError("grid_type='healpix' needs a healpix_nside attribute")
        order = str(_get(sources, "healpix_order") or "nested").lower()
        if order not in ("nested", "nest", "ring"):
            raise ValueError(f"healpix_order must be 'nested' or 'ring', got {order!r}")
        return _with_dims(HEALPix, da, hint, _int(nside, "healpix_nside"), order != "ring")
    if gtype in ("octahedral", "reduced_gaussian", "regular_gaussian"):
        n = _get(sources, "gaussian_N")
        if n is None:
            raise ValueError(f"grid_type={gtype!r} needs a gaussian_N attribute")
        n = _int(n, "gaussian_N")
        if gtype == "octahedral":
            return _with_dims(Octahedral, da, hint, n)
        if gtype == "regular_gaussian":
            return _with_dims(Gaussian, da, hint, n)
        pl = _get(sources, "gaussian_pl")
        if pl is None:
            raise ValueError("grid_type='reduced_gaussian' needs a gaussian_pl attribute")
        return _with_dims(ReducedGaussian, da, hint, n, np.asarray(pl, dtype=np.int64))
    if gtype == "latlon":
        dlon = _get(sources, "latlon_dlon")
        if dlon is None:
            raise ValueError("grid_type='latlon' needs a latlon_dlon attribute")
        dlat = _get(sources, "latlon_dlat")
        flags = {}
        for name in ("nodes", "descending"):  # both default to 1 (ECMWF/ERA5 layout)
            value = _get(sources, f"latlon_{name}")
            flags[name] = True if value is None else bool(_int(value, f"latlon_{name}"))
        lon0 = _get(sources, "latlon_lon0")
        kw = {**flags, "lon0": None if lon0 is None else float(lon0)}
        dlat = float(dlon) if dlat is None else float(dlat)
        return _with_dims(LatLon, da, hint, float(dlon), dlat, **kw)
    raise ValueError(
        f"unknown grid_type {gtype!r} (healpix, octahedral, reduced_gaussian, "
        "regular_gaussian, latlon)"
    )


# ---- 2. xdggs ----------------------------------------------------------------------------
def _from_xdggs(da: Any) -> Grid | None:
    cells = da.coords.get("cell_ids")
    if cells is None or "grid_name" not in cells.attrs:
        return None
    a = cells.attrs
    if str(a["grid_name"]).lower() != "healpix":
        raise ValueError(f"xdggs grid_name {a['grid_name']!r} is not supported (only healpix)")
    if "level" in a or "refinement_level" in a or "resolution" in a:
        key = next(k for k in ("level", "refinement_level", "resolution") if k in a)
        level = _int(a[key], key)
        if not 0 <= level <= 29:
            raise ValueError(f"xdggs {key}={level} outside 0..29")
        nside = 1 << level
    elif "nside" in a:
        nside = _int(a["nside"], "nside")
    else:
        raise ValueError("xdggs cell_ids has no level/nside attribute")
    scheme = str(a.get("indexing_scheme", "nested")).lower()
    if scheme not in ("nested", "ring"):
        raise ValueError(f"xdggs indexing_scheme {scheme!r} is not supported (nested, ring)")
    grid = HEALPix(nside, scheme == "nested", dims=(cells.dims[0],))
    n = da.sizes[cells.dims[0]]
    if n != grid.size:
        # a regional subset: xdggs stores the cell ids of what is there
        raise ValueError(
            f"xdggs cell_ids cover {n} of the {grid.size} cells of {grid.key}: only full "
            "global grids can be detected; use grid.sel_region on the global data instead"
        )
    step = max(1, n // 1000)  # a sample: never load a 12.6M-cell coordinate to check it
    ids = np.asarray(cells[::step].values)
    if not np.array_equal(ids, np.arange(0, n, step)):
        raise ValueError("xdggs cell_ids are not in native order 0..npix-1")
    return grid


# ---- 3. ecCodes / cfgrib -----------------------------------------------------------------
def _from_grib_attrs(da: Any, sources: list[Mapping[str, Any]]) -> Grid | None:
    gtype = _get(sources, "GRIB_gridType")
    if gtype is None:
        return None
    gtype = str(gtype)
    if gtype == "healpix":
        nside = _get(sources, "GRIB_Nside")
        dim = next((d for d in CELL_DIMS if d in da.dims), da.dims[-1])
        if nside is None:  # cfgrib does not read Nside by default: infer it from the size
            nside = int(round(np.sqrt(da.sizes[dim] / 12)))
        ordering = _get(sources, "GRIB_orderingConvention")
        if ordering is None:
            return _healpix_from_coords(da, dim, _int(nside, "GRIB_Nside"))
        return _with_dims(HEALPix, da, dim, _int(nside, "GRIB_Nside"), str(ordering) != "ring")
    if gtype == "reduced_gg":
        n = _get(sources, "GRIB_N")
        pl = _get(sources, "GRIB_pl")
        if n is None or pl is None:
            raise ValueError("GRIB_gridType='reduced_gg' without GRIB_N and GRIB_pl attributes")
        reduced = ReducedGaussian(_int(n, "GRIB_N"), np.asarray(pl, dtype=np.int64))
        cls, args = (
            (Octahedral, (reduced.N,))
            if reduced.is_octahedral
            else (ReducedGaussian, (reduced.N, reduced.pl))
        )
        dim = next((d for d in CELL_DIMS if d in da.dims), None)
        return _with_dims(cls, da, dim, *args)
    if gtype in ("regular_ll", "regular_gg"):
        grid = _from_coords(da)
        if grid is None:
            raise ValueError(f"GRIB_gridType={gtype!r} data without 1-D latitude/longitude coords")
        return grid
    raise ValueError(f"GRIB_gridType {gtype!r} is not supported")


def _healpix_from_coords(da: Any, dim: str, nside: int) -> Grid:
    """Decide nested vs ring by comparing per-cell coordinates with both orderings."""
    lat = _coord(da, LAT_NAMES, "latitude", "degrees_north")
    lon = _coord(da, LON_NAMES, "longitude", "degrees_east")
    if lat is None or lon is None or lat.dims != (dim,) or lon.dims != (dim,):
        raise ValueError(
            "HEALPix data without an ordering attribute needs per-cell latitude/longitude "
            "coordinates to tell nested from ring"
        )
    n = da.sizes[dim]
    sample = np.unique(np.linspace(0, n - 1, min(n, 2000)).astype(np.int64))
    for nest in (True, False):
        grid = HEALPix(nside, nest, dims=(dim,))
        check_data(grid, da)
        glon, glat = grid.pix2lonlat(sample)
        dlon = np.abs((np.asarray(lon.values[sample]) - glon + 180.0) % 360.0 - 180.0)
        dlat = np.abs(np.asarray(lat.values[sample]) - glat)
        # near the poles longitude is ill-defined: compare on the sphere
        if np.all(dlat < 1e-6) and np.all(dlon * np.cos(np.deg2rad(glat)) < 1e-6):
            return grid
    raise ValueError(f"coordinates along {dim!r} match neither nested nor ring HEALPix n{nside}")


# ---- 4. plain coordinates ----------------------------------------------------------------
def _from_coords(da: Any) -> Grid | None:
    dims = _latlon_dims(da)
    if dims is None:
        return _healpix_guess(da)
    lat = np.asarray(_coord(da, LAT_NAMES, "latitude", "degrees_north").values, dtype=np.float64)
    lon = np.asarray(_coord(da, LON_NAMES, "longitude", "degrees_east").values, dtype=np.float64)
    if lat.size < 2 or lon.size < 2:
        raise ValueError("latitude/longitude coordinates need at least 2 values")
    descending = bool(lat[0] > lat[-1])
    south_north = lat[::-1] if descending else lat
    step = np.diff(lon)
    dlon = 360.0 / lon.size
    if not np.allclose(np.mod(step, 360.0), dlon, atol=1e-6 * max(dlon, 1) + 1e-5):
        raise ValueError(
            f"longitudes are not a global regular circle ({lon.size} values, spacing "
            f"{step.min():g}..{step.max():g}, global would be {dlon:g})"
        )
    lon0 = float(lon[0])
    nlat = lat.size
    # regular lat-lon: equally spaced
    steps = np.diff(south_north)
    if np.allclose(steps, steps.mean(), rtol=1e-5, atol=1e-6):
        dlat = float(steps.mean())
        if np.isclose(south_north[0], -90.0, atol=1e-6) and np.isclose(
            south_north[-1], 90.0, atol=1e-6
        ):
            grid = LatLon(
                dlon, 180.0 / (nlat - 1), nodes=True, lon0=lon0, descending=descending, dims=dims
            )
        elif np.isclose(south_north[0], -90.0 + dlat / 2, atol=1e-6) and np.isclose(
            south_north[-1], 90.0 - dlat / 2, atol=1e-6
        ):
            grid = LatLon(
                dlon, 180.0 / nlat, nodes=False, lon0=lon0, descending=descending, dims=dims
            )
        else:
            raise ValueError(
                f"latitudes {south_north[0]:g}..{south_north[-1]:g} step {dlat:g} are not a "
                "global grid (need poles as nodes, or cells reaching the poles)"
            )
        check_data(grid, da)
        return grid
    # regular Gaussian: 2N Gaussian latitudes, 4N longitudes from 0
    if nlat % 2 == 0 and np.allclose(gaussian_latitudes(nlat // 2)[::-1], south_north, atol=1e-5):
        if not descending:
            raise ValueError("regular Gaussian data stored south -> north is not supported")
        if lon.size != 2 * nlat or abs(lon0) > 1e-9:
            raise ValueError(
                f"Gaussian latitudes (N={nlat // 2}) but {lon.size} longitudes from {lon0:g}: "
                f"a regular Gaussian grid has {2 * nlat} from 0"
            )
        gaussian = Gaussian(nlat // 2, dims=dims)
        check_data(gaussian, da)
        return gaussian
    raise ValueError("latitudes are neither equally spaced nor Gaussian latitudes")


def _healpix_guess(da: Any) -> Grid | None:
    """1-D per-cell lat/lon coordinates on a dim of size 12 nside^2."""
    lat = _coord(da, LAT_NAMES, "latitude", "degrees_north")
    if lat is None or lat.ndim != 1:
        return None
    dim = lat.dims[0]
    n = da.sizes.get(dim, 0)
    nside = int(round(np.sqrt(n / 12)))
    if n == 0 or 12 * nside * nside != n or nside & (nside - 1):
        return None
    return _healpix_from_coords(da, dim, nside)

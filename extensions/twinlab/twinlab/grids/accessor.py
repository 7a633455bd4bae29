"""xarray accessor ``ds.grid`` / ``da.grid``: grid-aware selection and statistics.

Everything stays lazy on Dask-backed data: the grid geometry (indices, areas, ring ids)
is computed eagerly with NumPy — it is metadata, small next to the data — while the data
operations (``isel``, ``weighted``, ``apply_ufunc(dask="parallelized")``) only add tasks.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import xarray as xr

from . import ops
from .base import Grid
from .detect import GRID_ATTRS, check_data, from_dataset, grid_attrs


@lru_cache(maxsize=4)  # n1024 ring order is 100 MB
def _ring_order(grid: Grid) -> np.ndarray | None:
    order = grid.ring_order()
    if order is not None:
        order.flags.writeable = False
    return order


@lru_cache(maxsize=4)  # n1024 ring order is 100 MB
def _areas(grid: Grid) -> np.ndarray:
    a = grid.areas()
    a.flags.writeable = False
    return a


def _drop_grid_attrs(obj: Any) -> xr.Dataset | xr.DataArray:
    """Reductions over the grid are no longer on it: drop the twinlab grid attributes
    (other attributes, units and names, are kept)."""

    def clean(attrs: dict[Any, Any]) -> dict[Any, Any]:
        return {k: v for k, v in attrs.items() if k not in GRID_ATTRS}

    out: xr.Dataset | xr.DataArray = _with_attrs(obj, clean(obj.attrs))
    if isinstance(out, xr.Dataset):
        for name in out.data_vars:
            out[name].attrs = clean(out[name].attrs)
    return out


def _with_attrs(obj: Any, attrs: dict[Any, Any]) -> Any:
    out = obj.copy(deep=False)
    out.attrs = attrs
    return out


class GridAccessor:
    """``obj.grid``: the detected :class:`Grid` and operations that use it."""

    def __init__(self, obj: xr.Dataset | xr.DataArray):
        self._obj = obj
        self._grid: Grid | None = None

    # ---- the grid --------------------------------------------------------------------
    @property
    def grid(self) -> Grid:
        """The grid detected by :func:`from_dataset` (cached on this object)."""
        if self._grid is None:
            self._grid = from_dataset(self._obj)
        return self._grid

    def assign(self, grid: Grid) -> xr.Dataset | xr.DataArray:
        """A copy whose attributes describe ``grid`` (on the dataset and on every variable
        laid out on it), after checking that the data fits the grid."""
        if not isinstance(grid, Grid):
            raise TypeError(f"assign needs a twinlab Grid, got {type(grid).__name__}")
        attrs = grid_attrs(grid)
        if isinstance(self._obj, xr.DataArray):
            check_data(grid, self._obj)
            return self._obj.assign_attrs(attrs)
        on_grid = [n for n, v in self._obj.data_vars.items() if set(grid.dims) <= set(v.dims)]
        if not on_grid:
            raise ValueError(f"no data variable has the grid's dims {grid.dims}")
        out = self._obj.copy(deep=False)
        for name in on_grid:
            check_data(grid, out[name])
            out[name] = out[name].assign_attrs(attrs)
        return out.assign_attrs(attrs)

    def areas(self) -> xr.DataArray:
        """Cell areas (m^2) laid out on the grid's dims."""
        g = self.grid
        return xr.DataArray(
            _areas(g).reshape(g.shape), dims=g.dims, name="cell_area", attrs={"units": "m2"}
        )

    def centers(self) -> tuple[xr.DataArray, xr.DataArray]:
        """(longitude, latitude) of the cell centres, degrees, on the grid's dims."""
        g = self.grid
        lon, lat = g.centers()
        return (
            xr.DataArray(
                lon.reshape(g.shape), dims=g.dims, name="longitude", attrs={"units": "degrees_east"}
            ),
            xr.DataArray(
                lat.reshape(g.shape), dims=g.dims, name="latitude", attrs={"units": "degrees_north"}
            ),
        )

    # ---- selection -------------------------------------------------------------------
    def sel_region(
        self,
        bbox: tuple[float, float, float, float] | None = None,
        polygon: Any = None,
        point: tuple[float, float] | Any = None,
    ) -> xr.Dataset | xr.DataArray:
        """Cells whose centres fall in ``bbox=(west, south, east, north)`` (east < west
        crosses the antimeridian) or ``polygon=[(lon, lat), ...]`` (edges straight in
        lon/lat), or the cell nearest to ``point=(lon, lat)`` (an (n, 2) array gives a
        ``point`` dimension).  1-D grids get a ``cell_index`` coordinate (native index);
        2-D grids keep their rows/columns (polygon: cells outside are NaN)."""
        given = [
            k for k, v in (("bbox", bbox), ("polygon", polygon), ("point", point)) if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"sel_region needs exactly one of bbox=, polygon=, point= (got {given or 'none'})"
            )
        g = self.grid
        if point is not None:
            picked: xr.Dataset | xr.DataArray = self._sel_points(g, point)
            return picked
        cells = ops.bbox_cells(g, bbox) if bbox is not None else ops.polygon_cells(g, polygon)
        if len(g.shape) == 1:
            (dim,) = g.dims
            out = self._obj.isel({dim: cells})
            return out.assign_coords(cell_index=(dim, cells))
        region: xr.Dataset | xr.DataArray = self._sel_2d(g, cells, polygon)
        return region

    def _sel_points(self, g: Grid, point: Any) -> Any:
        pts = np.asarray(point, dtype=np.float64)
        if pts.shape[-1:] != (2,) or pts.ndim > 2:
            raise ValueError(f"point must be (lon, lat) or an (n, 2) array, got shape {pts.shape}")
        idx = ops.nearest_cells(g, pts[..., 0], pts[..., 1])
        if pts.ndim == 1:
            idx = idx[0]
            sel: dict[str, Any] = dict(
                zip(g.dims, (int(i) for i in np.unravel_index(idx, g.shape)), strict=True)
            )
        else:
            sel = {
                d: xr.DataArray(i, dims="point")
                for d, i in zip(g.dims, np.unravel_index(idx, g.shape), strict=True)
            }
        out = self._obj.isel(sel)
        if len(g.shape) == 1:
            out = out.assign_coords(cell_index=((), idx) if pts.ndim == 1 else ("point", idx))
        return out

    def _sel_2d(self, g: Grid, cells: np.ndarray, polygon: Any) -> Any:
        rows, cols = np.unravel_index(cells, g.shape)
        urows = np.unique(rows)
        # columns in west -> east order of the region (contiguous across the antimeridian)
        lon = g.centers()[0].reshape(g.shape)[0]
        ucols = np.unique(cols)
        if ucols.size:
            rel = np.mod(lon[ucols] - lon[ucols[0]], 360.0)
            gaps = np.diff(np.sort(rel))
            if gaps.size and gaps.max() > 1.5 * (
                360.0 / g.shape[1]
            ):  # wrapped: start after the gap
                srt = ucols[np.argsort(rel)]
                k = int(np.argmax(gaps)) + 1
                ucols = np.concatenate([srt[k:], srt[:k]])
        out = self._obj.isel({g.dims[0]: urows, g.dims[1]: ucols})
        if polygon is not None:
            keep = np.zeros(g.shape, dtype=bool)
            keep[rows, cols] = True
            mask = xr.DataArray(keep[np.ix_(urows, ucols)], dims=g.dims)
            out = out.where(mask)
        return out

    # ---- statistics ------------------------------------------------------------------
    def mean(self, skipna: bool = True) -> xr.Dataset | xr.DataArray:
        """Area-weighted mean over the grid's dims (NaN cells are left out)."""
        g = self.grid
        obj = self._on_grid(g)
        out = obj.weighted(self.areas()).mean(dim=list(g.dims), skipna=skipna, keep_attrs=True)
        return _drop_grid_attrs(out)

    def zonal_mean(self) -> xr.Dataset | xr.DataArray:
        """Mean over each iso-latitude ring -> a ``latitude`` dimension (north -> south
        for 1-D grids, native row order for 2-D ones); NaN-aware."""
        g = self.grid
        if len(g.shape) == 2:
            return _drop_grid_attrs(
                self._on_grid(g).mean(dim=g.dims[1], skipna=True, keep_attrs=True)
            )
        (dim,) = g.dims
        rings = g.rings()
        ids = ops.compact_ring_ids(g)

        def one(da: xr.DataArray) -> xr.DataArray:
            if "latitude" in da.dims:
                raise ValueError(
                    "data already has a 'latitude' dimension; cannot add the zonal one"
                )
            zonal: xr.DataArray = xr.apply_ufunc(
                ops.zonal_mean_values,
                da,
                input_core_dims=[[dim]],
                output_core_dims=[["latitude"]],
                kwargs={"ids": ids, "nrings": rings.nrings},
                dask="parallelized",
                output_dtypes=[np.result_type(da.dtype, np.float32)],
                # each task needs whole rings: the cell dimension is gathered into one chunk
                dask_gufunc_kwargs={
                    "output_sizes": {"latitude": rings.nrings},
                    "allow_rechunk": True,
                },
                keep_attrs=True,
            )
            return zonal

        out = self._on_grid(g).map(one) if isinstance(self._obj, xr.Dataset) else one(self._obj)
        out = out.assign_coords(latitude=("latitude", rings.lat, {"units": "degrees_north"}))
        return _drop_grid_attrs(out)

    # ---- regridding ------------------------------------------------------------------
    def regrid(self, target: Grid, method: str = "nearest", **kwargs: Any) -> Any:
        """Regrid onto ``target`` with :func:`twinlab.grids.regrid` (lazy on Dask data)."""
        from .regrid import regrid  # start-up cost: numba's kernels load on first regrid

        out = regrid(self._obj, self.grid, target, method=method, **kwargs)
        attrs = grid_attrs(target)

        def on_target(obj: Any) -> Any:
            # The source grid's keys go: a variable saying "healpix" over lat-lon dims would
            # make the result unreadable (from_dataset trusts the variable's attributes).
            kept = {k: v for k, v in obj.attrs.items() if k not in GRID_ATTRS}
            new = obj.copy(deep=False)
            new.attrs = kept | attrs  # (assign_attrs would only add to the old ones)
            return new

        if isinstance(out, xr.Dataset):
            out = out.copy(deep=False)
            for name, var in list(out.data_vars.items()):
                if set(target.dims) <= set(var.dims):
                    out[name] = on_target(var)
            return on_target(out)
        return on_target(out)

    def _on_grid(self, g: Grid) -> xr.Dataset | xr.DataArray:
        """The object, less dataset variables that do not lie on the grid (statistics
        over the grid dims are undefined for them)."""
        if isinstance(self._obj, xr.DataArray):
            return self._obj
        keep = [n for n, v in self._obj.data_vars.items() if set(g.dims) <= set(v.dims)]
        return self._obj[keep]


xr.register_dataset_accessor("grid")(GridAccessor)  # type: ignore[no-untyped-call]
xr.register_dataarray_accessor("grid")(GridAccessor)  # type: ignore[no-untyped-call]

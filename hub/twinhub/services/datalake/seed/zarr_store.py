"""Zarr v3 copies: one store per grid holding all variables, one time step per chunk.

Written a day at a time (the first day creates the store, later days append along
``time``), so memory stays at one day of one grid whatever the seed's period.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import xarray as xr
from zarr.codecs import BloscCodec

from twinlab.grids import Gaussian, Grid, HEALPix, grid_attrs

from .fields import VARIABLES
from .grids import CLIMATE_DT, START

# float32 values decoded from 16-bit GRIB packing have their low mantissa bits at zero:
# byte-shuffled zstd squeezes them far better than plain zstd
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
TIME_UNITS = f"hours since {START:%Y-%m-%d %H:%M:%S}"


def _coords(grid: Grid) -> dict[str, xr.Variable]:
    if isinstance(grid, HEALPix):
        # the xdggs convention, so xdggs.decode works on the store as it is
        attrs = {
            "grid_name": "healpix",
            "level": grid.order,
            "indexing_scheme": "nested" if grid.nest else "ring",
        }
        return {"cell_ids": xr.Variable(grid.dims, np.arange(grid.size, dtype=np.int64), attrs)}
    if isinstance(grid, Gaussian):
        lon, lat = grid.centers()
        lat2, lon2 = lat.reshape(grid.shape), lon.reshape(grid.shape)
        return {
            "latitude": xr.Variable(
                "latitude", lat2[:, 0], {"units": "degrees_north", "standard_name": "latitude"}
            ),
            "longitude": xr.Variable(
                "longitude", lon2[0, :], {"units": "degrees_east", "standard_name": "longitude"}
            ),
        }
    return {}  # octahedral: the grid attributes say everything (rings from pl)


def day_dataset(
    grid: Grid, grid_id: str, times: list[datetime], values: dict[str, np.ndarray], step_hours: int
) -> xr.Dataset:
    """One day of one grid: ``values[name]`` is (ntime, *grid.shape) float32."""
    gattrs = grid_attrs(grid)
    data_vars = {}
    for var in VARIABLES:
        attrs = {
            "units": var.units,
            "long_name": var.long_name,
            "standard_name": var.standard_name,
            "GRIB_paramId": var.param_id,
            "GRIB_shortName": var.short_name,
            **gattrs,
        }
        if var.accumulated:
            attrs["cell_methods"] = f"time: sum (interval: {step_hours} hours)"
        data_vars[var.short_name] = xr.Variable(("time", *grid.dims), values[var.short_name], attrs)
    ds = xr.Dataset(
        data_vars,
        coords={"time": ("time", np.array(times, dtype="datetime64[ns]")), **_coords(grid)},
        attrs={
            **gattrs,
            "title": f"Climate DT-like sample data on {grid_id}",
            "source": "twinhub data seed (synthetic; not model output)",
            "twinhub_grid_id": grid_id,
            **{k: v for k, v in CLIMATE_DT.items()},
        },
    )
    ds["time"].attrs["standard_name"] = "time"
    return ds


def write_day(store: Path, ds: xr.Dataset, first: bool) -> None:
    """Create the store from the first day, append the others along time."""
    with warnings.catch_warnings():
        # zarr 3 warns that consolidated metadata is not in the v3 spec yet; readers
        # (xarray, s3fs-backed stores) use it to open a store in one request
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        if first:
            encoding = {
                name: {"chunks": (1, *ds[name].shape[1:]), "compressors": (COMPRESSOR,)}
                for name in ds.data_vars
            }
            encoding["time"] = {"units": TIME_UNITS, "dtype": "int64", "chunks": (1024,)}
            ds.to_zarr(store, mode="w-", zarr_format=3, encoding=encoding, consolidated=True)
        else:
            ds.to_zarr(store, append_dim="time", zarr_format=3, consolidated=True)

"""STAC 1.1.0 records of the sample data: the ``climate-dt`` collection and its items.

Plain dicts (what pgstac stores); properties follow the real DestinE Climate DT catalogue
(MARS keys: class, dataset, activity, experiment, model, generation, realization,
resolution, stream, type, levtype, param), and the datacube extension describes each
item's dimensions and its variable.  Asset hrefs name the bucket ``lake``; the loader
rewrites them when the platform's lake bucket is called otherwise.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from twinlab.contract import FIELD_GRID, FIELD_GRID_ID, FIELD_SIZE, FIELD_VARIABLE
from twinlab.grids import Gaussian, Grid, HEALPix, ReducedGaussian, grid_attrs

from .fields import VARIABLES, Variable
from .grids import CLIMATE_DT, GridRun

STAC_VERSION = "1.1.0"
DATACUBE = "https://stac-extensions.github.io/datacube/v2.2.0/schema.json"
COLLECTION_ID = "climate-dt"
BUCKET = "lake"
PREFIX = "climate-dt"
GRIB_TYPE = "application/x-grib"
ZARR_TYPE = "application/vnd+zarr"
GLOBAL_BBOX = [-180.0, -90.0, 180.0, 90.0]
GLOBAL_POLYGON = {
    "type": "Polygon",
    "coordinates": [
        [[-180.0, -90.0], [180.0, -90.0], [180.0, 90.0], [-180.0, 90.0], [-180.0, -90.0]]
    ],
}


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def grib_key(grid_id: str, short_name: str, day: date) -> str:
    return f"{PREFIX}/{grid_id}/{short_name}/{day:%Y%m%d}.grib2"


def zarr_key(grid_id: str) -> str:
    return f"{PREFIX}/{grid_id}.zarr"


def item_id(grid_id: str, short_name: str, day: date) -> str:
    return f"{COLLECTION_ID}-{grid_id}-{short_name}-{day:%Y%m%d}"


def _duration(hours: int) -> str:
    return f"PT{hours}H"


def spatial_dimensions(grid: Grid) -> dict[str, dict[str, Any]]:
    """Datacube dimensions of a grid's native layout."""
    if isinstance(grid, Gaussian):
        lon, lat = grid.centers()
        return {
            "latitude": {
                "type": "spatial",
                "axis": "y",
                "extent": [float(lat.min()), float(lat.max())],
                "reference_system": 4326,
                "unit": "degree",
                "description": f"Gaussian latitudes of F{grid.N}, north to south (not evenly spaced)",
            },
            "longitude": {
                "type": "spatial",
                "axis": "x",
                "extent": [0.0, float(lon.max())],
                "step": 360.0 / (4 * grid.N),
                "reference_system": 4326,
                "unit": "degree",
            },
        }
    if isinstance(grid, HEALPix):
        what = f"HEALPix {'nested' if grid.nest else 'ring'} cell index, nside {grid.nside}"
    elif isinstance(grid, ReducedGaussian):
        what = f"octahedral reduced Gaussian O{grid.N} cells, rings north to south"
    else:  # pragma: no cover - the seed has no other grids
        what = f"{grid.key} cells"
    (dim,) = grid.dims
    return {dim: {"type": "other", "extent": [0, grid.size - 1], "step": 1, "description": what}}


def time_dimension(start: datetime, end: datetime, step_hours: int) -> dict[str, Any]:
    return {
        "type": "temporal",
        "extent": [iso(start), iso(end)],
        "step": _duration(step_hours),
        "description": "valid time (tp: the end of its accumulation interval)",
    }


def cube_variable(var: Variable, dims: list[str]) -> dict[str, Any]:
    return {
        "type": "data",
        "dimensions": dims,
        "unit": var.units,
        "description": var.long_name + (" (missing over land)" if var.sea_only else ""),
    }


def item(run: GridRun, grid: Grid, var: Variable, day: int, grib_size: int) -> dict[str, Any]:
    """The item of one GRIB2 file: one variable, one day, one grid."""
    times = run.day_times(day)
    d = times[0].date()
    key = grib_key(run.grid_id, var.short_name, d)
    dims = ["time", *grid.dims]
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [DATACUBE],
        "id": item_id(run.grid_id, var.short_name, d),
        "collection": COLLECTION_ID,
        "geometry": GLOBAL_POLYGON,
        "bbox": GLOBAL_BBOX,
        "properties": {
            # The first valid time, not null: pgstac drops a null datetime when it serves an
            # item, and STAC requires the key. Searches use start/end either way.
            "datetime": iso(times[0]),
            "start_datetime": iso(times[0]),
            "end_datetime": iso(times[-1]),
            **CLIMATE_DT,
            "resolution": run.resolution,
            "levtype": "sfc",
            "param": var.short_name,
            "paramId": var.param_id,
            FIELD_GRID: {"id": run.grid_id, **grid_attrs(grid)},
            "cube:dimensions": {
                "time": time_dimension(times[0], times[-1], run.step_hours),
                **spatial_dimensions(grid),
            },
            "cube:variables": {var.short_name: cube_variable(var, dims)},
        },
        "assets": {
            "grib": {
                "href": f"s3://{BUCKET}/{key}",
                "type": GRIB_TYPE,
                "roles": ["data"],
                "title": f"{var.long_name}, {d:%Y-%m-%d}, GRIB2",
                FIELD_SIZE: grib_size,
            },
            "zarr": {
                "href": f"s3://{BUCKET}/{zarr_key(run.grid_id)}",
                "type": ZARR_TYPE,
                "roles": ["data"],
                "title": f"all variables on {run.grid_id}, Zarr v3 (select {var.short_name!r})",
                FIELD_VARIABLE: var.short_name,
            },
        },
        # STAC requires a collection link beside "collection"; the API replaces it with its
        # own absolute one (stac-fastapi-pgstac drops stored self/parent/collection/root)
        "links": [{"rel": "collection", "href": "./collection.json", "type": "application/json"}],
    }


def collection(runs: tuple[GridRun, ...], size: str, version: int) -> dict[str, Any]:
    """The ``climate-dt`` collection of a seed of ``runs``."""
    start = min(r.times()[0] for r in runs)
    end = max(r.times()[-1] for r in runs)
    step = min(r.step_hours for r in runs)
    cube_vars = {
        v.short_name: {
            **cube_variable(v, ["time", "cell"]),
            "description": cube_variable(v, [])["description"]
            + "; dims (time, latitude, longitude) on gaussian-f48",
        }
        for v in VARIABLES
    }
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [DATACUBE],
        "id": COLLECTION_ID,
        "title": "Climate DT-like sample data (synthetic)",
        "description": (
            "Synthetic surface fields shaped like DestinE Climate Adaptation Digital Twin output "
            "(IFS-NEMO, SSP3-7.0): 2 m temperature, total precipitation, 10 m winds, mean sea "
            "level pressure and sea surface temperature on HEALPix (nested H128 'standard', "
            "H256 'high'), octahedral O96 and regular Gaussian F48 grids, as GRIB2 (one file per "
            "grid, variable and day) and Zarr v3 (one store per grid). Physically plausible "
            f"but not model output. Seed size {size!r}, version {version}."
        ),
        "keywords": [
            "DestinE",
            "Climate DT",
            "climate-dt",
            "IFS-NEMO",
            "SSP3-7.0",
            "HEALPix",
            "octahedral",
            "Gaussian grid",
            "GRIB2",
            "Zarr",
            "synthetic",
        ],
        "license": "CC-BY-4.0",
        "providers": [
            {
                "name": "twinhub",
                "description": "generated by `twinhub data seed`",
                "roles": ["producer", "processor", "host"],
            }
        ],
        "extent": {
            "spatial": {"bbox": [GLOBAL_BBOX]},
            "temporal": {"interval": [[iso(start), iso(end)]]},
        },
        "summaries": {
            **{k: [v] for k, v in CLIMATE_DT.items()},
            "resolution": sorted({r.resolution for r in runs}, reverse=True),
            "levtype": ["sfc"],
            "param": [v.short_name for v in VARIABLES],
            "paramId": [v.param_id for v in VARIABLES],
            FIELD_GRID_ID: [r.grid_id for r in runs],
        },
        "item_assets": {
            "grib": {
                "type": GRIB_TYPE,
                "roles": ["data"],
                "title": "one variable, one day, GRIB2 (ecCodes)",
            },
            "zarr": {
                "type": ZARR_TYPE,
                "roles": ["data"],
                "title": "all variables of the item's grid, Zarr v3",
            },
        },
        "cube:dimensions": {
            "time": time_dimension(start, end, step),
            "cell": {
                "type": "other",
                "description": "cells of the item's grid in native order (HEALPix, octahedral)",
            },
            "latitude": {"type": "spatial", "axis": "y", "extent": [-90.0, 90.0]},
            "longitude": {"type": "spatial", "axis": "x", "extent": [0.0, 360.0]},
        },
        "cube:variables": cube_vars,
        "links": [],
    }

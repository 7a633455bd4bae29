"""VizLab core: render native-grid fields (HEALPix, Gaussian, lat-lon) to tiles and views.

Every pixel takes the value of its native cell (``nearest``: exact) or healpy-style
bilinear interpolation, with no intermediate regridded copy, reading only the chunks a
raster needs.  Runs anywhere: a notebook, a Dask worker, the hub's tiles service.
``twinlab.viz.explore`` (the Panel explorer) loads on first use: importing Panel is slow.
See docs/vizlab.md.
"""

from __future__ import annotations

from typing import Any

from .colour import COLORMAPS, colormap_lut, colourize, encode_png, legend_png
from .field import ChunkCache, Field
from .locate import cell_centers, nearest_index
from .projections import PROJECTIONS, View, check_view, forward, view_lonlat
from .render import METHODS, render, render_tile, render_view, sample
from .tms import (
    MAX_ZOOM,
    TILE_SIZE,
    TMS_IDS,
    check_tile,
    matrix_size,
    native_zoom,
    tile_bounds_crs,
    tile_bounds_lonlat,
    tile_lonlat,
    tms_document,
)

__all__ = [
    "COLORMAPS",
    "ChunkCache",
    "Field",
    "MAX_ZOOM",
    "METHODS",
    "PROJECTIONS",
    "TILE_SIZE",
    "TMS_IDS",
    "View",
    "cell_centers",
    "check_tile",
    "check_view",
    "colormap_lut",
    "colourize",
    "encode_png",
    "explore",
    "forward",
    "legend_png",
    "matrix_size",
    "native_zoom",
    "nearest_index",
    "render",
    "render_tile",
    "render_view",
    "sample",
    "tile_bounds_crs",
    "tile_bounds_lonlat",
    "tile_lonlat",
    "tms_document",
    "view_lonlat",
]


def __getattr__(name: str) -> Any:
    if name == "explore":
        # the explorer pulls in Panel/Bokeh (seconds to import): load it on first use only
        from .explore import explore as fn

        # importing the submodule bound the *module* as this package's ``explore``: the
        # public name stays the function
        globals()["explore"] = fn
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

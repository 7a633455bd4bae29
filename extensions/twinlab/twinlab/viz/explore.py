"""``twinlab.viz.explore(item_or_dataset)``: the VizLab explorer, a Panel app in a notebook.

>>> import twinlab.viz as viz
>>> viz.explore("climate-dt-2t-healpix-n128-20200101")      # a lake item id (your own keys)
>>> viz.explore(ds, "2t", projection="orthographic", overlays=["s3://me/coast.geojson"])

A pan/zoom map rendered on the native grid (every pixel its native cell, or bilinear),
variable / level selectors, a time slider with a player, colour map and range, projection
(plate carrée, Web Mercator, Robinson, Mollweide, a globe), overlays, and a click on the
map plots that exact cell's series beside it.  The logic lives in :mod:`.explore_state`
(:class:`Explorer`, usable without a browser), the Panel shell in :mod:`.explore_panel`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .explore_state import Explorer, Series
from .overlays import LayerOverlay, RasterOverlay, VectorOverlay, WMTSOverlay


def explore(
    obj: Any,
    variable: str | None = None,
    *,
    time: Any = None,
    projection: str = "platecarree",
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    method: str = "nearest",
    overlays: Any = (),
    width: int = 900,
    height: int = 450,
) -> Any:
    """The explorer of ``obj`` as a Panel layout (display it, or ``.servable()`` it).

    ``obj``: an xarray Dataset/DataArray on a grid twinlab detects, a pystac Item, or a lake
    item id (opened with ``twinlab.datalake.open``).  ``time``: a step index or a time
    (nearest valid time).  ``projection``: one of ``twinlab.viz.PROJECTIONS``.
    ``cmap``/``vmin``/``vmax``/``method``: the colour style (default range: the field's
    2nd-98th percentile).  ``overlays``: vector files (GeoJSON, shapefile, GeoPackage) or
    GeoTIFFs, local or ``s3://``; tile URL templates with ``{z}/{x}/{y}``; ``(item,
    variable)`` pairs or datasets; or :mod:`twinlab.viz.overlays` objects.
    """
    # Panel/Bokeh take seconds to import: only the app needs them, not Explorer users
    import panel as pn

    from .explore_panel import ExplorerApp  # the Panel shell: Panel/Bokeh at its top

    def make() -> Explorer:
        return Explorer(
            obj, variable, time=time, projection=projection, cmap=cmap, vmin=vmin,
            vmax=vmax, method=method, overlays=overlays, width=width, height=height,
        )  # fmt: skip

    doc = pn.state.curdoc
    if doc is None or doc.session_context is None:
        # a notebook: bad arguments raise here, in the cell, rather than in a status line
        explorer = make()
        make = lambda: explorer  # noqa: E731
    title = obj if isinstance(obj, str) else getattr(obj, "id", "") or ""
    return ExplorerApp(make, width=width, height=height, title=f"VizLab {title}".strip()).layout


class _CallableModule(types.ModuleType):
    """``twinlab.viz.explore`` is both this module and the function: importing the module
    binds it on the package, so ``twinlab.viz.explore(...)`` must work on the module too."""

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return explore(*args, **kw)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "Explorer",
    "LayerOverlay",
    "RasterOverlay",
    "Series",
    "VectorOverlay",
    "WMTSOverlay",
    "explore",
]

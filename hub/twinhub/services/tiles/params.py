"""What the tile APIs (:mod:`.wmts`, :mod:`.ogcapi`, :mod:`.views`) parse alike: item ids and
variables, styles (colour map, range, method), tile addresses and their limits, times.

Every refusal is a :class:`~twinhub.services.asgi.BadRequest` naming the parameter and what
is allowed (the WMTS module turns them into OWS exception reports). A tile outside its
matrix is :class:`TileOutOfRange`: WMTS answers it 400 ``TileOutOfRange``, OGC API - Tiles
404, as their standards say.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import numpy as np
from fastapi import Request

import twinlab.viz.tms as tmsmod
from twinlab.grids import Gaussian, HEALPix, LatLon, Octahedral, ReducedGaussian
from twinlab.viz.colour import COLORMAPS
from twinlab.viz.render import METHODS

from ..asgi import BadRequest
from .config import TwinhubTiles
from .context import TilesContext
from .gridsize import check_cells, grid_cells
from .layers import Layer, LayerInfo, run_render

#: An item id (or variable) in a path: one segment.
ID_RULE = "[A-Za-z0-9._:-]+, at most 256 characters"
_ID = re.compile(r"[A-Za-z0-9._:-]{1,256}")
#: Hosts written into links (anything else: links are relative to the prefix).
#: The colour map when none is asked for.
DEFAULT_CMAP = "viridis"
DEFAULT_METHOD = "nearest"
#: Zoom 0..this when a layer's grid is not known from its item (no ``twinhub:grid``).
FALLBACK_NATIVE_ZOOM = 5
#: Where :func:`default_range` keeps the layers' colour ranges (ctx.extras).
_RANGES = "tiles-api.ranges"
_RANGES_MAX = 4096
#: :func:`grid_of`'s cap when none is given: the setting's default.
MAX_GRID_CELLS = int(TwinhubTiles.max_grid_cells.default_value)


class TileOutOfRange(BadRequest):
    """A tile row/column (or matrix) outside the tile matrix set."""

    def __init__(self, message: str, locator: str) -> None:
        super().__init__(message, 404)
        self.locator = locator


# -- names --------------------------------------------------------------------------------------
def check_id(value: str, what: str = "item id") -> str:
    if not _ID.fullmatch(value or ""):
        shown = (value or "")[:64]
        raise BadRequest(f"bad {what} {shown!r}: it must match {ID_RULE}")
    return value


def split_layer_id(layer_id: str) -> tuple[str, str]:
    """``<item id>/<variable>`` -> (item, variable), both checked."""
    item, sep, variable = (layer_id or "").partition("/")
    if not sep:
        raise BadRequest(
            f"bad layer {layer_id[:64]!r}: a layer is '<item id>/<variable>' (for example "
            "'climate-dt-h128-2t-20250101/2t')"
        )
    return check_id(item), check_id(variable, "variable")


# -- styles -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Style:
    cmap: str = DEFAULT_CMAP
    method: str = DEFAULT_METHOD
    vmin: float | None = None
    vmax: float | None = None


def parse_float(name: str, raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {raw[:32]!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number, not {raw[:32]!r}")
    return value


def parse_style(
    cmap: str | None, vmin: str | None, vmax: str | None, method: str | None = None
) -> Style:
    """The style parameters, checked (unknown names list the valid ones)."""
    cmap = cmap or DEFAULT_CMAP
    if cmap not in COLORMAPS:
        raise BadRequest(f"unknown cmap {cmap[:64]!r}: use one of {', '.join(COLORMAPS)}")
    method = method or DEFAULT_METHOD
    if method not in METHODS:
        raise BadRequest(f"unknown method {method[:64]!r}: use one of {', '.join(METHODS)}")
    lo, hi = parse_float("vmin", vmin), parse_float("vmax", vmax)
    if lo is not None and hi is not None and lo >= hi:
        raise BadRequest(f"vmin ({lo:g}) must be less than vmax ({hi:g})")
    return Style(cmap=cmap, method=method, vmin=lo, vmax=hi)


async def default_range(ctx: TilesContext, layer: Layer) -> tuple[float, float]:
    """The layer's colour range when none is asked for: the field's range at its default
    time, the same for every time step (a time player keeps its colours), kept per field."""
    ranges: dict[str, tuple[float, float]] = ctx.extras.setdefault(_RANGES, {})
    key = layer.field.key or layer.info.layer_id
    got = ranges.get(key)
    if got is None:
        lo, hi = await run_render(ctx, layer.field.value_range, 0)
        got = (float(lo), float(hi))
        if len(ranges) >= _RANGES_MAX:
            ranges.pop(next(iter(ranges)))
        ranges[key] = got
    return got


async def resolve_range(ctx: TilesContext, layer: Layer, style: Style) -> tuple[float, float]:
    """(vmin, vmax): those asked for, the missing one(s) from :func:`default_range`."""
    if style.vmin is not None and style.vmax is not None:
        return style.vmin, style.vmax
    lo, hi = await default_range(ctx, layer)
    vmin = lo if style.vmin is None else style.vmin
    vmax = hi if style.vmax is None else style.vmax
    if vmin >= vmax:
        raise BadRequest(
            f"vmin ({vmin:g}) must be less than vmax ({vmax:g}) (the one not given is the "
            f"layer's default range {lo:g}..{hi:g})"
        )
    return vmin, vmax


# -- tile addresses and limits ------------------------------------------------------------------
def parse_int(name: str, raw: str | None) -> int:
    if raw is None or raw == "":
        raise BadRequest(f"{name} is required")
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]{1,9}", text):
        raise BadRequest(f"{name} must be an integer, not {raw[:32]!r}")
    return int(text)


def check_tms(tms_id: str) -> str:
    if tms_id not in tmsmod.TMS_IDS:
        raise BadRequest(
            f"unknown tile matrix set {tms_id[:64]!r}: use one of {', '.join(tmsmod.TMS_IDS)}"
        )
    return tms_id


@lru_cache(maxsize=256)
def _grid_of(frozen: tuple[tuple[str, Any], ...]) -> Any:
    attrs = dict(frozen)
    kind = str(attrs.get("grid_type", "")).lower()
    # twinlab's attribute names (grid_attrs: the seeded items'), or the short ones
    n = attrs.get("gaussian_N", attrs.get("N"))
    if kind == "healpix":
        nest = attrs.get("nest")
        order = "nested" if nest is None or nest else "ring"
        order = str(attrs.get("healpix_order", order)).lower()
        return HEALPix(int(attrs.get("healpix_nside", attrs.get("nside"))), order != "ring")
    if kind == "octahedral":
        return Octahedral(int(n))
    if kind == "regular_gaussian":
        return Gaussian(int(n))
    if kind == "reduced_gaussian":
        return ReducedGaussian(int(n), list(attrs["gaussian_pl"]))
    if kind == "latlon":
        dlon = float(attrs["latlon_dlon"])
        dlat = float(attrs.get("latlon_dlat") or dlon)
        return LatLon(dlon, dlat)
    return None


def check_grid(ctx: TilesContext, info: LayerInfo) -> int | None:
    """The layer's cell count from its item's ``twinhub:grid`` (by formula, nothing built;
    None when unknown); 422 naming ``TwinhubTiles.max_grid_cells`` when beyond it."""
    return check_cells(info.grid, int(ctx.settings.max_grid_cells), f"layer {info.layer_id}")


def grid_of(info: LayerInfo, max_cells: int = MAX_GRID_CELLS) -> Any:
    """The layer's grid from its item's ``twinhub:grid`` (no data read); None if absent or
    not understood. Its size is checked by formula first: beyond ``max_cells`` -> 422 naming
    ``TwinhubTiles.max_grid_cells``, and nothing is built."""
    g = info.grid or {}
    if check_cells(g, max_cells, f"layer {info.layer_id}") is None:
        return None
    try:
        frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in g.items()))
        return _grid_of(frozen)
    except (KeyError, TypeError, ValueError):
        return None


def native_zoom(info: LayerInfo, tms_id: str, grid: Any = None) -> int:
    """The zoom whose pixels are about the layer's native cells: from the cell count of the
    item's grid (a formula: no grid is built, so any item's metadata answers at once), else
    the opened field's (``grid``), else :data:`FALLBACK_NATIVE_ZOOM`."""
    cells = grid_cells(info.grid)
    if cells is None and grid is not None:
        cells = int(grid.size)
    if cells is None:
        return FALLBACK_NATIVE_ZOOM
    return int(tmsmod.native_zoom_cells(tms_id, cells))


def max_zoom(ctx: TilesContext, info: LayerInfo, tms_id: str, grid: Any = None) -> int:
    """The deepest zoom served for the layer: native + max_zoom_beyond_native (at most the
    tile matrix sets' last)."""
    beyond = int(ctx.settings.max_zoom_beyond_native)
    return min(native_zoom(info, tms_id, grid) + beyond, tmsmod.MAX_ZOOM)


def check_tile(
    ctx: TilesContext, info: LayerInfo, tms_id: str, z: int, row: int, col: int, grid: Any = None
) -> None:
    """The tile exists in the matrix set (else :class:`TileOutOfRange`) and is within the
    layer's zoom limit (else 400 naming the limit)."""
    check_tms(tms_id)
    check_grid(ctx, info)
    if z < 0:
        raise TileOutOfRange(f"tile matrix {z} does not exist in {tms_id} (0..)", "TileMatrix")
    native = native_zoom(info, tms_id, grid)
    beyond = int(ctx.settings.max_zoom_beyond_native)
    if z > native + beyond:
        raise BadRequest(
            f"zoom {z} is beyond the limit: native zoom {native} + "
            f"TwinhubTiles.max_zoom_beyond_native {beyond} = {native + beyond}"
        )
    if z > tmsmod.MAX_ZOOM:
        raise TileOutOfRange(
            f"tile matrix {z} does not exist in {tms_id} (0..{tmsmod.MAX_ZOOM})", "TileMatrix"
        )
    cols, rows = tmsmod.matrix_size(tms_id, z)
    if not 0 <= row < rows:
        raise TileOutOfRange(
            f"tile row {row} is outside tile matrix {z} of {tms_id} (rows 0..{rows - 1})",
            "TileRow",
        )
    if not 0 <= col < cols:
        raise TileOutOfRange(
            f"tile column {col} is outside tile matrix {z} of {tms_id} (columns 0..{cols - 1})",
            "TileCol",
        )


def matrix_limits(tms_id: str, z_max: int) -> list[dict[str, int]]:
    """Every zoom 0..z_max with its full row/column range."""
    out = []
    for z in range(z_max + 1):
        cols, rows = tmsmod.matrix_size(tms_id, z)
        out.append({"z": z, "minrow": 0, "maxrow": rows - 1, "mincol": 0, "maxcol": cols - 1})
    return out


# -- times --------------------------------------------------------------------------------------
def iso(t: datetime | np.datetime64) -> str:
    """A time as ISO 8601 UTC with ``Z`` (seconds)."""
    if isinstance(t, np.datetime64):
        t = datetime.fromtimestamp(int(t.astype("datetime64[s]").astype(np.int64)), UTC)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def times_iso(info: LayerInfo) -> list[str]:
    return [iso(t) for t in info.times]


# -- links --------------------------------------------------------------------------------------


def query(request: Request) -> Mapping[str, str]:
    """The query's parameters by lower-case name (WMTS KVP names are case-insensitive);
    the first of repeated ones."""
    out: dict[str, str] = {}
    for k, v in request.query_params.multi_items():
        out.setdefault(k.lower(), v)
    return out

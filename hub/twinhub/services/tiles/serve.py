"""Rendered PNGs the tile APIs answer alike: a tile (WMTS KVP and REST, OGC API - Tiles give
the same bytes for the same tile), a view in a projection, a legend.

Each checks the caller's access first (:func:`.layers.open_layer`: another user's private
item is refused before any limit or data is looked at), then the limits, and goes through
:func:`.tilecache.png_response` (ETag, Cache-Control, hot tiles kept, metrics). The cache key
holds the field's identity, the time step and the resolved style, so that a request naming
the default range and one naming the same numbers share a PNG.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from twinlab.viz.colour import encode_png, legend_png
from twinlab.viz.field import Field
from twinlab.viz.projections import View
from twinlab.viz.render import render_tile, render_view

from ..asgi import BadRequest
from .access import caller_of
from .context import TilesContext
from .layers import Layer, get_item, open_dataset, open_layer, time_index
from .params import Style, check_tile, check_tms, resolve_range
from .tilecache import png_response

#: Where :func:`extra_dims` keeps what it found, by field (ctx.extras).
_EXTRA_DIMS = "tiles-api.extra_dims"
_EXTRA_DIMS_MAX = 1024
#: Values of a dimension named in a refusal, at most.
_SHOWN = 20
#: Characters of a legend's label at most (name and units).
MAX_LABEL = 200
#: The service's own query parameters (tiles, views, legends, EDR): a dimension of the data
#: with one of these names is never selected by name (its first value; EDR's ``z``).
OWN_PARAMS = frozenset({
    "coords", "datetime", "crs", "f", "parameter-name", "parameter_names", "z", "bbox",
    "time", "cmap", "vmin", "vmax", "method", "projection", "center", "zoom", "width",
    "height",
})  # fmt: skip


def _plain(v: Any) -> Any:
    """A dimension value as JSON (numbers, strings; anything else as its text)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


async def extra_dims(ctx: TilesContext, layer: Layer) -> dict[str, list[Any]]:
    """The layer's dimensions besides time and the grid's (levels...) and their values.

    The opened field holds one value of each (its selection) as a scalar coordinate: only
    then is the item's data opened again (metadata only) to list every value."""
    kept: dict[str, dict[str, list[Any]]] = ctx.extras.setdefault(_EXTRA_DIMS, {})
    key = layer.field.key or layer.info.layer_id
    if key in kept:
        return kept[key]
    da = layer.field.da
    scalar = [c for c in da.coords if da[c].ndim == 0 and c not in ("time", "valid_time")]
    found: dict[str, list[Any]] = {}
    if layer.field.levels or getattr(layer.field, "levels_known", False):
        # recorded when the field was opened (scalar coordinates too): nothing to open again
        found = {str(k): [_plain(v) for v in vals] for k, vals in layer.field.levels.items()}
    elif scalar:
        # the layer's own collection: another collection's item of that id is not this one
        item = await get_item(ctx, layer.info.item_id, collection=layer.info.collection)
        ds = await asyncio.to_thread(open_dataset, ctx, layer.info, item)
        dims = await asyncio.to_thread(Field.extra_dims, ds, layer.info.variable)
        found = {str(k): [_plain(v) for v in vals] for k, vals in dims.items()}
    if len(kept) >= _EXTRA_DIMS_MAX:
        kept.pop(next(iter(kept)))
    kept[key] = found
    return found


def _pick(dim: str, raw: str, values: list[Any]) -> Any:
    """The value of ``dim`` named ``raw`` (its text, or the same number)."""
    for v in values:
        if str(v) == raw:
            return v
    try:
        x = float(raw)
    except ValueError:
        x = None
    if x is not None:
        for v in values:
            if isinstance(v, int | float) and not isinstance(v, bool) and float(v) == x:
                return v
    shown = ", ".join(map(str, values[:_SHOWN])) + (" ..." if len(values) > _SHOWN else "")
    raise BadRequest(f"{dim}={raw[:64]!r} is not one of the layer's {dim} values: {shown}")


async def open_selected(
    request: Request, ctx: TilesContext, item: str, variable: str, *, z: str | None = None
) -> Layer:
    """The layer (access-checked), its extra dimensions (levels) selected by query
    parameters of their names (``?level=500``; the first value of any not named).

    ``z``: EDR's vertical coordinate, a value of the one extra dimension no parameter names
    (of a dimension called ``z``, if there is one); 400 when there is not exactly one."""
    caller = caller_of(request)
    layer = await open_layer(ctx, caller, item, variable)
    dims = await extra_dims(ctx, layer)
    selection = {
        dim: _pick(dim, request.query_params[dim], values)
        for dim, values in dims.items()
        if dim.lower() not in OWN_PARAMS and request.query_params.get(dim) not in (None, "")
    }
    if z not in (None, ""):
        free = ["z"] if "z" in dims else [d for d in dims if d not in selection]
        if len(free) != 1:
            named = ", ".join(free) if free else "none"
            raise BadRequest(
                f"z={z[:64]!r}: layer {item}/{variable} has {len(free)} dimensions besides "
                f"time and the grid that no parameter names ({named}), z needs exactly one; "
                "name a dimension as ?<dimension>=<value>"
            )
        selection[free[0]] = _pick(free[0], z, dims[free[0]])
    if not selection:
        return layer
    return await open_layer(ctx, caller, item, variable, selection=selection)


def selected_values(layer: Layer) -> dict[str, Any]:
    """The values of the layer's extra dimensions its field holds (selected, or the first
    of each): what its values are "at"."""
    da = layer.field.da
    return {
        str(d): _plain(da[d].values.item())
        for d in layer.field.levels
        if d in da.coords and da[d].ndim == 0
    }


async def tile_response(
    request: Request,
    ctx: TilesContext,
    item: str,
    variable: str,
    tms_id: str,
    z: int,
    row: int,
    col: int,
    time: str | None,
    style: Style,
) -> Response:
    """One 256x256 PNG tile of ``item/variable`` at ``time`` (None/"default": the first)."""
    check_tms(tms_id)
    layer = await open_selected(request, ctx, item, variable)
    check_tile(ctx, layer.info, tms_id, z, row, col, grid=layer.field.grid)
    t = time_index(layer, time)
    vmin, vmax = await resolve_range(ctx, layer, style)
    field = layer.field
    key = ("tile", field.key, layer.info.layer_id, t, tms_id, z, row, col, style.cmap,
           style.method, vmin, vmax)  # fmt: skip

    def make() -> bytes:
        rgba = render_tile(
            field, t, tms_id, z, row, col,
            method=style.method, cmap=style.cmap, vmin=vmin, vmax=vmax,
        )  # fmt: skip
        return encode_png(rgba)

    return await png_response(request, ctx, key, make, public=layer.info.public, kind="tile")


async def view_response(
    request: Request,
    ctx: TilesContext,
    item: str,
    variable: str,
    view: View,
    time: str | None,
    style: Style,
) -> Response:
    """A ``view`` (projection, centre, zoom, size) of ``item/variable`` as a PNG."""
    layer = await open_selected(request, ctx, item, variable)
    t = time_index(layer, time)
    vmin, vmax = await resolve_range(ctx, layer, style)
    field = layer.field
    key = ("view", field.key, layer.info.layer_id, t, view.projection, view.width, view.height,
           view.center_lon, view.center_lat, view.zoom, style.cmap, style.method, vmin, vmax)  # fmt: skip

    def make() -> bytes:
        rgba = render_view(
            field, t, view, method=style.method, cmap=style.cmap, vmin=vmin, vmax=vmax
        )
        return encode_png(rgba)

    return await png_response(request, ctx, key, make, public=layer.info.public, kind="view")


async def legend_response(
    request: Request, ctx: TilesContext, item: str, variable: str, style: Style
) -> Response:
    """The colour bar of ``item/variable`` for ``style`` (the layer's default range unless
    vmin/vmax say otherwise), labelled with its name and units."""
    layer = await open_selected(request, ctx, item, variable)
    vmin, vmax = await resolve_range(ctx, layer, style)
    info = layer.info
    name = layer.field.long_name or info.variable
    label = f"{name} [{info.units}]" if info.units else name
    if len(label) > MAX_LABEL:  # the data's long_name is anyone's text: bounded
        label = label[: MAX_LABEL - 1] + "\u2026"
    key = ("legend", layer.field.key, info.layer_id, style.cmap, vmin, vmax, label)

    def make() -> bytes:
        try:
            return legend_png(style.cmap, vmin, vmax, label=label)
        except ValueError as e:  # (the style was checked: kept for the renderer's own rules)
            raise BadRequest(str(e)) from None

    return await png_response(request, ctx, key, make, public=info.public, kind="legend")

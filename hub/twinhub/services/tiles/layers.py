"""Layers: one per lake item and variable (``<item id>/<variable>``), from the STAC API.

:class:`LayerInfo` is what the item alone says (no data read): variables (``cube:variables``,
else ``param``), valid times (its ``cube:dimensions`` time: values, else extent and step,
within the item's datetimes), bbox, grid. :func:`open_layer` opens the data after
:func:`.access.check_item`, with the PLATFORM's S3 keys: Zarr (xarray without Dask: a tile
reads only the chunks under it), NetCDF (by range), GRIB (copied whole under the run dir,
at most ``max_read_bytes``, else 413), over the item's time range as ``twinlab.datalake.open``
does -- the opening itself (checks of what the data declare, limits, the open pool, the
kept fields) is :mod:`.opening`'s. Fields share one chunk cache of ``chunk_cache_bytes``;
items are cached ``access_ttl`` seconds; renders run in a pool of ``render_threads``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from twinlab.viz.field import Field

from . import opening
from .access import Caller
from .context import TilesContext

# The listing half (items, lookups, times) is .listing's, the opening half .opening's;
# the service's modules reach the layer interface (common to both) through here.
from .listing import LayerInfo, _item_range, get_item, layer_info, list_layers, time_index
from .opening import field_key

__all__ = [
    "Layer",
    "LayerInfo",
    "get_item",
    "layer_info",
    "list_layers",
    "open_dataset",
    "open_layer",
    "run_render",
    "shutdown",
    "time_index",
]

log = logging.getLogger("twinhub.tiles.layers")

#: ``ctx.extras`` keys owned here.
POOL = "layers.pool"


@dataclass
class Layer:
    """A layer whose field is open (``info.times``: the data's own valid times)."""

    info: LayerInfo
    field: Field


# -- opening the data -----------------------------------------------------------------------
def open_dataset(ctx: TilesContext, info: LayerInfo, item: Mapping[str, Any] | None = None) -> Any:
    """The layer's data, lazily (blocking), over the item's times: :func:`.opening.open_dataset`."""
    props = (item or {}).get("properties") or {}
    return opening.open_dataset(ctx, info, _item_range(props) if item else (None, None))


def _open_field(
    ctx: TilesContext, info: LayerInfo, item: Mapping[str, Any], selection: Any, key: str
) -> Any:
    return opening.build_field(ctx, info, open_dataset(ctx, info, item), selection, key)


async def open_layer(
    ctx: TilesContext,
    caller: Caller,
    item_id: str,
    variable: str,
    *,
    selection: Mapping[str, Any] | None = None,
) -> Layer:
    """The layer, access-checked (:func:`layer_info`), its field opened (kept: the next
    request finds it open; :func:`.opening.open_field`). ``selection``: values of extra
    dimensions (levels)."""
    (info,) = await layer_info(ctx, caller, item_id, variable)
    item = await get_item(ctx, item_id, caller, info.collection)
    key = field_key(info, selection)
    sel = dict(selection or {})
    f, times = await opening.open_field(ctx, key, lambda: _open_field(ctx, info, item, sel, key))
    # the data's own valid times (UTC-aware; () for timeless data): what tiles and EDR index
    return Layer(info=replace(info, times=times), field=f)


async def run_render(ctx: TilesContext, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn(*args, **kw)`` in the render pool (``render_threads`` at once; the rest wait)."""
    pool = ctx.extras.get(POOL)
    if pool is None:
        pool = ctx.extras.setdefault(
            POOL,
            ThreadPoolExecutor(ctx.settings.render_threads, thread_name_prefix="tiles-render"),
        )
    # in a copy of the caller's context: what it counts (chunk reads) is the request's
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kw)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


def shutdown(ctx: TilesContext) -> None:
    """The app's end: the render and open pools stop (queued work dropped), fields closed."""
    pool = ctx.extras.pop(POOL, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
    opening.shutdown(ctx)

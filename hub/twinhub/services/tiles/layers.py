"""Layers: one per lake item and variable (``<item id>/<variable>``), from the STAC API.

:class:`LayerInfo` is what the item alone says (no data read): variables (``cube:variables``,
else ``param``), valid times (its ``cube:dimensions`` time: values, else extent and step,
within the item's datetimes), bbox, grid. :func:`open_layer` opens the data after
:func:`.access.check_item`, with the PLATFORM's S3 keys: Zarr (xarray without Dask: a tile
reads only the chunks under it), NetCDF (by range), GRIB (copied whole under the run dir,
at most ``max_read_bytes``, else 413), over the item's time range as ``twinlab.datalake.open``
does. Fields are kept (LRU) and share one chunk cache of ``chunk_cache_bytes``; items are
cached ``access_ttl`` seconds; renders run in a pool of ``render_threads``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import re
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import numpy as np
import s3fs
import xarray as xr

import twinlab.grids as grids
from twinlab.contract import FIELD_GRID, FIELD_VARIABLE
from twinlab.datalake.grib import open_grib, with_grid
from twinlab.datalake.items import select_valid_times
from twinlab.datalake.opening import select_variable
from twinlab.viz.field import ChunkCache, Field

from ...objectstore import admin_keys, endpoint
from ..asgi import BadRequest
from .access import Caller, Expiring, check_item
from .context import TilesContext

log = logging.getLogger("twinhub.tiles.layers")

ITEM_ID = re.compile(r"[A-Za-z0-9._:-]{1,256}")
ITEM_ID_RULE = "item ids are one path segment of letters, digits and . _ : - (at most 256)"
#: Items per page when listing the lake.
PAGE = 200
#: Times one item may list (a step of seconds over years is no layer anyone draws).
MAX_TIMES = 100_000
#: Items looked at per layer listed at most (the rest of a large lake is left out).
SCAN = 10
#: Access checks (HEADs of the object store) of one listing at once.
CHECKS_AT_ONCE = 8
#: Opened fields kept (each holds an open store; their chunks live in the shared cache).
MAX_FIELDS = 64
#: ``ctx.extras`` keys owned here.
ITEMS, LISTING, FIELDS = "layers.items", "layers.listing", "layers.fields"
CHUNKS, POOL, OPENING = "layers.chunks", "layers.pool", "layers.opening"
_DURATION = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


@dataclass(frozen=True)
class LayerInfo:
    """One (item, variable), from the STAC item alone (no data read)."""

    item_id: str
    variable: str
    collection: str
    title: str
    units: str
    description: str
    #: The item's valid times, UTC-aware, ascending; () when timeless.
    times: tuple[datetime, ...]
    bbox: tuple[float, float, float, float]
    #: The item's ``twinhub:grid`` property ({} when it has none).
    grid: dict = field(hash=False)
    #: In ``TwinhubTiles.public_collections``.
    public: bool
    #: The data asset read: its key, href and format (zarr, netcdf, grib).
    asset: str = ""
    href: str = ""
    format: str = ""
    #: The item's ``updated`` (else ``created``): a change makes new cache keys.
    updated: str = ""

    @property
    def layer_id(self) -> str:
        return f"{self.item_id}/{self.variable}"


@dataclass
class Layer:
    """A layer whose field is open (``info.times``: the data's own valid times)."""

    info: LayerInfo
    field: Field


# -- parsing items --------------------------------------------------------------------------
def check_item_id(item_id: str) -> str:
    if not isinstance(item_id, str) or not ITEM_ID.fullmatch(item_id):
        raise BadRequest(f"bad item id {str(item_id)[:80]!r}: {ITEM_ID_RULE}", 400)
    return item_id


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant as a UTC-aware datetime (naive: UTC). ValueError if it is not."""
    t = datetime.fromisoformat(text.strip().replace("z", "Z"))
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_duration(text: str) -> timedelta | None:
    """An ISO 8601 duration of weeks, days, hours, minutes, seconds; None otherwise."""
    m = _DURATION.fullmatch(str(text).strip().upper())
    if not m or not any(m.groupdict().values()):
        return None
    g = {k: float(v or 0) for k, v in m.groupdict().items()}
    step = timedelta(weeks=g["w"], days=g["d"], hours=g["h"], minutes=g["m"], seconds=g["s"])
    return step if step.total_seconds() > 0 else None


def _time_dimension(props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    dims = props.get("cube:dimensions")
    if not isinstance(dims, Mapping):
        return None
    for name, d in dims.items():
        if isinstance(d, Mapping) and (d.get("type") == "temporal" or name == "time"):
            return d
    return None


def item_times(item: Mapping[str, Any]) -> tuple[datetime, ...]:
    """The item's valid times (see the module doc); () when it has no time dimension."""
    props = item.get("properties") or {}
    dim = _time_dimension(props)
    if dim is None:
        return ()
    out: list[datetime] = []
    try:
        if isinstance(dim.get("values"), list):
            out = [parse_instant(str(v)) for v in dim["values"][:MAX_TIMES]]
        else:
            extent = dim.get("extent") or []
            start = parse_instant(str(extent[0])) if extent and extent[0] else None
            end = parse_instant(str(extent[-1])) if len(extent) > 1 and extent[-1] else start
            step = parse_duration(dim.get("step") or "")
            if start is not None and end is not None:
                if step is None:
                    out = [start] if start == end else [start, end]
                else:
                    t = start
                    while t <= end and len(out) < MAX_TIMES:
                        out.append(t)
                        t += step
    except (ValueError, TypeError, IndexError):
        return ()
    lo, hi = _item_range(props)
    return tuple(sorted({t for t in out if (lo is None or t >= lo) and (hi is None or t <= hi)}))


def _item_range(props: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The item's [start, end] (UTC-aware; None: open)."""

    def instant(key: str) -> datetime | None:
        v = props.get(key)
        try:
            return parse_instant(str(v)) if v else None
        except ValueError:
            return None

    start, end = instant("start_datetime"), instant("end_datetime")
    if start is None and end is None:
        start = end = instant("datetime")
    return start, end


def item_variables(item: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The item's variables and their ``cube:variables`` entries: the data ones (else its
    ``param``, else its data asset's ``twinhub:variable``)."""
    props = item.get("properties") or {}
    cube = props.get("cube:variables")
    out: dict[str, Mapping[str, Any]] = {}
    if isinstance(cube, Mapping):
        for name, v in cube.items():
            v = v if isinstance(v, Mapping) else {}
            if v.get("type", "data") == "data":
                out[str(name)] = v
    if not out:
        named = props.get("param")
        for a in (item.get("assets") or {}).values():
            if not named and isinstance(a, Mapping) and isinstance(a.get(FIELD_VARIABLE), str):
                named = a[FIELD_VARIABLE]
        if isinstance(named, str) and named:
            out[named] = {}
    return out


def _bbox(item: Mapping[str, Any]) -> tuple[float, float, float, float]:
    b = item.get("bbox")
    try:
        if isinstance(b, list) and len(b) in (4, 6):
            w, s, e, n = (b[0], b[1], b[2], b[3]) if len(b) == 4 else (b[0], b[1], b[3], b[4])
            return (float(w), float(s), float(e), float(n))
    except (TypeError, ValueError):
        pass
    return (-180.0, -90.0, 180.0, 90.0)


def layer_infos(
    item: Mapping[str, Any], public_collections: list[str] | tuple[str, ...], asset: tuple = ()
) -> list[LayerInfo]:
    """Every layer of ``item`` (a STAC item as JSON); ``asset``: its chosen data asset
    ``(key, asset, format)`` if known."""
    props = item.get("properties") or {}
    collection = str(item.get("collection") or "")
    times = item_times(item)
    grid = props.get(FIELD_GRID)
    name = str(props.get("title") or item.get("id") or "")
    key, a, kind = asset if asset else ("", {}, "")
    out = []
    for var, meta in item_variables(item).items():
        out.append(
            LayerInfo(
                item_id=str(item.get("id") or ""),
                variable=var,
                collection=collection,
                title=f"{name}: {meta.get('description') or var}"[:500],
                units=str(meta.get("unit") or ""),
                description=str(meta.get("description") or props.get("description") or ""),
                times=times,
                bbox=_bbox(item),
                grid=dict(grid) if isinstance(grid, Mapping) else {},
                public=collection in public_collections,
                asset=key,
                href=str(a.get("href") or ""),
                format=kind,
                updated=str(props.get("updated") or props.get("created") or ""),
            )
        )
    return out


# -- the STAC API ---------------------------------------------------------------------------
async def _stac_get(ctx: TilesContext, path: str, params: list[tuple[str, str]]) -> dict:
    if ctx.stac is None:
        raise BadRequest("the tiles service is not started (no STAC client)", 503)
    try:
        r = await ctx.stac.get(path, params=params)
    except httpx.HTTPError as e:
        raise BadRequest(f"cannot reach the data lake's STAC API: {e}", 502) from None
    if r.status_code != 200:
        raise BadRequest(f"the data lake's STAC API answered {r.status_code} to {path}", 502)
    doc = r.json()
    return doc if isinstance(doc, dict) else {}


def _prefer(items: list[dict], ctx: TilesContext, caller: Caller) -> dict:
    """The item an id means when several collections hold it: a public collection's, then
    the platform's (no ``user-`` collection), then the caller's own, then by collection."""
    public = set(ctx.settings.public_collections)
    own = f"user-{caller.name}" if caller.name else None

    def rank(i: dict) -> tuple:
        cid = str(i.get("collection") or "")
        return (cid not in public, cid.startswith("user-"), cid != own, cid)

    return min(items, key=rank)


async def get_item(
    ctx: TilesContext, item_id: str, caller: Caller | None = None, collection: str | None = None
) -> dict:
    """The lake's item ``item_id`` (lookups cached ``access_ttl``; of ``collection`` if
    given, e.g. a LayerInfo's, else as :func:`_prefer` picks for ``caller``); 404: none."""
    check_item_id(item_id)
    cache: Expiring = ctx.extras.setdefault(ITEMS, Expiring())
    known, found = cache.get(item_id)
    if not known:
        doc = await _stac_get(
            ctx, "search", [("ids", item_id), ("limit", "10"), ("sources", "local")]
        )
        found = [f for f in doc.get("features") or [] if isinstance(f, dict)]
        found = [f for f in found if f.get("id") == item_id]
        cache.put(item_id, found, ctx.settings.access_ttl)
    if collection is not None:
        found = [f for f in found if f.get("collection") == collection]
    if not found:
        raise BadRequest(f"no item {item_id!r} in the data lake", 404)
    return _prefer(found, ctx, caller or Caller(None))


async def _pages(ctx: TilesContext, caller: Caller) -> AsyncIterator[list[dict]]:
    """The lake's items page by page (only public collections' for anonymous callers), each
    page cached ``access_ttl``; the next page's query is asked of our own base URL (the
    ``next`` link names the public host)."""
    cache: Expiring = ctx.extras.setdefault(LISTING, Expiring(256))
    params = [("limit", str(PAGE)), ("sources", "local")]
    if caller.anonymous:
        if not ctx.settings.public_collections:
            return
        params.append(("collections", ",".join(ctx.settings.public_collections)))
    while params:
        known, doc = cache.get(tuple(params))
        if not known:
            doc = await _stac_get(ctx, "search", params)
            cache.put(tuple(params), doc, ctx.settings.access_ttl)
        yield [f for f in doc.get("features") or [] if isinstance(f, dict)]
        links = [lk for lk in doc.get("links") or [] if isinstance(lk, dict)]
        nxt = next((lk for lk in links if lk.get("rel") == "next"), {})
        params = parse_qsl(urlsplit(str(nxt.get("href") or "")).query, keep_blank_values=True)


async def list_layers(ctx: TilesContext, caller: Caller, limit: int) -> tuple[list[LayerInfo], bool]:  # fmt: skip
    """The layers ``caller`` may view, at most ``min(limit, max_layers)``; bool: some were
    left out. Items the caller may not view (or holding no data the service reads) are
    skipped; at most ``SCAN`` x max_layers items are looked at. The object store's checks
    of a page's items run a few at once."""
    limit = max(0, min(int(limit), ctx.settings.max_layers))
    out: list[LayerInfo] = []
    seen = 0
    gate = asyncio.Semaphore(CHECKS_AT_ONCE)

    async def viewable(item: dict) -> tuple | None:
        async with gate:
            try:
                return await check_item(ctx, caller, item)
            except BadRequest as e:
                if e.status >= 500:
                    raise
                return None

    async for items in _pages(ctx, caller):
        items = items[: max(0, SCAN * ctx.settings.max_layers - seen)]
        seen += len(items)
        for item, chosen in zip(items, await asyncio.gather(*map(viewable, items)), strict=True):
            if chosen is None:
                continue
            for info in layer_infos(item, ctx.settings.public_collections, chosen):
                if len(out) >= limit:
                    return out, True
                out.append(info)
        if seen >= SCAN * ctx.settings.max_layers:
            return out, True
    return out, False


async def layer_info(
    ctx: TilesContext, caller: Caller, item_id: str, variable: str | None = None
) -> list[LayerInfo]:
    """The layers of item ``item_id`` (one: ``variable``'s), access-checked: 404 no such
    item or variable, 401 anonymous, 403 not the caller's to view."""
    item = await get_item(ctx, item_id, caller)
    chosen = await check_item(ctx, caller, item)
    infos = layer_infos(item, ctx.settings.public_collections, chosen)
    if not infos:
        raise BadRequest(f"item {item_id!r} names no variables (cube:variables or param)", 404)
    if variable is None:
        return infos
    picked = [i for i in infos if i.variable == variable]
    if not picked:
        names = ", ".join(i.variable for i in infos)
        raise BadRequest(f"item {item_id!r} has no variable {variable!r}; it has: {names}", 404)
    return picked


# -- opening the data -----------------------------------------------------------------------
def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def field_key(info: LayerInfo, selection: Mapping[str, Any] | None = None) -> str:
    """The identity of a layer's data for caches: store, variable, the item (items of one
    store select different times of it) and its version, selection."""
    sel = ",".join(f"{k}={v}" for k, v in sorted((selection or {}).items()))
    return f"{info.href}#{info.variable}#{info.collection}/{info.item_id}#{info.updated}#{sel}"


def storage_options(ctx: TilesContext) -> dict[str, Any]:
    """s3fs options with the platform's own keys (used only after the access check)."""
    key, secret = admin_keys(ctx.rt)
    return {"key": key, "secret": secret, "endpoint_url": endpoint(ctx.rt)}


def _grib_copy(ctx: TilesContext, fs: Any, href: str) -> Path:
    """A private local copy of the GRIB file ``href`` (ecCodes reads only local files) under
    the run dir, at most ``max_read_bytes`` (else 413); the caller removes it once read."""
    size = int(fs.info(href).get("size") or 0)
    limit = ctx.settings.max_read_bytes
    if size > limit:
        raise BadRequest(
            f"the item's GRIB file is {size} bytes, over TwinhubTiles.max_read_bytes "
            f"({limit}): GRIB is copied whole to be drawn (Zarr and NetCDF are not)",
            413,
        )
    folder = ctx.rt.run_dir / "tiles-grib"  # (writable in a chart's pod too)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="copy-", suffix=".grib2")
    try:
        done = 0
        with os.fdopen(fd, "wb") as out, fs.open(href, "rb", block_size=8 << 20) as src:
            while block := src.read(8 << 20):
                done += len(block)
                if done > limit:
                    raise BadRequest(
                        f"the item's GRIB file is over TwinhubTiles.max_read_bytes ({limit})", 413
                    )
                out.write(block)
    except BaseException:
        _remove_copy(Path(tmp))
        raise
    return Path(tmp)


def _remove_copy(path: Path) -> None:
    """The copy and cfgrib's index files beside it."""
    for f in [path, *path.parent.glob(path.name + ".*.idx")]:
        f.unlink(missing_ok=True)


def _valid_time_axis(ds: Any) -> Any:
    """GRIB data (cfgrib) with its valid times as the ``time`` dimension (its ``time`` is
    the forecast's reference time); a single message gets a time dimension of one."""
    if "valid_time" not in ds.coords:
        return ds
    vt = ds["valid_time"]
    if vt.ndim > 1:
        return ds
    values = vt.values
    dim = vt.dims[0] if vt.ndim == 1 else None
    ds = ds.drop_vars([c for c in ("time", "step", "valid_time") if c in ds.coords])
    if dim is None:
        return ds.expand_dims(time=[values])
    if dim != "time":
        ds = ds.rename({dim: "time"})
    return ds.assign_coords(time=("time", values))


def _naive(t: datetime | None) -> Any:
    if t is None:
        return None
    return np.datetime64(t.astimezone(UTC).replace(tzinfo=None), "ns")


def open_dataset(ctx: TilesContext, info: LayerInfo, item: Mapping[str, Any] | None = None) -> Any:
    """The layer's data, lazily (blocking: run it in a thread), over the item's times, with
    twinlab's grid attributes. BadRequest for data that is not there or not drawable."""
    href, variable = info.href, info.variable
    opts = storage_options(ctx)
    try:
        if info.format == "zarr":
            with warnings.catch_warnings():
                # v3 stores have no consolidated metadata: the fallback is the normal path
                warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated")
                ds = xr.open_zarr(href, chunks=None, storage_options=opts)
        elif info.format == "netcdf":
            fs = s3fs.S3FileSystem(**opts)
            ds = xr.open_dataset(fs.open(href, "rb"), chunks=None)
        elif info.format == "grib":
            fs = s3fs.S3FileSystem(**opts)
            copy = _grib_copy(ctx, fs, href)
            try:  # without chunks cfgrib loads the messages: the copy is done with then
                ds = _valid_time_axis(open_grib(copy, variable, chunks=None))
            finally:
                _remove_copy(copy)
        else:
            raise BadRequest(f"layer {info.layer_id}: no data asset the service reads", 400)
        ds = select_variable(ds, variable, f"item {info.item_id!r}")
    except BadRequest:
        raise
    except (FileNotFoundError, KeyError) as e:
        raise BadRequest(f"layer {info.layer_id}: {str(e).strip(chr(39) + chr(34))}", 404) from None
    except Exception as e:  # permissions, not a store, the store down: not the caller's fault
        log.warning("cannot open %s (%s): %s", href, info.layer_id, e)
        raise BadRequest(
            f"layer {info.layer_id}: cannot open {href} ({info.format}): {type(e).__name__}",
            502,
        ) from None
    lo, hi = _item_range((item or {}).get("properties") or {}) if item else (None, None)
    try:
        if lo is not None or hi is not None:
            ds = select_valid_times(ds, _naive(lo), _naive(hi), what=f"item {info.item_id!r}")
    except ValueError as e:
        raise BadRequest(str(e), 404) from None
    if info.grid and "grid_type" not in ds.attrs:
        ds = with_grid(ds, source=href, grid_attrs=dict(info.grid))
    return ds


def _open_field(
    ctx: TilesContext, info: LayerInfo, item: Mapping[str, Any], selection: Any, key: str
) -> Any:
    ds = open_dataset(ctx, info, item)
    try:
        grid = grids.from_dataset(ds, info.variable)
    except ValueError as e:
        raise BadRequest(
            f"layer {info.layer_id}: not on a grid the service draws: {e}", 422
        ) from None
    cache = ctx.extras.get(CHUNKS)
    if cache is None:
        cache = ctx.extras.setdefault(CHUNKS, ChunkCache(ctx.settings.chunk_cache_bytes))
    try:
        return Field.from_dataset(
            ds, info.variable, grid=grid, selection=selection, cache=cache, key=key
        )
    except (KeyError, ValueError) as e:
        raise BadRequest(f"layer {info.layer_id}: {str(e).strip(chr(39))}", 400) from None


async def open_layer(
    ctx: TilesContext,
    caller: Caller,
    item_id: str,
    variable: str,
    *,
    selection: Mapping[str, Any] | None = None,
) -> Layer:
    """The layer, access-checked (:func:`layer_info`), its field opened (kept: the next
    request finds it open). ``selection``: values of extra dimensions (levels)."""
    (info,) = await layer_info(ctx, caller, item_id, variable)
    item = await get_item(ctx, item_id, caller, info.collection)
    key = field_key(info, selection)
    fields: OrderedDict[str, Any] = ctx.extras.setdefault(FIELDS, OrderedDict())
    f = fields.get(key)
    if f is not None:
        fields.move_to_end(key)
    else:
        opening: dict[str, asyncio.Future] = ctx.extras.setdefault(OPENING, {})
        fut = opening.get(key)
        if fut is None:  # one open per field, however many tiles ask at once
            fut = asyncio.ensure_future(
                asyncio.to_thread(_open_field, ctx, info, item, dict(selection or {}), key)
            )
            opening[key] = fut
            fut.add_done_callback(lambda _f: opening.pop(key, None))
        f = await asyncio.shield(fut)
        fields[key] = f
        while len(fields) > MAX_FIELDS:
            fields.popitem(last=False)
    # the data's own valid times (UTC-aware; () for timeless data): what tiles and EDR index
    t = getattr(f, "times", None)
    us = () if t is None else np.asarray(t).astype("datetime64[us]").astype(datetime).tolist()
    return Layer(info=replace(info, times=tuple(x.replace(tzinfo=UTC) for x in us)), field=f)


def time_index(layer_or_info: Layer | LayerInfo, time_: str | None) -> int:
    """The time step asked for: None, "" or "default": 0 (the first valid time); else an
    ISO 8601 instant that must be one of the layer's times (400 naming the valid range)."""
    info = layer_or_info.info if isinstance(layer_or_info, Layer) else layer_or_info
    if time_ is None or time_.strip().lower() in ("", "default"):
        return 0
    times = info.times
    if not times:
        raise BadRequest(
            f"layer {info.layer_id} has no time dimension: leave the time out (or 'default')"
        )
    try:
        t = parse_instant(time_)
    except ValueError:
        raise BadRequest(
            f"time {time_[:64]!r} is not an ISO 8601 instant (e.g. {iso(times[0])})"
        ) from None
    try:
        return times.index(t)
    except ValueError:
        raise BadRequest(
            f"time {iso(t)} is not one of the {len(times)} valid times of layer "
            f"{info.layer_id} ({iso(times[0])} .. {iso(times[-1])})"
        ) from None


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
    """The app's end: the render pool stops (queued renders dropped), fields closed."""
    pool = ctx.extras.pop(POOL, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
    ctx.extras.pop(FIELDS, None)

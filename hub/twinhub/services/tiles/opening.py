"""Opening a layer's data safely (the opening half of :mod:`.layers`).

The data of a lake item is anyone's upload, so nothing it declares is trusted before it is
checked: NetCDF4/HDF5 files are walked with h5py first and refused when a dataset keeps its
data outside the file (HDF5 external storage, virtual datasets) or a link leaves the file
(external links) -- h5netcdf would otherwise read local files of the service; NetCDF3 is
read by scipy only within ``max_read_bytes`` (it reads the whole file at open); GRIB is
copied whole (a few copies at once), its decoded size bounded from the messages' headers
then lazily, before decoding. Zarr and HDF5 arrays' declared shapes and dtypes are checked
from metadata before xarray opens (it loads every index). After opening, before any
grid or field is built: the grid's cells (``max_grid_cells``), the time axis
(``max_item_times``) and the chunks' decoded size (``max_chunk_bytes``) are checked (422
naming the limit). Opens run in a pool of their own (access checks keep asyncio's); fields
are kept (LRU, GRIB's in-memory data within a byte budget); failed opens are remembered
``access_ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import h5py
import numpy as np
import s3fs
import xarray as xr
import zarr

import twinlab.grids as grids
from twinlab.datalake.grib import _cfgrib, open_grib, with_grid
from twinlab.datalake.items import select_valid_times
from twinlab.datalake.opening import import_backends, select_variable
from twinlab.grids.detect import LAT_NAMES, LON_NAMES
from twinlab.viz.field import ChunkCache, ChunkTooLarge, Field, TooManyValues

from ...objectstore import admin_keys, endpoint
from ..asgi import BadRequest
from .access import Expiring
from .context import TilesContext

if TYPE_CHECKING:
    from .layers import LayerInfo

log = logging.getLogger("twinhub.tiles.opening")

#: Opened fields kept (each holds an open store; their chunks live in the shared cache).
MAX_FIELDS = 64
#: Opens (and GRIB copies, decodes) at once, in a pool of their own: slow or hostile data
#: cannot starve the access checks, which use asyncio's default pool.
OPEN_THREADS = 4
#: GRIB files being copied to local disk at once (each up to ``max_read_bytes``; the
#: chart's scratch volume has room for these).
GRIB_COPIES = 2
#: ``ctx.extras`` keys owned here.
FIELDS, CHUNKS, OPENING = "layers.fields", "layers.chunks", "layers.opening"
OPEN_POOL, FAILED, GRIB_GATE = "opening.pool", "opening.failed", "opening.grib-gate"
_HDF5 = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048, 4096, 8192)  # where a user block may push the signature
_CDF3 = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
_TIME_DIMS = ("time", "valid_time", "step")
#: Stored dtypes drawn (kinds): bool, int, uint, float; strings, objects, compound refused.
_DRAWN_KINDS = "biuf"
#: Where open_dataset keeps the bytes a dataset holds in memory (NetCDF3, GRIB) (encoding).
_HELD = "twinhub_tiles_held_bytes"
#: Grid attributes that must be whole non-negative numbers (when present).
_WHOLE_ATTRS = ("gaussian_N", "GRIB_N", "healpix_nside", "GRIB_Nside")


def field_key(info: LayerInfo, selection: Mapping[str, Any] | None = None) -> str:
    """The identity of a layer's data for caches: store, variable, the item (items of one
    store select different times of it) and its version, selection -- hashed from a JSON
    list, so that no text of the item's can make two layers' keys collide."""
    parts = [info.href, info.variable, info.collection, info.item_id, info.updated]
    sel = sorted([str(k), str(v)] for k, v in (selection or {}).items())
    doc = json.dumps([*parts, sel], ensure_ascii=True, separators=(",", ":"))
    return "field-" + hashlib.sha256(doc.encode()).hexdigest()


def storage_options(ctx: TilesContext) -> dict[str, Any]:
    """s3fs options with the platform's own keys (used only after the access check)."""
    key, secret = admin_keys(ctx.rt)
    return {"key": key, "secret": secret, "endpoint_url": endpoint(ctx.rt)}


# -- declared shapes, before xarray opens --------------------------------------------------
class DeclaredArray(NamedTuple):
    """An array as its metadata declare it (nothing of it read)."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: Any
    chunks: tuple[int, ...]


def declared_check(ctx: TilesContext, info: LayerInfo) -> Callable[[DeclaredArray], str | None]:
    """Why an array declared so must not be opened (None: it may). xarray loads every
    dimension coordinate when it opens (an empty Zarr ``time`` of 5e7 steps is 400 MB),
    so these are bounded first: a time axis by ``max_item_times``, any other by
    ``max_grid_cells``; the layer's variable must be stored as bool/int/uint/float and
    its chunks within ``max_chunk_bytes``."""
    s = ctx.settings

    def why(a: DeclaredArray) -> str | None:
        if len(a.shape) == 1 and a.dims == (a.name,):  # an index: loaded at open
            n = int(a.shape[0])
            timed = a.name in _TIME_DIMS
            limit, setting = (s.max_item_times, "max_item_times") if timed else (s.max_grid_cells, "max_grid_cells")  # fmt: skip
            if n > limit:
                return f"its coordinate {a.name!r} declares {n} values, over TwinhubTiles.{setting} ({limit})"  # fmt: skip
        if a.name != info.variable:
            return None
        dtype = np.dtype(a.dtype)
        if dtype.kind not in _DRAWN_KINDS:
            return f"{a.name!r} is stored as {dtype} (only bool, int, uint and float are drawn)"
        # as Field counts: floats decode to their own size, others (masked, scaled) to 8
        size = dtype.itemsize if dtype.kind == "f" else 8
        for c, n in zip(a.chunks, a.shape, strict=False):
            size *= min(int(c), int(n))  # Python ints: no overflow
        if size > s.max_chunk_bytes:
            return f"a chunk of {a.name!r} decodes to {size} bytes, over TwinhubTiles.max_chunk_bytes ({s.max_chunk_bytes})"  # fmt: skip
        return None

    return why


def zarr_declared(store: Any, opts: Mapping[str, Any] | None) -> list[DeclaredArray]:
    """The root group's arrays as their metadata declare them (no chunk read)."""
    kw = {"storage_options": dict(opts)} if opts else {}
    group = zarr.open_group(store, mode="r", **kw)
    out = []
    for name, arr in group.arrays():
        meta = arr.metadata
        dims = getattr(meta, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS") or ()
        out.append(DeclaredArray(str(name), tuple(map(str, dims)), tuple(arr.shape), arr.dtype, tuple(arr.chunks)))  # fmt: skip
    return out


def _refuse_declared(why: Callable[[DeclaredArray], str | None], arrays: list[DeclaredArray], what: str) -> None:  # fmt: skip
    for a in arrays:
        reason = why(a)
        if reason:
            raise BadRequest(f"{what}: {reason}", 422)


# -- NetCDF / HDF5 --------------------------------------------------------------------------
def hdf5_refusal(fileobj: Any, declared: Callable[[DeclaredArray], str | None] | None = None) -> str | None:  # fmt: skip
    """Why the HDF5 file ``fileobj`` must not be opened (None: it may): a dataset with
    external storage or a virtual dataset (data from other files, e.g. local ones of the
    service), an external link; ``declared``: why a dataset's declared shape/dtype is
    refused (metadata only: before xarray loads any coordinate). Links are looked at, not
    followed."""
    with h5py.File(fileobj, "r") as f:
        seen: set[Any] = set()
        todo: list[tuple[str, h5py.Group]] = [("/", f)]
        while todo:
            path, group = todo.pop()
            if group.id in seen:  # hard links may make cycles
                continue
            seen.add(group.id)
            for name in group:
                where = f"{path.rstrip('/')}/{name}"
                link = group.get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    return f"{where} is an external link (to {link.filename!r})"
                if isinstance(link, h5py.SoftLink):
                    continue  # a path inside this file: its target is walked itself
                obj = group.get(name)
                if isinstance(obj, h5py.Group):
                    todo.append((where, obj))
                elif isinstance(obj, h5py.Dataset):
                    if obj.external:
                        return f"{where} keeps its data in external files"
                    if obj.is_virtual:
                        return f"{where} is a virtual dataset (data from other files)"
                    if declared is not None and path == "/":  # xarray opens the root group
                        why = declared(_h5_declared(name, obj))
                        if why:
                            return why
    return None


def _h5_declared(name: str, d: h5py.Dataset) -> DeclaredArray:
    """A dataset's declared name, dims (a dimension scale is its own dim), shape, dtype,
    chunks -- metadata only."""
    dims = (name,) if d.ndim == 1 and d.is_scale else ()
    return DeclaredArray(name, dims, tuple(d.shape), d.dtype, tuple(d.chunks or d.shape))


def _netcdf_kind(fileobj: Any) -> str:
    """The file's kind by its signature: "hdf5", "netcdf3" or "" (neither)."""
    for offset in _HDF5_OFFSETS:
        fileobj.seek(offset)
        head = fileobj.read(8)
        if offset == 0 and head[:4] in _CDF3:
            return "netcdf3"
        if head == _HDF5:
            return "hdf5"
        if len(head) < 8:
            break
    return ""


def open_netcdf(
    fileobj: Any,
    size: int,
    limit: int,
    what: str,
    declared: Callable[[DeclaredArray], str | None] | None = None,
) -> Any:
    """NetCDF from ``fileobj`` with an explicit engine: h5netcdf for NetCDF4/HDF5 after
    :func:`hdf5_refusal` (and ``declared``'s check of every root dataset's metadata);
    scipy for NetCDF3 within ``limit`` bytes (it reads it whole: the dataset's encoding
    says how many bytes it holds). BadRequest 422 for what is refused; ``fileobj`` is
    closed when nothing is opened."""
    try:
        kind = _netcdf_kind(fileobj)
        fileobj.seek(0)
        if kind == "hdf5":
            why = hdf5_refusal(fileobj, declared)
            if why:
                raise BadRequest(f"{what}: refused: {why}; the service reads only data inside the file", 422)  # fmt: skip
            fileobj.seek(0)
            return xr.open_dataset(fileobj, engine="h5netcdf", chunks=None)
        if kind == "netcdf3":
            if size > limit:
                raise BadRequest(
                    f"{what}: a NetCDF3 file of {size} bytes, over TwinhubTiles.max_read_bytes "
                    f"({limit}): NetCDF3 is read whole (store it as NetCDF4 or Zarr)",
                    413,
                )
            ds = xr.open_dataset(fileobj, engine="scipy", chunks=None)
            ds.encoding[_HELD] = size
            return ds
        raise BadRequest(f"{what}: not a NetCDF3 or NetCDF4/HDF5 file", 422)
    except BaseException:
        fileobj.close()  # refused or failed: the store's connection is not left open
        raise


# -- GRIB ------------------------------------------------------------------------------------
def _grib_copy(ctx: TilesContext, fs: Any, href: str) -> Path:
    """A private local copy of the GRIB file ``href`` (ecCodes reads only local files) under
    the run dir, at most ``max_read_bytes`` (else 413), ``GRIB_COPIES`` at once; the
    caller removes it once read."""
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
    gate = ctx.extras.setdefault(GRIB_GATE, threading.BoundedSemaphore(GRIB_COPIES))
    with gate:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="copy-", suffix=".grib2")
        try:
            done = 0
            with os.fdopen(fd, "wb") as out, fs.open(href, "rb", block_size=8 << 20) as src:
                while block := src.read(8 << 20):
                    done += len(block)
                    if done > limit:
                        raise BadRequest(
                            f"the item's GRIB file is over TwinhubTiles.max_read_bytes ({limit})",
                            413,
                        )
                    out.write(block)
        except BaseException:
            _remove_copy(Path(tmp))
            raise
    return Path(tmp)


def grib_declared(path: Path, variable: str) -> tuple[int, int]:
    """(values the messages of ``variable`` declare in all -- every message's when none is
    its shortName --, the most one message declares): headers only, nothing decoded (a
    0-bit message declares any number of points in a few bytes)."""
    _cfgrib()  # pyproj, then ecCodes: the other order aborts (twinlab.datalake.grib)
    import eccodes  # here, not at the top: after _cfgrib() (see above)

    points: dict[bool, list[int]] = {True: [], False: []}
    with open(path, "rb") as fh:
        while (h := eccodes.codes_grib_new_from_file(fh)) is not None:
            try:
                mine = eccodes.codes_get(h, "shortName") == variable
                points[mine].append(int(eccodes.codes_get(h, "numberOfPoints")))
            finally:
                eccodes.codes_release(h)
    counted = points[True] or points[False]
    return sum(counted), max([0, *points[True], *points[False]])


def _check_grib_declared(ctx: TilesContext, info: LayerInfo, path: Path) -> None:
    """422 naming the limit when the GRIB messages declare more than can be decoded."""
    s, what = ctx.settings, f"layer {info.layer_id}"
    total, most = grib_declared(path, info.variable)
    if most > s.max_grid_cells:
        raise BadRequest(f"{what}: a GRIB message declares {most} points, over TwinhubTiles.max_grid_cells ({s.max_grid_cells})", 422)  # fmt: skip
    if total * 8 > s.max_read_bytes:
        raise BadRequest(f"{what}: its GRIB data decode to {total * 8} bytes, over TwinhubTiles.max_read_bytes ({s.max_read_bytes})", 422)  # fmt: skip


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


# -- opening -------------------------------------------------------------------------------
def open_dataset(
    ctx: TilesContext, info: LayerInfo, item_range: tuple[datetime | None, datetime | None]
) -> Any:
    """The layer's data, lazily (blocking: run it in a thread), within ``item_range``, with
    twinlab's grid attributes. BadRequest for data that is not there, not drawable or
    refused."""
    import_backends()  # opens run in threads: the backends' first import one at a time
    href, variable = info.href, info.variable
    opts = storage_options(ctx)
    what = f"layer {info.layer_id}"
    try:
        if info.format == "zarr":
            _refuse_declared(declared_check(ctx, info), zarr_declared(href, opts), what)
            with warnings.catch_warnings():
                # v3 stores have no consolidated metadata: the fallback is the normal path
                warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated")
                ds = xr.open_zarr(href, chunks=None, storage_options=opts)
        elif info.format == "netcdf":
            fs = s3fs.S3FileSystem(**opts)
            size = int(fs.info(href).get("size") or 0)
            limit, check = ctx.settings.max_read_bytes, declared_check(ctx, info)
            ds = open_netcdf(fs.open(href, "rb"), size, limit, what, check)
        elif info.format == "grib":
            fs = s3fs.S3FileSystem(**opts)
            copy = _grib_copy(ctx, fs, href)
            try:  # headers, then lazily: the decoded size is checked before decoding
                _check_grib_declared(ctx, info, copy)
                ds = _valid_time_axis(open_grib(copy, variable, chunks={}))
                ds = select_variable(ds, variable, f"item {info.item_id!r}")
                check_grib_size(ctx, info, ds)
                ds = ds.load()  # then the copy is done with
                ds.encoding[_HELD] = int(ds[variable].nbytes)
            finally:
                _remove_copy(copy)
        else:
            raise BadRequest(f"{what}: no data asset the service reads", 400)
        held = ds.encoding.get(_HELD, 0)
        ds = select_variable(ds, variable, f"item {info.item_id!r}")
    except BadRequest:
        raise
    except (FileNotFoundError, KeyError) as e:
        raise BadRequest(f"{what}: {str(e).strip(chr(39) + chr(34))}", 404) from None
    except Exception as e:  # permissions, not a store, the store down: not the caller's fault
        log.warning("cannot open %s (%s): %s", href, info.layer_id, e)
        raise BadRequest(f"{what}: cannot open {href} ({info.format}): {type(e).__name__}", 502) from None  # fmt: skip
    lo, hi = item_range
    try:
        if lo is not None or hi is not None:
            ds = select_valid_times(ds, _naive(lo), _naive(hi), what=f"item {info.item_id!r}")
    except ValueError as e:
        raise BadRequest(str(e), 404) from None
    if info.grid and "grid_type" not in ds.attrs:
        ds = with_grid(ds, source=href, grid_attrs=dict(info.grid))
    ds.encoding[_HELD] = held  # (selections make new datasets: said again at the end)
    return ds


def declared_cells(ds: Any, variable: str) -> int:
    """The most cells ``ds[variable]``'s grid can have, from its attributes (by formula)
    and its dims, without building the grid."""
    da = ds[variable]
    attrs = {**ds.attrs, **da.attrs}

    def num(key: str) -> float:
        try:
            x = float(np.asarray(attrs.get(key)).item())
        except (TypeError, ValueError):
            x = None if key in _WHOLE_ATTRS and attrs.get(key) is not None else 0.0
        if key in _WHOLE_ATTRS and (x is None or not np.isfinite(x) or x < 0 or x != int(x)):
            raise BadRequest(f"grid attribute {key}={str(attrs.get(key))[:40]!r} is not a whole number", 422)  # fmt: skip
        return x

    kind = str(attrs.get("grid_type") or attrs.get("GRIB_gridType") or "").lower()
    n = num("gaussian_N") or num("GRIB_N")
    if kind == "healpix":
        by_attrs = 12 * (num("healpix_nside") or num("GRIB_Nside")) ** 2
    elif kind == "octahedral":
        by_attrs = 4 * n * n + 36 * n
    elif kind in ("reduced_gaussian", "reduced_gg"):
        # its latitudes cost O(N^2) to compute whatever pl says: N is bounded as octahedral's
        pl = np.asarray(attrs.get("gaussian_pl", []), dtype=np.float64)
        by_attrs = max(float(pl.sum()), 4 * n * n + 36 * n)
    elif kind in ("regular_gaussian", "regular_gg"):
        by_attrs = 8 * n * n
    elif kind == "latlon":
        dlon = num("latlon_dlon")
        dlat = num("latlon_dlat") or dlon
        by_attrs = (360 / dlon) * (180 / dlat + 1) if dlon > 0 and dlat > 0 else float("inf")
    else:
        by_attrs = 0.0
    sizes = {str(d): int(s) for d, s in da.sizes.items() if d not in _TIME_DIMS}
    latlon = [s for d, s in sizes.items() if d in LAT_NAMES + LON_NAMES]
    by_dims = max([0, *sizes.values(), int(np.prod(latlon)) if len(latlon) == 2 else 0])
    most = max(float(by_attrs), float(by_dims))
    return int(min(most, 2**62)) if np.isfinite(most) else 2**62  # NaN/inf: refused


def check_limits(ctx: TilesContext, info: LayerInfo, ds: Any) -> None:
    """422 naming the limit for data too large to view (before any grid is built)."""
    s, what = ctx.settings, f"layer {info.layer_id}"
    cells = declared_cells(ds, info.variable)
    if cells > s.max_grid_cells:
        raise BadRequest(
            f"{what}: its grid has up to {cells} cells, over TwinhubTiles.max_grid_cells "
            f"({s.max_grid_cells})",
            422,
        )
    da = ds[info.variable]
    nt = max([1, *(int(da.sizes[d]) for d in _TIME_DIMS if d in da.sizes)])
    if nt > s.max_item_times:
        raise BadRequest(
            f"{what}: {nt} time steps, over TwinhubTiles.max_item_times ({s.max_item_times})",
            422,
        )
    stored = np.dtype(da.encoding.get("dtype", da.dtype))
    for dtype in {stored, da.dtype}:
        if dtype.kind not in _DRAWN_KINDS:
            raise BadRequest(f"{what}: stored as {dtype} (only bool, int, uint and float are drawn)", 422)  # fmt: skip
    if info.format == "grib":  # decoded whole, kept in memory with the field
        check_grib_size(ctx, info, ds)


def check_grib_size(ctx: TilesContext, info: LayerInfo, ds: Any) -> None:
    """422 when GRIB data (decoded whole) are over ``max_read_bytes`` (from their lazy
    shape: before decoding)."""
    da, limit = ds[info.variable], ctx.settings.max_read_bytes
    size = int(da.size) * max(8, da.dtype.itemsize)
    if size > limit:
        raise BadRequest(
            f"layer {info.layer_id}: its GRIB data decode to {size} bytes, over "
            f"TwinhubTiles.max_read_bytes ({limit})",
            422,
        )


def build_field(
    ctx: TilesContext, info: LayerInfo, ds: Any, selection: Mapping[str, Any], key: str
) -> Field:
    """The field of ``ds`` after :func:`check_limits` (blocking)."""
    check_limits(ctx, info, ds)
    try:
        grid = grids.from_dataset(ds, info.variable)
    except (ValueError, TypeError, OverflowError) as e:  # the attributes are anyone's
        raise BadRequest(
            f"layer {info.layer_id}: not on a grid the service draws: {e}", 422
        ) from None
    cache = ctx.extras.get(CHUNKS)
    if cache is None:
        cache = ctx.extras.setdefault(CHUNKS, ChunkCache(ctx.settings.chunk_cache_bytes))
    try:
        f = Field.from_dataset(
            ds,
            info.variable,
            grid=grid,
            selection=dict(selection),
            cache=cache,
            key=key,
            max_chunk_bytes=ctx.settings.max_chunk_bytes,
        )
    except TooManyValues as e:
        raise BadRequest(f"layer {info.layer_id}: {e}", 422) from None
    except ChunkTooLarge as e:
        raise BadRequest(
            f"layer {info.layer_id}: {e}, over TwinhubTiles.max_chunk_bytes "
            f"({ctx.settings.max_chunk_bytes}): re-chunk the data to view it",
            422,
        ) from None
    except (KeyError, ValueError) as e:
        raise BadRequest(f"layer {info.layer_id}: {str(e).strip(chr(39))}", 400) from None
    # GRIB's and NetCDF3's data live in memory with the field (not in the chunk cache)
    held = int(ds.encoding.get(_HELD, 0) or 0)
    f.memory_bytes = max(held, int(f.da.nbytes)) if info.format == "grib" else held
    return f


def _times_of(f: Any) -> tuple[datetime, ...]:
    """The field's valid times, UTC-aware (in the open's thread: never on the loop)."""
    t = getattr(f, "times", None)
    us = () if t is None else np.asarray(t).astype("datetime64[us]").astype(datetime).tolist()
    return tuple(x.replace(tzinfo=UTC) for x in us)


def _pool(ctx: TilesContext) -> ThreadPoolExecutor:
    pool = ctx.extras.get(OPEN_POOL)
    if pool is None:
        pool = ctx.extras.setdefault(
            OPEN_POOL, ThreadPoolExecutor(OPEN_THREADS, thread_name_prefix="tiles-open")
        )
    return pool


async def open_field(
    ctx: TilesContext, key: str, opener: Callable[[], Any]
) -> tuple[Any, tuple[datetime, ...]]:
    """(the field ``opener()`` opens, its valid times), kept by ``key``: one open per key at
    once, in the open pool; a refused open is remembered ``access_ttl`` seconds (the same
    BadRequest again, without reading anything)."""
    fields: OrderedDict[str, Any] = ctx.extras.setdefault(FIELDS, OrderedDict())
    got = fields.get(key)
    if got is not None:
        fields.move_to_end(key)
        return got
    failed: Expiring = ctx.extras.setdefault(FAILED, Expiring(1024))
    known, error = failed.get(key)
    if known:
        raise BadRequest(error.message, error.status)
    opening: dict[str, asyncio.Future] = ctx.extras.setdefault(OPENING, {})
    fut = opening.get(key)
    if fut is None:  # one open per field, however many tiles ask at once

        def work() -> tuple[Any, tuple[datetime, ...]]:
            f = opener()
            return f, _times_of(f)

        fut = asyncio.get_running_loop().run_in_executor(_pool(ctx), work)
        opening[key] = fut
        fut.add_done_callback(lambda _f: opening.pop(key, None))
    try:
        got = await asyncio.shield(fut)
    except BadRequest as e:
        failed.put(key, e, ctx.settings.access_ttl)
        raise
    except Exception as e:  # MemoryError, a decoder's own error...: remembered too
        log.warning("cannot open field %s: %r", key, e)
        refused = BadRequest(f"the layer's data cannot be opened: {type(e).__name__}", 422)
        failed.put(key, refused, ctx.settings.access_ttl)
        raise refused from None
    fields[key] = got
    _evict(ctx, fields)
    return got


def _evict(ctx: TilesContext, fields: OrderedDict[str, Any]) -> None:
    """At most ``MAX_FIELDS`` kept, and GRIB's in-memory data within chunk_cache_bytes
    (the newest is kept whatever its size: it is being used)."""
    budget = ctx.settings.chunk_cache_bytes
    while len(fields) > 1:
        held = sum(int(getattr(f, "memory_bytes", 0) or 0) for f, _ in fields.values())
        if len(fields) <= MAX_FIELDS and held <= budget:
            break
        fields.popitem(last=False)


def shutdown(ctx: TilesContext) -> None:
    """The app's end: the open pool stops (queued opens dropped), fields closed."""
    pool = ctx.extras.pop(OPEN_POOL, None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
    ctx.extras.pop(FIELDS, None)

"""A variable on its native grid, read chunk by chunk: only what a raster needs.

:class:`Field` wraps a lazy xarray DataArray with dims ``("time"?, *grid.dims)``.  Its
storage chunking (Zarr ``encoding["chunks"]``/``preferred_chunks``, NetCDF
``chunksizes``, or Dask chunks) splits the array into blocks; :meth:`Field.read` works out
which blocks hold the requested cells and reads each with lazy indexing
(``da.isel(...).values``), through a shared :class:`ChunkCache`.  A field without chunking
is one block per time step.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from twinlab.grids import Grid, from_dataset

RANGE_BLOCKS = 16  # value_range: chunks sampled (bounds a cold first tile's reads)
RANGE_SAMPLE = 1 << 17  # value_range: values kept for the percentiles
RANGE_BYTES = 64 << 20  # value_range: chunk bytes decoded at most (one chunk at least)
IO_THREADS = 8  # concurrent chunk reads per process (object-store latency, not CPU)
SERIES_IN_FLIGHT = 4  # read_series: chunks read (and held) at once per series
_TIME_DIMS = ("time", "valid_time", "step")  # cfgrib: one forecast's steps
MAX_LEVEL_VALUES = 10_000  # values of one extra dim at most (each made a Python value)


class TooManyValues(ValueError):
    """An extra dimension (levels) with more values than a selector lists."""


class ChunkTooLarge(ValueError):
    """A field's chunks decode to more bytes than the cap it was given."""


class ChunkCache:
    """Thread-safe LRU of decoded chunks, bounded in bytes, single-flight per key.

    ``reads`` counts loads (misses), ``hits`` cache hits, both cumulative.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.reads = 0
        self.hits = 0
        self.nbytes = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[Hashable, threading.Event] = {}

    def get(self, key: Hashable, load: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """(the chunk, whether this call loaded it); concurrent callers of a key load once."""
        while True:
            with self._lock:
                arr = self._items.get(key)
                if arr is not None:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return arr, False
                waiting = self._pending.get(key)
                if waiting is None:
                    done = threading.Event()
                    self._pending[key] = done
                    break
            waiting.wait()  # another thread is loading it; then look again
        try:
            arr = load()
            arr.flags.writeable = False
            with self._lock:
                self.reads += 1
                if arr.nbytes <= self.max_bytes:
                    self._items[key] = arr
                    self.nbytes += arr.nbytes
                    while self.nbytes > self.max_bytes:
                        _, old = self._items.popitem(last=False)
                        self.nbytes -= old.nbytes
            return arr, True
        finally:
            with self._lock:
                del self._pending[key]
            done.set()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def peek(self, key: Hashable) -> np.ndarray | None:
        """The chunk if kept (a hit, made most recent), else None: nothing is loaded or
        kept (series reads use it so as not to evict what tiles need)."""
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return arr

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


def _bounds(sizes: tuple[int, ...]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _chunk_sizes(da: Any) -> dict[str, int | tuple[int, ...]]:
    """Per dim: a regular chunk size or explicit (Dask) chunk lengths."""
    out: dict[str, int | tuple[int, ...]] = {}
    if getattr(da, "chunks", None) is not None:  # Dask: the graph's blocks
        for dim, c in zip(da.dims, da.chunks, strict=True):
            out[str(dim)] = tuple(int(x) for x in c)
        return out
    enc = da.encoding
    pref = enc.get("preferred_chunks")
    if isinstance(pref, dict):
        for dim, c in pref.items():
            if dim in da.dims and c:
                out[str(dim)] = c if isinstance(c, int) else tuple(int(x) for x in c)
        if out:
            return out
    for name in ("chunks", "chunksizes"):
        c = enc.get(name)
        if c is not None and len(c) == da.ndim:
            return {str(d): int(n) for d, n in zip(da.dims, c, strict=True)}
    return out


class Field:
    """One variable on a native grid, over time (or not); other dims already selected.

    Never loads it whole: :meth:`read` fetches only the blocks holding the cells asked for.
    """

    def __init__(
        self,
        da: Any,
        grid: Grid | None = None,
        *,
        cache: ChunkCache | None = None,
        key: str = "",
        max_chunk_bytes: int | None = None,
    ) -> None:
        """``max_chunk_bytes``: the most bytes one block may decode to (its declared shape x
        the item size read); a larger block -> :class:`ChunkTooLarge`, before any read (a
        store's metadata may declare chunks far larger than anything stored)."""
        self.grid: Grid = from_dataset(da) if grid is None else grid
        sizes = _chunk_sizes(da)  # before any isel/transpose: encoding tuples follow da.dims
        gdims = tuple(self.grid.dims)
        tdims = [d for d in da.dims if d not in gdims]
        if len(tdims) > 1 or (tdims and tdims[0] not in _TIME_DIMS and da.sizes[tdims[0]] > 1):
            raise ValueError(
                f"Field needs dims (time?, {', '.join(gdims)}); {da.name!r} has {tuple(da.dims)}:"
                " select the other dims first"
            )
        if tdims and tdims[0] not in _TIME_DIMS:  # a length-1 dim: drop it
            da = da.isel({tdims[0]: 0})
            tdims = []
        self.time_dim: str | None = str(tdims[0]) if tdims else None
        da = da.transpose(*tdims, *gdims)
        if tuple(da.shape[len(tdims) :]) != tuple(self.grid.shape):
            raise ValueError(
                f"{da.name!r} has spatial shape {da.shape[len(tdims) :]}; the grid "
                f"{self.grid.key} has {self.grid.shape}"
            )
        self.da = da
        self.name = str(da.name) if da.name is not None else ""
        self.units = str(da.attrs.get("units", ""))
        self.long_name = str(da.attrs.get("long_name", da.attrs.get("standard_name", self.name)))
        self.times: np.ndarray | None = None
        if self.time_dim is not None:
            self.times = _valid_times(da, self.time_dim)
        self.key = key or f"field-{uuid.uuid4().hex}"
        self.cache = cache if cache is not None else ChunkCache(256 << 20)
        self.chunk_reads = 0
        self._count_lock = threading.Lock()
        self._ranges: dict[int, tuple[float, float]] = {}
        #: Extra dims (levels) of the data and all their values ({}: none or not known).
        self.levels: dict[str, list[Any]] = {}
        #: One-value coordinates; levels_known: both recorded at open (never re-opened).
        self.scalars: dict[str, list[Any]] = {}
        self.levels_known = False
        #: Bytes of its data held in memory outside the chunk cache (decoded GRIB): its
        #: owner counts them in a budget; 0 for lazy stores.
        self.memory_bytes = 0

        def edges(dim: str, n: int, default: int) -> np.ndarray:
            c = sizes.get(dim, default)
            if isinstance(c, tuple):
                return _bounds(c)
            c = max(1, min(int(c), n))
            return np.append(np.arange(0, n, c, dtype=np.int64), n)

        self._t_edges = (
            edges(self.time_dim, int(da.shape[0]), 1) if self.time_dim else np.array([0, 1])
        )
        self._edges = [edges(d, n, n) for d, n in zip(gdims, self.grid.shape, strict=True)]
        if max_chunk_bytes is not None:
            self._check_blocks(int(max_chunk_bytes))
        # regular spatial chunks: block id by integer division (faster than searchsorted)
        self._step = [
            int(e[1] - e[0]) if np.all(np.diff(e)[:-1] == e[1] - e[0]) else 0 for e in self._edges
        ]

    def _max_block_bytes(self) -> int:
        """Bytes the largest block decodes to (Python ints: no overflow whatever the
        declared sizes)."""
        itemsize = self.da.dtype.itemsize if self.da.dtype.kind == "f" else 8
        size = itemsize * int(np.diff(self._t_edges).max())
        for e in self._edges:
            size *= int(np.diff(e).max())
        return size

    def _check_blocks(self, limit: int) -> None:
        """ChunkTooLarge when the largest block decodes to over ``limit`` bytes."""
        size = self._max_block_bytes()
        if size > limit:
            raise ChunkTooLarge(f"a data chunk of {self.name!r} decodes to {size} bytes")

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_dataset(
        cls,
        ds: Any,
        variable: str,
        *,
        grid: Grid | None = None,
        selection: dict[str, Any] | None = None,
        cache: ChunkCache | None = None,
        key: str = "",
        max_chunk_bytes: int | None = None,
    ) -> Field:
        """The field of ``ds[variable]``; ``selection`` picks the extra dims by label (the
        first value of an extra dim that is not selected). The field's ``levels``: every
        extra dim's values (for selectors, without opening the data again)."""
        if variable not in ds.data_vars:
            raise KeyError(f"no variable {variable!r}; have {', '.join(map(str, ds.data_vars))}")
        g = from_dataset(ds, variable) if grid is None else grid
        da = ds[variable]
        levels = {
            str(d): _level_values(da, d) for d in da.dims if d not in g.dims and d not in _TIME_DIMS
        }
        # one-value coordinates left (GRIB's heightAboveGround): recorded, never re-read
        scalars = {str(c): [da[c].values.item()] for c in da.coords if da[c].ndim == 0}
        sel = dict(selection or {})
        unknown = set(sel) - set(map(str, da.dims))
        if unknown:
            raise ValueError(f"{variable!r} has no dims {sorted(unknown)}; dims: {da.dims}")
        enc = dict(da.encoding)
        for dim, value in sel.items():
            da = _select(da, dim, value)
        for dim in da.dims:  # extra dims left: their first value
            if dim not in g.dims and dim not in _TIME_DIMS:
                da = da.isel({dim: 0})
        da.encoding = enc  # chunk layout of the stored variable (selection keeps the dims' sizes)
        if (
            "preferred_chunks" not in enc
            and "chunks" in enc
            and len(enc["chunks"]) == ds[variable].ndim
        ):
            da.encoding["preferred_chunks"] = dict(
                zip(map(str, ds[variable].dims), enc["chunks"], strict=True)
            )
        f = cls(da, g, cache=cache, key=key, max_chunk_bytes=max_chunk_bytes)
        f.levels, f.scalars, f.levels_known = levels, scalars, True
        return f

    @staticmethod
    def extra_dims(ds: Any, variable: str) -> dict[str, list[Any]]:
        """Non-time, non-spatial dims of ``ds[variable]`` and their values (levels...)."""
        da = ds[variable]
        gdims = set(from_dataset(ds, variable).dims)
        out: dict[str, list[Any]] = {}
        for dim in da.dims:
            if dim in gdims or dim in _TIME_DIMS:
                continue
            out[str(dim)] = _level_values(da, dim)
        return out

    # ---- reading --------------------------------------------------------------------
    @property
    def ntimes(self) -> int:
        return int(self.da.shape[0]) if self.time_dim is not None else 1

    def _check_t(self, t: int) -> int:
        if isinstance(t, bool) or not isinstance(t, int | np.integer) or not 0 <= t < self.ntimes:
            raise IndexError(f"time index must be in [0, {self.ntimes - 1}], got {t!r}")
        return int(t)

    def _load(self, tb: int, blk: tuple[int, ...]) -> np.ndarray:
        """Read block ``blk`` of time block ``tb`` from storage: (nt_in_block, *block shape),
        the stored dtype when floating (float32 halves the cache), float64 otherwise."""
        sel: dict[Hashable, slice] = {
            d: slice(int(e[b]), int(e[b + 1]))
            for d, e, b in zip(self.grid.dims, self._edges, blk, strict=True)
        }
        if self.time_dim is not None:
            sel[self.time_dim] = slice(int(self._t_edges[tb]), int(self._t_edges[tb + 1]))
            vals = np.asarray(self.da.isel(sel).values)
        else:
            vals = np.asarray(self.da.isel(sel).values)[None]
        return vals if vals.dtype.kind == "f" else vals.astype(np.float64)

    def _block(
        self, tb: int, blk: tuple[int, ...], ahead: Future[np.ndarray] | None = None
    ) -> np.ndarray:
        """Block ``blk`` of time block ``tb`` through the cache; ``ahead``: its read, already
        under way in the I/O pool."""

        def load() -> np.ndarray:
            return ahead.result() if ahead is not None else self._load(tb, blk)

        arr, loaded = self.cache.get((self.key, tb, blk), load)
        if loaded:
            with self._count_lock:
                self.chunk_reads += 1
        elif ahead is not None:
            ahead.cancel()  # another thread had it: the early read is not needed
        return arr

    def _blocks(self, wanted: list[tuple[int, tuple[int, ...]]]) -> list[np.ndarray]:
        """Several blocks; the missing ones are read concurrently (object stores have
        latency), but go through the cache in this thread, so per-thread accounting of
        the loads (the tiles service's) still sees them."""
        if len(wanted) == 1:
            return [self._block(*wanted[0])]
        missing = [w for w in wanted if (self.key, *w) not in self.cache]
        ahead = {w: _io_pool().submit(self._load, *w) for w in missing} if len(missing) > 1 else {}
        return [self._block(tb, blk, ahead.get((tb, blk))) for tb, blk in wanted]

    def _block_ids(self, axis: int, pos: np.ndarray) -> np.ndarray:
        step = self._step[axis]
        if step:
            return pos // step
        return np.searchsorted(self._edges[axis], pos, side="right") - 1

    def _plan(self, flat: np.ndarray) -> tuple[list[tuple[int, ...]], list[Any], tuple[Any, ...]]:
        """(block ids, the points of each block (slice, mask or positions), the points'
        spatial coordinates)."""
        ncb = 0  # 2-D grids: blocks per row of blocks (block id = row block * ncb + col block)
        if len(self.grid.shape) == 1:
            ids = self._block_ids(0, flat)
            coords: tuple[Any, ...] = (flat,)
        else:
            r, c = np.divmod(flat, self.grid.shape[1])
            ncb = len(self._edges[1]) - 1
            ids = self._block_ids(0, r) * ncb + self._block_ids(1, c)
            coords = (r, c)

        def unravel(b: int) -> tuple[int, ...]:
            return divmod(b, ncb) if ncb else (b,)

        if ids.size and (ids == ids[0]).all():  # the common case: one block, no masks
            return [tuple(unravel(int(ids[0])))], [slice(None)], coords
        counts = np.bincount(ids)
        bs = np.nonzero(counts)[0]
        if bs.size <= 4:  # a few blocks: boolean masks are cheapest
            return [tuple(unravel(int(b))) for b in bs], [ids == b for b in bs], coords
        # many blocks (a global view): group once; a stable sort of small ints is a radix sort
        small = ids.astype(np.int16) if counts.size < 2**15 else ids
        order = np.argsort(small, kind="stable")
        ends = np.cumsum(counts[bs])
        groups = np.split(order, ends[:-1])
        return [tuple(unravel(int(b))) for b in bs], groups, coords

    def read(self, t: int, index: Any) -> np.ndarray:
        """float64 values at flat native indices (any shape; -1 -> NaN), chunk by chunk."""
        idx = np.asarray(index)
        out: np.ndarray = self._gather([self._check_t(t)], idx)[0].reshape(idx.shape)
        return out

    def read_series(self, index: Any, times: Any = None) -> np.ndarray:
        """(nt, n) float64 values of cells ``index`` over time steps ``times`` (None: all).

        A series touches one chunk per time block: chunks already in the shared cache are
        used, the others are read (a few at once), their cells taken and the chunk dropped,
        never kept: a long series neither holds all its chunks in memory nor evicts the
        chunks the tiles need. :meth:`series_bytes` says beforehand what it decodes."""
        steps = self._steps(times)
        idx = np.atleast_1d(np.asarray(index)).ravel()
        flat, ok, sel_pos = self._valid_cells(idx)
        vals = np.empty((len(steps), flat.size))
        if flat.size and steps:
            blks, masks, coords = self._plan(flat)
            locals_ = [
                tuple(c[m] - e[b] for c, e, b in zip(coords, self._edges, blk, strict=True))
                for blk, m in zip(blks, masks, strict=True)
            ]
            by_tb: dict[int, list[int]] = {}  # time block -> positions in ``steps``
            for k, t in enumerate(steps):
                by_tb.setdefault(int(np.searchsorted(self._t_edges, t, side="right") - 1), []).append(k)  # fmt: skip

            def take(tb: int, i: int, arr: np.ndarray) -> None:
                t0 = int(self._t_edges[tb])
                for k in by_tb[tb]:
                    vals[k, masks[i]] = arr[steps[k] - t0][locals_[i]]

            def load_take(tb: int, i: int) -> None:
                take(tb, i, self._load(tb, blks[i]))  # the chunk is dropped on return
                with self._count_lock:
                    self.chunk_reads += 1

            missing = []
            for tb in by_tb:
                for i, blk in enumerate(blks):
                    arr = self.cache.peek((self.key, tb, blk))
                    if arr is None:
                        missing.append((tb, i))
                    else:
                        take(tb, i, arr)
            if len(missing) == 1:
                load_take(*missing[0])
            elif missing:
                pool = _io_pool()
                window: list[Future[None]] = []
                for w in missing:  # at most SERIES_IN_FLIGHT chunks decoded at once
                    if len(window) >= SERIES_IN_FLIGHT:
                        window.pop(0).result()
                    window.append(pool.submit(load_take, *w))
                for f in window:
                    f.result()
        if sel_pos is None:
            return vals
        out = np.full((len(steps), ok.size), np.nan)
        out[:, sel_pos] = vals
        return out

    def series_bytes(self, index: Any, times: Any = None) -> int:
        """Bytes of the chunks :meth:`read_series` (same arguments) decodes at most: every
        chunk holding one of the cells, in every time block of the steps, at its declared
        shape and stored item size (8 bytes for integers: they are read as float64). Nothing
        is read: callers refuse a query over their budget before reading."""
        steps = self._steps(times)
        flat, _, _ = self._valid_cells(np.atleast_1d(np.asarray(index)).ravel())
        if not flat.size or not steps:
            return 0
        blks, _, _ = self._plan(flat)
        dtype = np.dtype(self.da.dtype)
        item = dtype.itemsize if dtype.kind == "f" else max(dtype.itemsize, 8)
        spatial = sum(
            int(np.prod([int(e[b + 1] - e[b]) for e, b in zip(self._edges, blk, strict=True)]))
            for blk in blks
        )
        tbs = {int(np.searchsorted(self._t_edges, t, side="right") - 1) for t in steps}
        nt = sum(int(self._t_edges[tb + 1] - self._t_edges[tb]) for tb in tbs)
        return int(nt * spatial * item)

    def _steps(self, times: Any) -> list[int]:
        if times is None:
            return list(range(self.ntimes))
        return [self._check_t(int(t)) for t in np.atleast_1d(times)]

    def _valid_cells(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(the valid indices, which are valid, their positions or None when all are)."""
        if flat.size and flat.dtype.kind not in "iu":
            raise TypeError(f"cell indices must be integers, got dtype {flat.dtype}")
        flat = flat.astype(np.int64, copy=False) if flat.size else flat.astype(np.int64)
        ok = flat >= 0
        sel_pos = None if ok.all() else np.nonzero(ok)[0]
        if sel_pos is not None:
            flat = flat[sel_pos]
        if flat.size and int(flat.max()) >= self.grid.size:
            raise IndexError(f"cell index out of range [0, {self.grid.size})")
        return flat, ok, sel_pos

    def _gather(self, steps: list[int], idx: np.ndarray) -> np.ndarray:
        """(len(steps), idx.size) values; the blocks are planned once for all steps."""
        if idx.size == 0:
            return np.empty((len(steps), 0))
        flat, ok, sel_pos = self._valid_cells(idx.ravel())
        tbs = [int(np.searchsorted(self._t_edges, t, side="right") - 1) for t in steps]
        blks, masks, coords = self._plan(flat)
        wanted = list(dict.fromkeys((tb, b) for tb in tbs for b in blks))
        got = dict(zip(wanted, self._blocks(wanted), strict=True))
        locals_ = [
            tuple(c[m] - e[b] for c, e, b in zip(coords, self._edges, blk, strict=True))
            for blk, m in zip(blks, masks, strict=True)
        ]
        vals = np.empty((len(steps), flat.size))
        for k, (t, tb) in enumerate(zip(steps, tbs, strict=True)):
            ti = t - int(self._t_edges[tb])
            for blk, m, local in zip(blks, masks, locals_, strict=True):
                vals[k, m] = got[(tb, blk)][ti][local]
        if sel_pos is None:
            return vals
        out = np.full((len(steps), ok.size), np.nan)
        out[:, sel_pos] = vals
        return out

    def value_range(self, t: int = 0) -> tuple[float, float]:
        """A default colour range: the 2nd-98th percentile of step ``t``'s values in up to
        ``RANGE_BLOCKS`` chunks (and ``RANGE_BYTES`` of them) spread evenly over the chunk
        grid (whole chunks: no more reads than that; each warms the cache for the first
        tiles)."""
        t = self._check_t(t)
        got = self._ranges.get(t)
        if got is not None:
            return got
        grid_blocks = list(itertools.product(*(range(len(e) - 1) for e in self._edges)))
        n = min(len(grid_blocks), RANGE_BLOCKS, max(1, RANGE_BYTES // self._max_block_bytes()))
        pick = sorted({int(i) for i in np.linspace(0, len(grid_blocks) - 1, n).round()})
        tb = int(np.searchsorted(self._t_edges, t, side="right") - 1)
        blocks = self._blocks([(tb, grid_blocks[i]) for i in pick])
        total = sum(b[0].size for b in blocks)
        stride = max(1, total // RANGE_SAMPLE)
        ti = t - int(self._t_edges[tb])
        v = np.concatenate([b[ti].ravel()[::stride] for b in blocks]).astype(np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            rng = (0.0, 1.0)
        else:
            a, b = (float(x) for x in np.percentile(v, [2.0, 98.0]))
            if not b > a:
                a, b = float(v.min()), float(v.max())
            if not b > a:  # a constant field: a range around its value
                half = max(abs(a) * 1e-3, 0.5)
                a, b = a - half, a + half
            rng = (a, b)
        self._ranges[t] = rng
        return rng


def _level_values(da: Any, dim: Hashable) -> list[Any]:
    """Extra dim ``dim``'s values as Python values; TooManyValues beyond MAX_LEVEL_VALUES."""
    if (n := int(da.sizes[dim])) > MAX_LEVEL_VALUES:
        raise TooManyValues(f"its dimension {str(dim)[:64]!r} has {n} values, over {MAX_LEVEL_VALUES}")  # fmt: skip
    return [v.item() if hasattr(v, "item") else v for v in _dim_values(da, dim)]


def _dim_values(da: Any, dim: Hashable) -> np.ndarray:
    """The values of ``da``'s dim ``dim``: its coordinate's, else positions."""
    return np.asarray(da[dim].values) if dim in da.coords else np.arange(da.sizes[dim])


def _select(da: Any, dim: str, value: Any) -> Any:
    """``da`` at one label of ``dim`` (a position where the dim has no coordinate); text
    from URLs is read as the coordinate's type; ValueError naming the valid values."""
    coord = da.coords.get(dim)
    if coord is None:
        n = da.sizes[dim]
        try:
            i = int(value)
        except (TypeError, ValueError):
            i = -1
        if not 0 <= i < n:
            raise ValueError(f"{dim} must be a position in [0, {n - 1}], got {value!r}")
        return da.isel({dim: i})
    label = value
    if isinstance(value, str) and coord.dtype.kind in "iuf":
        try:
            label = float(value) if coord.dtype.kind == "f" else int(float(value))
        except ValueError:
            label = None
    elif isinstance(value, str) and coord.dtype.kind == "M":
        label = np.datetime64(value.rstrip("Z"), "ns")
    try:
        return da.sel({dim: label})
    except (KeyError, TypeError, ValueError):
        vals = [v.item() if hasattr(v, "item") else v for v in coord.values[:20]]
        more = ", ..." if coord.size > 20 else ""
        raise ValueError(
            f"{dim}={value!r} is not one of its values: {', '.join(map(str, vals))}{more}"
        ) from None


def _valid_times(da: Any, dim: str) -> np.ndarray | None:
    """datetime64[ns] valid times along ``dim``: a ``valid_time`` coordinate on it (cfgrib
    steps), else the dim's own datetime coordinate, else None."""
    for name in ("valid_time", dim):
        coord = da.coords.get(name)
        if coord is not None and coord.dims == (dim,) and coord.dtype.kind == "M":
            return np.asarray(coord.values).astype("datetime64[ns]")
    return None


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _io_pool() -> ThreadPoolExecutor:
    """Threads for concurrent chunk reads (I/O bound: more than the cores)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="viz-chunks")
        return _pool

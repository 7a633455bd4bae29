"""Rasters of a native-grid field: every pixel from its native cell, no regridded copy.

``sample`` gives the values at pixel centres (nearest: the exact cell; bilinear: healpy's
``get_interp_val`` rule on ring grids); ``render`` colours them.  ``render_tile`` and
``render_view`` keep each raster's cell indices (or bilinear stencils) in a bounded cache
keyed by the grid and the raster, so the next time step or variable of the same grid skips
the geometry and only reads values.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np

from .colour import check_range, colormap_lut, colourize
from .field import Field
from .locate import Stencil, bilinear_stencil, nearest_index, pole_ring
from .projections import View, view_lonlat
from .tms import check_tile, tile_lonlat

METHODS = ("nearest", "bilinear")

INDEX_CACHE_BYTES = 64 << 20


class _IndexCache:
    """Bounded LRU (bytes) of per-raster cell indices / stencils; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            v = self._items.get(key)
            if v is not None:
                self._items.move_to_end(key)
            return v

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        with self._lock:
            if key in self._items or nbytes > self.max_bytes:
                return
            self._items[key] = (value, nbytes)
            self.nbytes += nbytes
            while self.nbytes > self.max_bytes:
                _, (_, n) = self._items.popitem(last=False)
                self.nbytes -= n

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


index_cache = _IndexCache(INDEX_CACHE_BYTES)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; known: {', '.join(METHODS)}")


def _compact(idx: np.ndarray, size: int) -> np.ndarray:
    """int32 where the grid fits (half the bytes to keep and to gather with)."""
    return idx.astype(np.int32) if size < 2**31 else idx


def _pole_value(field: Field, t: int, which: int) -> float:
    """Mean of the first/last ring (the pole's value in bilinear caps), NaN-propagating."""
    return float(np.mean(field.read(t, pole_ring(field.grid, which))))


def _apply_stencil(field: Field, t: int, st: Stencil) -> np.ndarray:
    v = field.read(t, st.index)
    with np.errstate(invalid="ignore"):
        out = np.asarray(np.where(st.weight > 0, v * st.weight, 0.0).sum(axis=-1))
    for which in (1, 2):
        m = st.pole == which
        if m.any():
            out[m] += st.pole_weight[m] * _pole_value(field, t, which)
    out[st.pole < 0] = np.nan
    return np.asarray(out, dtype=np.float64)


def _geometry(field: Field, lon: Any, lat: Any, method: str) -> Any:
    if method == "nearest":
        return _compact(nearest_index(field.grid, lon, lat), field.grid.size)
    return bilinear_stencil(field.grid, lon, lat)


def _values(field: Field, t: int, geom: Any) -> np.ndarray:
    if isinstance(geom, Stencil):
        return _apply_stencil(field, t, geom)
    return field.read(t, geom)


def sample(field: Field, t: int, lon: Any, lat: Any, method: str = "nearest") -> np.ndarray:
    """float64 values of ``field`` at step ``t`` at the points; NaN where lon/lat is NaN."""
    _check_method(method)
    return _values(field, t, _geometry(field, lon, lat, method))


def _style(
    field: Field, t: int, cmap: str, vmin: float | None, vmax: float | None
) -> tuple[str, float, float]:
    colormap_lut(cmap)  # a bad name fails before any geometry or reads
    if vmin is None or vmax is None:
        lo, hi = field.value_range(t)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    lo, hi = check_range(vmin, vmax)
    return cmap, lo, hi


def render(
    field: Field,
    t: int,
    lon: Any,
    lat: Any,
    *,
    method: str = "nearest",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """RGBA uint8 of the field at the points; vmin/vmax None -> ``field.value_range(t)``."""
    cmap, lo, hi = _style(field, t, cmap, vmin, vmax)
    return colourize(sample(field, t, lon, lat, method), cmap, lo, hi)


def _cached_geometry(field: Field, key: Hashable, method: str, points: Any) -> Any:
    _check_method(method)
    full = (field.grid.key, method, key)
    got = index_cache.get(full)
    if got is not None:
        return got[0]
    lon, lat = points()
    geom = _geometry(field, lon, lat, method)
    index_cache.put(full, geom, int(geom.nbytes))
    return geom


def _render_cached(
    field: Field,
    t: int,
    key: Hashable,
    points: Any,
    method: str = "nearest",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    _check_method(method)
    cmap, lo, hi = _style(field, t, cmap, vmin, vmax)
    geom = _cached_geometry(field, key, method, points)
    return colourize(_values(field, t, geom), cmap, lo, hi)


def render_tile(
    field: Field, t: int, tms_id: str, z: int, row: int, col: int, **style: Any
) -> np.ndarray:
    """(256, 256, 4) RGBA tile; ``style``: method, cmap, vmin, vmax."""
    check_tile(tms_id, z, row, col)
    return _render_cached(
        field, t, ("tile", tms_id, int(z), int(row), int(col)),
        lambda: tile_lonlat(tms_id, z, row, col), **style,
    )  # fmt: skip


def render_view(field: Field, t: int, view: View, **style: Any) -> np.ndarray:
    """(height, width, 4) RGBA raster of a projected view; ``style``: method, cmap, vmin, vmax."""
    return _render_cached(field, t, ("view", view), lambda: view_lonlat(view), **style)

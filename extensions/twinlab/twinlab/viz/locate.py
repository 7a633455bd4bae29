"""Pixel -> native cell: the exact cell (nearest) or the four-cell stencil (bilinear).

Nearest is the platform's one rule: for HEALPix the pixel *containing* the point
(identical to ``healpy.ang2pix``), for every other grid the great-circle nearest centre
(identical to :func:`twinlab.grids.ops.nearest_cells`).  Bilinear is healpy's
``get_interp_val`` generalised to ring grids, as :func:`twinlab.grids.regrid.builders.bilinear`
builds it for regridding; here it is evaluated point by point so a raster never needs a
weight matrix.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from twinlab.grids import HEALPix
from twinlab.grids.base import Grid, Rings
from twinlab.grids.ops import nearest_cells


def _valid(lon: Any, lat: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    lon, lat = np.broadcast_arrays(lon, lat)
    ok = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90.0)
    return lon, lat, ok


def nearest_index(grid: Grid, lon: Any, lat: Any) -> np.ndarray:
    """int64 flat native index of the cell of each point; -1 where lon/lat is NaN."""
    lon, lat, ok = _valid(lon, lat)
    out = np.full(lon.shape, -1, dtype=np.int64)
    if not ok.any():
        return out
    all_ok = bool(ok.all())
    lo = lon if all_ok else lon[ok]
    la = lat if all_ok else lat[ok]
    if isinstance(grid, HEALPix):
        idx = np.asarray(grid.lonlat2pix(lo, la), dtype=np.int64)
    else:
        idx = nearest_cells(grid, lo.ravel(), la.ravel()).reshape(lo.shape)
    if all_ok:
        return idx
    out[ok] = idx
    return out


_rings_lock = threading.Lock()
_rings_cache: dict[str, tuple[Rings, np.ndarray | None, np.ndarray | None]] = {}


def _ring_info(grid: Grid) -> tuple[Rings, np.ndarray | None, np.ndarray | None]:
    """(rings, native index of each ring position, ring position of each native index)."""
    with _rings_lock:
        got = _rings_cache.get(grid.key)
    if got is not None:
        return got
    rings = grid.rings()
    order = None if isinstance(grid, HEALPix) else grid.ring_order()
    inv = None
    if order is not None:
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size, dtype=order.dtype)
    with _rings_lock:
        if len(_rings_cache) > 32:
            _rings_cache.clear()
        _rings_cache[grid.key] = (rings, order, inv)
    return rings, order, inv


def ring_to_native(grid: Grid, pos: np.ndarray) -> np.ndarray:
    """Native indices of ring-order positions."""
    if isinstance(grid, HEALPix):
        return np.asarray(grid.from_ring(pos), dtype=np.int64)
    order = _ring_info(grid)[1]
    return pos if order is None else order[pos]


def cell_centers(grid: Grid, index: Any) -> tuple[np.ndarray, np.ndarray]:
    """(lon in [-180, 180), lat) of native cells; NaN for index -1."""
    idx = np.asarray(index, dtype=np.int64)
    ok = (idx >= 0) & (idx < grid.size)
    safe = np.where(ok, idx, 0)
    if isinstance(grid, HEALPix):
        lon, lat = grid.pix2lonlat(safe)
    else:
        rings, _, inv = _ring_info(grid)
        pos = safe if inv is None else inv[safe]
        ring = np.searchsorted(rings.start, pos, side="right") - 1
        lon = rings.lon0[ring] + (pos - rings.start[ring]) * (360.0 / rings.nlon[ring])
        lat = rings.lat[ring]
    lon = np.mod(np.asarray(lon, dtype=np.float64) + 180.0, 360.0) - 180.0
    return np.where(ok, lon, np.nan), np.where(ok, np.asarray(lat, dtype=np.float64), np.nan)


@dataclass(frozen=True)
class Stencil:
    """Bilinear weights of points: ``value = sum(weight * v[index]) + pole_weight * pole``.

    ``index``/``weight`` are (..., 4) (int32/int64 native index -1 and weight 0 where unused); ``pole``
    is 0 (none), 1 (north: the mean of the first ring), 2 (south: the mean of the last
    ring) or -1 (a NaN lon/lat: no value); ``pole_weight`` the pole's weight.
    """

    index: np.ndarray
    weight: np.ndarray
    pole: np.ndarray
    pole_weight: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(
            self.index.nbytes + self.weight.nbytes + self.pole.nbytes + self.pole_weight.nbytes
        )


def pole_ring(grid: Grid, which: int) -> np.ndarray:
    """Native indices of the first (which=1) or last (which=2) ring: the pole's cells."""
    rings = _ring_info(grid)[0]
    r = 0 if which == 1 else rings.nrings - 1
    pos = rings.start[r] + np.arange(int(rings.nlon[r]), dtype=np.int64)
    return ring_to_native(grid, pos)


def bilinear_stencil(grid: Grid, lon: Any, lat: Any) -> Stencil:
    """healpy ``get_interp_val`` weights of each point, on any ring grid.

    Between two rings: linear in longitude on each ring between the two bracketing
    centres, then linear in colatitude.  North of the first ring (south of the last): the
    ring's two bracketing cells weighted by the distance from the pole, the rest of the
    weight on the pole, whose value is the ring's mean (for HEALPix exactly healpy's rule).
    """
    # start-up cost: the regrid package loads numba (~0.2 s); nearest-only users skip it
    from twinlab.grids.regrid.builders import _ring_interp

    lon, lat, ok = _valid(lon, lat)
    shape = lon.shape
    lo, la = lon[ok], lat[ok]
    rings = _ring_info(grid)[0]
    theta = np.deg2rad(90.0 - la)
    theta_r = np.deg2rad(90.0 - rings.lat)
    nr = rings.nrings
    ir1 = np.searchsorted(theta_r, theta, side="right")
    ir1[(ir1 == nr) & (theta <= theta_r[-1])] = nr - 1  # on the last ring: not a cap
    north, south = ir1 == 0, ir1 == nr
    ra = np.clip(ir1 - 1, 0, nr - 1)
    rb = np.clip(ir1, 0, nr - 1)
    a1, a2, wa = _ring_interp(rings, ra, lo)
    b1, b2, wb = _ring_interp(rings, rb, lo)
    # 0/0 where rings coincide with a pole (node grids): those lanes are never selected
    with np.errstate(divide="ignore", invalid="ignore"):
        wt = (theta - theta_r[ra]) / (theta_r[rb] - theta_r[ra])
        # caps: the ring's bracketing pair carries w_ring, the pole 1 - w_ring
        w_n = theta / theta_r[0]
        w_s = (np.pi - theta) / (np.pi - theta_r[-1])
    wt = np.where(north, 1.0, np.where(south, 0.0, wt))  # cap: all on the single ring
    w_ring = np.where(north, w_n, np.where(south, w_s, 1.0))
    pos = np.stack([a1, a2, b1, b2], axis=-1)
    w = (
        np.stack([(1 - wa) * (1 - wt), wa * (1 - wt), (1 - wb) * wt, wb * wt], axis=-1)
        * w_ring[:, None]
    )
    native = ring_to_native(grid, pos.ravel()).reshape(pos.shape)
    # int32 where the grid fits: half the bytes to keep (render caches stencils) and gather
    index = np.full(shape + (4,), -1, dtype=np.int32 if grid.size < 2**31 else np.int64)
    weight = np.zeros(shape + (4,), dtype=np.float64)
    pole = np.full(shape, -1, dtype=np.int8)  # -1: no value (NaN lon/lat)
    pole_w = np.zeros(shape, dtype=np.float64)
    index[ok] = np.where(w > 0, native, -1)
    weight[ok] = np.where(w > 0, w, 0.0)
    pole[ok] = np.where(north, 1, np.where(south, 2, 0))
    pole_w[ok] = np.where(north | south, 1.0 - w_ring, 0.0)
    return Stencil(index, weight, pole, pole_w)

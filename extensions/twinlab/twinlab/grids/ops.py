"""Grid operations on plain arrays: region selection, nearest cell, zonal sums.

Everything works ring by ring (every supported grid is a set of iso-latitude rings of
equally spaced cells), so a region or a point costs work proportional to the cells it
touches, not to the grid size: a bbox on HEALPix n1024 never builds 12.6M centres.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from twinlab.contract import check_finite, check_latitudes

from .base import Grid, Rings
from .healpix import HEALPix

_EPS = 1e-9  # degrees: a centre on a bbox edge is inside


def check_bbox(bbox: Any) -> tuple[float, float, float, float]:
    """Validate ``(west, south, east, north)`` degrees; returns (west, south, width, north).

    ``east < west`` means the box crosses the antimeridian (e.g. ``(170, -10, -170, 10)``).
    Finite values and the latitudes follow the platform's bbox rule
    (:mod:`twinlab.contract`); longitudes may be anywhere in [-360, 360] here.
    """
    try:
        vals = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise TypeError(
            f"bbox must be 4 numbers (west, south, east, north), got {bbox!r}"
        ) from None
    if len(vals) != 4:
        raise ValueError(f"bbox must be (west, south, east, north), got {len(vals)} values")
    west, south, east, north = vals
    check_finite(vals)
    check_latitudes(south, north)
    if not (-360.0 <= west <= 360.0 and -360.0 <= east <= 360.0):
        raise ValueError(
            f"bbox longitudes must be within [-360, 360], got west={west}, east={east}"
        )
    width = east - west
    if width < 0:
        width += 360.0  # crosses the antimeridian
    if width > 360.0:
        raise ValueError(f"bbox spans {width} degrees of longitude (> 360)")
    return west, south, width, north


def ring_to_native(grid: Grid, pos: np.ndarray) -> np.ndarray:
    """Native indices of ring-order positions, without building a full permutation."""
    if isinstance(grid, HEALPix):  # ring-order position == RING pixel index
        return np.asarray(grid.from_ring(pos))
    order = grid._native_of_ring
    return pos if order is None else order[pos]


def _runs(start: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ranges: (group id, offset within group) for groups of ``count`` items."""
    grp = np.repeat(np.arange(start.size), count)
    first = np.zeros(count.size, dtype=np.int64)
    np.cumsum(count[:-1], out=first[1:])
    return grp, np.arange(grp.size) - first[grp] + start[grp]


def bbox_ring_cells(rings: Rings, bbox: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells whose centres lie in ``bbox``: (ring, position on ring, ring-order position)."""
    west, south, width, north = check_bbox(bbox)
    sel = np.nonzero((rings.lat >= south - _EPS) & (rings.lat <= north + _EPS))[0]
    nlon = rings.nlon[sel]
    d = 360.0 / nlon
    off = np.mod(west - rings.lon0[sel], 360.0)  # west edge relative to the ring's first cell
    jmin = np.ceil((off - _EPS) / d).astype(np.int64)
    jmax = np.floor((off + width + _EPS) / d).astype(np.int64)
    count = np.clip(jmax - jmin + 1, 0, nlon)
    jmin = np.where(count == nlon, 0, jmin)  # full ring: every cell once
    grp, j = _runs(jmin, count)
    ring = sel[grp]
    j = np.mod(j, rings.nlon[ring])
    return ring, j, rings.start[ring] + j


def bbox_cells(grid: Grid, bbox: Any) -> np.ndarray:
    """Sorted native indices of the cells whose centres lie inside ``bbox``."""
    _, _, pos = bbox_ring_cells(grid.rings(), bbox)
    return np.sort(ring_to_native(grid, pos))


def _unwrap_polygon(polygon: Any) -> np.ndarray:
    try:
        poly = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError("polygon must be a sequence of (lon, lat) pairs") from None
    if poly.ndim != 2 or poly.shape[1] != 2 or poly.shape[0] < 3:
        raise ValueError(f"polygon needs at least 3 (lon, lat) vertices, got shape {poly.shape}")
    if not np.isfinite(poly).all() or (np.abs(poly[:, 1]) > 90).any():
        raise ValueError("polygon vertices must be finite with latitudes in [-90, 90]")
    lon = poly[:, 0].copy()
    # unwrap so that no edge jumps by more than 180 degrees (polygons across the dateline)
    lon[1:] = lon[0] + np.cumsum((np.diff(lon) + 180.0) % 360.0 - 180.0)
    closing = (lon[0] - lon[-1] + 180.0) % 360.0 - 180.0
    if abs(lon[-1] + closing - lon[0]) > 1e-9:
        raise ValueError("polygon winds around a pole; split it or use a bbox")
    return np.stack([lon, poly[:, 1]], axis=1)


def points_in_polygon(lon: np.ndarray, lat: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule, edges straight in (lon, lat); ``lon`` already shifted next to ``poly``."""
    inside = np.zeros(lon.shape, dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, e in zip(x0, y0, x1, y1, strict=True):  # loop over edges, vectorised over points
        crosses = (b > lat) != (e > lat)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = a + (lat - b) * (c - a) / (e - b)
        inside ^= crosses & (lon < xcross)
    return inside


def polygon_cells(grid: Grid, polygon: Sequence[Sequence[float]]) -> np.ndarray:
    """Sorted native indices of the cells whose centres lie inside ``polygon``."""
    poly = _unwrap_polygon(polygon)
    west, east = poly[:, 0].min(), poly[:, 0].max()
    if east - west >= 360.0:
        raise ValueError("polygon spans 360 degrees of longitude; split it")
    bbox = (np.mod(west, 360.0), poly[:, 1].min(), np.mod(east, 360.0), poly[:, 1].max())
    if east - west >= 360.0 - _EPS or np.isclose(bbox[0], bbox[2]) and east > west:
        bbox = (0.0, bbox[1], 360.0, bbox[3])
    rings = grid.rings()
    ring, j, pos = bbox_ring_cells(rings, bbox)
    lon = rings.lon0[ring] + j * (360.0 / rings.nlon[ring])
    lon = west + np.mod(lon - west, 360.0)  # into [west, west + 360)
    keep = points_in_polygon(lon, rings.lat[ring], poly)
    return np.sort(ring_to_native(grid, pos[keep]))


def _haversine(lon1: Any, lat1: Any, lon2: Any, lat2: Any) -> Any:
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dl = np.deg2rad(lon2 - lon1)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def nearest_cells(grid: Grid, lon: Any, lat: Any) -> np.ndarray:
    """Native index of the cell whose centre is nearest (great circle) to each point."""
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    lon, lat = np.broadcast_arrays(lon, lat)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()) or (np.abs(lat) > 90).any():
        raise ValueError("points need finite longitudes and latitudes within [-90, 90]")
    rings = grid.rings()
    r0 = np.searchsorted(-rings.lat, -lat)  # first ring south of (or at) the point
    best_d = np.full(lon.shape, np.inf)
    best_pos = np.zeros(lon.shape, dtype=np.int64)
    for dr in (-2, -1, 0, 1):  # the nearest centre is on one of the bracketing rings
        r = np.clip(r0 + dr, 0, rings.nrings - 1)
        d = 360.0 / rings.nlon[r]
        j = np.mod(np.floor(np.mod(lon - rings.lon0[r], 360.0) / d + 0.5), rings.nlon[r]).astype(
            np.int64
        )
        dist = _haversine(lon, lat, rings.lon0[r] + j * d, rings.lat[r])
        better = dist < best_d
        best_d = np.where(better, dist, best_d)
        best_pos = np.where(better, rings.start[r] + j, best_pos)
    return ring_to_native(grid, best_pos)


def compact_ring_ids(grid: Grid) -> np.ndarray:
    """Ring number of every cell (native order) in the smallest integer type that holds it.

    Fewer bytes per cell means fewer bytes streamed per zonal mean.
    """
    nrings = grid.rings().nrings
    dtype = np.int16 if nrings < 2**15 else np.int32
    return grid.ring_ids().astype(dtype)


def zonal_mean_values(values: np.ndarray, ids: np.ndarray, nrings: int) -> np.ndarray:
    """NaN-aware mean of ``values[..., ncells]`` over each ring -> ``[..., nrings]``.

    ``ids`` is :func:`compact_ring_ids` of the grid.  One pass over the values, no gather
    (a parallel kernel when numba is there, ``np.bincount`` otherwise).  Cells on one ring
    have equal areas on every supported grid, so the plain mean of a ring is its
    area-weighted mean.
    """
    from .regrid._kernels import group_mean  # start-up cost: numba loads on first use

    values = np.asarray(values)
    if values.shape[-1] != ids.size:
        raise ValueError(
            f"data has {values.shape[-1]} cells on its last axis; the grid has {ids.size}"
        )
    return group_mean(values, ids, nrings)

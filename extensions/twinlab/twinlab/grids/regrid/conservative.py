"""First-order conservative weights from exact cell-overlap areas.

Everything is computed in an equal-area plane where every cell edge is straight, so
overlaps are convex-polygon intersections and their areas are exact (to rounding):

* lat-lon-box cells (Gaussian, reduced Gaussian, lat-lon) are rectangles in
  ``(lon, z = sin lat)``, where the spherical area element is exactly ``R^2 dlon dz``;
  box-box overlaps are products of interval overlaps (:func:`_box_box`).
* HEALPix cells are squares rotated by 45 deg ("diamonds") in the HEALPix projection
  (Calabretta & Roukema 2007), which is equal-area with ``area_plane = 3 pi / 8 *
  area_sphere / R^2``.  A lat-lon box maps there to a rectangle in the equatorial zone
  (``|z| <= 2/3``, where ``x = lon, y = 3 pi / 8 z``) and, split at ``z = +-2/3`` and at
  the facet meridians ``lon = k 90 deg``, to trapezoids in the polar facets (parallels
  stay horizontal and meridians straight lines through the facet's pole point).
  Pieces are clipped against the diamonds (:mod:`._plane`).

Weights are ``A_ij / sum_i A_ij``: the overlap area of source cell ``i`` with target
cell ``j`` over the area of target ``j`` covered by the source grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _plane
from .matrix import Weights, from_coo


def _is_healpix(grid: Any) -> bool:
    return grid.lat_bounds() is None


def _boxes(grid: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per cell (native order): west lon, east lon (deg, unwrapped), south lat, north lat."""
    rings = grid.rings()
    bounds = grid.lat_bounds()
    if bounds is None:
        raise ValueError(f"{grid!r} cells are not lat-lon boxes")
    ring = rings.ring_index()
    pos = np.arange(rings.size) - rings.start[ring]
    d = 360.0 / rings.nlon[ring]
    west = rings.lon0[ring] + (pos - 0.5) * d
    out = [west, west + d, bounds[ring, 1], bounds[ring, 0]]
    order = grid.ring_order()
    if order is not None:  # ring order -> native order
        for k, a in enumerate(out):
            b = np.empty_like(a)
            b[order] = a
            out[k] = b
    return out[0], out[1], out[2], out[3]


def _box_box(source: Any, target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact overlaps of two box grids, ring pair by ring pair: dlon * dz."""
    rs, rt = source.rings(), target.rings()
    zs = np.sin(np.deg2rad(source.lat_bounds()))  # (nrings, 2) north, south
    zt = np.sin(np.deg2rad(target.lat_bounds()))
    rows, cols, vals = [], [], []
    for it in range(rt.nrings):
        dz = np.minimum(zs[:, 0], zt[it, 0]) - np.maximum(zs[:, 1], zt[it, 1])
        nt = int(rt.nlon[it])
        dt = 360.0 / nt
        tw = rt.lon0[it] + (np.arange(nt) - 0.5) * dt  # target west edges
        for js in np.nonzero(dz > 0)[0]:
            ns = int(rs.nlon[js])
            ds = 360.0 / ns
            s0 = rs.lon0[js] - 0.5 * ds  # west edge of source cell 0
            first = np.floor((tw - s0) / ds).astype(np.int64)
            last = np.ceil((tw + dt - s0) / ds).astype(np.int64) - 1
            count = last - first + 1
            k = np.repeat(np.arange(nt), count)
            m = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + first[k]
            sw = s0 + m * ds
            overlap = np.minimum(tw[k] + dt, sw + ds) - np.maximum(tw[k], sw)
            keep = overlap > 1e-12 * min(dt, ds)  # edges that coincide up to rounding
            rows.append(rt.start[it] + k[keep])
            cols.append(rs.start[js] + np.mod(m[keep], ns))
            vals.append(np.deg2rad(overlap[keep]) * dz[js])
    target_idx, source_idx = np.concatenate(rows), np.concatenate(cols)
    for grid, idx in ((target, target_idx), (source, source_idx)):
        order = grid.ring_order()
        if order is not None:
            idx[:] = order[idx]
    return target_idx, source_idx, np.concatenate(vals)


def overlaps(source: Any, target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target index, source index, overlap area in steradians) for every overlapping pair."""
    hs, ht = _is_healpix(source), _is_healpix(target)
    if not hs and not ht:
        return _box_box(source, target)
    if hs and ht:
        # clip the target diamonds by the source diamonds
        tp = _plane.diamonds(target)
        sp = _plane.diamonds(source)
        rows, cols, area = _plane.intersect(tp, sp)
    elif hs:
        rows, cols, area = _plane.intersect(
            _plane.box_pieces(*_boxes(target)), _plane.diamonds(source)
        )
    else:
        cols, rows, area = _plane.intersect(
            _plane.box_pieces(*_boxes(source)), _plane.diamonds(target)
        )
    return rows, cols, area / _plane.AREA_SCALE


def conservative(source: Any, target: Any) -> Weights:
    rows, cols, area = overlaps(source, target)
    return from_coo(source, target, "conservative", rows, cols, area)

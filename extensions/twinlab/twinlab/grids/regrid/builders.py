"""Weight builders for nearest-neighbour and ring-based bilinear interpolation.

Both work on any grid that implements the :class:`~twinlab.grids.base.Grid` ring
interface, so HEALPix, reduced/regular Gaussian and lat-lon share one code path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .conservative import conservative
from .matrix import Weights, from_coo


def build(source: Any, target: Any, method: str) -> Weights:
    if method == "nearest":
        return nearest(source, target)
    if method == "bilinear":
        return bilinear(source, target)
    if method == "conservative":
        return conservative(source, target)
    raise ValueError(f"unknown regrid method {method!r}")


def _unit_vectors(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lon, lat = np.deg2rad(lon), np.deg2rad(lat)
    c = np.cos(lat)
    return np.stack([c * np.cos(lon), c * np.sin(lon), np.sin(lat)], axis=-1)


def nearest(source: Any, target: Any) -> Weights:
    """Each target point takes the value of one source cell.

    HEALPix sources use the analytic ``lonlat2pix`` (the pixel *containing* the point,
    which is what healpy's ``ang2pix`` returns); other grids the great-circle nearest
    centre, found with a k-d tree on unit vectors (chord order == great-circle order).
    """
    lon, lat = target.centers()
    locate = getattr(source, "lonlat2pix", None)
    if locate is not None:
        idx = np.asarray(locate(lon, lat), dtype=np.int64)
    else:
        from scipy.spatial import cKDTree  # start-up cost: only for non-HEALPix sources

        tree = cKDTree(_unit_vectors(*source.centers()))
        idx = tree.query(_unit_vectors(lon, lat), workers=-1)[1]
    n = target.size
    return Weights(
        source.key,
        target.key,
        "nearest",
        source.size,
        n,
        np.arange(n + 1, dtype=np.int64),
        idx.astype(np.int32),
        np.ones(n),
    )


def _ring_interp(
    rings: Any, r: np.ndarray, lon: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ring-order indices of the two cells bracketing ``lon`` on ring ``r``, and the east weight."""
    nlon = rings.nlon[r]
    t = np.mod(lon - rings.lon0[r], 360.0) * (nlon / 360.0)
    i1 = np.floor(t).astype(np.int64)
    w1 = t - i1
    i1 = np.mod(i1, nlon)  # t == nlon after rounding wraps to cell 0
    i2 = np.mod(i1 + 1, nlon)
    return rings.start[r] + i1, rings.start[r] + i2, w1


def bilinear(source: Any, target: Any) -> Weights:
    """healpy ``get_interp_val`` semantics, generalised to every ring grid.

    The target's colatitude ``theta`` falls between two source rings; on each ring we
    interpolate linearly in longitude between the two bracketing cell centres, then
    linearly in ``theta`` between the rings.  North of the first ring (south of the
    last) the missing ring is the pole, whose value is the mean of the first (last)
    ring's cells; the weight varies linearly in theta from ring to pole.  For HEALPix
    (4 cells on the polar rings) this is exactly healpy's pole treatment.
    """
    rings = source.rings()
    lon, lat = target.centers()
    lon = np.asarray(lon, dtype=np.float64)
    theta = np.deg2rad(90.0 - np.asarray(lat, dtype=np.float64))
    theta_r = np.deg2rad(90.0 - rings.lat)
    nr = rings.nrings
    ir1 = np.searchsorted(theta_r, theta, side="right")  # rings at or north of the point
    # a point on the last ring (e.g. the south pole of a node grid) is "between" the
    # last two rings with full weight on the last one, not in a polar cap of zero height
    ir1[(ir1 == nr) & (theta <= theta_r[-1])] = nr - 1
    north = ir1 == 0
    south = ir1 == nr
    mid = ~(north | south)

    rows, cols, vals = [], [], []
    t_idx = np.arange(target.size, dtype=np.int64)

    # between two rings: 4 cells
    j = t_idx[mid]
    ra, rb = ir1[mid] - 1, ir1[mid]
    a1, a2, wa = _ring_interp(rings, ra, lon[mid])
    b1, b2, wb = _ring_interp(rings, rb, lon[mid])
    wt = (theta[mid] - theta_r[ra]) / (theta_r[rb] - theta_r[ra])
    rows.append(np.repeat(j, 4))
    cols.append(np.stack([a1, a2, b1, b2], axis=1).ravel())
    vals.append(
        np.stack([(1 - wa) * (1 - wt), wa * (1 - wt), (1 - wb) * wt, wb * wt], axis=1).ravel()
    )

    # polar caps: every cell of the outermost ring shares the pole's weight
    for sel, ring, polar_north in ((north, 0, True), (south, nr - 1, False)):
        if not sel.any():
            continue
        j = t_idx[sel]
        th = theta[sel]  # w_ring: 1 on the ring, 0 at the pole
        w_ring = th / theta_r[0] if polar_north else (np.pi - th) / (np.pi - theta_r[-1])
        r = np.full(j.size, ring)
        c1, c2, w = _ring_interp(rings, r, lon[sel])
        n = int(rings.nlon[ring])
        everyone = rings.start[ring] + np.arange(n)
        rows += [np.repeat(j, n), j, j]
        cols += [np.tile(everyone, j.size), c1, c2]
        vals += [np.repeat((1 - w_ring) / n, n), (1 - w) * w_ring, w * w_ring]

    source_idx = np.concatenate(cols)
    order = source.ring_order()
    if order is not None:
        source_idx = order[source_idx]
    return from_coo(
        source, target, "bilinear", np.concatenate(rows), source_idx, np.concatenate(vals)
    )

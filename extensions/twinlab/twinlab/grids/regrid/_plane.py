"""Cells as convex quadrilaterals in the HEALPix projection, and their exact overlaps.

The HEALPix projection (Calabretta & Roukema 2007, MNRAS 381:865) with ``phi`` the
longitude in radians and ``z = sin lat``:

* equatorial zone ``|z| <= 2/3``: ``x = phi``, ``y = 3 pi / 8 z``;
* polar facet ``k`` (``phi`` in ``[k pi/2, (k+1) pi/2)``, ``|z| > 2/3``), with
  ``sigma = sqrt(3 (1 - |z|))`` and facet centre ``phi_c = (k + 1/2) pi/2``:
  ``x = phi_c + (phi - phi_c) sigma``, ``y = sign(z) (pi/2 - pi/4 sigma)``.

It is equal-area (``dx dy = 3 pi / 8 dphi dz``) and continuous inside each facet; the
four polar facets of each cap become disjoint triangles, so a single plane holds the
whole sphere, periodic in ``x`` with period ``2 pi``.  HEALPix pixels are diamonds of
half-diagonal ``pi / (4 nside)`` there, each inside one facet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _kernels

AREA_SCALE = 3.0 * np.pi / 8.0  # plane area per steradian
_Y = 3.0 * np.pi / 8.0
_HALF_PI = 0.5 * np.pi
_TWO_PI = 2.0 * np.pi
_ZLIM_LAT = np.rad2deg(np.arcsin(2.0 / 3.0))  # latitude of the zone boundary
_MAXV = 8  # a quad clipped by 4 half-planes has at most 8 vertices
_CHUNK = 200_000  # candidate pairs clipped per batch (bounds memory)


@dataclass
class Quads:
    """Convex quads, vertices counter-clockwise; ``owner`` is the cell each belongs to."""

    owner: np.ndarray  # (P,) int64 native cell index
    x: np.ndarray  # (P, 4)
    y: np.ndarray  # (P, 4)


def _sigma(lat_deg: np.ndarray) -> np.ndarray:
    """sqrt(3 (1 - |sin lat|)) without cancellation near the poles."""
    return np.asarray(np.sqrt(6.0) * np.sin(np.deg2rad(90.0 - np.abs(lat_deg)) / 2.0))


def project(lon_deg: np.ndarray, lat_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points to the plane (``lon`` wrapped to ``[0, 360)``)."""
    phi = np.deg2rad(np.mod(lon_deg, 360.0))
    lat = np.asarray(lat_deg, dtype=np.float64)
    polar = np.abs(lat) > _ZLIM_LAT
    s = _sigma(lat)
    phic = (np.floor(phi / _HALF_PI) + 0.5) * _HALF_PI
    x = np.where(polar, phic + (phi - phic) * s, phi)
    y = np.where(polar, np.sign(lat) * (_HALF_PI - 0.25 * np.pi * s), _Y * np.sin(np.deg2rad(lat)))
    return x, y


def diamonds(grid: Any) -> Quads:
    """HEALPix pixels (native order) as diamonds around their projected centres."""
    nside = int(round(np.sqrt(grid.size / 12)))
    h = np.pi / (4 * nside)
    xc, yc = project(*grid.centers())
    dx = np.array([h, 0.0, -h, 0.0])
    dy = np.array([0.0, h, 0.0, -h])
    return Quads(np.arange(grid.size, dtype=np.int64), xc[:, None] + dx, yc[:, None] + dy)


def box_pieces(west: np.ndarray, east: np.ndarray, south: np.ndarray, north: np.ndarray) -> Quads:
    """Lat-lon boxes (deg) as plane quads: one per zone, and per facet in the caps."""
    owners, xs, ys = [], [], []
    cell = np.arange(west.size, dtype=np.int64)
    w, e = np.deg2rad(west), np.deg2rad(east)
    for lo, hi, cap in (
        (-90.0, -_ZLIM_LAT, True),
        (-_ZLIM_LAT, _ZLIM_LAT, False),
        (_ZLIM_LAT, 90.0, True),
    ):
        a, b = np.maximum(south, lo), np.minimum(north, hi)
        sel = b > a
        if not sel.any():
            continue
        c, a, b, pw, pe = cell[sel], a[sel], b[sel], w[sel], e[sel]
        if not cap:
            ya, yb = _Y * np.sin(np.deg2rad(a)), _Y * np.sin(np.deg2rad(b))
            owners.append(c)
            xs.append(np.stack([pw, pe, pe, pw], axis=1))
            ys.append(np.stack([ya, ya, yb, yb], axis=1))
            continue
        # split at the facet meridians k * 90 deg (k may be < 0 or > 3: x shifts by 2 pi)
        k0 = np.floor(pw / _HALF_PI).astype(np.int64)
        count = np.ceil(pe / _HALF_PI).astype(np.int64) - k0
        count = np.maximum(count, 1)
        rep = np.repeat(np.arange(c.size), count)
        k = k0[rep] + (np.arange(rep.size) - np.repeat(np.cumsum(count) - count, count))
        lo_phi = np.maximum(pw[rep], k * _HALF_PI)
        hi_phi = np.minimum(pe[rep], (k + 1) * _HALF_PI)
        keep = hi_phi > lo_phi
        rep, k, lo_phi, hi_phi = rep[keep], k[keep], lo_phi[keep], hi_phi[keep]
        phic = (k + 0.5) * _HALF_PI
        sgn = 1.0 if lo > 0 else -1.0
        sa, sb = _sigma(a[rep]), _sigma(b[rep])
        ya, yb = sgn * (_HALF_PI - 0.25 * np.pi * sa), sgn * (_HALF_PI - 0.25 * np.pi * sb)
        owners.append(c[rep])
        xs.append(
            np.stack(
                [
                    phic + (lo_phi - phic) * sa,
                    phic + (hi_phi - phic) * sa,
                    phic + (hi_phi - phic) * sb,
                    phic + (lo_phi - phic) * sb,
                ],
                axis=1,
            )
        )
        ys.append(np.stack([ya, ya, yb, yb], axis=1))
    return Quads(np.concatenate(owners), np.concatenate(xs), np.concatenate(ys))


# ---- candidate pairs -----------------------------------------------------------------
def _bucket_rows(
    xmin: np.ndarray,
    xmax: np.ndarray,
    ymin: np.ndarray,
    ymax: np.ndarray,
    size: float,
    nbx: int,
    nby: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(bucket id, item index) for every bucket the boxes ``[xmin, xmax] x [ymin, ymax]`` touch."""
    ix0 = np.floor(xmin / size).astype(np.int64)
    ix1 = np.floor(xmax / size).astype(np.int64)
    iy0 = np.clip(np.floor((ymin + _HALF_PI) / size).astype(np.int64), 0, nby - 1)
    iy1 = np.clip(np.floor((ymax + _HALF_PI) / size).astype(np.int64), 0, nby - 1)
    nx, ny = ix1 - ix0 + 1, iy1 - iy0 + 1
    n = nx * ny
    item = np.repeat(np.arange(xmin.size), n)
    local = np.arange(item.size) - np.repeat(np.cumsum(n) - n, n)
    ix = np.mod(ix0[item] + local % nx[item], nbx)
    iy = iy0[item] + local // nx[item]
    return ix + nbx * iy, item


class _Buckets:
    """Clip quads (equal diamonds) filed by the bucket holding their centre.

    Each subject quad is looked up in every bucket its bounding box, grown by the clip
    half-width, touches; a (subject, clip) pair then meets in exactly one bucket, so the
    candidate list needs no de-duplication.
    """

    def __init__(self, clip: Quads):
        self.half = 0.5 * float(np.max(clip.x.max(1) - clip.x.min(1)))
        self.nbx = int(round(_TWO_PI / (2 * self.half)))
        self.size = _TWO_PI / self.nbx
        self.nby = int(np.ceil(np.pi / self.size))
        cx = 0.5 * (clip.x.min(1) + clip.x.max(1))
        cy = 0.5 * (clip.y.min(1) + clip.y.max(1))
        cb, cq = _bucket_rows(cx, cx, cy, cy, self.size, self.nbx, self.nby)
        order = np.argsort(cb, kind="stable")
        self.quads = cq[order]
        self.counts = np.bincount(cb[order], minlength=self.nbx * self.nby)
        self.starts = np.cumsum(self.counts) - self.counts

    def candidates(self, subj: Quads, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(subject quad, clip quad) pairs that may overlap, for subject quads [lo, hi)."""
        h = self.half
        x, y = subj.x[lo:hi], subj.y[lo:hi]
        sb, sq = _bucket_rows(
            x.min(1) - h, x.max(1) + h, y.min(1) - h, y.max(1) + h, self.size, self.nbx, self.nby
        )
        n = self.counts[sb]
        first = np.repeat(self.starts[sb] - (np.cumsum(n) - n), n)
        return np.repeat(sq + lo, n), self.quads[first + np.arange(n.sum())]


# ---- clipping --------------------------------------------------------------------------
def _clip_area(sx: np.ndarray, sy: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Area of (subject quad) ∩ (convex clip quad), Sutherland-Hodgman vectorised over pairs."""
    p = sx.shape[0]
    n = np.full(p, 4, dtype=np.int64)
    rowsel = np.arange(p)[:, None]
    for e in range(4):
        ax, ay = cx[:, e : e + 1], cy[:, e : e + 1]
        ex, ey = (
            cx[:, (e + 1) % 4 : (e + 1) % 4 + 1] - ax,
            cy[:, (e + 1) % 4 : (e + 1) % 4 + 1] - ay,
        )
        m = sx.shape[1]
        i = np.arange(m)[None, :]
        valid = i < n[:, None]
        prev = np.where(i == 0, n[:, None] - 1, i - 1)
        d = ex * (sy - ay) - ey * (sx - ax)  # >= 0: left of the edge, inside
        px, py, dp = sx[rowsel, prev], sy[rowsel, prev], d[rowsel, prev]
        cur_in, prev_in = d >= 0, dp >= 0
        cross = valid & (cur_in != prev_in)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(cross, dp / (dp - d), 0.0)
        ox = np.stack([px + t * (sx - px), sx], axis=2).reshape(p, 2 * m)
        oy = np.stack([py + t * (sy - py), sy], axis=2).reshape(p, 2 * m)
        ok = np.stack([cross, valid & cur_in], axis=2).reshape(p, 2 * m)
        n = np.minimum(ok.sum(1), _MAXV)
        order = np.argsort(~ok, axis=1, kind="stable")[:, :_MAXV]
        sx, sy = ox[rowsel, order], oy[rowsel, order]
    i = np.arange(sx.shape[1])[None, :]
    nxt = np.where(i + 1 >= n[:, None], 0, i + 1)
    term = sx * sy[rowsel, nxt] - sx[rowsel, nxt] * sy
    return np.asarray(0.5 * np.where(i < n[:, None], term, 0.0).sum(1))


def intersect(subj: Quads, clip: Quads) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(subject owner, clip owner, plane area) of every overlapping pair of cells.

    Subject quads are processed in batches so memory stays bounded on large grids.
    """
    buckets = _Buckets(clip)
    ccx = 0.5 * (clip.x.min(1) + clip.x.max(1))
    ccy = 0.5 * (clip.y.min(1) + clip.y.max(1))
    sxmin, sxmax, symin, symax = subj.x.min(1), subj.x.max(1), subj.y.min(1), subj.y.max(1)
    cxmin, cxmax, cymin, cymax = clip.x.min(1), clip.x.max(1), clip.y.min(1), clip.y.max(1)
    area_of = _kernels.clip_area if _kernels.HAVE_NUMBA else _clip_area
    tiny = 1e-13 * (2 * buckets.half) ** 2  # pairs that only touch along an edge
    owners_s, owners_c, areas = [], [], []
    batch = max(1, _CHUNK // 8)  # ~8 candidates per subject quad
    for lo in range(0, subj.owner.size, batch):
        si, ci = buckets.candidates(subj, lo, min(lo + batch, subj.owner.size))
        shift = _TWO_PI * np.round((ccx[ci] - 0.5 * (sxmin[si] + sxmax[si])) / _TWO_PI)
        # drop pairs whose (aligned) bounding boxes do not overlap before clipping
        hit = (
            (sxmin[si] + shift < cxmax[ci])
            & (sxmax[si] + shift > cxmin[ci])
            & (symin[si] < cymax[ci])
            & (symax[si] > cymin[ci])
        )
        si, ci, shift = si[hit], ci[hit], shift[hit]
        # local coordinates around the clip quad's centre keep the shoelace sum accurate
        ox, oy = ccx[ci][:, None], ccy[ci][:, None]
        a = area_of(
            subj.x[si] + shift[:, None] - ox, subj.y[si] - oy, clip.x[ci] - ox, clip.y[ci] - oy
        )
        keep = a > tiny
        owners_s.append(subj.owner[si[keep]])
        owners_c.append(clip.owner[ci[keep]])
        areas.append(a[keep])
    return np.concatenate(owners_s), np.concatenate(owners_c), np.concatenate(areas)

"""HEALPix pixel <-> position maths, vectorised and array-namespace agnostic.

Written from the HEALPix paper (Gorski et al. 2005, ApJ 622:759) and the face/ring
layout it defines, so the same code runs on NumPy and CuPy arrays (``xp`` is the
namespace of the input).  Every branch is computed for all elements and selected
with ``xp.where``: no Python loops, no data-dependent control flow.

Conventions: longitudes/latitudes in degrees; pixels int64; ``nside`` a power of two.
A pixel is described inside its base face ``f`` (0..11) by ``(ix, iy)`` with
``ix`` growing north-east and ``iy`` north-west; the nested index interleaves the
bits of ``ix`` (even bits) and ``iy`` (odd bits).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._xp import namespace

# Base-face ring number (in units of nside) of each face's southern corner, and the
# longitude (in units of pi/4) of the face centre: the HEALPix face layout.
_JRLL = np.array([2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4], dtype=np.int64)
_JPLL = np.array([1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7], dtype=np.int64)

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_M8 = 0x00FF00FF00FF00FF
_M16 = 0x0000FFFF0000FFFF
_M32 = 0x00000000FFFFFFFF


def check_nside(nside: Any) -> int:
    """Validate ``nside``: a positive power of two up to 2**29 (int64 pixel indices)."""
    if isinstance(nside, bool) or not isinstance(nside, int | np.integer):
        raise TypeError(f"HEALPix nside must be an integer, got {type(nside).__name__}")
    nside = int(nside)
    if nside < 1 or nside & (nside - 1):
        raise ValueError(f"HEALPix nside must be a power of two, got {nside}")
    if nside > 2**29:
        raise ValueError(f"HEALPix nside {nside} exceeds 2**29 (int64 pixel index limit)")
    return int(nside)


def _spread(v: Any, xp: Any) -> Any:
    """Insert a zero bit between each of the low 32 bits of ``v``."""
    v = v & _M32
    v = (v | (v << 16)) & _M16
    v = (v | (v << 8)) & _M8
    v = (v | (v << 4)) & _M4
    v = (v | (v << 2)) & _M2
    return (v | (v << 1)) & _M1


def _compress(v: Any, xp: Any) -> Any:
    """Inverse of :func:`_spread`: keep the even bits of ``v``, packed."""
    v = v & _M1
    v = (v | (v >> 1)) & _M2
    v = (v | (v >> 2)) & _M4
    v = (v | (v >> 4)) & _M8
    v = (v | (v >> 8)) & _M16
    return (v | (v >> 16)) & _M32


def _isqrt(v: Any, xp: Any) -> Any:
    """Exact integer square root of non-negative int64 (float sqrt, then corrected)."""
    r = xp.floor(xp.sqrt(v.astype(xp.float64))).astype(xp.int64)
    r = xp.where(r * r > v, r - 1, r)
    return xp.where((r + 1) * (r + 1) <= v, r + 1, r)


def _pix(pix: Any, npix: int) -> tuple[Any, Any]:
    xp = namespace(pix)
    p = xp.asarray(pix)
    if p.dtype.kind not in "iu":
        raise TypeError(f"HEALPix pixel indices must be integers, got dtype {p.dtype}")
    p = p.astype(xp.int64)
    if p.size and (bool((p < 0).any()) or bool((p >= npix).any())):
        raise ValueError(f"HEALPix pixel index out of range [0, {npix})")
    return xp, p


# ---- nested <-> (ix, iy, face) ---------------------------------------------------------
def nest2xyf(nside: int, pix: Any) -> tuple[Any, Any, Any]:
    xp, p = _pix(pix, 12 * nside * nside)
    npface = nside * nside
    face = p // npface
    ipf = p % npface
    return _compress(ipf, xp), _compress(ipf >> 1, xp), face


def xyf2nest(nside: int, ix: Any, iy: Any, face: Any) -> Any:
    xp = namespace(ix)
    return face * (nside * nside) + _spread(ix, xp) + (_spread(iy, xp) << 1)


# ---- ring <-> (ix, iy, face) -----------------------------------------------------------
def _ring_coords(nside: int, p: Any, xp: Any) -> tuple[Any, Any, Any, Any]:
    """Ring number (1..4nside-1), 1-based position on the ring, ring length/4, and shift."""
    npix = 12 * nside * nside
    ncap = 2 * nside * (nside - 1)
    # north cap
    ir_n = (1 + _isqrt(1 + 2 * p, xp)) >> 1
    iphi_n = p + 1 - 2 * ir_n * (ir_n - 1)
    # equatorial belt
    ip = p - ncap
    tmp = xp.floor_divide(ip, 4 * nside)
    ir_e = tmp + nside
    iphi_e = ip - tmp * 4 * nside + 1
    # south cap (ring counted from the south pole first)
    ips = npix - p
    irs = (1 + _isqrt(xp.maximum(2 * ips - 1, 0), xp)) >> 1
    iphi_s = 4 * irs + 1 - (ips - 2 * irs * (irs - 1))
    north = p < ncap
    south = p >= npix - ncap
    iring = xp.where(north, ir_n, xp.where(south, 4 * nside - irs, ir_e))
    iphi = xp.where(north, iphi_n, xp.where(south, iphi_s, iphi_e))
    nr = xp.where(north, ir_n, xp.where(south, irs, nside))
    kshift = xp.where(north | south, 0, (iring + nside) & 1)
    return iring, iphi, nr, kshift


def ring2xyf(nside: int, pix: Any) -> tuple[Any, Any, Any]:
    xp, p = _pix(pix, 12 * nside * nside)
    iring, iphi, nr, kshift = _ring_coords(nside, p, xp)
    # face of an equatorial pixel: compare the two diagonal face indices it falls in
    tmp = iring - nside
    ire = tmp + 1
    irm = 2 * nside + 1 - tmp
    ifm = xp.floor_divide(iphi - (ire >> 1) + nside - 1, nside)
    ifp = xp.floor_divide(iphi - (irm >> 1) + nside - 1, nside)
    face_e = xp.where(ifp == ifm, ifp | 4, xp.where(ifp < ifm, ifp, ifm + 8))
    face_n = xp.floor_divide(iphi - 1, nr)
    face = xp.where(iring < nside, face_n, xp.where(iring > 3 * nside, face_n + 8, face_e))
    jrll = xp.asarray(_JRLL)[face]
    jpll = xp.asarray(_JPLL)[face]
    irt = iring - jrll * nside + 1
    ipt = 2 * iphi - jpll * nr - kshift - 1
    ipt = xp.where(ipt >= 2 * nside, ipt - 8 * nside, ipt)
    return (ipt - irt) >> 1, (-ipt - irt) >> 1, face


def xyf2ring(nside: int, ix: Any, iy: Any, face: Any) -> Any:
    xp = namespace(ix)
    npix = 12 * nside * nside
    ncap = 2 * nside * (nside - 1)
    jr = xp.asarray(_JRLL)[face] * nside - ix - iy - 1
    north = jr < nside
    south = jr > 3 * nside
    nr = xp.where(north, jr, xp.where(south, 4 * nside - jr, nside))
    n_before = xp.where(
        north,
        2 * nr * (nr - 1),
        xp.where(south, npix - 2 * (nr + 1) * nr, ncap + (jr - nside) * 4 * nside),
    )
    kshift = xp.where(north | south, 0, (jr - nside) & 1)
    jp = (xp.asarray(_JPLL)[face] * nr + ix - iy + 1 + kshift) >> 1
    jp = xp.where(jp > 4 * nr, jp - 4 * nr, xp.where(jp < 1, jp + 4 * nr, jp))
    return n_before + jp - 1


def nest2ring(nside: int, pix: Any) -> Any:
    """Ring index of nested pixels."""
    nside = check_nside(nside)
    return xyf2ring(nside, *nest2xyf(nside, pix))


def ring2nest(nside: int, pix: Any) -> Any:
    """Nested index of ring pixels."""
    nside = check_nside(nside)
    return xyf2nest(nside, *ring2xyf(nside, pix))


# ---- pixel -> centre -------------------------------------------------------------------
def _ring_lonlat(
    nside: int, iring: Any, iphi: Any, nr: Any, kshift: Any, xp: Any
) -> tuple[Any, Any]:
    """Centre of pixel ``iphi`` on ring ``iring``; polar latitudes via the half-angle
    form so that rings next to the pole keep full precision."""
    north = iring < nside
    south = iring > 3 * nside
    nrf = nr.astype(xp.float64)
    # colatitude/2 of polar rings: sin(theta/2) = nr / (sqrt(6) nside)
    half = xp.arcsin(xp.minimum(nrf / (np.sqrt(6.0) * nside), 1.0))
    polar_lat = 90.0 - xp.rad2deg(2.0 * half)
    z_eq = (2 * nside - iring).astype(xp.float64) * (2.0 / (3.0 * nside))
    lat = xp.where(
        north,
        polar_lat,
        xp.where(south, -polar_lat, xp.rad2deg(xp.arcsin(xp.clip(z_eq, -1.0, 1.0)))),
    )
    lon = (iphi.astype(xp.float64) - 0.5 * (1 + kshift)) * (90.0 / nrf)
    return lon, lat


def pix2lonlat_ring(nside: int, pix: Any) -> tuple[Any, Any]:
    """(lon, lat) degrees of the centres of RING pixels."""
    nside = check_nside(nside)
    xp, p = _pix(pix, 12 * nside * nside)
    return _ring_lonlat(nside, *_ring_coords(nside, p, xp), xp)


def pix2lonlat_nest(nside: int, pix: Any) -> tuple[Any, Any]:
    """(lon, lat) degrees of the centres of NESTED pixels."""
    nside = check_nside(nside)
    ix, iy, face = nest2xyf(nside, pix)
    xp = namespace(ix)
    jr = xp.asarray(_JRLL)[face] * nside - ix - iy - 1
    north = jr < nside
    south = jr > 3 * nside
    nr = xp.where(north, jr, xp.where(south, 4 * nside - jr, nside))
    kshift = xp.where(north | south, 0, (jr - nside) & 1)
    jp = (xp.asarray(_JPLL)[face] * nr + ix - iy + 1 + kshift) >> 1
    jp = xp.where(jp > 4 * nr, jp - 4 * nr, xp.where(jp < 1, jp + 4 * nr, jp))
    return _ring_lonlat(nside, jr, jp, nr, kshift, xp)


# ---- position -> pixel -----------------------------------------------------------------
def _loc(lon: Any, lat: Any) -> tuple[Any, Any, Any, Any, Any]:
    """z = sin(lat), longitude in quarter turns [0, 4), and sqrt(3 (1 - |z|)).

    Follows the float path of the reference implementation (colatitude in radians, its
    cosine, and the sine form near the poles) so that points lying exactly on pixel
    boundaries fall into the same pixel as with healpy.
    """
    xp = namespace(lon, lat)
    lon = xp.asarray(lon, dtype=xp.float64)
    lat = xp.asarray(lat, dtype=xp.float64)
    lon, lat = xp.broadcast_arrays(lon, lat)
    if lat.size and bool((xp.abs(lat) > 90.0).any()):
        raise ValueError("latitude outside [-90, 90] degrees")
    theta = np.pi / 2 - xp.deg2rad(lat)
    z = xp.cos(theta)
    # wrap phi into [0, 2 pi) before scaling, as the reference does: the other order rounds
    # differently and puts points on the z = +-2/3 boundary at some negative longitudes a ring off
    tt = xp.mod(xp.deg2rad(lon), 2.0 * np.pi) * (2.0 / np.pi)
    tt = xp.where(tt >= 4.0, 0.0, tt)
    za = xp.abs(z)
    near_pole = (theta < 0.01) | (theta > np.pi - 0.01)  # avoid cancellation in 1 - |z|
    tmp_polar = xp.where(
        near_pole, xp.sin(theta) / xp.sqrt((1.0 + za) / 3.0), xp.sqrt(3.0 * (1.0 - za))
    )
    return xp, z, tt, tmp_polar, lat


def lonlat2pix_ring(nside: int, lon: Any, lat: Any) -> Any:
    """RING pixel containing each (lon, lat) point (degrees)."""
    nside = check_nside(nside)
    xp, z, tt, tmp_polar, _ = _loc(lon, lat)
    npix = 12 * nside * nside
    ncap = 2 * nside * (nside - 1)
    # equatorial belt
    t1 = nside * (0.5 + tt)
    t2 = nside * z * 0.75
    jp = (t1 - t2).astype(xp.int64)
    jm = (t1 + t2).astype(xp.int64)
    ir = nside + 1 + jp - jm  # ring counted from z = 2/3
    kshift = 1 - (ir & 1)
    ip = xp.mod((jp + jm - nside + kshift + 1) >> 1, 4 * nside)
    pix_eq = ncap + (ir - 1) * 4 * nside + ip
    # polar caps
    tp = tt - xp.floor(tt)
    tmp = nside * tmp_polar
    jpp = (tp * tmp).astype(xp.int64)
    jmp = ((1.0 - tp) * tmp).astype(xp.int64)
    irp = jpp + jmp + 1
    ipp = (tt * irp).astype(xp.int64)
    ipp = xp.where(ipp >= 4 * irp, ipp - 4 * irp, ipp)
    pix_pol = xp.where(z > 0, 2 * irp * (irp - 1) + ipp, npix - 2 * irp * (irp + 1) + ipp)
    return xp.where(xp.abs(z) <= 2.0 / 3.0, pix_eq, pix_pol)


def lonlat2pix_nest(nside: int, lon: Any, lat: Any) -> Any:
    """NESTED pixel containing each (lon, lat) point (degrees)."""
    nside = check_nside(nside)
    xp, z, tt, tmp_polar, _ = _loc(lon, lat)
    # equatorial belt
    t1 = nside * (0.5 + tt)
    t2 = nside * (z * 0.75)
    jp = (t1 - t2).astype(xp.int64)
    jm = (t1 + t2).astype(xp.int64)
    ifp = jp // nside
    ifm = jm // nside
    face_e = xp.where(ifp == ifm, ifp | 4, xp.where(ifp < ifm, ifp, ifm + 8))
    ix_e = jm & (nside - 1)
    iy_e = nside - (jp & (nside - 1)) - 1
    # polar caps
    ntt = xp.minimum(tt.astype(xp.int64), 3)
    tp = tt - ntt
    tmp = nside * tmp_polar
    jpp = xp.minimum((tp * tmp).astype(xp.int64), nside - 1)
    jmp = xp.minimum(((1.0 - tp) * tmp).astype(xp.int64), nside - 1)
    north = z >= 0
    face_p = xp.where(north, ntt, ntt + 8)
    ix_p = xp.where(north, nside - jmp - 1, jpp)
    iy_p = xp.where(north, nside - jpp - 1, jmp)
    eq = xp.abs(z) <= 2.0 / 3.0
    return xyf2nest(
        nside, xp.where(eq, ix_e, ix_p), xp.where(eq, iy_e, iy_p), xp.where(eq, face_e, face_p)
    )


# ---- neighbours ------------------------------------------------------------------------
# Directions in face coordinates, in healpy's order: SW, W, NW, N, NE, E, SE, S.
_DIRS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))

# Crossing a face edge/corner: (face row 0=north 1=equator 2=south, x-out, y-out) ->
# (row of the neighbour face, face-number step within the row, coordinate transform).
# Derived from the face layout: north face k touches equatorial faces k (SW) and k+1 (SE),
# north faces k+1 (NE, axes swapped) and k-1 (NW); the pole joins faces k and k+2;
# a missing entry is a 3-face vertex, where the pixel has only 7 neighbours.
_CROSS = {
    (0, -1, 0): (1, 0, "wrap"),
    (0, 0, -1): (1, 1, "wrap"),
    (0, 1, 0): (0, 1, "swap_x"),
    (0, 0, 1): (0, 3, "swap_y"),
    (0, 1, 1): (0, 2, "flip"),
    (0, -1, -1): (2, 0, "wrap"),
    (1, 1, 0): (0, 0, "wrap"),
    (1, 0, 1): (0, 3, "wrap"),
    (1, -1, 0): (2, 3, "wrap"),
    (1, 0, -1): (2, 0, "wrap"),
    (1, 1, -1): (1, 1, "wrap"),
    (1, -1, 1): (1, 3, "wrap"),
    (2, -1, 0): (2, 3, "swap_x"),
    (2, 0, -1): (2, 1, "swap_y"),
    (2, -1, -1): (2, 2, "flip"),
    (2, 1, 1): (0, 0, "wrap"),
    (2, 1, 0): (1, 1, "wrap"),
    (2, 0, 1): (1, 0, "wrap"),
}


_HOW = {"wrap": 0, "swap_x": 1, "swap_y": 2, "flip": 3}


def _cross_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """_CROSS as lookup arrays indexed by row * 9 + (xo + 1) * 3 + (yo + 1)."""
    row2 = np.repeat(np.arange(3, dtype=np.int64), 9)  # default: stay on the face
    dk = np.zeros(27, dtype=np.int64)
    how = np.zeros(27, dtype=np.int64)
    valid = np.zeros(27, dtype=bool)
    valid[[r * 9 + 4 for r in range(3)]] = True  # (0, 0): inside the face
    for (r, cx, cy), (r2, step, kind) in _CROSS.items():
        code = r * 9 + (cx + 1) * 3 + (cy + 1)
        row2[code], dk[code], how[code], valid[code] = r2, step, _HOW[kind], True
    return row2, dk, how, valid


_T_ROW2, _T_DK, _T_HOW, _T_VALID = _cross_tables()


def neighbours_xyf(nside: int, ix: Any, iy: Any, face: Any) -> tuple[Any, Any, Any, Any]:
    """The 8 neighbours (SW, W, NW, N, NE, E, SE, S) of pixels given in face coordinates.

    Returns (ix, iy, face, valid), each shaped (8, n).  One table lookup per direction
    decides which face an out-of-face step lands on and how its axes turn.
    """
    xp = namespace(ix)
    t_row2, t_dk, t_how, t_valid = (xp.asarray(t) for t in (_T_ROW2, _T_DK, _T_HOW, _T_VALID))
    row = face // 4
    k = face % 4
    outs = []
    for dx, dy in _DIRS:
        x = ix + dx
        y = iy + dy
        xo = (x >= nside).astype(xp.int64) - (x < 0).astype(xp.int64)
        yo = (y >= nside).astype(xp.int64) - (y < 0).astype(xp.int64)
        code = row * 9 + (xo + 1) * 3 + (yo + 1)
        how = t_how[code]
        xm = xp.mod(x, nside)
        ym = xp.mod(y, nside)
        # wrap: (xm, ym); swap_x: (ym, n-1-xm); swap_y: (n-1-ym, xm); flip: (n-1-xm, n-1-ym)
        nx = xp.where(how == 0, xm, xp.where(how == 1, ym, nside - 1 - xp.where(how == 2, ym, xm)))
        ny = xp.where(how == 0, ym, xp.where(how == 2, xm, nside - 1 - xp.where(how == 1, xm, ym)))
        nf = 4 * t_row2[code] + (k + t_dk[code]) % 4
        outs.append((nx, ny, nf, t_valid[code]))
    return tuple(xp.stack([o[i] for o in outs]) for i in range(4))

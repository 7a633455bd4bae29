"""HEALPix grids (nested or ring ordering), on NumPy or CuPy arrays."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from . import _healpix as hpx
from ._xp import namespace
from .base import EARTH_RADIUS_M, Grid, Rings, rings_from_nlon


class HEALPix(Grid):
    """HEALPix grid with ``12 nside**2`` equal-area cells.

    ``nest=True`` is the nested ordering (what ECMWF's HEALPix output and xdggs use by
    default); ``nest=False`` the ring ordering.  Native layout is one dimension.
    """

    def __init__(self, nside: int, nest: bool = True, *, dims: tuple[str, ...] = ("cell",)):
        self.nside = hpx.check_nside(nside)
        if not isinstance(nest, bool | np.bool_):
            raise TypeError(f"HEALPix nest must be a bool, got {nest!r}")
        self.nest = bool(nest)
        self.size = 12 * self.nside * self.nside
        self.shape = (self.size,)
        self.dims = ("cell",)
        self.dims = self.check_dims(dims)

    @property
    def order(self) -> int:
        """log2(nside) (the HEALPix 'level' / 'refinement')."""
        return self.nside.bit_length() - 1

    @property
    def key(self) -> str:
        return f"healpix-n{self.nside}-{'nested' if self.nest else 'ring'}"

    # ---- pixel maths (array-namespace agnostic) --------------------------------------
    def pix2lonlat(self, pix: Any) -> tuple[Any, Any]:
        """(lon in [0, 360), lat) degrees of native pixel indices (NumPy or CuPy)."""
        f = hpx.pix2lonlat_nest if self.nest else hpx.pix2lonlat_ring
        lon, lat = f(self.nside, pix)
        return namespace(lon).mod(lon, 360.0), lat

    def lonlat2pix(self, lon: Any, lat: Any) -> Any:
        """Native pixel index containing each point (degrees; NumPy or CuPy)."""
        f = hpx.lonlat2pix_nest if self.nest else hpx.lonlat2pix_ring
        return f(self.nside, lon, lat)

    def to_ring(self, pix: Any) -> Any:
        """RING index of native pixels."""
        return hpx.nest2ring(self.nside, pix) if self.nest else pix

    def to_nest(self, pix: Any) -> Any:
        """NESTED index of native pixels."""
        return pix if self.nest else hpx.ring2nest(self.nside, pix)

    def from_ring(self, pix: Any) -> Any:
        """Native index of RING pixels."""
        return hpx.ring2nest(self.nside, pix) if self.nest else pix

    # ---- Grid interface --------------------------------------------------------------
    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        lon = np.empty(self.size)
        lat = np.empty(self.size)
        for sl, pix in _blocks(self.size):
            lon[sl], lat[sl] = self.pix2lonlat(pix)
        return lon, lat

    def areas(self) -> np.ndarray:
        return np.full(self.size, 4.0 * np.pi * EARTH_RADIUS_M**2 / self.size)

    def rings(self) -> Rings:
        n = self.nside
        i = np.arange(1, 4 * n, dtype=np.int64)  # ring number from the north pole
        nr = np.minimum(np.minimum(i, 4 * n - i), n)  # cells per quarter ring
        # polar rings and equatorial rings with (i + nside) even start half a cell east of 0
        shifted = (i < n) | (i > 3 * n) | (((i + n) & 1) == 0)
        lon0 = np.where(shifted, 45.0 / nr, 0.0)
        lat = hpx.pix2lonlat_ring(n, rings_start(n, i))[1]
        return rings_from_nlon(lat, 4 * nr, lon0)

    def ring_order(self) -> np.ndarray | None:
        if not self.nest:
            return None
        out = np.empty(self.size, dtype=np.int64)
        for sl, pix in _blocks(self.size):
            out[sl] = hpx.ring2nest(self.nside, pix)
        return out

    def ring_ids(self) -> np.ndarray:
        out = np.empty(self.size, dtype=np.int64)
        for sl, pix in _blocks(self.size):
            if self.nest:  # ring number straight from the face coordinates
                ix, iy, face = hpx.nest2xyf(self.nside, pix)
                out[sl] = hpx._JRLL[face] * self.nside - ix - iy - 2
            else:
                out[sl] = rings_of_ring_pixels(self.nside, pix)
        return out

    def neighbours(self, index: Any) -> Any:
        """(n, 8) native indices of the SW, W, NW, N, NE, E, SE, S neighbours (-1: none)."""
        xp = namespace(index)
        idx = xp.atleast_1d(xp.asarray(index))
        xyf = hpx.nest2xyf if self.nest else hpx.ring2xyf
        to_pix = hpx.xyf2nest if self.nest else hpx.xyf2ring
        nx, ny, nf, valid = hpx.neighbours_xyf(self.nside, *xyf(self.nside, idx))
        out = xp.where(valid, to_pix(self.nside, nx, ny, nf), -1)
        return out.T


def _blocks(n: int, block: int = 1 << 20) -> Iterator[tuple[slice, np.ndarray]]:
    """(slice, pixel indices) in blocks: whole-grid maths on n1024+ stays in cache and
    its int64 temporaries stay small (12.6M pixels at once would need ~2 GB)."""
    for start in range(0, n, block):
        stop = min(n, start + block)
        yield slice(start, stop), np.arange(start, stop, dtype=np.int64)


def rings_start(nside: int, iring: np.ndarray) -> np.ndarray:
    """RING index of the first pixel of rings ``iring`` (1-based from the north pole)."""
    npix = 12 * nside * nside
    ncap = 2 * nside * (nside - 1)
    south = 4 * nside - iring
    return np.where(
        iring < nside,
        2 * iring * (iring - 1),
        np.where(
            iring > 3 * nside, npix - 2 * south * (south + 1), ncap + (iring - nside) * 4 * nside
        ),
    )


def rings_of_ring_pixels(nside: int, pix: Any) -> Any:
    """0-based ring number (north -> south) of RING pixel indices."""
    xp = namespace(pix)
    iring = hpx._ring_coords(nside, xp.asarray(pix, dtype=xp.int64), xp)[0]
    return iring - 1

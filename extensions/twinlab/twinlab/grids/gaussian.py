"""Gaussian grids: regular (F), classic reduced (N) and octahedral reduced (O).

Latitudes are ECMWF's: ``arcsin`` of the roots of the Legendre polynomial P_2N, ordered
north -> south; every ring starts at longitude 0 with ``pl[i]`` equally spaced cells.

Cell latitude bounds (the choice matters for areas and conservative regridding): the
Gaussian quadrature weights ``w_i`` (which sum to 2) are the band areas in ``sin(lat)``,
so ring ``i`` spans ``sin(lat) in [1 - sum_{j<=i} w_j, 1 - sum_{j<i} w_j]``.  Band areas
are then exactly ``2 pi R^2 w_i`` — the weights the spectral transform itself uses —
and each ring's centre latitude lies inside its band.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from .base import Grid, Rings, rings_from_nlon


@lru_cache(maxsize=16)
def _legendre_roots(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positive roots (descending) of P_n and their quadrature weights, via Newton.

    Vectorised over roots, O(n^2) per iteration: O1280 (n = 2560) takes well under a second,
    where an eigenvalue solve (numpy's leggauss) takes several.
    """
    m = n // 2  # n is even for Gaussian grids
    i = np.arange(1, m + 1, dtype=np.float64)
    # Tricomi's asymptotic first guess; Newton converges in a few steps from it
    x = np.cos(np.pi * (i - 0.25) / (n + 0.5)) * (1.0 - (1.0 - 1.0 / n) / (8.0 * n * n))
    for _ in range(100):
        p0 = np.ones_like(x)
        p1 = x.copy()
        for k in range(1, n):
            p0, p1 = p1, ((2 * k + 1) * x * p1 - k * p0) / (k + 1)
        dp = n * (x * p1 - p0) / (x * x - 1.0)
        dx = p1 / dp
        x = x - dx
        if np.max(np.abs(dx)) < 1e-15:
            break
    p0 = np.ones_like(x)
    p1 = x.copy()
    for k in range(1, n):
        p0, p1 = p1, ((2 * k + 1) * x * p1 - k * p0) / (k + 1)
    dp = n * (x * p1 - p0) / (x * x - 1.0)
    w = 2.0 / ((1.0 - x * x) * dp * dp)
    x.flags.writeable = False
    w.flags.writeable = False
    return x, w


def gaussian_latitudes(N: int) -> np.ndarray:
    """The 2N Gaussian latitudes (degrees), north -> south."""
    x, _ = _legendre_roots(2 * _check_N(N))
    north = np.rad2deg(np.arcsin(x))
    return np.concatenate([north, -north[::-1]])


def gaussian_weights(N: int) -> np.ndarray:
    """The 2N Gaussian quadrature weights (sum 2), north -> south."""
    _, w = _legendre_roots(2 * _check_N(N))
    return np.concatenate([w, w[::-1]])


def gaussian_lat_bounds(N: int) -> np.ndarray:
    """(2N, 2) north/south band edges (degrees) whose sin-spans equal the weights."""
    _, w = _legendre_roots(2 * _check_N(N))
    s = 1.0 - np.concatenate([[0.0], np.cumsum(w)])  # northern hemisphere, 1 .. ~0
    s[-1] = 0.0  # the weights of one hemisphere sum to 1: pin the equator exactly
    edges = np.rad2deg(np.arcsin(np.clip(s, -1.0, 1.0)))
    north = np.stack([edges[:-1], edges[1:]], axis=1)
    south = -north[::-1, ::-1]
    return np.concatenate([north, south])


def octahedral_pl(N: int) -> np.ndarray:
    """Cells per ring of the octahedral grid O<N>: 20, 24, ..., 4N+16, 4N+16, ..., 20."""
    half = 4 * np.arange(1, _check_N(N) + 1, dtype=np.int64) + 16
    return np.concatenate([half, half[::-1]])


def _check_N(N: object) -> int:
    if isinstance(N, bool) or not isinstance(N, int | np.integer):
        raise TypeError(f"Gaussian grid number N must be an integer, got {type(N).__name__}")
    if int(N) < 1:
        raise ValueError(f"Gaussian grid number N must be >= 1, got {N}")
    return int(N)


class _GaussianBase(Grid):
    N: int
    pl: np.ndarray

    def rings(self) -> Rings:
        return rings_from_nlon(gaussian_latitudes(self.N), self.pl, 0.0)

    def lat_bounds(self) -> np.ndarray:
        return gaussian_lat_bounds(self.N)


class ReducedGaussian(_GaussianBase):
    """Reduced Gaussian grid with ``pl[i]`` cells on latitude ``i`` (native: 1-D, ring order).

    ``pl`` has 2N entries (north -> south), or N entries for the northern half, mirrored.
    """

    def __init__(self, N: int, pl: np.ndarray | list[int], *, dims: tuple[str, ...] = ("cell",)):
        self.N = _check_N(N)
        pl_arr = np.asarray(pl)
        if pl_arr.ndim != 1 or pl_arr.dtype.kind not in "iu":
            raise TypeError(f"pl must be a 1-D integer array, got {pl_arr.dtype} {pl_arr.shape}")
        if pl_arr.size == self.N:
            pl_arr = np.concatenate([pl_arr, pl_arr[::-1]])
        if pl_arr.size != 2 * self.N:
            raise ValueError(
                f"pl for N={self.N} needs {2 * self.N} (or {self.N}) entries, got {pl_arr.size}"
            )
        if (pl_arr < 1).any():
            raise ValueError("pl entries must be positive")
        self.pl = pl_arr.astype(np.int64)
        self.pl.flags.writeable = False
        self.size = int(self.pl.sum())
        self.shape = (self.size,)
        self.dims = ("cell",)
        self.dims = self.check_dims(dims)

    @property
    def is_octahedral(self) -> bool:
        return bool(np.array_equal(self.pl, octahedral_pl(self.N)))

    @property
    def key(self) -> str:
        if self.is_octahedral:
            return f"octahedral-O{self.N}"
        digest = hashlib.sha1(self.pl.tobytes()).hexdigest()[:12]
        return f"reduced_gg-N{self.N}-{digest}"


class Octahedral(ReducedGaussian):
    """ECMWF octahedral reduced Gaussian grid O<N> (e.g. O1280 for IFS 9 km)."""

    def __init__(self, N: int, *, dims: tuple[str, ...] = ("cell",)):
        super().__init__(N, octahedral_pl(N), dims=dims)


class Gaussian(_GaussianBase):
    """Regular Gaussian grid F<N>: 2N latitudes x 4N longitudes from 0 (native: lat, lon)."""

    def __init__(self, N: int, *, dims: tuple[str, ...] = ("latitude", "longitude")):
        self.N = _check_N(N)
        self.pl = np.full(2 * self.N, 4 * self.N, dtype=np.int64)
        self.size = 8 * self.N * self.N
        self.shape = (2 * self.N, 4 * self.N)
        self.dims = ("latitude", "longitude")
        self.dims = self.check_dims(dims)

    @property
    def key(self) -> str:
        return f"regular_gg-F{self.N}"

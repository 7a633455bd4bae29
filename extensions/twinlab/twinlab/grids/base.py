"""The grid interface shared by grid definitions, operations and regridding.

Every grid is described two ways:

* its **native layout** (``shape``/``dims``, flattened C order), the order of values in files;
* its **rings**: iso-latitude circles of equally spaced cells, ordered north -> south.

All supported grids (HEALPix, reduced/regular Gaussian, lat-lon) are ring grids, so
zonal means, latitude bands and conservative regridding can work ring by ring.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: Mean Earth radius (IUGG), metres; areas are on a sphere of this radius.
EARTH_RADIUS_M = 6371008.8


@dataclass(frozen=True)
class Rings:
    """Iso-latitude structure of a grid, ordered north -> south."""

    lat: np.ndarray  # (nrings,) float64 centre latitude of each ring, degrees
    nlon: np.ndarray  # (nrings,) int64 number of cells on the ring
    lon0: np.ndarray  # (nrings,) float64 longitude of the ring's first cell centre (deg)
    start: np.ndarray  # (nrings,) int64 offset of the ring's first cell in RING order

    @property
    def nrings(self) -> int:
        return int(self.lat.shape[0])

    @property
    def size(self) -> int:
        return int(self.nlon.sum())

    def ring_index(self) -> np.ndarray:
        """Ring number of every cell, in RING order (int64)."""
        return np.repeat(np.arange(self.nrings, dtype=np.int64), self.nlon)

    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        """(lon, lat) of every cell in RING order; lon in [0, 360)."""
        ring = self.ring_index()
        pos = np.arange(self.size, dtype=np.int64) - self.start[ring]
        lon = self.lon0[ring] + pos * (360.0 / self.nlon[ring])
        return np.mod(lon, 360.0), self.lat[ring].astype(np.float64)


def rings_from_nlon(lat: np.ndarray, nlon: np.ndarray, lon0: np.ndarray | float = 0.0) -> Rings:
    """Build :class:`Rings` from per-ring latitudes and cell counts."""
    lat = np.asarray(lat, dtype=np.float64)
    nlon = np.asarray(nlon, dtype=np.int64)
    lon0 = np.broadcast_to(np.asarray(lon0, dtype=np.float64), lat.shape).copy()
    start = np.zeros_like(nlon)
    np.cumsum(nlon[:-1], out=start[1:])
    return Rings(lat=lat, nlon=nlon, lon0=lon0, start=start)


class Grid(ABC):
    """A global spherical grid.

    Subclasses set ``size``, ``shape`` and ``dims`` (the native layout of one field's
    spatial dimensions) and implement :meth:`rings` plus whatever they can do faster
    than the ring-based defaults here.
    """

    size: int
    shape: tuple[int, ...]
    dims: tuple[str, ...]

    # ---- identity -------------------------------------------------------------------
    @property
    @abstractmethod
    def key(self) -> str:
        """Stable identity for caches, e.g. ``healpix-n1024-nested``."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grid) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key} size={self.size} dims={self.dims}>"

    # ---- geometry -------------------------------------------------------------------
    @abstractmethod
    def rings(self) -> Rings:
        """Iso-latitude rings, north -> south."""

    def ring_order(self) -> np.ndarray | None:
        """Native flat index of each ring-ordered cell; None when native order is ring order."""
        return None

    def lat_bounds(self) -> np.ndarray | None:
        """(nrings, 2) north/south cell-edge latitudes (deg); None when cells are not lat-lon boxes."""
        return None

    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        """(lon, lat) cell centres in degrees, flattened native order, lon in [0, 360)."""
        lon, lat = self.rings().centers()
        return self._ring_to_native(lon), self._ring_to_native(lat)

    def areas(self) -> np.ndarray:
        """Cell areas (m^2) on the sphere of radius EARTH_RADIUS_M, native order."""
        bounds = self.lat_bounds()
        if bounds is None:  # pragma: no cover - subclasses without boxes override
            raise NotImplementedError(f"{type(self).__name__} must implement areas()")
        r = self.rings()
        s = np.sin(np.deg2rad(bounds))
        band = 2.0 * np.pi * EARTH_RADIUS_M**2 * (s[:, 0] - s[:, 1])
        return self._ring_to_native(np.repeat(band / r.nlon, r.nlon))

    def ring_ids(self) -> np.ndarray:
        """Ring number of every cell in native order (int64), for bincount reductions."""
        return self._ring_to_native(self.rings().ring_index())

    def neighbours(self, index: np.ndarray | int) -> np.ndarray:
        """(n, 8) native indices of the SW, W, NW, N, NE, E, SE, S neighbours; -1 where none.

        Default for ring grids: W/E on the same ring; on the rings north and south, the
        cell whose centre is nearest in longitude, and that cell's west/east neighbours.
        (On a regular lat-lon grid this is the usual 8-cell stencil.)
        """
        idx = np.atleast_1d(np.asarray(index))
        if idx.dtype.kind not in "iu":
            raise TypeError(f"cell indices must be integers, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise ValueError(f"cell index out of range [0, {self.size})")
        r = self.rings()
        order = self._native_of_ring
        if order is None:
            pos = idx.astype(np.int64)
        else:
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            pos = inv[idx]
        ring = np.searchsorted(r.start, pos, side="right") - 1
        j = pos - r.start[ring]
        lon = r.lon0[ring] + j * (360.0 / r.nlon[ring])

        def on_ring(rr: np.ndarray, jj: np.ndarray) -> np.ndarray:
            ok = (rr >= 0) & (rr < r.nrings)
            rc = np.clip(rr, 0, r.nrings - 1)
            p = r.start[rc] + np.mod(jj, r.nlon[rc])
            native = p if order is None else order[p]
            return np.asarray(np.where(ok, native, -1))

        def nearest(rr: np.ndarray) -> np.ndarray:
            rc = np.clip(rr, 0, r.nrings - 1)
            return np.asarray(np.floor((lon - r.lon0[rc]) * r.nlon[rc] / 360.0 + 0.5), np.int64)

        jn, js = nearest(ring - 1), nearest(ring + 1)
        cols = [
            on_ring(ring + 1, js - 1),  # SW
            on_ring(ring, j - 1),  # W
            on_ring(ring - 1, jn - 1),  # NW
            on_ring(ring - 1, jn),  # N
            on_ring(ring - 1, jn + 1),  # NE
            on_ring(ring, j + 1),  # E
            on_ring(ring + 1, js + 1),  # SE
            on_ring(ring + 1, js),  # S
        ]
        return np.stack(cols, axis=1)

    # ---- helpers --------------------------------------------------------------------
    @cached_property
    def _native_of_ring(self) -> np.ndarray | None:
        return self.ring_order()

    def _ring_to_native(self, values: np.ndarray) -> np.ndarray:
        """Reorder a ring-ordered array into native order."""
        order = self._native_of_ring
        if order is None:
            return values
        out = np.empty_like(values)
        out[order] = values
        return out

    def check_dims(self, dims: tuple[str, ...] | None) -> tuple[str, ...]:
        """Validate/normalise dimension names for this grid's native layout."""
        if dims is None:
            return self.dims
        dims = tuple(dims)
        if len(dims) != len(self.shape):
            raise ValueError(
                f"{type(self).__name__} has {len(self.shape)} spatial dimension(s) "
                f"{self.shape}, got dims={dims}"
            )
        return dims

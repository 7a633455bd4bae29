"""Regular latitude-longitude grids, node-based (ERA5-like, poles included) or cell-centred."""

from __future__ import annotations

import numpy as np

from .base import Grid, Rings, rings_from_nlon


def _count(span: float, step: float, what: str) -> int:
    if isinstance(step, bool) or not isinstance(step, int | float | np.integer | np.floating):
        raise TypeError(f"LatLon {what} must be a number of degrees, got {type(step).__name__}")
    step = float(step)
    if not step > 0:
        raise ValueError(f"LatLon {what} must be > 0 degrees, got {step}")
    n = round(span / step)
    if n < 1 or abs(n * step - span) > 1e-9 * span:
        raise ValueError(f"LatLon {what}={step} does not divide {span:g} degrees")
    return n


class LatLon(Grid):
    """Regular lat-lon grid with spacing ``dlon`` x ``dlat`` degrees (native: lat, lon).

    ``nodes=True`` (default, ECMWF/ERA5 convention): latitudes 90, 90-dlat, ..., -90
    (``180/dlat + 1`` rows, the pole rows are polar caps of half height) and longitudes
    from ``lon0=0``.  ``nodes=False``: cell-centred, latitudes 90-dlat/2 ... -90+dlat/2 and
    longitudes from ``lon0=dlon/2``, every cell a full dlon x dlat box.
    ``descending=False`` when the file stores latitudes south -> north.
    """

    def __init__(
        self,
        dlon: float,
        dlat: float | None = None,
        *,
        nodes: bool = True,
        lon0: float | None = None,
        descending: bool = True,
        dims: tuple[str, ...] = ("latitude", "longitude"),
    ):
        dlat = dlon if dlat is None else dlat
        self.nlon = _count(360.0, dlon, "dlon")
        nbands = _count(180.0, dlat, "dlat")
        self.dlon = 360.0 / self.nlon
        self.dlat = 180.0 / nbands
        self.nodes = bool(nodes)
        self.nlat = nbands + 1 if self.nodes else nbands
        default_lon0 = 0.0 if self.nodes else self.dlon / 2
        self.lon0 = float(np.mod(default_lon0 if lon0 is None else lon0, 360.0))
        self.descending = bool(descending)
        self.size = self.nlat * self.nlon
        self.shape = (self.nlat, self.nlon)
        self.dims = ("latitude", "longitude")
        self.dims = self.check_dims(dims)

    @property
    def key(self) -> str:
        key = f"latlon-{self.dlon:g}x{self.dlat:g}-{'nodes' if self.nodes else 'centres'}"
        if not np.isclose(self.lon0, 0.0 if self.nodes else self.dlon / 2):
            key += f"-lon0={self.lon0:g}"
        return key if self.descending else key + "-ascending"

    def latitudes(self) -> np.ndarray:
        """Ring latitudes, north -> south."""
        if self.nodes:
            lat = 90.0 - self.dlat * np.arange(self.nlat)
            lat[-1] = -90.0
        else:
            lat = 90.0 - self.dlat * (np.arange(self.nlat) + 0.5)
        return lat

    def longitudes(self) -> np.ndarray:
        """Column longitudes in native order, in [0, 360)."""
        return np.asarray(np.mod(self.lon0 + self.dlon * np.arange(self.nlon), 360.0))

    def rings(self) -> Rings:
        return rings_from_nlon(self.latitudes(), np.full(self.nlat, self.nlon), self.lon0)

    def lat_bounds(self) -> np.ndarray:
        lat = self.latitudes()
        half = self.dlat / 2
        return np.stack([np.minimum(lat + half, 90.0), np.maximum(lat - half, -90.0)], axis=1)

    def ring_order(self) -> np.ndarray | None:
        if self.descending:
            return None
        rows = (self.nlat - 1 - np.arange(self.nlat))[:, None] * self.nlon
        return (rows + np.arange(self.nlon)[None, :]).ravel()

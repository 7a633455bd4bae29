"""Screen views of the globe in map projections, and their pixel <-> lon/lat maps.

A :class:`View` is a width x height raster of a projection: ``zoom`` 1 fits the whole map
(the whole globe disc for the orthographic projection) in the raster, ``zoom`` 2 shows half
as much.  For flat maps ``center_lon`` is the central meridian and the screen centre,
``center_lat`` the latitude at the screen centre; for the orthographic globe they are the
sub-observer point (the globe's rotation).  Pixel ``(col i, row j)`` covers
``[i, i+1) x [j, j+1)``; its centre is ``(i + 0.5, j + 0.5)``, row 0 at the top.

No cartopy/pyproj: every projection here is a few lines of NumPy, on the unit sphere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

PROJECTIONS = ("platecarree", "webmercator", "robinson", "mollweide", "orthographic")

MAX_VIEW_ZOOM = 2.0**24  # beyond this, float64 pixel maths loses sub-pixel accuracy
_MERC_MAX_LAT = 85.05112877980659  # Web Mercator's square: y = +-pi
_SQRT2 = math.sqrt(2.0)

# Robinson's table (lat 0, 5, ..., 90): parallel length and distance from the equator.
_ROB_LAT = np.arange(0.0, 90.1, 5.0)
_ROB_X = np.array(
    [
        1.0,
        0.9986,
        0.9954,
        0.99,
        0.9822,
        0.973,
        0.96,
        0.9427,
        0.9216,
        0.8962,
        0.8679,
        0.835,
        0.7986,
        0.7597,
        0.7186,
        0.6732,
        0.6213,
        0.5722,
        0.5322,
    ]  # fmt: skip
)
_ROB_Y = np.array(
    [
        0.0,
        0.062,
        0.124,
        0.186,
        0.248,
        0.31,
        0.372,
        0.434,
        0.4958,
        0.5571,
        0.6176,
        0.6769,
        0.7346,
        0.7903,
        0.8435,
        0.8936,
        0.9394,
        0.9761,
        1.0,
    ]  # fmt: skip
)
_ROB_KX, _ROB_KY = 0.8487, 1.3523

# half extent (x, y) of each projection's whole map, in its projected units
_EXTENT = {
    "platecarree": (180.0, 90.0),
    "webmercator": (math.pi, math.pi),
    "robinson": (_ROB_KX * math.pi, _ROB_KY),
    "mollweide": (2.0 * _SQRT2, _SQRT2),
    "orthographic": (1.0, 1.0),
}


@dataclass(frozen=True)
class View:
    """A raster of ``width`` x ``height`` pixels showing a projection (see the module doc)."""

    projection: str
    width: int
    height: int
    center_lon: float = 0.0
    center_lat: float = 0.0
    zoom: float = 1.0


def check_view(view: View, max_pixels: int) -> None:
    """ValueError naming the bad value or the pixel limit."""
    if view.projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {view.projection!r}; known: {', '.join(PROJECTIONS)}")
    for name in ("width", "height"):
        v = getattr(view, name)
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"view {name} must be a positive integer, got {v!r}")
    if view.width * view.height > max_pixels:
        raise ValueError(
            f"view of {view.width}x{view.height} = {view.width * view.height} pixels is "
            f"beyond the limit of {max_pixels} pixels"
        )
    lon, lat, zoom = view.center_lon, view.center_lat, view.zoom
    if not (math.isfinite(lon) and -360.0 <= lon <= 360.0):
        raise ValueError(f"view center longitude must be within [-360, 360], got {lon!r}")
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise ValueError(f"view center latitude must be within [-90, 90], got {lat!r}")
    if not (math.isfinite(zoom) and 0.0 < zoom <= MAX_VIEW_ZOOM):
        raise ValueError(f"view zoom must be in (0, {MAX_VIEW_ZOOM:g}], got {zoom!r}")


def _scale(view: View) -> float:
    """Pixels per projected unit."""
    hx, hy = _EXTENT[view.projection]
    return min(view.width / (2 * hx), view.height / (2 * hy)) * view.zoom


def _wrap(lon: Any) -> Any:
    return np.mod(np.asarray(lon, dtype=np.float64) + 180.0, 360.0) - 180.0


# ---- per projection: (lon relative to the central meridian, lat) <-> projected (x, y) ----
def _robinson_fwd(dlon: Any, lat: Any) -> tuple[Any, Any]:
    a = np.abs(lat)
    x = _ROB_KX * np.interp(a, _ROB_LAT, _ROB_X) * np.deg2rad(dlon)
    y = _ROB_KY * np.sign(lat) * np.interp(a, _ROB_LAT, _ROB_Y)
    return x, y


def _robinson_inv(x: Any, y: Any) -> tuple[Any, Any]:
    ay = np.abs(y) / _ROB_KY
    inside = ay <= 1.0
    lat = np.sign(y) * np.interp(ay, _ROB_Y, _ROB_LAT)  # piecewise linear: exact inverse
    plen = _ROB_KX * np.interp(np.abs(lat), _ROB_LAT, _ROB_X)
    dlon = np.rad2deg(x / plen)
    inside &= np.abs(dlon) <= 180.0
    return np.where(inside, dlon, np.nan), np.where(inside, lat, np.nan)


def _mollweide_fwd(dlon: Any, lat: Any) -> tuple[Any, Any]:
    phi = np.deg2rad(lat)
    target = np.pi * np.sin(phi)
    t = phi.copy()  # Newton on 2t + sin 2t = pi sin(phi), t = theta
    for _ in range(30):
        f = 2 * t + np.sin(2 * t) - target
        d = 2 + 2 * np.cos(2 * t)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(d > 1e-12, f / d, 0.0)
        t = t - step
        if np.all(np.abs(step) < 1e-13):
            break
    t = np.where(np.abs(lat) >= 90.0, np.sign(lat) * np.pi / 2, t)
    return 2 * _SQRT2 / np.pi * np.deg2rad(dlon) * np.cos(t), _SQRT2 * np.sin(t)


def _mollweide_inv(x: Any, y: Any) -> tuple[Any, Any]:
    s = y / _SQRT2
    inside = np.abs(s) <= 1.0
    t = np.arcsin(np.clip(s, -1.0, 1.0))
    lat = np.rad2deg(np.arcsin(np.clip((2 * t + np.sin(2 * t)) / np.pi, -1.0, 1.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        dlon = np.rad2deg(np.pi * x / (2 * _SQRT2 * np.cos(t)))
    inside &= np.abs(dlon) <= 180.0
    return np.where(inside, dlon, np.nan), np.where(inside, lat, np.nan)


def _flat_fwd(proj: str, dlon: Any, lat: Any) -> tuple[Any, Any]:
    if proj == "platecarree":
        return dlon, lat
    if proj == "webmercator":
        la = np.deg2rad(np.clip(lat, -_MERC_MAX_LAT, _MERC_MAX_LAT))
        return np.deg2rad(dlon), np.log(np.tan(np.pi / 4 + la / 2))
    if proj == "robinson":
        return _robinson_fwd(dlon, lat)
    return _mollweide_fwd(dlon, lat)


def _flat_inv(proj: str, x: Any, y: Any) -> tuple[Any, Any]:
    if proj == "platecarree":
        ok = (np.abs(x) <= 180.0) & (np.abs(y) <= 90.0)
        return np.where(ok, x, np.nan), np.where(ok, y, np.nan)
    if proj == "webmercator":
        ok = (np.abs(x) <= np.pi) & (np.abs(y) <= np.pi)
        lat = np.rad2deg(np.arctan(np.sinh(y)))
        return np.where(ok, np.rad2deg(x), np.nan), np.where(ok, lat, np.nan)
    if proj == "robinson":
        return _robinson_inv(x, y)
    return _mollweide_inv(x, y)


def _center_y(view: View) -> float:
    if view.projection == "orthographic":
        return 0.0
    lat = np.asarray([view.center_lat], dtype=np.float64)
    return float(_flat_fwd(view.projection, np.zeros(1), lat)[1][0])


def view_lonlat(view: View) -> tuple[np.ndarray, np.ndarray]:
    """(height, width) longitude in [-180, 180) and latitude of pixel centres; NaN off the map."""
    if view.projection not in PROJECTIONS:
        check_view(view, max_pixels=view.width * view.height)
    s = _scale(view)
    x = (np.arange(view.width, dtype=np.float64) + 0.5 - view.width / 2) / s
    y = _center_y(view) - (np.arange(view.height, dtype=np.float64) + 0.5 - view.height / 2) / s
    xx, yy = np.meshgrid(x, y)
    if view.projection == "orthographic":
        lon, lat = _ortho_inv(view, xx, yy)
    else:
        dlon, lat = _flat_inv(view.projection, xx, yy)
        lon = dlon + view.center_lon
    lon = np.where(np.isnan(lat), np.nan, _wrap(lon))
    return lon, lat


def _ortho_inv(view: View, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rho = np.hypot(x, y)
    inside = rho <= 1.0
    c = np.arcsin(np.clip(rho, 0.0, 1.0))
    p0 = math.radians(view.center_lat)
    sc, cc = np.sin(c), np.cos(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(rho > 0, y * sc / rho, 0.0)
    lat = np.rad2deg(np.arcsin(np.clip(cc * math.sin(p0) + ratio * math.cos(p0), -1.0, 1.0)))
    lon = view.center_lon + np.rad2deg(
        np.arctan2(x * sc, rho * cc * math.cos(p0) - y * sc * math.sin(p0))
    )
    return np.where(inside, lon, np.nan), np.where(inside, lat, np.nan)


def forward(view: View, lon: Any, lat: Any) -> tuple[np.ndarray, np.ndarray]:
    """lon/lat -> pixel (x = col, y = row, 0 at the top; centres at +0.5); NaN where hidden.

    Hidden: the far side of the globe (orthographic).  Points off the screen of a flat map
    get coordinates outside ``[0, width) x [0, height)``.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    lon, lat = np.broadcast_arrays(lon, lat)
    s = _scale(view)
    if view.projection == "orthographic":
        p0, l0 = math.radians(view.center_lat), math.radians(view.center_lon)
        phi, dl = np.deg2rad(lat), np.deg2rad(lon) - l0
        x = np.cos(phi) * np.sin(dl)
        y = math.cos(p0) * np.sin(phi) - math.sin(p0) * np.cos(phi) * np.cos(dl)
        visible = math.sin(p0) * np.sin(phi) + math.cos(p0) * np.cos(phi) * np.cos(dl) >= 0
        x, y = np.where(visible, x, np.nan), np.where(visible, y, np.nan)
    else:
        x, y = _flat_fwd(view.projection, _wrap(lon - view.center_lon), lat)
    px = view.width / 2 + np.asarray(x) * s
    py = view.height / 2 - (np.asarray(y) - _center_y(view)) * s
    return np.asarray(px, dtype=np.float64), np.asarray(py, dtype=np.float64)

"""The few Well-Known Text geometries OGC API - EDR queries take (``coords=``): ``POINT(lon lat)``
and a one-ring ``POLYGON((lon lat, ...))``, in CRS84 degrees.

A flat, bounded parser: the text's length and the number of vertices are checked before any
number is converted, nothing recurses, and every refusal is a :class:`WktError` saying what is
wrong (the EDR routes answer it as a 400).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: Most vertices of a polygon's ring (the closing one included).
MAX_VERTICES = 1000
#: Most characters of a ``coords`` text (1000 vertices of long decimals fit well).
MAX_CHARS = 64 * 1024

_GEOMETRY = re.compile(r"\s*([A-Za-z]+)\s*(.*?)\s*", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_RING = re.compile(r"\(([^()]*)\)")


class WktError(ValueError):
    """A ``coords`` text this service cannot use; the message says why."""


@dataclass(frozen=True)
class Point:
    lon: float
    lat: float


@dataclass(frozen=True)
class Polygon:
    #: The ring's vertices as (lon, lat), without the closing repeat of the first one.
    vertices: tuple[tuple[float, float], ...]

    def bbox(self) -> tuple[float, float, float, float]:
        """(west, south, east, north); west/east unwrapped so that no edge jumps more than
        180 degrees (a polygon across the antimeridian has east > 180 or west < -180)."""
        lons = [self.vertices[0][0]]
        prev = lons[0]
        for lon, _ in self.vertices[1:]:
            raw = lon - prev
            # a jump of more than 180 degrees crosses the antimeridian; one of a whole turn
            # (-180 -> 180) is an edge around the globe, not a step of zero
            step = raw if abs(raw) <= 180.0 or abs(raw) >= 360.0 else (raw + 180.0) % 360.0 - 180.0
            lons.append(lons[-1] + step)
            prev = lon
        lats = [lat for _, lat in self.vertices]
        return min(lons), min(lats), max(lons), max(lats)

    def area_deg2(self) -> float:
        """Square degrees (longitude x latitude) of the bounding box: what the area limit
        compares."""
        west, south, east, north = self.bbox()
        return (east - west) * (north - south)


def _coordinate(pair: str, where: str) -> tuple[float, float]:
    """``"lon lat"`` -> (lon, lat), checked."""
    words = pair.split()
    if len(words) != 2:
        raise WktError(
            f"{where}: expected 'lon lat' (two numbers), got {pair.strip()[:60]!r}"
            + (" (Z/M coordinates are not supported)" if len(words) in (3, 4) else "")
        )
    values = []
    for w in words:
        if w.lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
            raise WktError(f"{where}: coordinates must be finite numbers, got {w!r}")
        if not _NUMBER.fullmatch(w):
            raise WktError(f"{where}: {w[:40]!r} is not a number")
        v = float(w)
        if not math.isfinite(v):
            raise WktError(f"{where}: coordinates must be finite numbers, got {w[:40]!r}")
        values.append(v)
    lon, lat = values
    if not -90.0 <= lat <= 90.0:
        raise WktError(f"{where}: latitude {lat} is outside [-90, 90]")
    if not -360.0 <= lon <= 360.0:
        raise WktError(f"{where}: longitude {lon} is outside [-360, 360]")
    return lon, lat


def _point(body: str) -> Point:
    if not (body.startswith("(") and body.endswith(")")) or "(" in body[1:-1] or ")" in body[1:-1]:
        raise WktError("POINT: expected POINT(lon lat)")
    lon, lat = _coordinate(body[1:-1], "POINT")
    return Point(lon, lat)


def _polygon(body: str) -> Polygon:
    if not (body.startswith("(") and body.endswith(")")):
        raise WktError("POLYGON: expected POLYGON((lon lat, lon lat, ...))")
    inner = body[1:-1]
    rings = _RING.findall(inner)
    if _RING.sub("", inner).replace(",", "").strip():
        raise WktError(
            "POLYGON: expected POLYGON((lon lat, lon lat, ...)): unbalanced or stray text"
        )
    if not rings:
        raise WktError("POLYGON: no ring; expected POLYGON((lon lat, lon lat, ...))")
    if len(rings) > 1:
        raise WktError(
            f"POLYGON: {len(rings)} rings; polygons with holes are not supported (one ring)"
        )
    parts = rings[0].split(",")
    if len(parts) > MAX_VERTICES:
        raise WktError(f"POLYGON: {len(parts)} vertices, more than the {MAX_VERTICES} allowed")
    points = [_coordinate(p, f"POLYGON vertex {i + 1}") for i, p in enumerate(parts)]
    if len(points) < 4:
        raise WktError(
            f"POLYGON: a ring needs at least 4 vertices (3 corners and the first repeated), "
            f"got {len(points)}"
        )
    if points[0] != points[-1]:
        raise WktError(
            f"POLYGON: the ring is not closed: its last vertex {points[-1]} must repeat the "
            f"first {points[0]}"
        )
    corners = points[:-1]
    if len(set(corners)) < 3:
        raise WktError("POLYGON: the ring needs at least 3 distinct corners")
    return Polygon(tuple(corners))


def parse(text: str | None, allowed: tuple[str, ...] = ("POINT", "POLYGON")) -> Point | Polygon:
    """A ``coords`` text -> :class:`Point` or :class:`Polygon` (of the ``allowed`` kinds)."""
    if text is None or not text.strip():
        raise WktError(f"coords is required: a WKT {' or '.join(allowed)}, e.g. POINT(10 45)")
    if len(text) > MAX_CHARS:
        raise WktError(f"coords is {len(text)} characters long, more than the {MAX_CHARS} allowed")
    m = _GEOMETRY.fullmatch(text)
    kind = m.group(1).upper() if m else ""
    if not m or kind not in ("POINT", "POLYGON"):
        got = (m.group(1) if m else text.strip())[:40]
        raise WktError(f"coords must be a WKT {' or '.join(allowed)}, got {got!r}")
    if kind not in allowed:
        raise WktError(f"coords must be a WKT {' or '.join(allowed)} here, got {kind}")
    body = m.group(2)
    return _point(body) if kind == "POINT" else _polygon(body)

"""What a collection or an item must be before it is stored: ids, geometry, numbers.

- Ids of collections and items match :data:`ID_PATTERN` (a letter or digit, then at most
  127 letters, digits, ``.``, ``_`` or ``-``): no ``..``, no control characters, no 10 000
  characters (such ids could be stored but not addressed, nor ever deleted).
- An item's geometry is valid GeoJSON: positions of 2 or 3 finite numbers, longitude in
  [-180, 180], latitude in [-90, 90]; linestrings of 2 positions or more; polygon rings
  closed, of 3 distinct vertices or more, that neither cross nor touch themselves nor cross
  each other (:func:`check_geometry`); at most :data:`MAX_POSITIONS` positions.
- bboxes (items, collection extents) are 4 or 6 finite numbers in range.

Each check raises :class:`RecordError` naming the record and the problem (the guard answers
400 with it, before anything is written).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from .input_limits import BadRequest, check_bbox

ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_ID = re.compile(ID_PATTERN)
#: Positions in one geometry.
MAX_POSITIONS = 100_000
#: Segment pairs compared when looking for self-intersections, in one request (about 0.3 s
#: of CPU on the service's event loop); more: "too complex" (realistic footprints need a few
#: per edge).
MAX_SEGMENT_PAIRS = 1_000_000
#: Positions in one request (a bulk insert of many items): about 3 s of checks.
MAX_REQUEST_POSITIONS = 1_000_000
#: GeometryCollections inside GeometryCollections.
MAX_COLLECTION_NESTING = 4
GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)


class Budget:
    """What one request may cost to check: positions and segment pairs, over all its
    geometries (a batch of items shares one)."""

    def __init__(self) -> None:
        self.positions = 0
        self.pairs = 0


class RecordError(BadRequest):
    """A record that may not be stored (400)."""


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} id must be a string, got {type(value).__name__}")
    if not _ID.fullmatch(value):
        shown = value if len(value) <= 60 else value[:60] + "..."
        raise RecordError(
            f"{what} id {shown!r} is not allowed: ids are 1 to 128 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return value


# -- geometry --------------------------------------------------------------------------------
def check_geometry(geom: Any, what: str = "geometry", budget: Budget | None = None) -> None:
    """Valid GeoJSON geometry (see the module docstring); raises :class:`RecordError`."""
    budget = budget or Budget()
    counter = [0, budget]
    _geometry(geom, what, counter, 0)


def _geometry(geom: Any, what: str, counter: list, nesting: int) -> None:
    if not isinstance(geom, Mapping):
        raise RecordError(f"{what} must be a GeoJSON geometry object")
    kind = geom.get("type")
    if kind not in GEOMETRY_TYPES:
        raise RecordError(f"{what}: type {kind!r} is not a GeoJSON geometry type")
    if kind == "GeometryCollection":
        parts = geom.get("geometries")
        if not isinstance(parts, list):
            raise RecordError(f"{what}: a GeometryCollection needs a list of geometries")
        if nesting >= MAX_COLLECTION_NESTING:
            raise RecordError(f"{what}: GeometryCollections nest too deeply")
        for i, g in enumerate(parts):
            _geometry(g, f"{what}.geometries[{i}]", counter, nesting + 1)
        return
    coords = geom.get("coordinates")
    if kind == "Point":
        _position(coords, what, counter)
    elif kind == "MultiPoint":
        for p in _list(coords, what):
            _position(p, what, counter)
    elif kind == "LineString":
        _line(coords, what, counter)
    elif kind == "MultiLineString":
        for line in _list(coords, what):
            _line(line, what, counter)
    elif kind == "Polygon":
        _polygon(coords, what, counter)
    else:
        for i, poly in enumerate(_list(coords, what)):
            _polygon(poly, f"{what} polygon {i}", counter)


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise RecordError(f"{what}: coordinates must be an array")
    return value


def _position(p: Any, what: str, counter: list) -> tuple[float, float]:
    counter[0] += 1
    counter[1].positions += 1
    if counter[0] > MAX_POSITIONS:
        raise RecordError(f"{what} has more than {MAX_POSITIONS} positions (the limit)")
    if counter[1].positions > MAX_REQUEST_POSITIONS:
        raise RecordError(
            f"the request has more than {MAX_REQUEST_POSITIONS} positions (the limit): send "
            "fewer items at once"
        )
    if not isinstance(p, list) or len(p) not in (2, 3):
        raise RecordError(f"{what}: a position must be 2 or 3 numbers, got {_short(p)}")
    for v in p:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise RecordError(f"{what}: a position must be finite numbers, got {_short(p)}")
    lon, lat = float(p[0]), float(p[1])
    if not -180 <= lon <= 180:
        raise RecordError(f"{what}: longitude {lon} is outside [-180, 180]")
    if not -90 <= lat <= 90:
        raise RecordError(f"{what}: latitude {lat} is outside [-90, 90]")
    return lon, lat


def _line(coords: Any, what: str, counter: list) -> list[tuple[float, float]]:
    points = [_position(p, what, counter) for p in _list(coords, what)]
    if len(points) < 2:
        raise RecordError(f"{what}: a linestring needs 2 positions or more")
    return points


def _polygon(coords: Any, what: str, counter: list) -> None:
    rings = _list(coords, what)
    if not rings:
        raise RecordError(f"{what}: a polygon needs at least one ring")
    cleaned = []
    for r, ring in enumerate(rings):
        name = f"{what} ring {r}"
        points = _line(ring, name, counter)
        if len(points) < 4 or points[0] != points[-1]:
            raise RecordError(f"{name} must be closed (first position = last) with 4 or more")
        # consecutive repeats are allowed (and dropped): they make zero-length edges
        ring_points = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
        if len(set(ring_points)) < 3:
            raise RecordError(f"{name} has fewer than 3 distinct vertices")
        cleaned.append(ring_points)
    _check_rings(cleaned, what, counter[1])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _orient(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> int:
    v = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    return (v > 0) - (v < 0)


def _on_segment(ax, ay, bx, by, cx, cy) -> bool:
    """c, collinear with a-b, lies within the segment's box."""
    return min(ax, bx) <= cx <= max(ax, bx) and min(ay, by) <= cy <= max(ay, by)


def _check_rings(rings: list[list[tuple[float, float]]], what: str, budget: Budget) -> None:
    """No ring crosses or touches itself (but at consecutive edges' shared vertex), no spike
    (an edge going back along the one before), and no two rings cross or share an edge
    (touching at a point is allowed). A sweep over the edges sorted by west end: an edge is
    compared only with the edges whose x-range it overlaps."""
    segs: list[tuple[float, float, float, float, int, int, int]] = []
    for r, pts in enumerate(rings):
        n = len(pts) - 1  # edges (the ring is closed: last == first)
        for k in range(n):
            (ax, ay), (bx, by) = pts[k], pts[k + 1]
            segs.append((ax, ay, bx, by, r, k, n))
        for k in range(n):  # spikes: a -> b -> c going back along a -> b
            (ax, ay), (bx, by), (cx, cy) = pts[k - 1 if k else n - 1], pts[k], pts[k + 1]
            if (
                _orient(ax, ay, bx, by, cx, cy) == 0
                and (ax - bx) * (cx - bx) + (ay - by) * (cy - by) > 0
            ):
                raise RecordError(f"{what} ring {r} folds back on itself at {[bx, by]}")
    segs.sort(key=lambda s: min(s[0], s[2]))
    active: list[tuple] = []
    for s in segs:
        ax, ay, bx, by, r, k, n = s
        west = min(ax, bx)
        active = [t for t in active if max(t[0], t[2]) >= west]
        budget.pairs += len(active)
        if budget.pairs > MAX_SEGMENT_PAIRS:
            raise RecordError(f"{what} is too complex to check (simplify it)")
        for t in active:
            cx, cy, dx, dy, r2, k2, n2 = t
            if max(ay, by) < min(cy, dy) or max(cy, dy) < min(ay, by):
                continue
            if r == r2 and (abs(k - k2) == 1 or abs(k - k2) == n - 1):
                continue  # consecutive edges share a vertex (spikes were checked above)
            o1 = _orient(ax, ay, bx, by, cx, cy)
            o2 = _orient(ax, ay, bx, by, dx, dy)
            o3 = _orient(cx, cy, dx, dy, ax, ay)
            o4 = _orient(cx, cy, dx, dy, bx, by)
            crossing = o1 * o2 < 0 and o3 * o4 < 0
            if r == r2:
                touching = (
                    (o1 == 0 and _on_segment(ax, ay, bx, by, cx, cy))
                    or (o2 == 0 and _on_segment(ax, ay, bx, by, dx, dy))
                    or (o3 == 0 and _on_segment(cx, cy, dx, dy, ax, ay))
                    or (o4 == 0 and _on_segment(cx, cy, dx, dy, bx, by))
                )
                if crossing or touching:
                    raise RecordError(
                        f"{what} ring {r} intersects itself (edges {min(k, k2)} and "
                        f"{max(k, k2)}): a polygon's rings must be simple"
                    )
            elif crossing or (o1 == o2 == 0 and _overlap(s, t)):
                raise RecordError(f"{what}: rings {min(r, r2)} and {max(r, r2)} cross")
        active.append(s)


def _overlap(s: tuple, t: tuple) -> bool:
    """Collinear edges s and t share more than a point."""
    ax, ay, bx, by = s[:4]
    cx, cy, dx, dy = t[:4]
    if ax != bx:
        lo, hi = max(min(ax, bx), min(cx, dx)), min(max(ax, bx), max(cx, dx))
    else:
        lo, hi = max(min(ay, by), min(cy, dy)), min(max(ay, by), max(cy, dy))
    return hi > lo


# -- records ---------------------------------------------------------------------------------
def check_item(
    item: Any, collection: str, item_id: str | None = None, budget: Budget | None = None
) -> dict[str, Any]:
    """An item to be stored in ``collection`` (its path), as ``item_id`` when the path names
    one. Its ``collection`` field, if any, must be the path's; it is set when missing."""
    if not isinstance(item, Mapping) or item.get("type") != "Feature":
        raise RecordError("an item must be a GeoJSON Feature object")
    iid = check_id(item.get("id"), "item")
    if item_id is not None and iid != item_id:
        raise RecordError(
            f"the item's id {iid!r} is not the one in the path ({item_id!r}): an item is "
            "written where its path says"
        )
    body_coll = item.get("collection")
    if body_coll is not None and body_coll != collection:
        raise RecordError(
            f"item {iid!r} says collection {_short(body_coll)} but is sent to collection "
            f"{collection!r}: they must be the same"
        )
    if item.get("geometry") is None:
        raise RecordError(f"item {iid!r} needs a geometry (the lake indexes every item's)")
    check_geometry(item["geometry"], f"item {iid!r} geometry", budget)
    if item.get("bbox") is not None:
        check_record_bbox(item["bbox"], f"item {iid!r} bbox")
    item = dict(item)
    item["collection"] = collection
    return item


def check_collection(body: Any, collection: str | None = None) -> dict[str, Any]:
    """A collection to be stored (as ``collection`` when the path names one)."""
    if not isinstance(body, Mapping):
        raise RecordError("a collection must be a JSON object")
    cid = check_id(body.get("id"), "collection")
    if collection is not None and cid != collection:
        raise RecordError(
            f"the collection's id {cid!r} is not the one in the path ({collection!r}): a "
            "collection is written where its path says"
        )
    extent = body.get("extent")
    spatial = extent.get("spatial") if isinstance(extent, Mapping) else None
    boxes = spatial.get("bbox") if isinstance(spatial, Mapping) else None
    if isinstance(boxes, list):
        for i, box in enumerate(boxes):
            check_record_bbox(box, f"collection {cid!r} extent.spatial.bbox[{i}]")
    return dict(body)


def check_record_bbox(value: Any, what: str) -> None:
    """A stored bbox: an array of 4 or 6 finite numbers in range."""
    if isinstance(value, str):  # check_bbox also reads GET's "a,b,c,d": not in a record
        raise RecordError(f"{what} must be an array of 4 or 6 numbers")
    if isinstance(value, list) and any(isinstance(v, bool) for v in value):
        raise RecordError(f"{what} must be numbers")
    try:
        check_bbox(value)
    except BadRequest as e:
        raise RecordError(f"{what}: {e}") from None

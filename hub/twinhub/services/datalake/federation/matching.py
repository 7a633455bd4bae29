"""Item search on items held in memory (static catalogues): ids, collections, bbox,
datetime, CQL2 ``filter`` and free text ``q`` with the same meaning as the STAC API item
search (free text by :meth:`twinlab.contract.FreeTextQuery.matches`, the lake's own rules)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from .params import SearchParams, parse_instant


def _boxes(b: list[float]) -> list[tuple[float, float, float, float]]:
    """A bbox as 2-D boxes; one crossing the antimeridian (west > east) as two."""
    half = len(b) // 2
    w, s, e, n = b[0], b[1], b[half], b[half + 1]
    if w <= e:
        return [(w, s, e, n)]
    return [(w, s, 180.0, n), (-180.0, s, e, n)]


def _coords(geom: Any) -> Iterable[tuple[float, float]]:
    if isinstance(geom, dict):
        if geom.get("type") == "GeometryCollection":
            for g in geom.get("geometries") or ():
                yield from _coords(g)
            return
        geom = geom.get("coordinates")
    if isinstance(geom, list | tuple):
        if len(geom) >= 2 and all(isinstance(v, int | float) for v in geom[:2]):
            yield float(geom[0]), float(geom[1])
        else:
            for g in geom:
                yield from _coords(g)


def item_bbox(item: dict[str, Any]) -> list[float] | None:
    b = item.get("bbox")
    if isinstance(b, list) and len(b) in (4, 6) and all(isinstance(v, int | float) for v in b):
        return [float(v) for v in b]
    pts = list(_coords(item.get("geometry")))
    if not pts:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return [min(xs), min(ys), max(xs), max(ys)]


def bbox_intersects(query: list[float], item: dict[str, Any]) -> bool:
    ib = item_bbox(item)
    if ib is None:
        return False
    return any(
        qw <= ie and iw <= qe and qs <= in_ and is_ <= qn
        for qw, qs, qe, qn in _boxes(query)
        for iw, is_, ie, in_ in _boxes(ib)
    )


def item_interval(item: dict[str, Any]) -> tuple[dt.datetime, dt.datetime] | None:
    props = item.get("properties") or {}
    try:
        start = props.get("start_datetime") or props.get("datetime")
        end = props.get("end_datetime") or props.get("datetime")
        s = parse_instant(start, start) if isinstance(start, str) else None
        e = parse_instant(end, end) if isinstance(end, str) else None
    except Exception:  # a malformed remote datetime: the item matches no time query
        return None
    if s is None and e is None:
        return None
    return (s or e, e or s)  # type: ignore[return-value]


def datetime_overlaps(interval: tuple[Any, Any], item: dict[str, Any]) -> bool:
    it = item_interval(item)
    if it is None:
        return False
    qs, qe = interval
    return (qe is None or it[0] <= qe) and (qs is None or it[1] >= qs)


class Matcher:
    """One search's test for one item (the CQL2 expression parsed once)."""

    def __init__(self, params: SearchParams, collections: list[str] | None) -> None:
        self.params = params
        self.ids = set(params.ids) if params.ids else None
        self.collections = set(collections) if collections else None
        self.expr = None
        # free text: the platform's rules in Python (the lake's CQL2 form needs its search text)
        self.free_text = params.free_text
        if params.source_filter is not None:
            import cql2  # start-up cost: only searches with a filter need it

            self.expr = cql2.parse_json(json.dumps(params.source_filter))

    def __call__(self, item: dict[str, Any]) -> bool:
        p = self.params
        if self.ids is not None and item.get("id") not in self.ids:
            return False
        if self.collections is not None and item.get("collection") not in self.collections:
            return False
        if p.bbox is not None and not bbox_intersects(p.bbox, item):
            return False
        if p.interval is not None and not datetime_overlaps(p.interval, item):
            return False
        if self.free_text is not None and not self.free_text.accepts(item):
            return False
        if self.expr is not None:
            try:
                return bool(self.expr.matches(item))
            except Exception:  # e.g. comparing a string property with a number: no match
                return False
        return True

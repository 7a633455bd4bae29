"""What may be stored in the STAC API (twinhub.services.datalake.records) and what a write
may change (the guard's patch rules), as functions."""

from __future__ import annotations

import pytest

from twinhub.services.datalake.guard import BadRequest, _check_patch
from twinhub.services.datalake.records import (
    MAX_POSITIONS,
    Budget,
    RecordError,
    check_collection,
    check_geometry,
    check_id,
    check_item,
)

SQUARE = [[0, 40], [10, 40], [10, 50], [0, 50], [0, 40]]


def polygon(*rings):
    return {"type": "Polygon", "coordinates": [list(r) for r in rings]}


@pytest.mark.parametrize("good", ["a", "A9", "era5.t2m_daily-v1", "0", "x" * 128])
def test_good_ids(good):
    assert check_id(good, "item") == good


@pytest.mark.parametrize(
    "bad", ["..", ".", "", "-a", "_a", ".hidden", "a/b", "a b", "a\x00b", "a\x1fb", "é", "x" * 129, "x" * 10_000, 5, None]
)  # fmt: skip
def test_bad_ids_are_refused_by_name(bad):
    with pytest.raises(RecordError, match="collection id"):
        check_id(bad, "collection")


@pytest.mark.parametrize(
    "geom",
    [
        {"type": "Point", "coordinates": [180, -90]},
        {"type": "Point", "coordinates": [1, 2, 3000.5]},
        {"type": "MultiPoint", "coordinates": [[0, 0], [1, 1]]},
        {"type": "LineString", "coordinates": [[0, 0], [1, 1], [0, 0]]},  # lines may cross
        polygon(SQUARE),
        polygon(SQUARE, [[2, 42], [4, 42], [4, 44], [2, 44], [2, 42]]),  # a hole
        polygon([[0, 0], [1, 0], [1, 0], [1, 1], [0, 0]]),  # repeated vertex: allowed
        polygon([[170, 0], [-170, 0], [-170, 10], [170, 10], [170, 0]]),  # a wide box
        {"type": "MultiPolygon", "coordinates": [[SQUARE], [[[20, 0], [21, 0], [21, 1], [20, 0]]]]},
        {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [0, 0]}]},
    ],
)
def test_valid_geometries(geom):
    check_geometry(geom)


@pytest.mark.parametrize(
    "geom, words",
    [
        (polygon([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]), "intersects itself"),  # bow-tie
        (polygon([[0, 0], [2, 0], [2, 2], [1, 0], [0, 2], [0, 0]]), "intersects itself"),  # touch
        (polygon([[0, 0], [2, 0], [1, 0], [1, 1], [0, 0]]), "folds back"),  # spike
        (polygon(SQUARE, [[5, 45], [20, 45], [20, 46], [5, 46], [5, 45]]), "rings 0 and 1 cross"),
        (polygon([[0, 0], [1, 0], [1, 1], [0, 1]]), "closed"),
        (polygon([[0, 0], [1, 0], [0, 0], [0, 0]]), "3 distinct"),
        ({"type": "Point", "coordinates": [0, 91]}, "latitude 91"),
        ({"type": "Point", "coordinates": [-181, 0]}, "longitude -181"),
        ({"type": "Point", "coordinates": [float("nan"), 0]}, "finite"),
        ({"type": "Point", "coordinates": [float("inf"), 0]}, "finite"),
        ({"type": "Point", "coordinates": [True, 0]}, "finite numbers"),
        ({"type": "Point", "coordinates": [1]}, "2 or 3"),
        ({"type": "Point", "coordinates": "x"}, "2 or 3"),
        ({"type": "LineString", "coordinates": [[0, 0]]}, "2 positions"),
        ({"type": "Circle", "coordinates": [0, 0]}, "not a GeoJSON geometry type"),
        ([], "GeoJSON geometry object"),
        ({"type": "Polygon", "coordinates": []}, "at least one ring"),
    ],
)
def test_invalid_geometries_name_the_problem(geom, words):
    with pytest.raises(RecordError, match=words):
        check_geometry(geom)


def test_geometry_size_and_nesting_are_bounded():
    many = {"type": "MultiPoint", "coordinates": [[0, 0]] * (MAX_POSITIONS + 1)}
    with pytest.raises(RecordError, match="positions"):
        check_geometry(many)
    nested: dict = {"type": "Point", "coordinates": [0, 0]}
    for _ in range(6):
        nested = {"type": "GeometryCollection", "geometries": [nested]}
    with pytest.raises(RecordError, match="nest"):
        check_geometry(nested)


def test_a_large_simple_polygon_passes():
    import math

    n = 20_000
    ring = [
        [math.cos(2 * math.pi * k / n) * 50, math.sin(2 * math.pi * k / n) * 50] for k in range(n)
    ]
    check_geometry(polygon(ring + [ring[0]]))


def test_pathological_rings_cost_a_bounded_amount_of_work():
    """Edges that all overlap in longitude make the sweep compare every pair: refused once
    the request's budget of pairs is spent, whether in one geometry or spread over a batch."""

    def comb(n):  # a valid sawtooth: every edge spans 200 degrees of longitude
        teeth = [[-100 if i % 2 == 0 else 100, -80 + 160 * i / n] for i in range(n)]
        return polygon(teeth + [[120, 85], [-120, 85], [-120, -85], teeth[0]])

    check_geometry(comb(300))  # valid, and cheap enough
    with pytest.raises(RecordError, match="too complex"):
        check_geometry(comb(3000))
    budget = Budget()  # a batch shares one: about 320 000 pairs each
    check_geometry(comb(800), budget=budget)
    with pytest.raises(RecordError, match="too complex"):
        for _ in range(3):
            check_geometry(comb(800), budget=budget)


def item(**kw):
    body = {
        "type": "Feature",
        "id": "i1",
        "geometry": polygon(SQUARE),
        "bbox": [0, 40, 10, 50],
        "properties": {"datetime": "2024-01-01T00:00:00Z"},
    }
    return {**body, **kw}


def test_items_go_where_the_path_says():
    assert check_item(item(), "mine")["collection"] == "mine"
    assert check_item(item(collection="mine"), "mine", "i1")["id"] == "i1"
    with pytest.raises(RecordError, match="says collection 'theirs'"):
        check_item(item(collection="theirs"), "mine")
    with pytest.raises(RecordError, match="not the one in the path"):
        check_item(item(), "mine", "other")
    with pytest.raises(RecordError, match="needs a geometry"):
        check_item(item(geometry=None), "mine")
    with pytest.raises(RecordError, match="bbox"):
        check_item(item(bbox=[0, 0, 1, float("nan")]), "mine")
    with pytest.raises(RecordError, match="item id"):
        check_item(item(id=".."), "mine")


def test_collections():
    body = {"id": "c1", "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}}}
    assert check_collection(body, "c1")["id"] == "c1"
    with pytest.raises(RecordError, match="not the one in the path"):
        check_collection(body, "c2")
    with pytest.raises(RecordError, match=r"bbox\[0\]"):
        check_collection({"id": "c1", "extent": {"spatial": {"bbox": [[0, 0, 1e308 * 10, 1]]}}})
    with pytest.raises(RecordError, match="collection id"):
        check_collection({"id": "a" * 200})


@pytest.mark.parametrize(
    "body, kind, status",
    [
        ({"id": "theirs"}, "collection", 400),
        ({"twinhub:owner": "mallory"}, "collection", 403),
        ([{"op": "replace", "path": "/id", "value": "theirs"}], "collection", 400),
        ([{"op": "move", "from": "/id", "path": "/x"}], "collection", 400),
        ([{"op": "copy", "from": "/title", "path": "/id"}], "collection", 400),
        ([{"op": "remove", "path": "/twinhub:owner"}], "collection", 403),
        ([{"op": "replace", "path": "", "value": {"id": "theirs"}}], "collection", 400),
        ({"collection": "theirs"}, "item", 400),
        ([{"op": "replace", "path": "/collection", "value": "theirs"}], "item", 400),
        ({"geometry": polygon([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]])}, "item", 400),
        ([{"op": "replace", "path": "/geometry/coordinates/0/0", "value": [0, 99]}], "item", 400),
        ("replace", "collection", 400),
    ],
)
def test_patches_keep_the_record_where_and_whose_it_is(body, kind, status):
    target = "mine" if kind == "collection" else "i1"
    with pytest.raises(BadRequest) as e:
        _check_patch(body, kind, target, owner="bob", collection="mine")
    assert e.value.status == status


def test_harmless_patches_pass():
    _check_patch(
        {"title": "new", "id": "mine", "twinhub:owner": "bob"}, "collection", "mine", owner="bob"
    )
    _check_patch(
        [{"op": "test", "path": "/id", "value": "mine"}], "collection", "mine", owner="bob"
    )
    _check_patch(
        [{"op": "replace", "path": "/geometry", "value": polygon(SQUARE)}],
        "item",
        "i1",
        collection="mine",
    )
    _check_patch({"properties": {"x": 1}}, "item", "i1", collection="mine")

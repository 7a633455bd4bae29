"""The EDR ``coords`` parser: what it accepts and how it refuses (bounded, named reasons)."""

import pytest

from twinhub.services.tiles.wkt import MAX_VERTICES, Point, Polygon, WktError, parse


def test_point_forms():
    assert parse("POINT(10 45)") == Point(10.0, 45.0)
    assert parse("  point ( -179.5   -89.25 ) ") == Point(-179.5, -89.25)
    assert parse("POINT(1e1 -4.5E1)") == Point(10.0, -45.0)
    assert parse("POINT(.5 +3.)") == Point(0.5, 3.0)


@pytest.mark.parametrize(
    "text,words",
    [
        ("POINT(10 95)", "latitude 95.0 is outside [-90, 90]"),
        ("POINT(400 0)", "longitude 400.0 is outside"),
        ("POINT(nan 0)", "finite"),
        ("POINT(10 inf)", "finite"),
        ("POINT(1e999 0)", "finite"),
        ("POINT(10)", "two numbers"),
        ("POINT(1 2 3)", "Z/M coordinates are not supported"),
        ("POINT(a b)", "'a' is not a number"),
        ("POINT Z (1 2 3)", "expected POINT(lon lat)"),
        ("POINT(1 2", "expected POINT(lon lat)"),
        ("LINESTRING(0 0, 1 1)", "must be a WKT POINT or POLYGON, got 'LINESTRING'"),
        ("", "coords is required"),
        (None, "coords is required"),
        ("(1 2)", "must be a WKT"),
    ],
)
def test_point_refusals(text, words):
    with pytest.raises(WktError) as e:
        parse(text)
    assert words in str(e.value)


def test_kind_not_allowed_here():
    with pytest.raises(WktError, match="must be a WKT POINT here, got POLYGON"):
        parse("POLYGON((0 0, 1 0, 1 1, 0 0))", ("POINT",))
    with pytest.raises(WktError, match="POLYGON here, got POINT"):
        parse("POINT(0 0)", ("POLYGON",))


def test_polygon_drops_the_closing_vertex():
    poly = parse("POLYGON((0 0, 10 0, 10 5, 0 5, 0 0))")
    assert isinstance(poly, Polygon)
    assert poly.vertices == ((0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0))
    assert poly.bbox() == (0.0, 0.0, 10.0, 5.0)
    assert poly.area_deg2() == 50.0


def test_polygon_across_the_antimeridian_is_small():
    poly = parse("POLYGON((170 -5, -170 -5, -170 5, 170 5, 170 -5))")
    west, south, east, north = poly.bbox()
    assert (west, south, east, north) == (170.0, -5.0, 190.0, 5.0)
    assert poly.area_deg2() == 200.0


@pytest.mark.parametrize(
    "text,words",
    [
        ("POLYGON((0 0, 1 0, 1 1, 0 1))", "not closed"),
        ("POLYGON((0 0, 1 0, 0 0))", "at least 4 vertices"),
        ("POLYGON((0 0, 1 0, 0 0, 1 0, 0 0))", "3 distinct corners"),
        ("POLYGON((0 0, 3 0, 3 3, 0 0), (1 1, 2 1, 2 2, 1 1))", "holes are not supported"),
        ("POLYGON(0 0, 1 0, 1 1, 0 0)", "stray text"),
        ("POLYGON()", "no ring"),
        ("POLYGON((0 0, 1 0, 1 1, 0 0)", "expected POLYGON"),
        ("POLYGON((0 0, 1 0, 1 1, 0 0)) x", "expected POLYGON"),
        ("POLYGON((0 0, 1 0, 1 91, 0 0))", "vertex 3: latitude 91.0"),
        ("POLYGON((0 0, 1 0, 1 nan, 0 0))", "vertex 3: coordinates must be finite"),
        ("POLYGON((0 0, 1 0 7, 1 1, 0 0))", "vertex 2: expected 'lon lat'"),
    ],
)
def test_polygon_refusals(text, words):
    with pytest.raises(WktError) as e:
        parse(text)
    assert words in str(e.value)


def test_vertex_limit():
    ring = [f"{i * 0.01} {(i % 2) * 0.01}" for i in range(MAX_VERTICES - 1)] + ["0 0"]
    assert len(parse(f"POLYGON(({', '.join(ring)}))").vertices) == MAX_VERTICES - 1
    ring = [f"{i * 0.01} {(i % 2) * 0.01}" for i in range(MAX_VERTICES)] + ["0 0"]
    with pytest.raises(
        WktError, match=f"{MAX_VERTICES + 1} vertices, more than the {MAX_VERTICES}"
    ):
        parse(f"POLYGON(({', '.join(ring)}))")


def test_text_length_is_bounded_before_parsing():
    with pytest.raises(WktError, match="characters long, more than"):
        parse("POINT(" + "1" * 100_000 + " 2)")


def test_an_edge_around_the_globe_is_a_whole_turn_not_zero():
    """-180 -> 180 is 360 degrees of longitude: the area limit must see the whole globe."""
    globe = parse("POLYGON((-180 -90, 180 -90, 180 90, -180 90, -180 -90))")
    assert globe.area_deg2() == 360.0 * 180.0
    across = parse("POLYGON((170 0, -170 0, -170 10, 170 10, 170 0))")
    assert across.area_deg2() == 20.0 * 10.0

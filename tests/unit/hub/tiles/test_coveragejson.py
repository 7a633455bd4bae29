"""CoverageJSON documents of the EDR answers: domain types, axes, range shapes, exact values."""

import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from twinhub.services.tiles import coveragejson as cj

TIMES = np.array(["2024-01-01T00:00", "2024-01-01T06:00", "2024-01-01T12:00"], dtype="datetime64[ns]")  # fmt: skip


def test_iso_times_of_datetimes_and_datetime64():
    assert cj.iso_times(TIMES) == ["2024-01-01T00:00:00Z", "2024-01-01T06:00:00Z", "2024-01-01T12:00:00Z"]  # fmt: skip
    aware = datetime(2024, 1, 1, 7, 0, tzinfo=timezone(timedelta(hours=1)))
    assert cj.iso_times([aware]) == ["2024-01-01T06:00:00Z"]
    assert cj.iso_times([datetime(2024, 1, 1, 6, tzinfo=UTC)]) == ["2024-01-01T06:00:00Z"]
    assert cj.iso_times([np.datetime64("2024-01-01T06:00:00.250")]) == ["2024-01-01T06:00:00.250Z"]


def test_json_values_exact_and_null():
    v32 = np.array([273.15, 1e-7, -0.1], dtype=np.float32)
    out = cj.json_values(v32)
    # float32 values widened exactly; the JSON text reads back to the same floats
    assert json.loads(json.dumps(out)) == [float(x) for x in v32.astype(np.float64)]
    assert np.array_equal(np.array(out, dtype=np.float32), v32)
    assert cj.json_values(np.array([1.0, np.nan, np.inf])) == [1.0, None, None]


def test_point_series_shape_and_members():
    rng = np.random.default_rng(1)
    vals = rng.normal(size=3)
    vals[1] = np.nan
    params = [cj.Parameter("2t", "K", "2 metre temperature"), cj.Parameter("tp")]
    doc = cj.point_series(
        12.5, -3.25, TIMES, params, {"2t": vals, "tp": np.arange(3.0)}, {"index": 7, "lon": 12.0, "lat": -3.0}
    )  # fmt: skip
    assert doc["type"] == "Coverage"
    dom = doc["domain"]
    assert dom["domainType"] == "PointSeries"
    assert dom["axes"]["x"] == {"values": [12.5]} and dom["axes"]["y"] == {"values": [-3.25]}
    assert dom["axes"]["t"]["values"][2] == "2024-01-01T12:00:00Z"
    assert dom[cj.CELL_MEMBER]["index"] == 7
    assert {tuple(r["coordinates"]) for r in dom["referencing"]} == {("x", "y"), ("t",)}
    r = doc["ranges"]["2t"]
    assert r["type"] == "NdArray" and r["dataType"] == "float"
    assert r["axisNames"] == ["t"] and r["shape"] == [3]
    assert r["values"] == [vals[0], None, vals[2]]
    assert doc["parameters"]["2t"]["unit"]["symbol"] == "K"
    assert doc["parameters"]["2t"]["observedProperty"]["label"]["en"] == "2 metre temperature"
    assert "unit" not in doc["parameters"]["tp"]
    # the whole document is strict JSON (no NaN)
    json.loads(cj.dumps(doc))


def test_point_timeless():
    doc = cj.point_series(0, 0, None, [cj.Parameter("z")], {"z": np.array([5.0])})
    assert doc["domain"]["domainType"] == "Point"
    assert "t" not in doc["domain"]["axes"]
    assert doc["ranges"]["z"]["shape"] == [] and doc["ranges"]["z"]["values"] == [5.0]


def test_point_series_refuses_wrong_lengths():
    with pytest.raises(ValueError, match="2 values for 3 time steps"):
        cj.point_series(0, 0, TIMES, [cj.Parameter("a")], {"a": np.zeros(2)})


def test_multipoint_series_shape_and_order():
    lons, lats = np.array([1.0, 2.0, 3.0, 4.0]), np.array([-1.0, -2.0, -3.0, -4.0])
    vals = np.arange(12.0).reshape(3, 4)  # (t, cell)
    doc = cj.multipoint_series(lons, lats, TIMES, [cj.Parameter("a")], {"a": vals}, {"index": [9, 8, 7, 6]})  # fmt: skip
    dom = doc["domain"]
    assert dom["domainType"] == "MultiPointSeries"
    comp = dom["axes"]["composite"]
    assert comp["dataType"] == "tuple" and comp["coordinates"] == ["x", "y"]
    assert comp["values"] == [[1.0, -1.0], [2.0, -2.0], [3.0, -3.0], [4.0, -4.0]]
    assert len(dom["axes"]["t"]["values"]) == 3
    r = doc["ranges"]["a"]
    assert r["axisNames"] == ["t", "composite"] and r["shape"] == [3, 4]
    # row-major: value k of time t at position t * n + k
    assert r["values"][1 * 4 + 2] == vals[1, 2]
    assert dom[cj.CELLS_MEMBER]["index"] == [9, 8, 7, 6]


def test_multipoint_timeless_and_empty():
    doc = cj.multipoint_series(np.array([0.0]), np.array([1.0]), None, [cj.Parameter("a")], {"a": np.array([2.0])})  # fmt: skip
    assert doc["domain"]["domainType"] == "MultiPoint"
    assert doc["ranges"]["a"]["axisNames"] == ["composite"] and doc["ranges"]["a"]["shape"] == [1]
    empty = cj.multipoint_series(np.array([]), np.array([]), TIMES, [cj.Parameter("a")], {"a": np.zeros((3, 0))})  # fmt: skip
    assert empty["ranges"]["a"]["shape"] == [3, 0] and empty["ranges"]["a"]["values"] == []
    with pytest.raises(ValueError, match="expected"):
        cj.multipoint_series(np.zeros(2), np.zeros(2), TIMES, [cj.Parameter("a")], {"a": np.zeros((3, 3))})  # fmt: skip

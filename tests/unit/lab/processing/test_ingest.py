"""twinlab.processing.ingest: the STAC item of a job's outputs, its footprint, the output
prefix's size and removal, and how the STAC API's answers are handled."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import numpy as np
import pystac
import pytest
import xarray as xr

import twinlab.datalake as dl
from twinlab.processing import ingest
from twinlab.processing.schemas import TEMPLATED, validate_inputs

UTC = dt.UTC


def spec(pid: str, inputs: dict, job: str = "job42") -> dict:
    return {
        "id": job,
        "process": TEMPLATED[pid],
        "inputs": validate_inputs(TEMPLATED[pid], inputs),
        "owner": "alice",
        "collection": "user-alice",
    }


def test_item_shape_provenance_and_assets(tmp_path: Path) -> None:
    s = spec("zonal-mean", {"item": "hp-2t", "variable": "2t", "datetime": "2020-01-01/2020-01-02"})
    files = {
        "netcdf": {
            "href": "s3://home-alice/processing/job42/zonal_mean.nc",
            "type": "application/x-netcdf",
        },
        "json": {
            "href": "s3://home-alice/processing/job42/zonal_mean.json",
            "type": "application/json",
        },
    }
    t0, t1 = np.datetime64("2020-01-01T00", "ns"), np.datetime64("2020-01-02T18", "ns")
    sources = ["http://h/services/stac/collections/climate-dt/items/hp-2t"]
    item = ingest.build_item(s, files, sources=sources, time_range=(t0, t1))
    assert item["type"] == "Feature" and item["id"] == "job42"
    assert item["collection"] == "user-alice"
    assert ingest.PROCESSING_EXTENSION in item["stac_extensions"]
    p = item["properties"]
    assert p["datetime"] is None
    assert p["start_datetime"] == "2020-01-01T00:00:00Z"
    assert p["end_datetime"] == "2020-01-02T18:00:00Z"
    assert p["param"] == "2t"
    assert "job42" in p["processing:lineage"] and "zonal-mean" in p["processing:lineage"]
    assert p["twinhub:provenance"] == {
        "process": "zonal-mean",
        "process_version": TEMPLATED["zonal-mean"]["version"],
        "inputs": s["inputs"],
        "job": "job42",
        "source_items": sources,
    }
    assert item["assets"]["netcdf"]["href"] == files["netcdf"]["href"]
    assert item["assets"]["netcdf"]["type"] == "application/x-netcdf"
    assert item["assets"]["netcdf"]["roles"] == ["data"]
    assert item["assets"]["json"]["twinhub:variable"] == "2t"
    assert item["geometry"]["type"] == "Polygon" and item["bbox"] == [-180.0, -90.0, 180.0, 90.0]
    assert not [lk for lk in item["links"] if lk["rel"] in ("self", "collection")]
    json.dumps(item)  # plain JSON
    back = pystac.Item.from_dict(item)
    assert back.common_metadata.start_datetime == dt.datetime(2020, 1, 1, tzinfo=UTC)


def test_an_instant_or_no_time_gives_a_datetime() -> None:
    s = spec("climatology", {"item": "i", "variable": "tp"})
    t = np.datetime64("2020-03-01T06", "ns")
    one = ingest.build_item(s, {}, sources=[], time_range=(t, t))
    assert one["properties"]["datetime"] == "2020-03-01T06:00:00Z"
    assert "start_datetime" not in one["properties"]
    end = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    none = ingest.build_item(s, {}, sources=[], time_range=None, finished=end)
    assert none["properties"]["datetime"] == "2026-01-02T03:04:05Z"
    nat = np.datetime64("NaT", "ns")
    assert (
        ingest.build_item(s, {}, sources=[], time_range=(nat, nat), finished=end)["properties"][
            "datetime"
        ]
        == "2026-01-02T03:04:05Z"
    )


def test_regrid_of_several_variables_names_no_single_param() -> None:
    target = {"type": "healpix", "nside": 8}
    s = spec("regrid", {"item": "i", "variables": ["2t", "tp"], "target": target})
    item = ingest.build_item(s, {}, sources=[], time_range=None)
    assert "param" not in item["properties"]
    s = spec("regrid", {"item": "i", "variables": ["2t"], "target": target})
    assert ingest.build_item(s, {}, sources=[], time_range=None)["properties"]["param"] == "2t"


@pytest.mark.parametrize(
    ("inputs", "geom_type", "bbox"),
    [
        ({"bbox": [10, 20, 30, 40]}, "Polygon", [10.0, 20.0, 30.0, 40.0]),
        ({"bbox": [170, -10, -170, 10]}, "MultiPolygon", [170.0, -10.0, -170.0, 10.0]),
        (
            {
                "polygon": {
                    "type": "Polygon",
                    "coordinates": [[[350, 0], [355, 0], [355, 5], [350, 0]]],
                }
            },
            "Polygon",
            [-10.0, 0.0, -5.0, 5.0],
        ),
        ({"points": [[2.0, 48.0], [200.0, -10.0]]}, "MultiPoint", [-160.0, -10.0, 2.0, 48.0]),
        ({}, "Polygon", [-180.0, -90.0, 180.0, 90.0]),
    ],
)
def test_footprint(inputs: dict, geom_type: str, bbox: list) -> None:
    geom, box = ingest.footprint(inputs)
    assert geom["type"] == geom_type
    assert box == bbox
    # every position within lon/lat bounds (the STAC API refuses others)
    for lon, lat in positions(geom["coordinates"]):
        assert -180 <= lon <= 180 and -90 <= lat <= 90


def positions(coords: list) -> list:
    if coords and isinstance(coords[0], int | float):
        return [coords]
    return [p for c in coords for p in positions(c)]


def test_the_item_opens_with_twinlab_datalake(tmp_path: Path) -> None:
    out = tmp_path / "zonal_mean.nc"
    xr.Dataset(
        {"2t": (("time", "latitude"), np.arange(6.0).reshape(2, 3))},
        coords={"latitude": [45.0, 0.0, -45.0]},
    ).to_netcdf(out, engine="h5netcdf")
    s = spec("zonal-mean", {"item": "i", "variable": "2t"})
    item = ingest.build_item(
        s,
        {"netcdf": {"href": str(out), "type": "application/x-netcdf"}},
        sources=[],
        time_range=None,
    )
    ds = dl.open(item)
    np.testing.assert_array_equal(ds["2t"].values, np.arange(6.0).reshape(2, 3))


def test_output_bytes_and_removal(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("file", auto_mkdir=True)
    prefix = f"{tmp_path}/home/processing/j1"
    assert ingest.output_bytes(fs, prefix) == 0  # nothing written yet
    fs.pipe(f"{prefix}/a.json", b"x" * 10)
    fs.pipe(f"{prefix}/b.zarr/zarr.json", b"y" * 5)
    fs.pipe(f"{prefix}/b.zarr/c/0", b"z" * 7)
    fs.pipe(f"{tmp_path}/home/processing/j10/other", b"w" * 100)  # another job, same stem
    assert ingest.output_bytes(fs, prefix) == 22
    ingest.remove_outputs(fs, prefix)
    assert not Path(prefix).exists()
    assert Path(f"{tmp_path}/home/processing/j10/other").exists()
    ingest.remove_outputs(fs, prefix)  # again: nothing to do


def test_collection_body_is_a_valid_collection() -> None:
    body = ingest.collection_body("user-alice", "alice")
    coll = pystac.Collection.from_dict(body)
    assert coll.id == "user-alice" and "alice" in coll.description
    assert body["extent"]["spatial"]["bbox"] == [[-180.0, -90.0, 180.0, 90.0]]


class FakeStac:
    """A fake STAC API as an httpx transport (answers scripted per method and path)."""

    def __init__(self, answers: dict[tuple[str, str], list[int]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        self.calls.append((*key, request.headers.get("authorization")))
        status = self.answers[key].pop(0)
        body = {"code": status, "description": f"answer {status}"}
        return httpx.Response(status, json=body if status >= 400 else {})


def test_publish_paths() -> None:
    base = "http://stac/services/stac/"
    item = ingest.build_item(spec("echo", {"stringInput": "x"}), {}, sources=[], time_range=None)
    coll = "/services/stac/collections/user-alice"
    # the collection exists (made by an earlier job): only the item is posted
    fake = FakeStac({("GET", coll): [200], ("POST", coll + "/items"): [201]})
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        url = ingest.publish(http, base, "tok", item, "alice")
    assert url == f"{base}collections/user-alice/items/job42"
    assert [c[:2] for c in fake.calls] == [("GET", coll), ("POST", coll + "/items")]
    assert {c[2] for c in fake.calls} == {"token tok"}
    # made meanwhile by another job (409), and the item exists: replaced
    fake = FakeStac(
        {
            ("GET", coll): [404],
            ("POST", "/services/stac/collections"): [409],
            ("POST", coll + "/items"): [409],
            ("PUT", coll + "/items/job42"): [200],
        }
    )
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        ingest.publish(http, base, "tok", item, "alice")
    assert fake.calls[-1][:2] == ("PUT", coll + "/items/job42")
    # someone else's collection: the refusal is the error's message
    fake = FakeStac({("GET", coll): [200], ("POST", coll + "/items"): [403]})
    with (
        httpx.Client(transport=httpx.MockTransport(fake)) as http,
        pytest.raises(ingest.IngestError, match=r"refused the item 'job42' \(403\): answer 403"),
    ):
        ingest.publish(http, base, "tok", item, "alice")

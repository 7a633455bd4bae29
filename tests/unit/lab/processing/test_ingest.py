"""twinlab.processing.ingest: the STAC item of a job's outputs, its footprint, the output
prefix's size and removal, and how the STAC API's answers are handled."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
    assert p["datetime"] == "2020-01-01T00:00:00Z"  # set, as the lake's own items have it
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
    """A fake STAC API as an httpx transport (answers scripted per method and path: a
    status, or (status, body))."""

    def __init__(self, answers: dict[tuple[str, str], list[int | tuple[int, dict]]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        self.calls.append((*key, request.headers.get("authorization")))
        answer = self.answers[key].pop(0)
        status, body = answer if isinstance(answer, tuple) else (answer, {})
        if status >= 400:
            body = {"code": status, "description": f"answer {status}"}
        return httpx.Response(status, json=body)


ALICES = (200, {"id": "user-alice", "twinhub:owner": "alice"})


def test_publish_paths() -> None:
    base = "http://stac/services/stac/"
    item = ingest.build_item(spec("echo", {"stringInput": "x"}), {}, sources=[], time_range=None)
    coll = "/services/stac/collections/user-alice"
    # the collection exists (made by an earlier job): only the item is posted
    fake = FakeStac({("GET", coll): [ALICES], ("POST", coll + "/items"): [201]})
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        url = ingest.publish(http, base, "tok", item, "alice")
    assert url == f"{base}collections/user-alice/items/job42"
    assert [c[:2] for c in fake.calls] == [("GET", coll), ("POST", coll + "/items")]
    assert {c[2] for c in fake.calls} == {"token tok"}
    # made meanwhile by another job (409), and the item exists: replaced
    fake = FakeStac(
        {
            ("GET", coll): [404, ALICES],
            ("POST", "/services/stac/collections"): [409],
            ("POST", coll + "/items"): [409],
            ("PUT", coll + "/items/job42"): [200],
        }
    )
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        ingest.publish(http, base, "tok", item, "alice")
    assert fake.calls[-1][:2] == ("PUT", coll + "/items/job42")
    # the STAC API refuses the item: the refusal is the error's message
    fake = FakeStac({("GET", coll): [ALICES], ("POST", coll + "/items"): [403]})
    with (
        httpx.Client(transport=httpx.MockTransport(fake)) as http,
        pytest.raises(ingest.IngestError, match=r"refused the item 'job42' \(403\): answer 403"),
    ):
        ingest.publish(http, base, "tok", item, "alice")


@pytest.mark.parametrize(
    "answers, words",
    [
        # taken first by someone else (before the STAC API reserved user-<name>)
        ([(200, {"id": "user-alice", "twinhub:owner": "mallory"})], "belongs to 'mallory'"),
        # the platform's (an admin made it without an owner)
        ([(200, {"id": "user-alice"})], "has no owner"),
        # made meanwhile, by someone else (the POST answered 409)
        ([404, (200, {"id": "user-alice", "twinhub:owner": "mallory"})], "belongs to 'mallory'"),
    ],
)
def test_publish_never_writes_into_a_collection_of_someone_else(answers, words) -> None:
    base = "http://stac/services/stac/"
    item = ingest.build_item(spec("echo", {"stringInput": "x"}), {}, sources=[], time_range=None)
    coll = "/services/stac/collections/user-alice"
    fake = FakeStac({("GET", coll): answers, ("POST", "/services/stac/collections"): [409]})
    with (
        httpx.Client(transport=httpx.MockTransport(fake)) as http,
        pytest.raises(ingest.IngestError, match=f"user-alice' {words}.*not to 'alice'"),
    ):
        ingest.publish(http, base, "tok", item, "alice")
    # nothing was written into it
    assert not [c for c in fake.calls if c[1].endswith("/items") or c[0] == "PUT"]


# -- outputs in the platform's object store (SeaweedFS, as `twinhub up` runs it) ---------------
USER = ("alice", "P4TESTALICEKEY", "p4-test-alice-secret-0123456789", "home-alice")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """SeaweedFS with alice's keys and her home bucket (made by the admin, as the hub does)."""
    pytest.importorskip("s3fs")
    from botocore.exceptions import BotoCoreError, ClientError

    from twinhub import objectstore
    from twinhub.objectstore import seaweed
    from twinhub.process import ports
    from twinhub.process.runtime import Runtime

    state = tmp_path_factory.mktemp("p4-s3-state")
    rt = Runtime(state_dir=state, instance_id="p4test")
    for sub in ("secrets", "run", "logs"):
        (state / sub).mkdir(mode=0o700, exist_ok=True)
    for key in seaweed.PORT_KEYS.values():
        rt.ports[key] = ports.pick_port()
    rt.save()
    seaweed.write_config(rt)
    lake = objectstore.settings(rt).lake_bucket
    seaweed.write_identities(rt, seaweed.identities(objectstore.admin_keys(rt), [USER], lake))
    log = open(state / "logs" / "object-store.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinhub.objectstore.run"],
        env={**os.environ, "TWINHUB_STATE": str(state)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        admin = objectstore.admin_client(rt)
        deadline = time.monotonic() + 60
        while True:
            try:
                admin.create_bucket(Bucket=USER[3])
                break
            except ClientError as e:
                if e.response["Error"]["Code"] in (
                    "BucketAlreadyExists",
                    "BucketAlreadyOwnedByYou",
                ):
                    break
            except BotoCoreError:
                pass
            log_text = (state / "logs" / "object-store.log").read_text()[-2000:]
            assert proc.poll() is None and time.monotonic() < deadline, log_text
            time.sleep(0.3)
        yield {"endpoint": objectstore.endpoint(rt)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        for port in rt.ports.values():
            ports.release_port(port)


@pytest.fixture
def alice_env(s3: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """alice's S3 variables, as a runner (and its workers) get them."""
    import s3fs

    name, access, secret, home = USER
    env = {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": s3["endpoint"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": s3["endpoint"],
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()  # credentials are read when a client is made
    return env


def test_outputs_written_sized_and_removed_in_the_users_bucket(alice_env: dict) -> None:
    distributed = pytest.importorskip("distributed")
    from twinlab.grids import HEALPix, grid_attrs
    from twinlab.processing.context import JobContext, Reporter

    prefix = f"s3://{USER[3]}/processing/job-s3/"
    job = {
        "id": "job-s3",
        "process": TEMPLATED["climatology"],
        "inputs": {},
        "output_prefix": prefix,
    }
    reporter = Reporter("http://127.0.0.1:9/services/processing/", "job-s3", "s")  # not started
    grid = HEALPix(4)
    field = xr.Dataset(
        {"t": (("time", "cell"), np.arange(3 * grid.size, dtype=float).reshape(3, -1))},
        attrs=grid_attrs(grid),
    ).chunk({"time": 1})
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1) as client:
        ctx = JobContext(job, reporter, client=client)
        assert ingest.output_bytes(ctx.fs, ctx.prefix) == 0  # nothing there yet
        zarr = ctx.write_zarr("field", field.mean("time"))  # written by the workers
        js = ctx.write_json("series", {"values": [1.0, float("nan")]})
    assert zarr == prefix + "field.zarr" and js == prefix + "series.json"
    got = xr.open_zarr(zarr, storage_options={"endpoint_url": alice_env["AWS_ENDPOINT_URL"]})
    np.testing.assert_array_equal(got["t"].values, field["t"].values.mean(axis=0))
    assert json.loads(ctx.fs.cat(ctx.prefix + "/series.json")) == {"values": [1.0, None]}
    size = ingest.output_bytes(ctx.fs, ctx.prefix)
    listed = ctx.fs.find(ctx.prefix, detail=True)
    assert size == sum(i["size"] for i in listed.values()) > 0
    assert any(k.endswith("field.zarr/zarr.json") for k in listed)
    ingest.remove_outputs(ctx.fs, ctx.prefix)
    ctx.fs.invalidate_cache()
    assert ingest.output_bytes(ctx.fs, ctx.prefix) == 0
    # another user's bucket is out of reach with alice's keys
    other = JobContext({**job, "output_prefix": "s3://home-bob/processing/x/"}, reporter)
    with pytest.raises((PermissionError, FileNotFoundError, OSError)):
        other.write_json("x", {})

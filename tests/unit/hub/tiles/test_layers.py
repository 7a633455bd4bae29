"""Layers from STAC items (no data read): variables, valid times, listing through the STAC
API (paged, access-filtered), item lookups, time selection, the render pool."""

from __future__ import annotations

import asyncio
import io
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import xarray as xr

from twinhub.services.asgi import BadRequest
from twinhub.services.tiles import access, layers, opening
from twinhub.services.tiles import listing as layers_listing
from twinhub.services.tiles.access import Caller
from twinhub.services.tiles.listing import (
    check_item_id,
    item_times,
    item_variables,
    layer_infos,
    parse_duration,
    parse_instant,
    time_index,
)

from .conftest import FakeS3, lake_item, make_ctx

pytestmark = pytest.mark.anyio
T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def s3(monkeypatch):
    clients = {"alice": FakeS3({"home-alice"}), "bob": FakeS3(set())}
    monkeypatch.setattr(access, "_user_client", lambda ctx, name: clients[name])
    return clients


def test_times_from_the_cube_time_dimension():
    assert item_times(lake_item("i")) == tuple(T0 + timedelta(hours=6 * k) for k in range(4))
    # listed values win over extent + step
    item = lake_item("i")
    item["properties"]["cube:dimensions"]["time"]["values"] = [
        "2030-01-01T12:00:00Z",
        "2030-01-01T00:00:00+00:00",
    ]
    assert item_times(item) == (T0, T0 + timedelta(hours=12))
    # no step: the extent's ends
    assert item_times(lake_item("i", step=None)) == (T0, T0 + timedelta(hours=18))
    # a longer cube extent is clipped to the item's own datetimes
    item = lake_item("i", end="2030-01-02T00:00:00Z")
    item["properties"]["end_datetime"] = "2030-01-01T06:00:00Z"
    assert item_times(item) == (T0, T0 + timedelta(hours=6))
    # timeless
    item = lake_item("i")
    del item["properties"]["cube:dimensions"]["time"]
    assert item_times(item) == ()


def test_durations():
    assert parse_duration("PT6H") == timedelta(hours=6)
    assert parse_duration("P1DT12H") == timedelta(days=1, hours=12)
    assert parse_duration("PT30M") == timedelta(minutes=30)
    assert parse_duration("P1W") == timedelta(weeks=1)
    for bad in ("P1M", "P1Y", "6H", "", "PT0S", "PT"):
        assert parse_duration(bad) is None, bad


def test_variables_from_cube_variables_else_param():
    item = lake_item("i")
    item["properties"]["cube:variables"]["lat_bnds"] = {"type": "auxiliary"}
    item["properties"]["cube:variables"]["10u"] = {"unit": "m s-1"}
    assert list(item_variables(item)) == ["2t", "10u"]
    del item["properties"]["cube:variables"]
    assert list(item_variables(item)) == ["2t"]
    del item["properties"]["param"]
    item["assets"]["zarr"]["twinhub:variable"] = "msl"
    assert list(item_variables(item)) == ["msl"]


def test_layer_infos():
    (info,) = layer_infos(
        lake_item("i", "open"), ["open"], ("zarr", {"href": "s3://lake/x"}, "zarr"), "lake"
    )
    assert info.layer_id == "i/2t"
    assert info.units == "K" and info.public and info.collection == "open"
    assert info.bbox == (-180.0, -90.0, 180.0, 90.0)
    assert info.grid["nside"] == 128
    assert info.times[0] == T0 and info.times[-1].tzinfo is not None
    assert info.href == "s3://lake/x" and info.format == "zarr"
    (closed,) = layer_infos(lake_item("i", "climate-dt"), ["open"])
    assert not closed.public
    # public (Cache-Control: public) only for lake data in a public collection
    home = ("zarr", {"href": "s3://home-bob/x.zarr"}, "zarr")
    (private,) = layer_infos(lake_item("i", "open"), ["open"], home, "lake")
    assert not private.public


async def test_public_only_for_lake_data_of_a_public_collection(tmp_path, fake_stac, s3):
    s3["alice"].readable.add("home-bob")
    fake_stac.items += [
        lake_item("pub", "open"),
        lake_item("elsewhere", "open", href="s3://home-bob/x.zarr"),
    ]
    ctx = make_ctx(tmp_path, fake_stac, public_collections=["open"])
    (pub,) = await layers.layer_info(ctx, Caller("alice"), "pub")
    (elsewhere,) = await layers.layer_info(ctx, Caller("alice"), "elsewhere")
    assert pub.public and not elsewhere.public
    infos, _ = await layers.list_layers(ctx, Caller("alice"), 100)
    assert {i.layer_id: i.public for i in infos} == {"pub/2t": True, "elsewhere/2t": False}


@pytest.mark.parametrize("bad", ["a/b", "", "x" * 257, "a b", "é", "../x"])
def test_item_ids_are_one_segment(bad):
    e = pytest.raises(BadRequest, check_item_id, bad).value
    assert e.status == 400 and "item ids are one path segment" in e.message


def test_time_index():
    (info,) = layer_infos(lake_item("i"), [])
    for default in (None, "", "default", "DEFAULT"):
        assert time_index(info, default) == 0
    assert time_index(info, "2030-01-01T06:00:00Z") == 1
    assert time_index(info, "2030-01-01T07:00:00+01:00") == 1
    assert time_index(info, "2030-01-01T18:00:00") == 3  # naive: UTC
    e = pytest.raises(BadRequest, time_index, info, "2030-01-01T05:00:00Z").value
    assert e.status == 400
    assert (
        "2030-01-01T00:00:00Z .. 2030-01-01T18:00:00Z" in e.message and "4 valid times" in e.message
    )
    e = pytest.raises(BadRequest, time_index, info, "yesterday").value
    assert "not an ISO 8601 instant" in e.message
    # past datetime's range (an offset pushes 9999-12-31 over), or outside datetime64[ns]
    for far in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00Z", "2262-01-01T00:00:00Z"):
        e = pytest.raises(BadRequest, time_index, info, far).value
        assert e.status == 400 and "1678-2261" in e.message, far
        pytest.raises(ValueError, parse_instant, far)
    assert parse_instant("1678-01-01T00:00:00Z").year == 1678
    item = lake_item("i")
    del item["properties"]["cube:dimensions"]["time"]
    (timeless,) = layer_infos(item, [])
    assert time_index(timeless, None) == 0
    assert (
        "no time dimension"
        in pytest.raises(BadRequest, time_index, timeless, "2030-01-01").value.message
    )


def test_times_overflowing_or_too_many_are_bounded():
    # 9999-12-31 + P1W, P99999999999D: no OverflowError, no time the data cannot have
    assert item_times(lake_item("i", start="9999-12-24T00:00:00Z", end="9999-12-31T00:00:00Z", step="P1W")) == ()  # fmt: skip
    assert parse_duration("P99999999999D") is None
    item = lake_item("i", step="P99999999999D")
    assert item_times(item) == (T0, T0 + timedelta(hours=18))  # as without a step: the ends
    # a minute step over two centuries: at most MAX_TIMES, computed without a loop of steps
    item = lake_item("i", end="2250-01-01T00:00:00Z", step="PT1M")
    item["properties"]["end_datetime"] = "2250-01-01T00:00:00Z"
    times = item_times(item)
    assert len(times) == layers_listing.MAX_TIMES == 10_000
    assert times[1] - times[0] == timedelta(minutes=1)
    item["properties"]["cube:dimensions"]["time"]["values"] = ["2030-01-01T00:00:00Z"] * 50_000
    assert item_times(item) == (T0,)


def _bad_items() -> list[dict]:
    """Items that once broke every listing (review finding 4)."""
    overflow = lake_item("overflow", start="9999-12-24T00:00:00Z", end="9999-12-31T00:00:00Z", step="P1W")  # fmt: skip
    overflow["properties"]["start_datetime"] = "9999-12-31T23:59:59-23:59"
    huge_step = lake_item("huge-step", step="P99999999999D")
    control = lake_item("control")
    control["properties"]["title"] = "bad\x01title\x0b"
    control["properties"]["cube:variables"]["2t"]["description"] = "x\x00y"
    bad_bucket = lake_item("bad-bucket", href="s3://Bad_Bucket!/x.zarr")
    broken = lake_item("broken")
    broken["properties"] = "not a mapping"
    down = lake_item("down", href="s3://down/x.zarr")
    return [overflow, huge_step, control, bad_bucket, broken, down]


async def test_a_bad_item_never_fails_a_listing(tmp_path, fake_stac, s3, caplog):
    from botocore.exceptions import EndpointConnectionError

    class Down(FakeS3):
        def head_object(self, Bucket, Key):  # noqa: N803
            if Bucket == "down":  # this bucket's store cannot be reached: 502 for its item
                raise EndpointConnectionError(endpoint_url="http://down")
            return super().head_object(Bucket, Key)

    s3["alice"] = Down({"home-alice"})
    fake_stac.items += [lake_item("good-1"), *_bad_items(), lake_item("good-2")]
    ctx = make_ctx(tmp_path, fake_stac)
    infos, more = await layers.list_layers(ctx, Caller("alice"), 100)
    ids = [i.layer_id for i in infos]
    assert ids == ["good-1/2t", "overflow/2t", "huge-step/2t", "control/2t", "good-2/2t"]
    assert not more
    by_id = {i.item_id: i for i in infos}
    assert by_id["overflow"].times == () and len(by_id["huge-step"].times) == 2
    assert by_id["control"].title == "bad title : x y"
    assert "broken" in caplog.text
    # looked up alone, a broken item is its own 422
    assert (await _refused(layers.layer_info(ctx, Caller("alice"), "broken"))).status == 422
    # built in a thread and kept: the next listing parses nothing again
    calls = []
    real = layers_listing.page_infos
    layers_listing.page_infos = lambda *a: calls.append(1) or real(*a)
    try:
        again, _ = await layers.list_layers(ctx, Caller("alice"), 100)
    finally:
        layers_listing.page_infos = real
    assert [i.layer_id for i in again] == ids and calls == []


async def test_listing_pages_and_filters_by_access(tmp_path, fake_stac, s3):
    fake_stac.items += [lake_item(f"lake-{n}") for n in range(450)]
    fake_stac.items.insert(3, lake_item("mine", "user-alice", href="s3://home-alice/m.zarr"))
    ctx = make_ctx(tmp_path, fake_stac)
    infos, more = await layers.list_layers(ctx, Caller("alice"), 1000)
    assert len(infos) == 451 and not more
    assert "mine/2t" in {i.layer_id for i in infos}
    assert len(fake_stac.requests) == 3  # pages of 200, the next link's query followed
    infos, more = await layers.list_layers(ctx, Caller("bob"), 1000)
    assert len(infos) == 450 and "mine/2t" not in {i.layer_id for i in infos}
    # bounded by the limit and by max_layers
    infos, more = await layers.list_layers(ctx, Caller("bob"), 10)
    assert len(infos) == 10 and more
    ctx = make_ctx(tmp_path, fake_stac, max_layers=5)
    infos, more = await layers.list_layers(ctx, Caller("bob"), 1000)
    assert len(infos) == 5 and more


async def test_anonymous_listing_asks_only_for_public_collections(tmp_path, fake_stac, s3):
    fake_stac.items += [lake_item("a", "open"), lake_item("b", "climate-dt")]
    ctx = make_ctx(tmp_path, fake_stac, public_collections=["open"])
    infos, more = await layers.list_layers(ctx, Caller(None), 100)
    assert [i.layer_id for i in infos] == ["a/2t"] and not more
    assert fake_stac.requests[-1]["collections"] == "open"
    ctx = make_ctx(tmp_path, fake_stac)
    assert await layers.list_layers(ctx, Caller(None), 100) == ([], False)


async def test_layer_info_checks_access_and_names_variables(tmp_path, fake_stac, s3):
    fake_stac.items += [
        lake_item("i"),
        lake_item("mine", "user-alice", href="s3://home-alice/m.zarr"),
    ]
    ctx = make_ctx(tmp_path, fake_stac)
    (info,) = await layers.layer_info(ctx, Caller("bob"), "i", "2t")
    assert info.layer_id == "i/2t"
    e = await _refused(layers.layer_info(ctx, Caller("bob"), "i", "tp"))
    assert e.status == 404 and "it has: 2t" in e.message
    assert (await _refused(layers.layer_info(ctx, Caller("bob"), "nope"))).status == 404
    assert (await _refused(layers.layer_info(ctx, Caller("bob"), "mine"))).status == 403
    assert (await _refused(layers.layer_info(ctx, Caller(None), "i"))).status == 401
    assert (await _refused(layers.layer_info(ctx, Caller("bob"), "a/b"))).status == 400
    # lookups are cached: one search per id within access_ttl
    before = len(fake_stac.requests)
    await layers.layer_info(ctx, Caller("alice"), "mine")
    await layers.layer_info(ctx, Caller("alice"), "mine")
    assert len(fake_stac.requests) == before


async def test_an_id_in_several_collections_prefers_the_platforms(tmp_path, fake_stac, s3):
    fake_stac.items += [
        lake_item("same", "user-bob", href="s3://home-bob/fake.zarr"),
        lake_item("same", "climate-dt"),
    ]
    serve_collections(fake_stac, {"climate-dt": None})
    ctx = make_ctx(tmp_path, fake_stac)
    (info,) = await layers.layer_info(ctx, Caller("alice"), "same")
    assert info.collection == "climate-dt"
    # among users' collections, the caller's own: another user cannot shadow one's item
    fake_stac.items += [
        lake_item("twin", "user-aaa", href="s3://home-alice/aaa.zarr"),
        lake_item("twin", "user-alice", href="s3://home-alice/twin.zarr"),
    ]
    (info,) = await layers.layer_info(ctx, Caller("alice"), "twin")
    assert info.collection == "user-alice" and info.href.endswith("/twin.zarr")
    assert hash(info)  # usable as a key (the grid dict is left out of the hash)


def serve_collections(fake_stac, owners: dict[str, str | None]) -> list[str]:
    """``collections/{id}`` on the fake STAC API: ``owners[id]`` as ``twinhub:owner`` (None:
    none, the platform's); unknown ids 404. Returns the ids asked for."""
    asked: list[str] = []

    @fake_stac.app.get("/services/stac/collections/{cid}")
    async def one(cid: str):
        from fastapi.responses import JSONResponse

        asked.append(cid)
        if cid not in owners:
            return JSONResponse({"code": "NotFound"}, status_code=404)
        doc = {"type": "Collection", "id": cid}
        if owners[cid] is not None:
            doc["twinhub:owner"] = owners[cid]
        return doc

    return asked


async def test_another_users_collection_never_shadows_the_platforms_item(tmp_path, fake_stac, s3):
    # bob made collections "0".."4" (twinhub:owner bob) holding 205 items with the id of the
    # platform's item, listed before it: more than one page of matches
    fake_stac.items += [
        lake_item("h128", str(n % 5), href="s3://home-bob/fake.zarr") for n in range(205)
    ]
    fake_stac.items.append(lake_item("h128", "climate-dt"))
    fake_stac.items.append(lake_item("only-bob", "0", href="s3://home-bob/o.zarr"))
    owners: dict[str, str | None] = {"climate-dt": None, **{str(n): "bob" for n in range(5)}}
    asked = serve_collections(fake_stac, owners)
    ctx = make_ctx(tmp_path, fake_stac)
    for who in ("alice", "bob"):  # bob's own never outranks the platform's either
        (info,) = await layers.layer_info(ctx, Caller(who), "h128")
        assert info.collection == "climate-dt" and info.href == "s3://lake/climate-dt/H128.zarr"
    assert sorted(set(asked)) == ["0", "1", "2", "3", "4", "climate-dt"]  # owners kept
    assert len(asked) == 6
    # an id only bob's collection holds is bob's item (the access check then decides)
    assert (await _refused(layers.layer_info(ctx, Caller("alice"), "only-bob"))).status == 403
    # a collection whose owner is unknown (no such collection) ranks as another user's
    fake_stac.items += [
        lake_item("x", "ghost", href="s3://home-alice/g.zarr"),
        lake_item("x", "mine", href="s3://home-alice/x.zarr"),
    ]
    owners["mine"] = "alice"
    (info,) = await layers.layer_info(ctx, Caller("alice"), "x")
    assert info.collection == "mine"


async def _refused(coro) -> BadRequest:
    with pytest.raises(BadRequest) as e:
        await coro
    return e.value


async def test_run_render_uses_a_bounded_pool(tmp_path):
    ctx = make_ctx(tmp_path, render_threads=2)
    names = set()

    def work(x, *, y):
        names.add(threading.current_thread().name)
        return x + y

    results = [await layers.run_render(ctx, work, n, y=1) for n in range(5)]
    assert results == [1, 2, 3, 4, 5]
    assert names and all(n.startswith("tiles-render") for n in names)
    assert ctx.extras[layers.POOL]._max_workers == 2
    layers.shutdown(ctx)
    assert layers.POOL not in ctx.extras


async def test_open_layer_opens_once_and_takes_the_datas_times(
    tmp_path, fake_stac, s3, monkeypatch
):
    fake_stac.items += [lake_item("i"), lake_item("still", step=None)]
    ctx = make_ctx(tmp_path, fake_stac)
    opened = []
    gate = threading.Event()

    class FakeField:
        def __init__(self, times):
            self.times = times

    def open_field(ctx_, info, item, selection, key):
        opened.append(key)
        gate.wait(5)
        if info.item_id == "still":
            return FakeField(None)  # timeless data
        return FakeField(np.array(["2030-01-01T00:00", "2030-01-01T06:00"], dtype="datetime64[ns]"))

    monkeypatch.setattr(layers, "_open_field", open_field)
    tasks = [
        asyncio.ensure_future(layers.open_layer(ctx, Caller("bob"), "i", "2t")) for _ in range(4)
    ]
    await asyncio.sleep(0.05)
    gate.set()
    got = await asyncio.gather(*tasks)
    assert len(opened) == 1 and len({id(g.field) for g in got}) == 1
    assert got[0].info.times == (T0, T0 + timedelta(hours=6))  # the data's, not the item's 4
    again = await layers.open_layer(ctx, Caller("alice"), "i", "2t")
    assert again.field is got[0].field and len(opened) == 1  # kept open
    still = await layers.open_layer(ctx, Caller("bob"), "still", "2t")
    assert still.info.times == ()
    # the access check comes first, every time
    assert (await _refused(layers.open_layer(ctx, Caller(None), "i", "2t"))).status == 401


class FakeFs:
    """Fake of s3fs for the GRIB copy: one object of ``data``; ``opened`` counts reads."""

    def __init__(self, data: bytes) -> None:
        self.data, self.opened = data, 0

    def info(self, href):
        return {"size": len(self.data), "ETag": '"e1"'}

    def open(self, href, mode="rb", block_size=None):
        self.opened += 1
        return io.BytesIO(self.data)


def test_grib_is_copied_under_the_run_dir_within_the_limit(tmp_path):
    ctx = make_ctx(tmp_path, max_read_bytes=1000)
    fs = FakeFs(b"GRIB" + b"x" * 500)
    path = opening._grib_copy(ctx, fs, "s3://lake/a.grib2")
    assert path.read_bytes() == fs.data and path.parent == tmp_path / "run" / "tiles-grib"
    opening._remove_copy(path)
    assert not list(path.parent.iterdir())
    e = pytest.raises(BadRequest, opening._grib_copy, ctx, FakeFs(b"x" * 1001), "s3://lake/b.grib2")
    assert e.value.status == 413 and "TwinhubTiles.max_read_bytes" in e.value.message

    class Growing(FakeFs):  # says it is small, then sends more: stopped at the limit
        def info(self, href):
            return {"size": 10}

    e = pytest.raises(BadRequest, opening._grib_copy, ctx, Growing(b"x" * 2000), "s3://lake/c")
    assert e.value.status == 413
    assert not list(path.parent.iterdir())  # nothing left behind


def test_grib_valid_times_become_the_time_axis():
    ref = np.datetime64("2030-01-01T00:00", "ns")
    steps = np.array([6, 12], dtype="timedelta64[h]").astype("timedelta64[ns]")
    ds = xr.Dataset(
        {"tp": (("step", "values"), np.zeros((2, 3)))},
        coords={"time": ref, "step": steps, "valid_time": ("step", ref + steps)},
    )
    out = opening._valid_time_axis(ds)
    assert out["tp"].dims == ("time", "values")
    assert out["time"].values.tolist() == (ref + steps).tolist()
    one = xr.Dataset(
        {"tp": (("values",), np.zeros(3))}, coords={"time": ref, "valid_time": ref + steps[0]}
    )
    out = opening._valid_time_axis(one)
    assert out["tp"].dims == ("time", "values") and out["time"].values[0] == ref + steps[0]

"""Listings and lookups against hostile items (listing.py, access.py, wmts.py, ogcapi.py):
XML-1.0 text, per-layer capabilities, time budgets, variables per item, owner lookups that
fail or answer about another id, ids with too many matches, one HEAD per (caller, bucket)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.responses import JSONResponse
from lxml import etree

from twinhub.services.asgi import BadRequest
from twinhub.services.tiles import access, layers, ogcapi, wmts
from twinhub.services.tiles import listing as lst
from twinhub.services.tiles.access import Budget, Caller, check_item
from twinhub.services.tiles.layers import LayerInfo

from .conftest import FakeS3, lake_item, make_ctx

pytestmark = pytest.mark.anyio
T0 = datetime(2030, 1, 1, tzinfo=UTC)
BASE = "http://testserver/services/tiles/"
W = f"{{{wmts.WMTS_NS}}}"
OWS = f"{{{wmts.OWS_NS}}}"


@pytest.fixture
def s3(monkeypatch):
    clients = {"alice": FakeS3({"home-alice", "proj-a"}), "bob": FakeS3(set())}
    monkeypatch.setattr(access, "_user_client", lambda ctx, name: clients[name])
    return clients


def info(item_id: str, times: int = 3, step_h: int = 6, **kw) -> LayerInfo:
    return LayerInfo(
        item_id=item_id, variable="2t", collection="c", title=kw.pop("title", item_id),
        units="K", description="", times=tuple(T0 + timedelta(hours=step_h * k) for k in range(times)),
        bbox=kw.pop("bbox", (-180.0, -90.0, 180.0, 90.0)), grid={}, public=False, **kw,
    )  # fmt: skip


# -- 4a: XML 1.0 text, one bad layer never fails the document ---------------------------------
def test_plain_text_keeps_only_xml_characters():
    raw = "a\ufffeb\uffffc\x00d\ud800e\x85f\tg\u00e9\U0001f600"
    out = lst.plain_text(raw)
    assert out == "a b c d e f g\u00e9\U0001f600"
    etree.fromstring(f"<t>{out}</t>".encode("utf-8", "surrogatepass"))  # lxml takes it


def test_noncharacters_and_a_broken_layer_never_break_the_capabilities():
    odd = info("odd", title="bad \ufffe\uffff title")
    broken = info("broken", bbox=("x", 0, 0, 0))  # a LayerInfo made elsewhere: :g fails
    doc = wmts.capabilities(BASE, [info("good"), odd, broken], lambda i, t: 3)
    layers_ = etree.fromstring(doc).findall(f"{W}Contents/{W}Layer")
    assert [la.find(f"{OWS}Identifier").text for la in layers_] == ["good/2t", "odd/2t"]
    assert layers_[1].find(f"{OWS}Title").text == "bad    title"
    report = etree.fromstring(wmts.exception_report("X", "bad \uffff id", "L\ufffe"))
    assert "\uffff" not in etree.tostring(report, encoding="unicode")


# -- 4b: time budgets, variables per item -----------------------------------------------------
def test_capabilities_time_values_are_budgeted(monkeypatch):
    monkeypatch.setattr(wmts, "TIME_VALUES", 25)
    hours = (0, 1, 5, 6, 12, 20)  # no three at one step: no runs
    irregular = dataclasses.replace(info("irr"), times=tuple(T0 + timedelta(hours=h) for h in hours))  # fmt: skip
    doc = wmts.capabilities(BASE, [info("a", 20), info("b", 40), irregular], lambda i, t: 3)
    dims = etree.fromstring(doc).findall(f"{W}Contents/{W}Layer/{W}Dimension")
    values = [[v.text for v in d.findall(f"{W}Value")] for d in dims]
    assert len(values[0]) == 20  # within the budget: every time
    assert values[1] == ["2030-01-01T00:00:00Z/2030-01-10T18:00:00Z/PT6H"]  # 40 six-hourly
    assert values[2] == ["2030-01-01T00:00:00Z/2030-01-01T20:00:00Z/PT1H"]  # 6 > 4 left
    assert sum(map(len, values)) <= 25 + 2


def test_collections_time_values_are_budgeted(monkeypatch):
    monkeypatch.setattr(ogcapi, "TIME_VALUES", 10)
    docs = ogcapi.collections_of(BASE, [info("a", 8), info("b", 30, step_h=24)])
    assert len(docs[0]["extent"]["temporal"]["values"]) == 8
    t = docs[1]["extent"]["temporal"]
    assert t["count"] == 30 and t["values"] == ["R30/2030-01-01T00:00:00Z/P1D"]
    assert t["interval"] == [["2030-01-01T00:00:00Z", "2030-01-30T00:00:00Z"]]


def test_time_runs_and_durations():
    ts = [T0 + timedelta(hours=6 * k) for k in range(4)] + [T0 + timedelta(days=3)]
    assert lst.time_runs(ts) == [(T0, 4, timedelta(hours=6)), (ts[-1], 1, timedelta(0))]
    assert lst.parse_duration(lst.iso_duration(timedelta(seconds=90061.5))) == timedelta(seconds=90061.5)  # fmt: skip


def test_listings_cap_variables_per_item():
    item = lake_item("wide")
    item["properties"]["cube:variables"] = {f"v{n}": {"type": "data"} for n in range(200)}
    (infos,) = lst.page_infos([item], (), "lake", 64)
    assert len(infos) == 64 and infos[0].variable == "v0"


# -- 5a/5b/5c/N2: item lookups ----------------------------------------------------------------
def serve_owners(fake_stac, answers: dict) -> list[str]:
    asked: list[str] = []

    @fake_stac.app.get("/services/stac/collections/{cid}")
    async def one(cid: str):
        asked.append(cid)
        a = answers.get(cid, 404)
        if isinstance(a, int):
            return JSONResponse({"code": "x"}, status_code=a)
        return a

    return asked


async def test_an_answer_about_another_id_is_an_unknown_owner(tmp_path, fake_stac):
    serve_owners(fake_stac, {"odd": {"id": "other", "type": "Collection"}})
    ctx = make_ctx(tmp_path, fake_stac)
    assert await lst._owner(ctx, "odd") is None  # was "" (the platform's)


async def test_a_failed_owner_lookup_is_503_and_not_kept(tmp_path, fake_stac, s3):
    fake_stac.items += [
        lake_item("x", "flaky", href="s3://home-alice/f.zarr"),
        lake_item("x", "mine", href="s3://home-alice/x.zarr"),
    ]
    answers: dict = {"flaky": 500, "mine": {"id": "mine", "twinhub:owner": "alice"}}
    asked = serve_owners(fake_stac, answers)
    ctx = make_ctx(tmp_path, fake_stac)
    with pytest.raises(BadRequest) as e:
        await layers.layer_info(ctx, Caller("alice"), "x")
    assert e.value.status == 503 and "cannot tell which collection owns 'x'" in e.value.message
    # not kept: once the STAC API answers, the platform's collection wins
    answers["flaky"] = {"id": "flaky"}
    (got,) = await layers.layer_info(ctx, Caller("alice"), "x")
    assert got.collection == "flaky" and asked.count("flaky") == 2 and asked.count("mine") == 1
    # a failure that cannot change the winner (a known platform's collection "a" < "flaky2")
    fake_stac.items += [
        lake_item("y", "a"),
        lake_item("y", "zz-flaky", href="s3://home-alice/y.zarr"),
    ]
    answers.update({"a": {"id": "a"}, "zz-flaky": 500})
    (got,) = await layers.layer_info(ctx, Caller("alice"), "y")
    assert got.collection == "a"


async def test_too_many_matches_are_refused(tmp_path, fake_stac, monkeypatch):
    monkeypatch.setattr(lst, "PAGE", 3)
    monkeypatch.setattr(lst, "MATCH_PAGES", 2)
    monkeypatch.setattr(lst, "MAX_MATCHES", 6)
    # (the fake's next link drops ids=: one id's items at a time)
    fake_stac.items += [lake_item("six", f"c{n}") for n in range(6)]
    serve_owners(fake_stac, {f"c{n}": {"id": f"c{n}"} for n in range(7)})
    ctx = make_ctx(tmp_path, fake_stac)
    assert (await lst.get_item(ctx, "six", Caller("alice")))["collection"] == "c0"
    fake_stac.items[:] = [lake_item("many", f"c{n}") for n in range(7)]
    with pytest.raises(BadRequest) as e:
        await lst.get_item(ctx, "many", Caller("alice"))
    assert e.value.status == 422 and "the limit is 6" in e.value.message


async def test_owners_are_looked_up_at_once_and_the_choice_kept(tmp_path, fake_stac, monkeypatch):
    fake_stac.items += [lake_item("z", f"c{n}") for n in range(20)]
    serve_owners(fake_stac, {f"c{n}": {"id": f"c{n}", "twinhub:owner": "bob"} for n in range(20)})
    ctx = make_ctx(tmp_path, fake_stac)
    running, most = 0, 0
    real = lst._owner

    async def counted(ctx_, cid):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        try:
            return await real(ctx_, cid)
        finally:
            running -= 1

    monkeypatch.setattr(lst, "_owner", counted)
    assert (await lst.get_item(ctx, "z", Caller("alice")))["collection"] == "c0"
    assert 1 < most <= lst.CHECKS_AT_ONCE
    prefer = []
    monkeypatch.setattr(lst, "_prefer", lambda *a: prefer.append(a))
    assert (await lst.get_item(ctx, "z", Caller("alice")))["collection"] == "c0"
    assert prefer == []  # the choice per (id, caller) was kept


# -- 7: one HEAD per (caller, bucket) ---------------------------------------------------------
async def test_one_head_per_caller_and_bucket(tmp_path, s3):
    ctx = make_ctx(tmp_path)
    items = [lake_item(f"i{n}", "user-alice", href=f"s3://home-alice/d{n}.zarr") for n in range(10)]  # fmt: skip
    got = await asyncio.gather(*(check_item(ctx, Caller("alice"), i) for i in items))
    assert len(got) == 10 and len(s3["alice"].calls) == 1
    refused = await asyncio.gather(*(check_item(ctx, Caller("bob"), i) for i in items), return_exceptions=True)  # fmt: skip
    assert {e.status for e in refused} == {403} and len(s3["bob"].calls) == 1
    assert "s3://home-alice/d7.zarr" in refused[7].message  # the refusal names each item
    # a budget of HEADs: spent, the next bucket is not checked (503, not a decision)
    other = lake_item("p", "proj", href="s3://proj-a/p.zarr")
    with pytest.raises(BadRequest) as e:
        await check_item(ctx, Caller("alice"), other, budget=Budget(0))
    assert e.value.status == 503
    assert (await check_item(ctx, Caller("alice"), other, budget=Budget(1)))[0] == "zarr"


async def test_a_listing_spends_at_most_its_heads(tmp_path, fake_stac, s3, monkeypatch):
    monkeypatch.setattr(lst, "HEADS_PER_LISTING", 2)
    s3["alice"].readable |= {f"b{n}-x" for n in range(5)}
    fake_stac.items += [lake_item(f"i{n}", "u", href=f"s3://b{n % 5}-x/d{n}.zarr") for n in range(15)]  # fmt: skip
    ctx = make_ctx(tmp_path, fake_stac)
    infos, more = await layers.list_layers(ctx, Caller("alice"), 100)
    assert len(s3["alice"].calls) == 2 and len(infos) == 6 and more  # two buckets' items
    infos, _ = await layers.list_layers(ctx, Caller("alice"), 100)  # the next checks two more
    assert len(s3["alice"].calls) == 4 and len(infos) == 12

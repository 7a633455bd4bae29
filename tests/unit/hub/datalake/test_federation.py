"""Federated search, pure parts: parameters, merging and paging tokens, in-memory item
search (static catalogues), annotations and the check on remote ``next`` links."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from twinhub.services.datalake.federation.annotate import annotate_item
from twinhub.services.datalake.federation.api import RemoteApi
from twinhub.services.datalake.federation.engine import Federation
from twinhub.services.datalake.federation.fetch import SourceFailure
from twinhub.services.datalake.federation.matching import Matcher
from twinhub.services.datalake.federation.merge import (
    Cursor,
    Page,
    advance,
    decode_token,
    encode_token,
    merge,
)
from twinhub.services.datalake.federation.params import from_body, from_query
from twinhub.services.datalake.guard import BadRequest
from twinhub.services.datalake.sources import make_source

KEY = b"k" * 32


def item(iid: str, day: int, coll: str = "c", bbox=(0, 0, 10, 10), **props) -> dict:
    w, s, e, n = bbox
    return {
        "type": "Feature",
        "id": iid,
        "collection": coll,
        "bbox": list(bbox),
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
        "properties": {"datetime": f"2030-01-{day:02d}T00:00:00Z", **props},
        "assets": {},
        "links": [],
    }


# ---- parameters ----------------------------------------------------------------------------
def test_get_and_post_parameters_read_the_same_search():
    g = from_query(
        "collections=a,b&ids=x&bbox=-10,-5,10,5&datetime=2030-01-01T00:00:00Z/..&"
        "filter=param%3D'2t'&limit=7&sources=local,ext&token=t",
        100,
    )
    p = from_body(
        {"collections": ["a", "b"], "ids": ["x"], "bbox": [-10, -5, 10, 5],
         "datetime": "2030-01-01T00:00:00Z/..", "sources": ["local", "ext"], "token": "t",
         "filter": {"op": "=", "args": [{"property": "param"}, "2t"]}, "limit": 7},
        100,
    )  # fmt: skip
    for q in (g, p):
        assert q.collections == ["a", "b"] and q.ids == ["x"] and q.limit == 7
        assert q.bbox == [-10, -5, 10, 5] and q.sources == ["local", "ext"] and q.token == "t"
        assert q.interval == (dt.datetime(2030, 1, 1, tzinfo=dt.UTC), None)
        assert q.filter == {"op": "=", "args": [{"property": "param"}, "2t"]}
    # what the lake gets back never carries the federation's own parameters
    assert all(k not in ("sources", "token") for k, _ in g.raw)
    assert "sources" not in p.raw and "token" not in p.raw


@pytest.mark.parametrize(
    "query, words",
    [
        ("limit=0", "at least 1"),
        ("limit=101", "largest page"),
        ("bbox=1,2,3", "4 or 6"),
        ("datetime=yesterday", "RFC 3339"),
        ("datetime=2030-02-01T00:00:00Z/2030-01-01T00:00:00Z", "start is after end"),
        ("datetime=../..", "no start and no end"),
        ("filter=param ===", "not valid CQL2"),
    ],
)
def test_bad_parameters_are_refused_naming_the_problem(query, words):
    with pytest.raises(BadRequest, match=words):
        from_query(query, 100)


def test_post_body_must_be_an_object_and_lists_of_strings():
    with pytest.raises(BadRequest, match="JSON object"):
        from_body([1], 10)
    with pytest.raises(BadRequest, match="collections"):
        from_body({"collections": [1, 2]}, 10)
    assert from_body({"intersects": {"type": "Point", "coordinates": [0, 0]}}, 10).intersects


# ---- merging and tokens --------------------------------------------------------------------
def test_merge_takes_the_newest_heads_and_reports_prefixes():
    heads = {
        "local": [item("l5", 5), item("l3", 3), item("l1", 1)],
        "ext": [item("e4", 4), item("e3", 3)],
    }
    taken, consumed = merge(heads, ["local", "ext"], 4)
    assert [i["id"] for _, i in taken] == ["l5", "e4", "l3", "e3"]  # tie: local first
    assert consumed == {"local": 2, "ext": 2}
    taken, consumed = merge(heads, ["ext", "local"], 3)
    assert [i["id"] for _, i in taken] == ["l5", "e4", "e3"]  # tie: ext now first
    assert merge({"a": []}, ["a"], 3) == ([], {"a": 0})
    # ext's stream goes on after e3: nothing older than e3 may come before its next page
    taken, consumed = merge(heads, ["local", "ext"], 5, more={"ext"})
    assert [i["id"] for _, i in taken] == ["l5", "e4", "l3", "e3"]


def test_advance_keeps_the_page_until_it_is_used_up():
    page = Page([item("a", 3), item("b", 2), item("c", 1)], next="N")
    c = advance(Cursor("P", 0, None), page, 2, 3)
    assert (c.page, c.skip, c.size) == ("P", 2, 3)  # refetch P, skip 2
    c = advance(c, page, 1, 3)
    assert (c.page, c.skip) == ("N", 0)
    assert advance(Cursor("P"), Page([item("a", 1)], next=None), 1, 5) is None


def test_tokens_round_trip_and_refuse_forgeries():
    cursors = {"local": Cursor("next:abc", 2, 10), "ext": Cursor(["GET", "http://h/s?p=2", None])}
    tok = encode_token(cursors, KEY)
    assert tok.startswith("fed1.") and "http" not in tok  # opaque
    back = decode_token(tok, KEY)
    assert {k: v.to_list() for k, v in back.items()} == {k: v.to_list() for k, v in cursors.items()}
    with pytest.raises(BadRequest, match="not valid"):
        decode_token(tok, b"other key" * 4)
    body, _, sig = tok.partition(".")[2].partition(".")
    forged = encode_token({"ext": Cursor(["GET", "http://evil/", None])}, b"x" * 32)
    with pytest.raises(BadRequest, match="not valid"):
        decode_token(forged.rsplit(".", 1)[0] + "." + sig, KEY)
    for bad in ("next:abc", "fed1.!!!", "fed1."):
        with pytest.raises(BadRequest):
            decode_token(bad, KEY)


class InMemory:
    """A backend over a list (newest first), paged by offset; ``fail`` makes it raise."""

    def __init__(self, items: list[dict]) -> None:
        self.items, self.fail, self.calls = items, False, 0

    async def search(self, params, cursor, size, collections):
        self.calls += 1
        if self.fail:
            raise SourceFailure("source 'down' is down")
        off = cursor or 0
        nxt = off + size if off + size < len(self.items) else None
        return Page(
            [dict(i, properties=dict(i["properties"])) for i in self.items[off : off + size]],
            next=nxt,
        )


def fed_with(backends: dict[str, InMemory]) -> Federation:
    sources = [
        make_source({"name": n, "url": f"http://{n}.test/"}) for n in backends if n != "local"
    ]
    fed = Federation(sources, "http://hub/services/cache/", token_key=KEY)
    fed.backends = {n: b for n, b in backends.items() if n != "local"}
    return fed


def run_pages(fed, local, limit, sources=None, max_pages=100):
    seen, token, pages = [], None, []
    for _ in range(max_pages):
        body = {"limit": limit, **({"sources": sources} if sources else {})}
        if token:
            body["token"] = token
        out = asyncio.run(fed.search(from_body(body, 1000), local, "http://hub/services/stac/"))
        pages.append(out)
        seen += [(f["properties"]["twinhub:source"], f["id"]) for f in out.features]
        token = out.token
        if not token:
            return seen, pages
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 7, 50])
def test_paging_across_sources_returns_every_item_exactly_once(limit):
    local = InMemory([item(f"l{d}", d) for d in range(20, 0, -2)])
    a = InMemory([item(f"a{d}", d) for d in range(19, 0, -3)])
    b = InMemory([item(f"b{d}", d) for d in (28, 27, 1)])
    fed = fed_with({"local": local, "a": a, "b": b})
    seen, pages = run_pages(fed, local, limit)
    want = {("local", i["id"]) for i in local.items} | {("a", i["id"]) for i in a.items}
    want |= {("b", i["id"]) for i in b.items}
    assert len(seen) == len(want) and set(seen) == want
    assert all(len(p.features) <= limit for p in pages)
    days = [int(i[1][1:]) for i in seen]
    assert days == sorted(days, reverse=True)  # one order across sources


class IgnoresLimit(InMemory):
    """An API that pages by its own page size (4), whatever limit it is asked for."""

    async def search(self, params, cursor, size, collections):
        return await super().search(params, cursor, 4, collections)


@pytest.mark.parametrize("limit", [1, 3, 10])
def test_a_source_that_ignores_the_limit_loses_nothing(limit):
    local = InMemory([item(f"l{d}", d) for d in range(9, 0, -2)])
    odd = IgnoresLimit([item(f"o{d}", d) for d in range(10, 0, -1)])
    seen, pages = run_pages(fed_with({"local": local, "odd": odd}), local, limit)
    assert sorted(seen) == sorted([("local", f"l{d}") for d in range(9, 0, -2)] +
                                  [("odd", f"o{d}") for d in range(10, 0, -1)])  # fmt: skip
    assert all(len(p.features) <= limit for p in pages)


def test_a_failing_source_degrades_the_page_and_resumes_later():
    local = InMemory([item(f"l{d}", d) for d in range(10, 0, -1)])
    down = InMemory([item(f"d{d}", d) for d in range(10, 0, -1)])
    fed = fed_with({"local": local, "down": down})
    down.fail = True
    out = asyncio.run(fed.search(from_body({"limit": 4}, 100), local, "http://hub/"))
    assert [f["id"] for f in out.features] == ["l10", "l9", "l8", "l7"]
    assert out.statuses["down"]["status"] == "error" and "down" in out.warnings[0]
    assert out.statuses["local"] == {"status": "ok", "returned": 4}
    down.fail = False  # back: the next page resumes it from its start, nothing lost
    seen, _ = run_pages(fed, local, 4)
    assert len(seen) == 20
    # everything down but the lake: the lake's items, no error
    down.fail = True
    seen, pages = run_pages(fed, local, 100)
    assert [s for s, _ in seen] == ["local"] * 10 and pages[0].warnings


def test_sources_parameter_picks_and_unknown_names_are_refused():
    local = InMemory([item("l1", 1)])
    ext = InMemory([item("e1", 1)])
    fed = fed_with({"local": local, "ext": ext})
    seen, _ = run_pages(fed, local, 10, sources=["ext"])
    assert seen == [("ext", "e1")] and local.calls == 0
    with pytest.raises(BadRequest, match="unknown source.*'nope'.*local, ext"):
        run_pages(fed, local, 10, sources=["nope"])


def test_collections_restriction_skips_a_source_that_exposes_none_of_them():
    ext = make_source({"name": "ext", "url": "http://ext.test/", "collections": ["x"]})
    fed = Federation([ext], "http://hub/c/", token_key=KEY)
    fed.backends = {"ext": InMemory([item("e1", 1, coll="x")])}
    local = InMemory([])
    out = asyncio.run(fed.search(from_body({"collections": ["y"]}, 10), local, "http://hub/"))
    assert out.statuses["ext"]["status"] == "skipped" and fed.backends["ext"].calls == 0
    assert fed.collections_for("ext", None) == ["x"]
    assert fed.collections_for("ext", ["x", "y"]) == ["x"]


# ---- in-memory item search -----------------------------------------------------------------
def test_matcher_bbox_datetime_ids_collections_and_cql2():
    a = item("a", 1, bbox=(170, 10, 179, 20), param="2t", level=2)
    b = item("b", 5, coll="d", bbox=(-10, -10, 0, 0), param="tp", level=0)
    c = dict(item("c", 9), properties={"start_datetime": "2030-01-08T00:00:00Z",
                                       "end_datetime": "2030-01-12T00:00:00Z", "datetime": None})  # fmt: skip

    def ids(**q):
        m = Matcher(from_body(q, 100), q.get("collections"))
        return [i["id"] for i in (a, b, c) if m(i)]

    assert ids(bbox=[175, 0, -170, 30]) == ["a"]  # box across the antimeridian
    assert ids(bbox=[-5, -5, 5, 5]) == ["b", "c"]
    assert ids(datetime="2030-01-10T00:00:00Z") == ["c"]  # inside c's interval
    assert ids(datetime="../2030-01-05T00:00:00Z") == ["a", "b"]
    assert ids(ids=["b", "c"], collections=["d"]) == ["b"]
    assert ids(filter="param = '2t' or level = 0") == ["a", "b"]
    assert ids(filter={"op": ">", "args": [{"property": "level"}, 1]}) == ["a"]


# ---- annotations and remote links ----------------------------------------------------------
def test_annotations_add_cache_alternates_refusals_and_our_links():
    s = make_source({"name": "ext", "url": "http://127.0.0.1:9/cat/catalog.json",
                     "asset_origins": ["http://127.0.0.1:10"]})  # fmt: skip
    it = item("i 1", 1, coll="c/x")
    it["assets"] = {
        "rel": {"href": "../data/a.grib2"},
        "other": {"href": "http://127.0.0.1:10/b.zarr", "alternate": {"cache": {"href": "http://evil/"}}},
        "foreign": {"href": "http://127.0.0.2:9/c.zarr"},
        "s3": {"href": "s3://bucket/d.zarr"},
    }  # fmt: skip
    out = annotate_item(it, s, "http://hub/services/stac/", "http://hub/services/cache/",
                        "http://127.0.0.1:9/cat/items/i1.json")  # fmt: skip
    a = out["assets"]
    assert out["properties"]["twinhub:source"] == "ext"
    assert a["rel"]["href"] == "http://127.0.0.1:9/cat/data/a.grib2"
    assert a["rel"]["alternate"]["cache"]["href"] == (
        "http://hub/services/cache/assets/ext/127.0.0.1:9/cat/data/a.grib2"
    )
    assert a["other"]["alternate"]["cache"]["href"].endswith("/ext/127.0.0.1:10/b.zarr")
    for k in ("foreign", "s3"):
        assert "alternate" not in a[k] and a[k]["twinhub:refused"]
    assert "127.0.0.2:9 is not a configured origin" in a["foreign"]["twinhub:refused"]
    links = {lk["rel"]: lk["href"] for lk in out["links"]}
    assert links["self"] == "http://hub/services/stac/collections/c%2Fx/items/i%201"
    assert links["via"] == "http://127.0.0.1:9/cat/items/i1.json"


def test_remote_next_links_off_the_source_origins_are_not_followed():
    s = make_source({"name": "ext", "url": "http://127.0.0.1:9/api/"})
    api = RemoteApi(s, client=None)
    ok = {"links": [{"rel": "next", "href": "http://127.0.0.1:9/api/search?page=2"}]}
    assert api._next_cursor(ok) == (["GET", "http://127.0.0.1:9/api/search?page=2", None], None)
    post = {"links": [{"rel": "next", "href": "http://127.0.0.1:9/api/search", "method": "POST",
                       "body": {"token": "x"}}]}  # fmt: skip
    assert api._next_cursor(post)[0] == ["POST", "http://127.0.0.1:9/api/search", {"token": "x"}]
    for href in ("http://127.0.0.2:9/api/search", "https://127.0.0.1:9/api/search", "/x", None):
        cur, warning = api._next_cursor({"links": [{"rel": "next", "href": href}]})
        assert cur is None and "not followed" in warning
    assert api._next_cursor({"links": []}) == (None, None)


def test_twinlab_checks_source_names_before_any_request():
    import importlib

    search = importlib.import_module("twinlab.datalake.search")
    assert search.check_sources("local, ext") == ["local", "ext"]
    assert search.check_sources(("a",)) == ["a"] and search.check_sources(None) is None
    for bad in ([], "", ["Bad Name"], [1], "a,../b"):
        with pytest.raises(ValueError, match="sources"):
            search.check_sources(bad)
    assert search.item_source({"properties": {}}) == "local"
    assert search.item_source({"properties": {"twinhub:source": "ext"}}) == "ext"


def test_without_a_cache_remote_assets_get_no_cache_link_and_no_forged_one():
    s = make_source({"name": "ext", "url": "http://127.0.0.1:9/cat/catalog.json"})
    it = item("i1", 1)
    it["assets"] = {
        "a": {"href": "http://127.0.0.1:9/a.zarr", "alternate": {"cache": {"href": "http://x/"}}},
        "foreign": {"href": "http://127.0.0.2:9/c.zarr"},
    }
    a = annotate_item(it, s, "http://hub/services/stac/", "", None)["assets"]
    assert a["a"]["alternate"] == {} and "twinhub:refused" not in a["a"]
    assert a["foreign"]["twinhub:refused"]

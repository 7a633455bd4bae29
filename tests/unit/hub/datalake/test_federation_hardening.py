"""Federation against hostile or broken remotes, over real local HTTP servers (FAKE remotes:
tests/helpers/routes_server.py): a malformed item, link or URL costs that item or that source
only (never a 500), static catalogues survive bad documents and back off after a failed
crawl, answers and crawls are bounded (bytes, time, compression), credentials go only to the
source's own origin and never come back in warnings, tokens are bound to their search."""

from __future__ import annotations

import asyncio
import gzip
import json
import time

import httpx
import pytest

from tests.helpers.routes_server import RoutesServer, drip
from twinhub.services.datalake.federation import static as static_mod
from twinhub.services.datalake.federation.api import RemoteApi
from twinhub.services.datalake.federation.engine import Federation
from twinhub.services.datalake.federation.fetch import SourceFailure, request
from twinhub.services.datalake.federation.merge import Page
from twinhub.services.datalake.federation.params import from_body
from twinhub.services.datalake.federation.static import StaticCatalogue
from twinhub.services.datalake.guard import BadRequest
from twinhub.services.datalake.sources import make_source

KEY = b"k" * 32
SECRET = "Bearer s3cr3t-t0ken-value"
BASE = "http://hub/services/stac/"


@pytest.fixture(scope="module")
def srv():
    s = RoutesServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def assets():
    """Another origin: configured as the sources' asset origin, never for API traffic."""
    s = RoutesServer()
    s.json("/catalog.json", {"type": "Catalog", "id": "x", "links": []})
    s.json("/search", {"type": "FeatureCollection", "features": [], "links": []})
    yield s
    s.close()


def run(coro):
    return asyncio.run(coro)


def item(iid: str, day: int, **kw) -> dict:
    return {
        "type": "Feature", "id": iid, "collection": "c", "bbox": [0, 0, 1, 1],
        "geometry": {"type": "Point", "coordinates": [0.5, 0.5]},
        "properties": {"datetime": f"2030-01-{day:02d}T00:00:00Z"}, "assets": {}, "links": [],
        **kw,
    }  # fmt: skip


class Lake:
    """The lake as an in-memory backend (the lake itself is tested in integration)."""

    def __init__(self, items=()) -> None:
        self.items = list(items)

    async def search(self, params, cursor, size, collections):
        return Page([dict(i) for i in self.items], next=None, matched=len(self.items))


def api_fed(srv, path: str, **kw) -> Federation:
    src = make_source({"name": "ext", "url": f"{srv.origin}{path}", "timeout": 3, **kw})
    fed = Federation([src], "http://hub/services/cache/", token_key=KEY)
    return fed


async def fed_search(fed: Federation, body: dict, lake=None):
    fed.start()
    try:
        return await fed.search(from_body(body, 100), lake or Lake([item("l1", 1)]), BASE)
    finally:
        await fed.close()


# ---- one bad remote field: that item or that source, never the answer ----------------------
def test_malformed_remote_items_are_left_out_with_a_warning_naming_the_source(srv):
    bad_props = item("p", 5, properties="not a dict")
    bad_assets = item("a", 5, assets=["x"])
    bad_links = item("k", 5, links="x")
    bad_href = item("h", 4, assets={"d": {"href": "https://[", "alternate": {"cache": {}}}})
    bad_self = item("s", 3, links=[{"rel": "self", "href": "https://["}])
    bad_self["assets"] = {"d": {"href": "rel/x.zarr"}}
    srv.json("/bad-items/search", {"type": "FeatureCollection", "links": [], "features": [
        bad_props, bad_assets, bad_links, "text", bad_href, bad_self, item("ok", 2)]})  # fmt: skip
    out = run(fed_search(api_fed(srv, "/bad-items/"), {"limit": 10}))
    got = [(f["properties"]["twinhub:source"], f["id"]) for f in out.features]
    assert got == [("ext", "h"), ("ext", "s"), ("ext", "ok"), ("local", "l1")]
    (warning,) = out.warnings
    assert "source 'ext': 4 malformed item(s) left out" in warning
    assert "'properties' is not an object" in warning
    assert out.statuses["ext"]["status"] == "ok" and out.statuses["ext"]["returned"] == 3
    feats = {f["id"]: f for f in out.features}
    # an href that cannot be parsed is refused with the reason, never a 500
    assert "not a valid URL" in feats["h"]["assets"]["d"]["twinhub:refused"]
    assert "alternate" not in feats["s"]["assets"]["d"] or not feats["s"]["assets"]["d"].get(
        "alternate"
    )


class Raises:
    """A backend raising what a bug or an odd answer could raise (a FAKE backend)."""

    def __init__(self, exc: BaseException, delay: float = 0.0) -> None:
        self.exc, self.delay = exc, delay

    async def search(self, *a):
        raise self.exc

    async def get_item(self, cid, iid):
        await asyncio.sleep(self.delay)
        raise self.exc

    async def get_collections(self):
        raise self.exc


class Slow:
    def __init__(self, delay: float, found: dict | None) -> None:
        self.delay, self.found = delay, found

    async def get_item(self, cid, iid):
        await asyncio.sleep(self.delay)
        return (dict(self.found), "http://b.test/i.json") if self.found else None


def two_sources(a, b, timeout: float = 3) -> Federation:
    srcs = [make_source({"name": n, "url": f"http://{n}.test/", "timeout": timeout})
            for n in ("a", "b")]  # fmt: skip
    fed = Federation(srcs, "", token_key=KEY)
    fed.backends = {"a": a, "b": b}
    return fed


@pytest.mark.parametrize(
    "exc", [ValueError("Invalid IPv6 URL"), KeyError("id"), BadRequest("remote said no")]
)
def test_any_exception_of_a_source_is_that_sources_error(exc):
    fed = two_sources(Raises(exc), Raises(exc))
    out = run(fed.search(from_body({}, 10), Lake([item("l1", 1)]), BASE))
    assert [f["id"] for f in out.features] == ["l1"]
    assert out.statuses["a"]["status"] == "error" and type(exc).__name__ in out.warnings[0]
    cols, st, warnings = run(fed.remote_collections(["a", "b"], BASE))
    assert cols == [] and st["b"]["status"] == "error" and "source 'b'" in warnings[1]
    found, warnings = run(fed.find_item("c", "x", ["a", "b"], BASE))
    assert found is None and len(warnings) == 2 and "source 'a'" in warnings[0]


def test_find_item_asks_the_sources_at_once():
    want = item("x", 1)
    fed = two_sources(Slow(0.6, None), Slow(0.6, want))
    t0 = time.monotonic()
    found, warnings = run(fed.find_item("c", "x", ["local", "a", "b"], BASE))
    assert found["id"] == "x" and found["properties"]["twinhub:source"] == "b"
    assert warnings == [] and time.monotonic() - t0 < 1.1  # not 0.6 + 0.6


def test_a_url_httpx_cannot_send_is_a_source_failure(srv):
    src = make_source({"name": "ext", "url": srv.origin + "/", "timeout": 3})

    async def go(url):
        async with httpx.AsyncClient() as client:
            return await request(client, src, "GET", url)

    with pytest.raises(SourceFailure, match="'ext': cannot reach .*InvalidURL"):
        run(go(srv.origin + "/bad\x01name.json"))
    with pytest.raises(SourceFailure, match="refused to contact"):
        run(go("https://["))


# ---- static catalogues: bad documents, back-off, bounds -------------------------------------
def catalogue(srv, base: str, children: list[str], n_items: int = 2) -> None:
    srv.json(f"{base}/catalog.json", {"type": "Catalog", "id": "root", "description": "d",
             "links": [{"rel": "child", "href": h} for h in children]})  # fmt: skip
    srv.json(f"{base}/col.json", {"type": "Collection", "id": "col", "links": [
        {"rel": "item", "href": f"i{k}.json"} for k in range(n_items)]})  # fmt: skip
    for k in range(n_items):
        srv.json(f"{base}/i{k}.json", item(f"i{k}", k + 1, collection=None))


def static_of(srv, base: str, client, **kw) -> StaticCatalogue:
    src = make_source({"name": "st", "url": f"{srv.origin}{base}/catalog.json", "timeout": 3,
                       "headers": {"Authorization": SECRET}})  # fmt: skip
    return StaticCatalogue(src, client, refresh_s=600, **kw)


def test_bad_links_and_documents_cost_themselves_and_are_reported(srv):
    catalogue(srv, "/bad-links", ["col.json", "https://[", "bad\x01name.json", "missing.json"])
    srv.json("/bad-links/i1.json", item("i1", 2, properties=[1]))  # malformed item

    async def go():
        async with httpx.AsyncClient() as client:
            cat = static_of(srv, "/bad-links", client)
            idx = await cat.ready()
            return idx, await cat.search(from_body({}, 10), None, 10, None)

    idx, page = run(go())
    assert [i["id"] for i in page.items] == ["i0"]
    assert len(idx.skipped) == 4, idx.skipped  # two bad links, a 404, a malformed item
    (warning,) = page.extra["warnings"]
    assert "source 'st': 4 document(s), link(s) or item(s)" in warning
    assert "https://[" in warning  # a sample says what
    assert page.extra["status"] == {"unusable": 4}


def test_a_failed_crawl_backs_off_and_a_later_one_sees_the_changed_root(srv, monkeypatch):
    catalogue(srv, "/backoff", ["col.json"], n_items=3)

    async def go():
        async with httpx.AsyncClient() as client:
            cat = static_of(srv, "/backoff", client, retry_s=0.5)
            first = [i["id"] for i in (await cat.ready()).items]
            # the root changes, and its crawl fails (too many documents)
            catalogue(srv, "/backoff", ["col.json", "col2.json"], n_items=3)
            srv.json("/backoff/col2.json", {"type": "Collection", "id": "c2", "links": []})
            monkeypatch.setattr(static_mod, "MAX_DOCUMENTS", 3)
            stale = await cat.ready()  # the failed re-crawl: the last good index, said so
            assert [i["id"] for i in stale.items] == first
            warns = cat.warnings()
            assert any("more than 3 documents" in w and "as read" in w for w in warns), warns
            before = srv.hits("/backoff/col.json")
            for _ in range(3):  # backing off: no crawl at each search
                await cat.ready()
            crawls = srv.hits("/backoff/col.json") - before
            monkeypatch.setattr(static_mod, "MAX_DOCUMENTS", 50_000)
            await asyncio.sleep(0.6)
            # the index still says the old root: this search re-crawls and gets c2
            await cat.ready()
            return first, crawls, cat

    first, crawls, cat = run(go())
    assert first == ["i2", "i1", "i0"] and crawls == 0
    assert "c2" in cat.index.collections and cat.warnings() == []


def test_a_catalogue_that_never_answers_is_down_without_a_crawl_per_search(srv):
    srv.json("/never/catalog.json", {"type": "Catalog", "id": "r", "links": "not a list"})

    async def go():
        async with httpx.AsyncClient() as client:
            cat = static_of(srv, "/never", client, retry_s=30)
            # the crawl's root read (not the check) fails: a bounded byte budget of 10
            cat.max_bytes = 10
            errors = []
            for _ in range(3):
                with pytest.raises(SourceFailure) as e:
                    await cat.ready()
                errors.append(str(e.value))
            return errors

    hits0 = srv.hits("/never/catalog.json")
    errors = run(go())
    assert "larger than" in errors[0] and "next try in" in errors[1]
    assert srv.hits("/never/catalog.json") - hits0 == 4  # 3 checks + 1 crawl, not 3 crawls


def test_a_dripping_document_is_skipped_and_the_whole_crawl_has_a_deadline(srv):
    catalogue(srv, "/drip", ["col.json", "slow.json"])
    srv.route("/drip/slow.json", drip(b'{"type": "Catalog", "id": "s", "links": []}', 0.1))

    async def go(**kw):
        async with httpx.AsyncClient() as client:
            cat = static_of(srv, "/drip", client, **kw)
            t0 = time.monotonic()
            try:
                return await cat.ready(), time.monotonic() - t0
            except SourceFailure as e:
                return e, time.monotonic() - t0

    idx, took = run(go(document_timeout_s=0.5))
    assert len(idx.items) == 2 and took < 2.5
    assert any("slow.json was not read within 0.5 s" in s for s in idx.skipped)
    err, took = run(go(document_timeout_s=10, deadline_s=1))
    assert isinstance(err, SourceFailure) and err.status == "timeout"
    assert "did not finish within 1 s" in str(err) and took < 3


# ---- bounded answers ---------------------------------------------------------------------
def test_compressed_answers_are_bounded_and_identity_is_asked(srv):
    import brotli

    zeros = b" " * (64 * 2**20)
    srv.route("/bomb/br.json", lambda h: (200, {"Content-Encoding": "br"}, brotli.compress(zeros)))
    srv.route("/bomb/gz.json", lambda h: (200, {"Content-Encoding": "gzip"}, gzip.compress(zeros)))
    small = gzip.compress(json.dumps({"type": "Catalog", "id": "z"}).encode())
    srv.route("/bomb/ok.json", lambda h: (200, {"Content-Encoding": "gzip"}, small))
    src = make_source({"name": "ext", "url": srv.origin + "/", "timeout": 5})

    async def go(path, **kw):
        async with httpx.AsyncClient() as client:
            return await request(client, src, "GET", srv.origin + path, **kw)

    with pytest.raises(SourceFailure, match="Content-Encoding 'br'"):
        run(go("/bomb/br.json"))
    with pytest.raises(SourceFailure, match="more than 8 MB"):
        run(go("/bomb/gz.json", max_bytes=8 * 2**20))
    _, body = run(go("/bomb/ok.json"))
    assert json.loads(body)["id"] == "z"  # a server that compresses anyway still works
    assert {h["accept-encoding"] for h in srv.headers_of("/bomb/br.json")} == {"identity"}


def test_a_search_page_is_capped_at_8_mb(srv):
    big = {"type": "FeatureCollection", "links": [], "pad": "x" * (9 * 2**20),
           "features": [item("x", 1)]}  # fmt: skip
    srv.json("/big/search", big)
    out = run(fed_search(api_fed(srv, "/big/"), {}))
    assert out.statuses["ext"]["status"] == "error"
    assert "more than 8 MB" in out.warnings[0]


def test_remote_requests_are_limited_across_searches():
    release = asyncio.Event()

    class Holds:
        async def search(self, *a):
            await release.wait()
            return Page([item("a1", 2)])

    class Quick:
        async def search(self, *a):
            return Page([item("b1", 1)])

    srcs = [make_source({"name": "a", "url": "http://a.test/", "timeout": 5}),
            make_source({"name": "b", "url": "http://b.test/", "timeout": 0.3})]  # fmt: skip
    fed = Federation(srcs, "", token_key=KEY)
    fed.backends = {"a": Holds(), "b": Quick()}
    fed.max_remote_requests = 1

    async def go():
        first = asyncio.ensure_future(fed.search(from_body({"sources": ["a"]}, 10), Lake(), BASE))
        await asyncio.sleep(0.05)  # "a" holds the only slot
        second = await fed.search(from_body({"sources": ["b"]}, 10), Lake(), BASE)
        release.set()
        return await first, second

    first, second = run(go())
    assert [f["id"] for f in first.features] == ["a1"]
    assert second.statuses["b"]["status"] == "timeout"
    assert "busy with other federated requests" in second.warnings[0]


# ---- credentials: only to the source's own origin, never in warnings ------------------------
def test_api_traffic_and_headers_stay_on_the_sources_own_origin(srv, assets):
    feats = [item("n1", 1)]
    srv.json("/own/search", {"type": "FeatureCollection", "features": feats, "links": [
        {"rel": "next", "href": f"{assets.origin}/search", "method": "GET"}]})  # fmt: skip
    catalogue(srv, "/own", ["col.json", f"{assets.origin}/catalog.json"], n_items=1)
    api = make_source({"name": "ext", "url": srv.origin + "/own/", "headers": {"Authorization": SECRET},
                       "asset_origins": [assets.origin], "timeout": 3})  # fmt: skip

    async def go():
        async with httpx.AsyncClient() as client:
            page = await RemoteApi(api, client).search(from_body({}, 10), None, 10, None)
            cat = static_of(srv, "/own", client)
            cat.source = make_source({**cat.source.to_dict(), "asset_origins": [assets.origin]})
            idx = await cat.ready()
            with pytest.raises(SourceFailure, match="not on the source's origin"):
                await request(client, api, "GET", assets.origin + "/search")
            return page, idx

    page, idx = run(go())
    assert page.next is None and "not followed" in page.extra["warnings"][0]
    assert idx.refused == [f"{assets.origin}/catalog.json"] and len(idx.items) == 1
    assert assets.seen == []  # neither the next link nor the child link was read
    assert {h["authorization"] for h in srv.headers_of("/own/search")} == {SECRET}


def test_remote_error_bodies_never_echo_the_sources_headers(srv):
    srv.json("/echo/search", {"detail": f"bad token {SECRET} for s3cr3t-t0ken-value"}, 401)
    fed = api_fed(srv, "/echo/", headers={"Authorization": SECRET})
    out = run(fed_search(fed, {}))
    text = json.dumps([out.warnings, out.statuses])
    assert "HTTP 401" in text and "[redacted]" in text
    assert "s3cr3t" not in text


# ---- tokens and copies ----------------------------------------------------------------------
def test_a_token_is_bound_to_its_search():
    class Many:
        async def search(self, params, cursor, size, collections):
            off = cursor or 0
            return Page([item(f"e{d}", 28 - d) for d in range(off, off + size)], next=off + size)

    src = make_source({"name": "ext", "url": "http://ext.test/"})
    fed = Federation([src], "", token_key=KEY)
    fed.backends = {"ext": Many()}
    body = {"limit": 2, "filter": "x = 1", "sources": ["ext"]}
    first = run(fed.search(from_body(body, 10), Lake(), BASE))
    again = run(fed.search(from_body({**body, "limit": 3, "token": first.token}, 10), Lake(), BASE))
    assert [f["id"] for f in again.features] == ["e2", "e3", "e4"]  # a new limit is fine
    for changed in ({"filter": "x = 2"}, {"sources": ["ext", "local"]}, {"bbox": [0, 0, 1, 1]}):
        with pytest.raises(BadRequest, match="belongs to another search"):
            run(fed.search(from_body({**body, **changed, "token": first.token}, 10), Lake(), BASE))


def test_cached_collections_are_copies(srv):
    srv.json("/colls/collections", {"collections": [{"type": "Collection", "id": "c1",
                                                     "links": []}], "links": []})  # fmt: skip
    src = make_source({"name": "ext", "url": srv.origin + "/colls/"})

    async def go():
        async with httpx.AsyncClient() as client:
            api = RemoteApi(src, client)
            first = await api.get_collections()
            first[0][0]["links"].append("changed")
            first[0][0]["id"] = "other"
            return await api.get_collections()

    ((doc, _url),) = run(go())
    assert doc == {"type": "Collection", "id": "c1", "links": []}
    assert srv.hits("/colls/collections") == 1  # from the cache, unchanged


def test_a_deeply_nested_body_is_a_400_not_a_500():
    from twinhub.services.datalake.guard import GuardMiddleware

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the body should have been refused")

    guard = GuardMiddleware(app, prefix="/stac/", max_page_size=10, max_body_bytes=2**20)
    body = b"[" * 100_000 + b"]" * 100_000
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/stac/search", "raw_path": b"/stac/search",
             "query_string": b"", "headers": []}  # fmt: skip
    run(guard(scope, receive, send))
    assert sent[0]["status"] == 400
    assert b"nests deeper than 64 levels" in sent[1]["body"]


# ---- through the ASGI layer ----------------------------------------------------------------
async def lake_app(scope, receive, send):
    """The lake's STAC API as a FAKE ASGI app: no items, no collections."""
    doc = {"type": "FeatureCollection", "features": [], "links": [], "collections": []}
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def asgi_get(mw, path: str, query: str = "", user: str = "u") -> tuple[int, dict]:
    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "headers": [(b"host", b"hub")], "scheme": "http",
             "server": ("hub", 80), "state": {"hub_user": {"name": user}}}  # fmt: skip
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    await mw(scope, receive, send)
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def test_a_malformed_remote_through_the_api_is_a_200_with_a_warning(srv):
    from twinhub.services.datalake.federation.middleware import FederationMiddleware

    srv.json("/asgi-bad/search", {"type": "FeatureCollection", "links": "x",
             "features": [item("p", 5, properties=7), item("ok", 2)]})  # fmt: skip
    srv.json("/asgi-bad/collections", {"collections": "nope"})

    async def go():
        fed = api_fed(srv, "/asgi-bad/")
        mw = FederationMiddleware(lake_app, prefix="/stac/", federation=fed, max_page_size=100)
        try:
            return await asgi_get(mw, "/stac/search"), await asgi_get(mw, "/stac/collections")
        finally:
            await fed.close()

    (status, page), (cstatus, colls) = run(go())
    assert status == 200 and [f["id"] for f in page["features"]] == ["ok"]
    assert "1 malformed item(s) left out" in page["twinhub:warnings"][0]
    assert cstatus == 200 and colls["twinhub:sources"]["ext"]["status"] == "ok"


def test_one_user_gets_a_429_above_their_share_of_federated_requests():
    from twinhub.services.datalake.federation.middleware import FederationMiddleware

    release = asyncio.Event()

    class Holds:
        async def search(self, *a):
            await release.wait()
            return Page([item("a1", 2)])

    src = make_source({"name": "a", "url": "http://a.test/", "timeout": 5})
    fed = Federation([src], "", token_key=KEY)
    fed.backends = {"a": Holds()}
    fed.client = object()  # started: no real client needed for these backends
    mw = FederationMiddleware(lake_app, prefix="/stac/", federation=fed, max_page_size=100)
    mw.max_per_user = 2

    async def go():
        held = [asyncio.ensure_future(asgi_get(mw, "/stac/search")) for _ in range(2)]
        await asyncio.sleep(0.05)
        refused = await asgi_get(mw, "/stac/search")
        other = await asgi_get(mw, "/stac/search", "sources=local", user="v")
        release.set()
        done = await asyncio.gather(*held)
        after = await asgi_get(mw, "/stac/search")
        return refused, other, done, after

    refused, other, done, after = run(go())
    assert refused[0] == 429 and "2 federated requests of yours" in refused[1]["description"]
    assert other[0] == 200  # another user is not affected
    assert [s for s, _ in done] == [200, 200] and after[0] == 200
    assert mw._in_flight == {}

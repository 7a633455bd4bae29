"""Federation over real local HTTP servers: crawling a static catalogue (relative links,
links to other hosts skipped, down -> error, changes re-crawled) and the request rules
(redirects only within an origin, nothing sent to an unconfigured host)."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.helpers.remote_stac import FOREIGN_HOST, CountingServer
from twinhub.services.datalake.federation.fetch import SourceFailure, request
from twinhub.services.datalake.federation.params import from_body
from twinhub.services.datalake.federation.static import StaticCatalogue
from twinhub.services.datalake.sources import make_source


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path.startswith("/redirect-same"):
            return self._redirect("/catalog.json")
        if self.path.startswith("/redirect-away"):
            return self._redirect(f"http://{FOREIGN_HOST}:{self.server.foreign_port}/catalog.json")
        return super().do_GET()

    def _redirect(self, where):
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def foreign():
    s = CountingServer()
    yield s
    s.close()


@pytest.fixture
def served(tmp_path, foreign):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    srv.daemon_threads = True
    srv.foreign_port = foreign.port
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def write_catalogue(root: Path, foreign_origin: str, n: int = 5) -> None:
    (root / "col" / "items").mkdir(parents=True, exist_ok=True)
    (root / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "id": "root", "description": "d", "stac_version": "1.1.0",
        "links": [{"rel": "child", "href": "col/collection.json"},
                  {"rel": "child", "href": f"{foreign_origin}/catalog.json"},
                  {"rel": "item", "href": f"{foreign_origin}/item.json"}],
    }))  # fmt: skip
    links = [{"rel": "item", "href": f"./items/i{k}.json"} for k in range(n)]
    (root / "col" / "collection.json").write_text(json.dumps(
        {"type": "Collection", "id": "col", "description": "d", "links": links}))  # fmt: skip
    for k in range(n):
        (root / "col" / "items" / f"i{k}.json").write_text(json.dumps({
            "type": "Feature", "id": f"i{k}", "bbox": [k, 0, k + 1, 1],
            "geometry": {"type": "Point", "coordinates": [k + 0.5, 0.5]},
            "properties": {"datetime": f"2030-01-0{k + 1}T00:00:00Z", "k": k},
            "assets": {"data": {"href": f"../../data/i{k}.zarr"}}, "links": [],
        }))  # fmt: skip


def run(coro):
    return asyncio.run(coro)


async def with_catalogue(url: str, body, **kw):
    src = make_source({"name": "st", "url": url + "/catalog.json", "timeout": 3})
    async with httpx.AsyncClient(follow_redirects=False) as client:
        cat = StaticCatalogue(src, client, refresh_s=kw.pop("refresh_s", 600))
        return await body(cat)


def test_crawl_indexes_items_resolves_hrefs_and_skips_other_hosts(served, foreign):
    root, url = served
    write_catalogue(root, foreign.origin)

    async def body(cat):
        idx = await cat.ready()
        page = await cat.search(from_body({"limit": 2}, 10), None, 2, None)
        page2 = await cat.search(from_body({"limit": 2}, 10), page.next, 2, None)
        hits = await cat.search(
            from_body({"filter": "k >= 3", "bbox": [3.2, 0, 3.4, 1]}, 10), None, 10, None
        )
        return idx, page, page2, hits, await cat.get_item("col", "i1")

    idx, page, page2, hits, got = run(with_catalogue(url, body))
    assert sorted(i["id"] for i in idx.items) == [f"i{k}" for k in range(5)]
    assert [i["collection"] for i in idx.items] == ["col"] * 5  # from the parent collection
    assert list(idx.collections) == ["col"]
    assert foreign.hits == []  # the links to another host were never followed
    assert len(idx.refused) == 2 and idx.skipped == []  # not read by design: no warning
    assert page.extra["warnings"] == [] and page.extra["status"] == {"links_not_followed": 2}
    assert [i["id"] for i in page.items] == ["i4", "i3"] and page.matched == 5
    assert [i["id"] for i in page2.items] == ["i2", "i1"] and page2.next == 4
    assert [i["id"] for i in hits.items] == ["i3"]
    item, item_url = got
    assert item_url == f"{url}/col/items/i1.json"
    assert item["assets"]["data"]["href"] == f"{url}/data/i1.zarr"  # resolved at crawl time


def test_a_down_catalogue_is_an_error_and_a_changed_one_is_recrawled(served, foreign):
    root, url = served
    write_catalogue(root, foreign.origin, n=2)

    async def body(cat):
        first = len((await cat.ready()).items)
        write_catalogue(root, foreign.origin, n=4)
        # the root changed too (a new link): the next search sees the new items
        doc = json.loads((root / "catalog.json").read_text())
        doc["description"] = "changed"
        (root / "catalog.json").write_text(json.dumps(doc))
        second = len((await cat.ready()).items)
        (root / "catalog.json").unlink()
        with pytest.raises(SourceFailure, match="'st'.*HTTP 404"):
            await cat.ready()
        return first, second

    assert run(with_catalogue(url, body)) == (2, 4)


def test_requests_follow_redirects_only_within_the_origin(served, foreign):
    root, url = served
    write_catalogue(root, foreign.origin, n=1)
    src = make_source({"name": "st", "url": url + "/", "timeout": 3})

    async def go(path):
        async with httpx.AsyncClient(follow_redirects=False) as client:
            resp, body = await request(client, src, "GET", url + path)
            return resp.status_code, json.loads(body)

    status, doc = run(go("/redirect-same"))
    assert status == 200 and doc["id"] == "root"
    with pytest.raises(SourceFailure, match="redirects to .*another origin; not followed"):
        run(go("/redirect-away"))
    with pytest.raises(SourceFailure, match="refused to contact"):
        run(go_foreign(src, foreign.origin))
    assert foreign.hits == []


async def go_foreign(src, origin):
    async with httpx.AsyncClient() as client:
        await request(client, src, "GET", origin + "/catalog.json")


def test_a_slow_source_times_out(foreign):
    import time

    from tests.helpers.remote_stac import FakeStacApi

    fake = FakeStacApi(foreign.origin, mode="slow", delay=2)
    try:
        src = make_source({"name": "slow", "url": fake.url, "timeout": 0.5})

        async def go():
            async with httpx.AsyncClient() as client:
                await request(client, src, "POST", fake.url + "search", json_body={})

        t0 = time.monotonic()
        with pytest.raises(SourceFailure, match="no answer from .* within 0.5 s") as e:
            run(go())
        assert e.value.status == "timeout" and time.monotonic() - t0 < 1.8
    finally:
        fake.close()


def test_remote_api_search_forwards_the_parameters_and_falls_back_to_get(foreign):
    from urllib.parse import parse_qs, urlsplit

    from tests.helpers.remote_stac import FakeStacApi
    from twinhub.services.datalake.federation.api import RemoteApi

    fake = FakeStacApi(foreign.origin)
    try:
        src = make_source({"name": "f", "url": fake.url, "collections": ["fake", "other"]})
        params = from_body(
            {"bbox": [0, 0, 20, 60], "datetime": "2030-01-01T00:00:00Z/..", "ids": ["fake-1"],
             "filter": "param = '2t'"}, 100)  # fmt: skip

        async def go():
            async with httpx.AsyncClient() as client:
                api = RemoteApi(src, client)
                first = await api.search(params, None, 5, ["fake"])
                fake.mode = "get-only"
                second = await api.search(params, None, 5, ["fake"])
                third = await api.search(params, None, 5, ["fake"])
                return first, second, third

        first, second, third = run(go())
        assert [i["id"] for i in first.items] == ["fake-1"] and first.next is None
        (warning,) = first.extra["warnings"]  # its next link names the foreign host
        assert "not followed" in warning and "127.0.0.2" in warning
        assert fake.bodies[0] == {
            "limit": 5, "collections": ["fake"], "ids": ["fake-1"], "bbox": [0, 0, 20, 60],
            "datetime": "2030-01-01T00:00:00Z/..", "filter-lang": "cql2-json",
            "filter": {"op": "=", "args": [{"property": "param"}, "2t"]},
        }  # fmt: skip
        # 405 to POST: the same search as GET, and GET from then on
        assert [r.split()[0] for r in fake.requests] == ["POST", "POST", "GET", "GET"]
        q = parse_qs(urlsplit(fake.requests[2].split()[1]).query)
        assert q["collections"] == ["fake"] and q["filter-lang"] == ["cql2-json"]
        assert json.loads(q["filter"][0])["op"] == "=" and q["bbox"] == ["0,0,20,60"]
        assert [i["id"] for i in second.items] == [i["id"] for i in third.items] == ["fake-1"]
        assert foreign.hits == []
    finally:
        fake.close()

"""The cache's edge to sources and clients.  The upstream fetch sends a source's headers
(credentials) only to the source's own origin: not to its asset origins, and not after a
redirect that changed origin (two real local HTTP servers, tests/helpers/routes_server.py,
record what they were sent).  The service (CacheApp under a real uvicorn, in front of a
routes server and a counting origin) serves assets inert, refuses queries and encoded
prefixes, tells only admins about hits, answers HEAD without downloading, cancels an
abandoned download, cleans or refuses what sources send, and keeps its limits."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import uvicorn

from tests.helpers.counting_origin import start_origin
from tests.helpers.routes_server import RoutesServer
from twinhub.services.asgi import header
from twinhub.services.cache.app import CacheApp
from twinhub.services.cache.store import CacheError
from twinhub.services.cache.upstream import fetcher, make_client
from twinhub.services.datalake.sources import cache_path, make_source, make_sources

SECRET = "Bearer cache-s3cr3t"


@pytest.fixture(scope="module")
def hosts():
    own, other = RoutesServer(), RoutesServer()

    def redirect(to: str):
        return lambda h: (302, {"Location": to}, b"")

    for s in (own, other):
        for name in ("a", "b", "c", "z"):
            s.route(f"/{name}.bin", lambda h, n=name: (200, {}, n.encode() * 10))
    own.route("/to-asset", redirect(f"{other.origin}/b.bin"))
    own.route("/to-self", redirect("/c.bin"))
    own.route("/bounce", redirect(f"{other.origin}/back"))
    other.route("/back", redirect(f"{own.origin}/z.bin"))
    own.route("/to-garbage", redirect("http://["))
    yield own, other
    own.close()
    other.close()


def get(own, other, url: str) -> bytes:
    src = make_source({"name": "s", "url": own.origin + "/api/", "asset_origins": [other.origin],
                       "headers": {"Authorization": SECRET}})  # fmt: skip

    async def go():
        async with make_client(5) as client, fetcher(client, src, url)() as up:
            return b"".join([c async for c in up.chunks])

    return asyncio.run(go())


def auth(server, path: str) -> list[str | None]:
    return [h.get("authorization") for h in server.headers_of(path)]


def test_headers_go_to_the_own_origin_only(hosts):
    own, other = hosts
    assert get(own, other, own.origin + "/a.bin") == b"a" * 10
    assert get(own, other, other.origin + "/a.bin") == b"a" * 10
    assert auth(own, "/a.bin") == [SECRET] and auth(other, "/a.bin") == [None]


def test_a_redirect_to_another_origin_drops_the_headers_for_good(hosts):
    own, other = hosts
    assert get(own, other, own.origin + "/to-asset") == b"b" * 10
    assert auth(own, "/to-asset") == [SECRET] and auth(other, "/b.bin") == [None]
    assert get(own, other, own.origin + "/to-self") == b"c" * 10
    assert auth(own, "/c.bin") == [SECRET]  # same origin: still the source's own
    # own -> asset origin -> own: the last hop is on the own origin, but what redirected
    # there was not: no credentials
    assert get(own, other, own.origin + "/bounce") == b"z" * 10
    assert auth(other, "/back") == [None] and auth(own, "/z.bin") == [None]


def test_a_garbage_redirect_is_a_502_naming_it(hosts):
    own, other = hosts
    with pytest.raises(CacheError) as e:
        get(own, other, own.origin + "/to-garbage")
    assert e.value.status == 502 and "http://[" in str(e.value)


# -- the service's answers (CacheApp under a real uvicorn, real local origins) -------------


class FakeHubUser:
    """FAKE of HubAuthMiddleware (the hub's token check, covered by
    tests/integration/test_cache_service.py): the user model comes from ``X-Fake-User``
    (``name``, ``name:admin``, or ``name:narrowed``: an admin whose token was narrowed to
    the cache's access scope)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            name, _, role = header(scope, b"x-fake-user").partition(":")
            admin = role == "admin"  # the hub's model of an admin's full token
            user = {
                "name": name or "alice",
                "admin": admin or role == "narrowed",
                "scopes": ["admin:users"] * admin or ["access:services!service=cache"],
            }
            scope.setdefault("state", {})["hub_user"] = user
        await self.app(scope, receive, send)


class Service:
    def __init__(self, url: str, app: CacheApp, sources: dict) -> None:
        self.url, self.app, self.sources = url, app, sources

    def asset_url(self, source: str, href: str) -> str:
        return self.url + "assets/" + cache_path(self.sources[source], href)

    def get(self, source: str, href: str, user: str = "alice", method: str = "GET", **kw):
        headers = {"X-Fake-User": user, **kw.pop("headers", {})}
        kw.setdefault("timeout", 20)
        return requests.request(method, self.asset_url(source, href), headers=headers, **kw)

    def stats(self) -> dict:
        return requests.get(self.url + "stats", timeout=10).json()


@contextmanager
def cache_service(tmp_path, sources: list[dict], **cfg):
    doc = {"prefix": "/services/cache/", "directory": str(tmp_path / "cache"),
           "max_size": 20_000_000, "max_object": 5_000_000, "fetch_timeout": 10,
           "sources": sources, **cfg}  # fmt: skip
    app = CacheApp(doc)
    server = uvicorn.Server(
        uvicorn.Config(FakeHubUser(app), host="127.0.0.1", port=0, log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Service(
            f"http://127.0.0.1:{port}/services/cache/",
            app,
            {s.name: s for s in make_sources(sources)},
        )
    finally:
        server.should_exit = True
        thread.join(10)


def chunked(body: bytes, block: int = 65536):
    """A route that sends ``body`` chunked: no Content-Length announced."""

    def handler(h) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i in range(0, len(body), block):
            part = body[i : i + block]
            h.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        h.wfile.write(b"0\r\n\r\n")

    return handler


def raw_answer(data: bytes):
    """A route that writes ``data`` as the whole response (headers no library would send)."""
    return lambda h: h.wfile.write(data)


BIG = os.urandom(2_000_000)
HUGE = os.urandom(6_000_000)  # over max_object


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """``r``: a routes server (hostile answers); ``o``: a counting origin of files, slow
    (200 kB/s: a 2 MB download is still running when a test acts on it)."""
    files = tmp_path_factory.mktemp("files")
    (files / "big.bin").write_bytes(BIG)
    (files / "other.bin").write_bytes(BIG)
    (files / "small.bin").write_bytes(b"x" * 1000)
    r = RoutesServer()
    o = start_origin(files, rate=200_000)
    for name, ctype in {
        "page.html": "text/html; charset=utf-8",
        "pic.svg": "image/svg+xml",
        "feed.xml": "application/xml",
        "code.js": "text/javascript",
        "data.nc": "application/x-netcdf",
        "meta.json": "application/json; charset=utf-8",
    }.items():
        r.route(f"/{name}", lambda h, c=ctype: (200, {"Content-Type": c}, b"<script>x</script>"))
    r.route("/gzipped", lambda h: (200, {"Content-Encoding": "gzip"}, gzip.compress(b"a" * 99)))
    r.route("/huge-chunked", chunked(HUGE))
    r.route("/odd-headers", raw_answer(
        'HTTP/1.1 200 OK\r\nContent-Type: text/pl\u2713in\r\nETag: "\u2713"\r\n'
        "Content-Length: 3\r\nConnection: close\r\n\r\nabc".encode()))  # fmt: skip
    sources = [{"name": "r", "url": r.origin + "/catalog.json"},
               {"name": "o", "url": o.url + "/catalog.json"}]  # fmt: skip
    yield r, o, sources
    r.close()
    o.stop()


@pytest.fixture(scope="module")
def service(remote, tmp_path_factory):
    with cache_service(tmp_path_factory.mktemp("svc"), remote[2]) as svc:
        yield svc


SAFE = {
    "x-content-type-options": "nosniff",
    "content-security-policy": "sandbox; default-src 'none'",
}


def test_assets_are_served_inert_whatever_type_the_source_claims(service, remote):
    r = remote[0]
    want = {"page.html": "application/octet-stream", "pic.svg": "application/octet-stream",
            "feed.xml": "application/octet-stream", "code.js": "application/octet-stream",
            "data.nc": "application/x-netcdf", "meta.json": "application/json"}  # fmt: skip
    for name, ctype in want.items():
        for _ in ("miss", "hit"):
            resp = service.get("r", f"{r.origin}/{name}")
            assert resp.status_code == 200 and resp.content == b"<script>x</script>", name
            assert resp.headers["content-type"] == ctype, name
            assert {k: resp.headers.get(k) for k in SAFE} == SAFE, name
    assert r.hits("/page.html") == 1  # the second was a hit
    resp = service.get("r", f"{r.origin}/nope")  # errors carry them too
    assert resp.status_code == 404 and resp.headers["x-content-type-options"] == "nosniff"


def test_query_strings_and_an_encoded_prefix_are_refused(service, remote):
    r = remote[0]
    resp = requests.get(service.asset_url("r", f"{r.origin}/data.nc") + "?v=2", timeout=10)
    assert resp.status_code == 400 and "no query string" in resp.json()["description"]
    # http.client: requests would decode the %61 (an unreserved character) before sending
    parts = urlsplit(service.asset_url("r", f"{r.origin}/data.nc"))
    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
    conn.request("GET", parts.path.replace("/assets/", "/%61ssets/"))
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 400 and "percent-encoded" in body["description"]


def test_only_admins_are_told_whether_an_asset_was_cached(service, remote):
    o = remote[1]
    first = service.get("o", f"{o.url}/small.bin", user="alice")
    again = service.get("o", f"{o.url}/small.bin", user="bob")
    assert first.status_code == again.status_code == 200 and again.content == b"x" * 1000
    assert "x-twinhub-cache" not in first.headers and "x-twinhub-cache" not in again.headers
    narrowed = service.get("o", f"{o.url}/small.bin", user="root:narrowed")
    assert narrowed.status_code == 200 and "x-twinhub-cache" not in narrowed.headers
    assert (
        service.get("o", f"{o.url}/small.bin", user="root:admin").headers["x-twinhub-cache"]
        == "hit"
    )


def test_head_of_an_object_not_cached_starts_no_download(service, remote):
    o = remote[1]
    before = service.stats()
    resp = service.get("o", f"{o.url}/big.bin", method="HEAD")
    assert resp.status_code == 200 and resp.headers["content-length"] == str(len(BIG))
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert service.get("o", f"{o.url}/absent.bin", method="HEAD").status_code == 404
    after = service.stats()
    assert o.hits("/big.bin") == 0 and after["misses"] == before["misses"]
    assert after["downloading"] == 0


def test_a_download_stops_when_its_only_reader_hangs_up(service, remote):
    o = remote[1]
    before = service.stats()
    resp = service.get("o", f"{o.url}/big.bin", stream=True)
    assert resp.status_code == 200
    assert next(resp.iter_content(65536))  # bytes are flowing (the whole takes 10 s)
    resp.close()
    deadline = time.monotonic() + 5
    while service.stats()["downloading"] and time.monotonic() < deadline:
        time.sleep(0.05)
    s = service.stats()
    assert s["downloading"] == 0 and s["errors"] == before["errors"]
    assert s["cancelled"] == before["cancelled"] + 1
    assert list((Path(service.app.store.tmp_dir)).iterdir()) == []  # nothing partial kept


def test_headers_no_client_could_receive_are_dropped_at_fetch(service, remote):
    r = remote[0]
    for _ in ("miss", "hit"):
        resp = service.get("r", f"{r.origin}/odd-headers")
        assert resp.status_code == 200 and resp.content == b"abc"
        assert "etag" not in resp.headers
        assert resp.headers["content-type"] == "application/octet-stream"


def test_a_compressed_answer_to_identity_is_refused(service, remote):
    r = remote[0]
    resp = service.get("r", f"{r.origin}/gzipped")
    assert resp.status_code == 502 and "gzip" in resp.json()["description"]
    assert service.stats()["objects"] == len(
        [f for f in service.app.store.objects_dir.rglob("*.json")]
    )


def test_an_unknown_size_object_over_the_limit_is_then_streamed_through(service, remote):
    r = remote[0]
    before = service.stats()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _ = service.get("r", f"{r.origin}/huge-chunked").content  # found out mid-body: cut
    for _ in range(2):  # remembered: passed through whole, not fetched into the cache again
        resp = service.get("r", f"{r.origin}/huge-chunked", user="root:admin")
        assert resp.status_code == 200 and resp.content == HUGE
        assert resp.headers["x-twinhub-cache"] == "bypass"
    after = service.stats()
    assert after["misses"] == before["misses"] + 1 and after["objects"] == before["objects"]


def test_download_limits_per_user_and_in_all(tmp_path, remote):
    r, o, sources = remote
    limits = {"max_downloads": 2, "max_user_downloads": 1, "download_wait": 0.3}
    with cache_service(tmp_path, sources, **limits) as svc:
        held = [svc.get("o", f"{o.url}/big.bin", user="alice", stream=True)]
        assert held[0].status_code == 200
        mine = svc.get("r", f"{r.origin}/data.nc", user="alice")
        assert mine.status_code == 429 and "alice" in mine.json()["description"]
        # joining a download in progress is no new download
        held.append(svc.get("o", f"{o.url}/big.bin", user="carol", stream=True))
        assert held[1].status_code == 200
        held.append(svc.get("o", f"{o.url}/other.bin", user="bob", stream=True))
        assert held[2].status_code == 200
        full = svc.get("r", f"{r.origin}/data.nc", user="carol")
        assert full.status_code == 503 and "busy" in full.json()["description"]
        for h in held:
            h.close()


def test_a_failure_of_the_cache_itself_is_a_json_500_naming_it(tmp_path, remote):
    r, _, sources = remote
    with cache_service(tmp_path, sources) as svc:
        shutil.rmtree(svc.app.store.tmp_dir)  # where downloads go: gone
        resp = svc.get("r", f"{r.origin}/data.nc")
        assert resp.status_code == 500
        assert "FileNotFoundError" in resp.json()["description"]


def test_a_miss_at_the_users_limit_waits_for_a_slot(tmp_path, remote):
    """Parallel chunk reads of one user queue up behind the limit instead of failing."""
    r, o, sources = remote
    limits = {"max_user_downloads": 1, "download_wait": 20}
    with cache_service(tmp_path, sources, **limits) as svc, ThreadPoolExecutor(1) as pool:
        held = svc.get("o", f"{o.url}/big.bin", user="alice", stream=True)
        assert held.status_code == 200
        waiting = pool.submit(svc.get, "r", f"{r.origin}/meta.json", user="alice")
        time.sleep(0.5)
        assert not waiting.done()  # queued behind alice's download
        held.close()  # alice hangs up: her download is cancelled, the slot freed
        resp = waiting.result(timeout=10)
        assert resp.status_code == 200 and resp.content == b"<script>x</script>"

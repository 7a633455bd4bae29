"""The sign-on gateway in one process: a real uvicorn serving :class:`SsoGateway`, a real
upstream (tests.helpers.echo_service), real HTTP and websocket clients.

Two edges are fakes (the integration test, tests/integration/test_registry_gateway.py, runs
them for real): the hub (``FakeHubAuth`` checks tokens, ``hub_user`` answers groups) and the
store (``route`` answers from a dict).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import uvicorn
import websocket

from tests.helpers.echo_service import EchoService, free_loopback_port
from twinhub.services.asgi import MAX_BODY_BYTES
from twinhub.services.registry import gateway as gateway_module
from twinhub.services.registry import relay as relay_module
from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.context import RegistryContext
from twinhub.services.registry.gateway import SsoGateway
from twinhub.services.registry.gateway_rules import SSO_MAX_AGE, sign_sso

ACCESS = "access:services!service=registry"
KEY_TOKEN = "k" * 40


class FakeHubAuth:
    """A fake of the hub's token check (HubOAuth.user_for_token / check_scopes)."""

    access_scopes = frozenset({ACCESS})
    tokens = {
        "alice-token": {"name": "alice", "kind": "user", "admin": False, "scopes": [ACCESS]},
        "narrow-token": {"name": "alice", "kind": "user", "admin": False, "scopes": []},
        "root-token": {
            "name": "root", "kind": "user", "admin": True, "scopes": [ACCESS, "admin:users"],
        },
        "service-token": {"name": "svc", "kind": "service", "scopes": [ACCESS]},
    }  # fmt: skip

    async def user_for_token(self, token: str, use_cache: bool = True, sync: bool = True):
        return self.tokens.get(token)

    def check_scopes(self, need, model) -> set[str]:
        return set(need) & set(model.get("scopes", []))


class FakeEdgesGateway(SsoGateway):
    """The gateway with the store and the hub's user list as fakes (dicts)."""

    routes: dict[str, dict[str, Any]] = {}
    users = {
        "alice": {"name": "alice", "groups": ["lab"], "admin": False},
        "bob": {"name": "bob", "groups": [], "admin": False},
        "root": {"name": "root", "groups": [], "admin": True},
        "carol": {"name": "carol", "groups": [], "admin": False},  # a provider
    }

    async def route(self, slug: str):
        return self.routes.get(slug)

    async def hub_user(self, name: str):
        return self.users.get(name)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoService]:
    e = EchoService.start()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def gw(echo: EchoService) -> Iterator[tuple[str, RegistryContext]]:
    def route(slug: str, visibility: str, **kw: Any) -> dict[str, Any]:
        base = {"slug": slug, "state": "integrated", "upstream": echo.url,
                "allow_private": True, "entry": {"visibility": visibility}, "sandbox": False}  # fmt: skip
        return {**base, **kw}

    FakeEdgesGateway.routes = {
        "lab": route("lab", "project:lab", provider="carol"),
        "open": route("open", "users", sandbox=True),
        "guarded": route("guarded", "users", allow_private=False),
        "paused": route("paused", "users", state="suspended"),
    }
    ctx = RegistryContext(
        rt=None,  # type: ignore[arg-type]  # the gateway reads no runtime
        settings=TwinhubRegistry(gateway_timeout=1.0),
        db_url="",
        hub_api="http://hub.invalid/hub/api",
        token=KEY_TOKEN,
        prefix="/services/registry/",
    )
    app = FakeEdgesGateway(ctx, hub_auth=FakeHubAuth())  # type: ignore[arg-type]
    port = free_loopback_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    t = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", ctx
    server.should_exit = True
    t.join(10)


def get(base: str, path: str, token: str | None = "alice-token", **kw) -> requests.Response:
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"token {token}"
    kw.setdefault("allow_redirects", False)
    return requests.request(kw.pop("method", "GET"), base + path, headers=headers, timeout=30, **kw)


def echoed(r: requests.Response) -> tuple[dict, dict[str, str]]:
    assert r.status_code == 200, (r.status_code, r.text[:300])
    doc = r.json()
    return doc, {k: v for k, v in doc["headers"]}


def test_request_reaches_upstream_as_sent_with_our_identity(gw) -> None:
    base, _ = gw
    r = get(base, "/services/lab/a%3Fc%20d;v=1?x=%2F&y=1", headers={"X-Twinhub-User": "eve"})
    doc, h = echoed(r)
    assert doc["raw_path"] == "/a%3Fc%20d;v=1" and doc["query"] == "x=%2F&y=1"
    assert h["x-forwarded-proto"] == "http"
    r = get(base, "/services/lab/", headers={"X-Forwarded-Proto": "https,http"})
    assert echoed(r)[1]["x-forwarded-proto"] == "https"  # TLS ended before the hub's proxy
    assert h["x-twinhub-user"] == "alice" and h["x-twinhub-groups"] == "lab"
    assert "authorization" not in h
    assert h["x-forwarded-prefix"] == "/services/lab"
    # bodies: with a length, and chunked
    r = get(base, "/services/lab/p", method="POST", data=b"z" * 300_000)
    assert echoed(r)[0]["body"] == "z" * 300_000
    r = get(base, "/services/lab/p", method="POST", data=(b"c" * 1000 for _ in range(5)))
    assert echoed(r)[0]["body"] == "c" * 5000


def test_who_may_pass(gw) -> None:
    base, ctx = gw
    assert get(base, "/services/lab/", token="root-token").status_code == 200  # an admin
    r = get(
        base,
        "/services/lab/",
        token=None,
        cookies={"twinhub-sso-lab": _cookie(ctx, "carol", "lab")},
    )
    assert echoed(r)[1]["x-twinhub-user"] == "carol"  # the provider, in no group
    r = get(
        base, "/services/lab/", token=None, cookies={"twinhub-sso-lab": _cookie(ctx, "bob", "lab")}
    )
    assert r.status_code == 403 and "project:lab" in r.json()["description"]
    r = get(base, "/services/lab/", token="narrow-token")
    assert r.status_code == 403 and ACCESS in r.json()["description"]
    assert get(base, "/services/lab/", token="service-token").status_code == 401
    assert get(base, "/services/lab/", token="nope").status_code == 401
    # a signed cookie of a user the hub no longer has
    r = get(
        base,
        "/services/open/",
        token=None,
        cookies={"twinhub-sso-open": _cookie(ctx, "gone", "open")},
    )
    assert r.status_code == 401 and "no longer exists" in r.json()["description"]
    # an expired one: as no credential at all
    old = sign_sso(ctx.sso_key, "alice", "open", int(time.time()) - 1)
    r = get(base, "/services/open/", token=None, cookies={"twinhub-sso-open": old})
    assert r.status_code == 401 and "authentication required" in r.json()["description"]
    r = get(base, "/services/open/x?y=1", token=None, headers={"Accept": "text/html"})
    assert r.status_code == 302
    assert r.headers["location"] == "/services/registry/sso?next=/services/open/x%3Fy%3D1"


def test_gateway_refusals(gw) -> None:
    base, _ = gw
    r = get(base, "/services/nothing/")
    assert r.status_code == 404 and r.json() == {
        "code": 404, "description": "no service 'nothing' is registered here"
    }  # fmt: skip
    r = get(base, "/services/paused/")
    assert r.status_code == 503 and "suspended" in r.json()["description"]
    r = get(base, "/elsewhere")
    assert r.status_code == 404
    r = get(base, "/services/open?x=1")
    assert r.status_code == 302 and r.headers["location"] == "/services/open/?x=1"
    r = get(base, "/services/guarded/")  # loopback without allow_private
    assert r.status_code == 502 and "outbound guard" in r.json()["description"]
    assert "127.0.0.1" not in r.text  # the upstream's address stays in the log
    for dots in ("/services/open/%2e%2e/x", "/services/open/a/%2E%2E/b", "/services/open/%2e/x"):
        r = get(base, dots)
        assert r.status_code == 400 and "'..'" in r.json()["description"], dots
    r = get(base, "/services/open/slow?s=3")
    assert r.status_code == 504 and r.json()["code"] == 504
    r = get(base, "/services/open/p", method="POST",
            headers={"Content-Length": str(MAX_BODY_BYTES + 1)}, data=b"")  # fmt: skip
    assert r.status_code == 413


def test_answers_keep_under_the_prefix_and_sandbox(gw) -> None:
    base, _ = gw
    r = get(base, "/services/open/set-cookie")
    assert r.raw.headers.getlist("Set-Cookie") == [
        "echo_own=1; Path=/services/open/inner; HttpOnly"
    ]
    assert r.headers["content-security-policy"].startswith("sandbox allow-scripts")
    r = get(base, "/services/lab/redirect")
    assert r.status_code == 302 and r.headers["location"] == "/services/lab/landed"
    assert "content-security-policy" not in r.headers
    assert get(base, "/services/lab/fail").status_code == 503  # upstream's own answer


def test_websocket_relay(gw) -> None:
    base, ctx = gw
    url = base.replace("http", "ws", 1) + "/services/lab/ws"
    ws = websocket.create_connection(url, header=["Authorization: token alice-token"], timeout=10)
    assert json.loads(ws.recv()) == {"hello": "alice"}
    ws.send("hi")
    assert ws.recv() == "hi"
    ws.send_binary(b"\x00\x01")
    assert ws.recv() == b"\x00\x01"
    ws.send("close:4003")
    opcode, data = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 4003
    ws.close()
    cookie = f"Cookie: twinhub-sso-lab={_cookie(ctx, 'alice', 'lab')}"
    ws = websocket.create_connection(url, header=[cookie], origin=base, timeout=10)
    assert json.loads(ws.recv()) == {"hello": "alice"}
    ws.close()
    # the cookie from a page of another origin (cross-site websocket hijacking): refused
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(url, header=[cookie], origin="http://evil.test", timeout=10)
    assert e.value.status_code == 403
    for header in ([], ["Authorization: token nope"],
                   [f"Cookie: twinhub-sso-lab={_cookie(ctx, 'bob', 'lab')}"]):  # fmt: skip
        with pytest.raises(websocket.WebSocketBadStatusException) as e:
            websocket.create_connection(url, header=header, timeout=10)
        assert e.value.status_code == 403


def _cookie(ctx: RegistryContext, user: str, slug: str) -> str:
    return sign_sso(ctx.sso_key, user, slug, int(time.time()) + 60)


def raw_get(base: str, raw_path: str, token: str = "alice-token") -> tuple[int, dict]:
    """GET with the path exactly as written (requests would re-escape a backslash)."""
    host, port = base.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.putrequest("GET", raw_path, skip_accept_encoding=True)
        c.putheader("Authorization", f"token {token}")
        c.endheaders()
        r = c.getresponse()
        body = r.read()
        return r.status, json.loads(body) if body.startswith(b"{") else {}
    finally:
        c.close()


# Every row of the security review's table (finding 2) and the encodings beyond it: escapes
# that some upstream decodes before resolving ("/" in nginx, "\\" on Windows, ";" in Tomcat).
ESCAPING_PATHS = [
    "..%2Fadmin", "..%2fadmin", "%2e%2e%2fadmin", "%2E%2E%2Fadmin",  # nginx decodes %2F
    "..;/admin", "..%3B/admin", "..%3b/admin", "%2e%2e;jsessionid=x/admin",  # Tomcat's ..;
    "..\\admin", "..%5Cadmin", "..%5cadmin", "a\\..\\..\\admin",  # Windows: "\\" is "/"
    "%2e%2e/admin", ".%2e/admin", "%252e%252e/admin", "%25252e./admin",  # escaped dots
    "..%252Fadmin", "x%00/admin", "x%2500y", "./admin", "a/../../admin", ".;/admin",
]  # fmt: skip


@pytest.mark.parametrize("rest", ESCAPING_PATHS)
def test_paths_that_could_leave_the_base_are_refused(gw, rest: str) -> None:
    base, _ = gw
    status, doc = raw_get(base, "/services/open/" + rest)
    assert status == 400, (rest, status, doc)
    assert doc["code"] == 400 and "not allowed in a service's paths" in doc["description"]


@pytest.mark.parametrize("rest", ["a;b/c", "..a/b", "a..;/b", "...", "%2e%2e%2e", "a%20b", "~x"])
def test_ordinary_paths_still_pass(gw, rest: str) -> None:
    base, _ = gw
    status, doc = raw_get(base, "/services/open/" + rest)
    assert status == 200 and doc["raw_path"] == "/" + rest


def test_an_expired_sign_on_cookie_is_refused(gw) -> None:
    base, ctx = gw
    assert SSO_MAX_AGE <= 15 * 60  # the hub's logout cannot reach it: short-lived
    now = int(time.time())
    fresh = sign_sso(ctx.sso_key, "alice", "lab", now + SSO_MAX_AGE)
    assert get(base, "/services/lab/", token=None,
               headers={"Cookie": f"twinhub-sso-lab={fresh}"}).status_code == 200  # fmt: skip
    old = sign_sso(ctx.sso_key, "alice", "lab", now - 1)  # issued more than SSO_MAX_AGE ago
    r = get(base, "/services/lab/x", token=None,
            headers={"Cookie": f"twinhub-sso-lab={old}", "Accept": "text/html"})  # fmt: skip
    # a browser goes through sign-on again (which needs the registry's hub session)
    assert r.status_code == 302
    assert r.headers["location"] == "/services/registry/sso?next=/services/lab/x"
    r = get(base, "/services/lab/x", token=None, headers={"Cookie": f"twinhub-sso-lab={old}"})
    assert r.status_code == 401


def _ws(base: str, token: str, path: str = "/services/lab/ws") -> websocket.WebSocket:
    url = base.replace("http", "ws", 1) + path
    ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=10)
    assert json.loads(ws.recv())["hello"]  # relayed: upstream's greeting came through
    return ws


def test_websockets_are_capped_per_user_and_in_all(gw, monkeypatch) -> None:
    """Every relayed websocket holds two sockets of the registry's process: one user (a
    script with a token) must not open thousands."""
    base, ctx = gw
    gateway = ctx.extras["gateway"]
    monkeypatch.setattr(ctx.settings, "max_websockets_per_user", 2)
    held = [_ws(base, "alice-token"), _ws(base, "alice-token", "/services/open/ws")]
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        _ws(base, "alice-token")
    assert e.value.status_code == 429
    assert json.loads(e.value.resp_body) == {
        "code": 429,
        "description": "'alice' has 2 websockets open through the gateway (at most that many "
        "per user): close one first",
    }
    root = _ws(base, "root-token")  # another user's count is their own
    monkeypatch.setattr(ctx.settings, "max_websockets", 3)
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        _ws(base, "root-token")
    assert e.value.status_code == 429 and b"3 websockets already (its limit)" in e.value.resp_body
    for ws in (*held, root):
        ws.close()
    assert wait_for(lambda: gateway._ws_open == 0), "closed websockets are still counted"
    assert gateway._ws_by_user == {}
    _ws(base, "alice-token").close()  # room again


class _FloodingUpstream:
    """FAKE upstream websocket connection: sends messages without end; records its close."""

    close_code: int | None = None
    close_reason = ""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        await asyncio.sleep(0)
        return "x" * 1000

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code, self.close_reason = code, reason
        self.closed.set()


def test_a_websocket_client_that_does_not_read_releases_the_upstream() -> None:
    """The client's ``send`` blocks (back-pressure: a FAKE client that never reads after a
    few messages): the relay ends and closes upstream instead of waiting forever."""
    upstream = _FloodingUpstream()
    sent: list[dict] = []

    async def send(msg: dict) -> None:
        sent.append(msg)
        if len(sent) > 3:
            await asyncio.Event().wait()  # the client's buffers are full: never returns

    async def receive() -> dict:
        await asyncio.Event().wait()  # the client sends nothing and stays connected
        return {}

    async def go() -> None:
        await asyncio.wait_for(relay_module.relay(receive, send, upstream, 0.05), 30)

    asyncio.run(go())
    assert upstream.closed.is_set() and upstream.close_code == 1001
    assert len(sent) == 4


def test_an_http_client_that_does_not_read_releases_the_upstream() -> None:
    """The same for a streamed HTTP answer (an SSE stream, a download read slowly): the
    relay returns, so that the gateway closes the upstream response."""

    class Stream:  # FAKE upstream response: chunks without end
        async def aiter_raw(self):
            while True:
                await asyncio.sleep(0)
                yield b"tick\n"

    sent: list[dict] = []

    async def send(msg: dict) -> None:
        sent.append(msg)
        if len(sent) > 3:
            await asyncio.Event().wait()

    async def receive() -> dict:
        await asyncio.Event().wait()
        return {}

    async def go() -> None:
        await asyncio.wait_for(
            relay_module.stream_until_disconnect(Stream(), receive, send, 0.05), 30
        )

    asyncio.run(go())
    assert len(sent) == 4


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_a_client_that_goes_away_closes_the_upstream_stream(gw, monkeypatch) -> None:
    base, ctx = gw
    # Its own upstream, whose client is made with a generous timeout: with the fixture's 1 s,
    # a loaded machine that stalls a second between two chunks ends the stream by itself.
    monkeypatch.setattr(ctx.settings, "gateway_timeout", 30.0)
    calm = EchoService.start()
    try:
        FakeEdgesGateway.routes["calm"] = {**FakeEdgesGateway.routes["lab"], "slug": "calm",
                                           "upstream": calm.url}  # fmt: skip
        r = get(base, "/services/calm/stream", stream=True)
        assert r.status_code == 200
        chunks = r.iter_content(5)
        assert [next(chunks) for _ in range(3)] == [b"tick\n"] * 3  # it streams
        assert calm.streams == 1
        r.close()  # the client disconnects mid-stream
        # the gateway noticed and closed its upstream connection: the stream ended upstream
        assert wait_for(lambda: calm.streams == 0), "the upstream stream was left open"
    finally:
        FakeEdgesGateway.routes.pop("calm", None)
        calm.stop()


def test_one_upstream_cannot_take_the_connections_of_another(gw, monkeypatch) -> None:
    base, _ = gw
    busy = EchoService.start()
    try:
        FakeEdgesGateway.routes["busy"] = {
            **FakeEdgesGateway.routes["open"], "slug": "busy", "upstream": busy.url, "sandbox": False,
        }  # fmt: skip
        # a small pool for this (new) upstream's client, so the test needs few connections
        monkeypatch.setattr(gateway_module, "CONNECTIONS_PER_UPSTREAM", 3)
        held = [get(base, "/services/busy/stream", stream=True) for _ in range(3)]
        assert [r.status_code for r in held] == [200, 200, 200]
        assert wait_for(lambda: busy.streams == 3)
        # its pool is full: one more waits for a connection, then 504 (gateway_timeout)
        assert get(base, "/services/busy/health").status_code == 504
        # other upstreams have their own pools: they answer (a shared, full pool would make
        # this one wait gateway_timeout too, and answer 504)
        assert get(base, "/services/lab/health").status_code == 200
        for r in held:
            r.close()
        # generous: on a loaded machine the gateway's disconnect watch and the upstream's
        # next chunk take their time
        assert wait_for(lambda: busy.streams == 0, timeout=60)
        assert get(base, "/services/busy/health").status_code == 200  # slots are free again
    finally:
        FakeEdgesGateway.routes.pop("busy", None)
        busy.stop()


def test_clients_are_kept_per_origin_and_bounded(gw, monkeypatch) -> None:
    _, ctx = gw
    g = SsoGateway(ctx)
    monkeypatch.setattr(gateway_module, "MAX_CLIENTS", 2)

    async def go() -> None:
        a = g.client("http://a.test:1/x/", False)
        assert g.client("HTTP://A.test:1/y", False) is a  # the same origin, any path
        assert g.client("http://a.test:1/", True) is not a  # another address rule
        g.client("http://b.test/", False)  # a third client: the least recently used goes
        assert a.is_closed or (await asyncio.sleep(0.1)) or a.is_closed
        assert len(g._clients) == 2
        await g.aclose()

    asyncio.run(go())

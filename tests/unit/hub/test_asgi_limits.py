"""The request-limits layer (twinhub.services.asgi) around small real apps under a real
uvicorn (h11, as the services run it), spoken to over real sockets.

The apps here are the test's own (Starlette and FastAPI routes that echo, fail or raise):
what is checked is the layer every service puts outermost, and how uvicorn's connection
fares after each answer.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, HTTPException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from tests.helpers.platform import free_port
from twinhub.services.asgi import (
    MAX_JSON_DEPTH,
    RequestLimitsMiddleware,
    json_depth,
    request_body,
)
from twinhub.services.registration import MAX_HEAD_BYTES

CALLS: list[str] = []


# -- json_depth ------------------------------------------------------------------------------
def parsed_depth(v) -> int:
    if isinstance(v, dict):
        return 1 + max((parsed_depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((parsed_depth(x) for x in v), default=0)
    return 0


def random_json(rng: random.Random, depth: int):
    if depth == 0 or rng.random() < 0.25:
        return rng.choice([1, 2.5, None, True, 'x[{"', "]]}", "\\", "\\]", "é[", ""])
    if rng.random() < 0.5:
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f"k[{i}\\": random_json(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_json_depth_is_the_parsed_depth_whatever_strings_hold():
    rng = random.Random(17)
    for _ in range(2000):
        doc = random_json(rng, 9)
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
        assert json_depth(text) == parsed_depth(doc), text
    # the same over the vectorised path (texts over 256 KiB)
    for _ in range(5):
        docs = [random_json(rng, 12) for _ in range(6000)]
        text = json.dumps(docs)
        assert len(text) > 256 * 1024
        assert json_depth(text) == parsed_depth(docs)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_json_depth_reads_every_encoding_json_loads_reads(encoding):
    """json.loads(bytes) detects UTF-16/32: a byte scan of those would see a lone quote byte
    (here from U+2200) and take the brackets after it for a string's contents."""
    doc = '{"a": "\u2200", "b": ' + "[" * 100 + "]" * 100 + "}"
    raw = doc.encode(encoding)
    assert json_depth(raw) == parsed_depth(json.loads(raw)) == 101


@pytest.mark.parametrize("size", [1000, 400_000])
def test_json_depth_stops_early_and_never_undercounts_malformed_text(size):
    deep = "[" * size + "]" * size
    assert json_depth(deep, stop_at=MAX_JSON_DEPTH) > MAX_JSON_DEPTH
    assert json_depth(deep) == size
    # brackets in a string do not count; an escaped quote does not end it
    hidden = '{"a": "' + "[" * size + '\\"' + "[" * 10 + '"}'
    assert json_depth(hidden) == 1
    # unterminated and unbalanced texts: never less than where a parser would get
    assert json_depth("[" * 70) == 70
    assert json_depth("]]]" + "[" * 70) == 70
    assert json_depth('{"a": "]]]]", "b": ' + "[" * 70 + "]" * 70 + "}") == 71


# -- a real uvicorn ----------------------------------------------------------------------------
async def echo(request: Request):
    CALLS.append(request.url.path)
    body = await request.body()
    seen = request_body(request.scope)
    return JSONResponse({"len": len(body), "same": seen == body, "q": dict(request.query_params)})


async def boom(request: Request):
    raise RuntimeError("a bug in a route")


async def half(request: Request):
    async def chunks():
        yield b"first part;"
        raise RuntimeError("failed while streaming")

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def teapot(request: Request):
    return PlainTextResponse("short and stout", status_code=418)


def starlette_app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/echo", echo, methods=["GET", "POST", "PUT"]),
            Route("/boom", boom),
            Route("/half", half),
            Route("/teapot", teapot),
        ]
    )
    # the way the services add it: outermost of the user middlewares
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=100_000)
    return app


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{n}")
    async def item(n: int) -> dict:
        if n == 0:
            raise HTTPException(409, "zero is taken")
        return {"n": n}

    @app.get("/crash")
    async def crash() -> dict:
        raise KeyError("missing")

    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=100_000)
    return app


class Server:
    def __init__(self, app) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            http="h11",
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            log_level="critical",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)


@pytest.fixture(scope="module")
def star() -> Iterator[Server]:
    with Server(starlette_app()) as s:
        yield s


@pytest.fixture(scope="module")
def fast() -> Iterator[Server]:
    with Server(fastapi_app()) as s:
        yield s


def call(c: http.client.HTTPConnection, method: str, path: str, body=None, headers=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r, data


def still_open(c: http.client.HTTPConnection) -> bool:
    """Whether the server kept the connection (a peek that would block: nothing, no EOF)."""
    time.sleep(0.3)
    assert c.sock is not None
    c.sock.setblocking(False)
    try:
        return c.sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    finally:
        c.sock.setblocking(True)


def json_error(r: http.client.HTTPResponse, data: bytes, status: int) -> str:
    assert r.status == status, data
    assert r.getheader("content-type") == "application/json"
    doc = json.loads(data)
    assert doc["code"] == status and isinstance(doc["description"], str) and doc["description"]
    return doc["description"]


def test_a_deep_json_body_is_refused_before_the_app_reads_it(star):
    CALLS.clear()
    c = star.conn()
    deep = "[" * 100_000 + "]" * 100_000
    r, data = call(c, "POST", "/echo", deep[:99_000], {"content-type": "text/plain"})
    assert "nests deeper than 64 levels" in json_error(r, data, 400)
    ok = json.dumps({"a": [[[[1]]]]})
    r, data = call(c, "POST", "/echo", ok, {"content-type": "application/json"})
    assert r.status == 200 and json.loads(data) == {"len": len(ok), "same": True, "q": {}}
    assert CALLS == ["/echo"]  # the refused one never reached the app


def test_a_body_over_the_cap_is_refused_from_its_length_or_as_it_comes(star):
    CALLS.clear()
    # a Content-Length beyond what is worth reading: answered at once, connection closed
    with socket.create_connection(("127.0.0.1", star.port), timeout=10) as s:
        s.sendall(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):  # the server closes: the body was never read
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer.lower()
    assert b"larger than 100000 bytes" in answer
    # a body over the cap, with its length or chunked: refused, the rest read and dropped,
    # and the same connection serves the next request (a proxy's kept-alive one)
    c = star.conn()
    r, data = call(c, "POST", "/echo", b"x" * 300_000)
    assert "larger than 100000 bytes" in json_error(r, data, 413)
    r, data = call(c, "POST", "/echo", iter([b"x" * 60_000] * 5))
    assert "larger than 100000 bytes" in json_error(r, data, 413)
    r, data = call(c, "GET", "/echo")
    assert r.status == 200 and CALLS == ["/echo"]


def test_huge_headers_bad_paths_and_queries_get_json_400s(star):
    c = star.conn()
    r, data = call(c, "GET", "/echo", headers={"x-big": "a" * 40_000})
    assert "headers too large" in json_error(r, data, 431)
    for path in ("/echo%00", "/echo%ff", "/echo?ids=%00", "/echo?x=%ff%fe", "/ech%01o"):
        r, data = call(star.conn(), "GET", path)
        assert r.status == 400, (path, data)
        json_error(r, data, 400)
    r, data = call(star.conn(), "GET", "/echo?" + "&".join(f"a{i}=1" for i in range(300)))
    assert "too many query parameters" in json_error(r, data, 400)
    q = "[" * 65 + "]" * 65
    r, data = call(star.conn(), "GET", f"/echo?intersects={q}")
    assert "'intersects' nests deeper than 64" in json_error(r, data, 400)
    # newlines and tabs are fine in a query value (CQL2 text spans lines)
    r, data = call(star.conn(), "GET", "/echo?filter=a%3D1%0AAND%09b%3D2")
    assert r.status == 200 and json.loads(data)["q"] == {"filter": "a=1\nAND\tb=2"}


def test_starlette_and_fastapi_errors_become_json(star, fast):
    r, data = call(star.conn(), "GET", "/nowhere")
    assert json_error(r, data, 404) == "Not Found"
    r, data = call(star.conn(), "DELETE", "/echo")
    assert json_error(r, data, 405) == "Method Not Allowed" and r.getheader("allow")
    r, data = call(star.conn(), "GET", "/teapot")
    assert json_error(r, data, 418) == "short and stout"
    r, data = call(fast.conn(), "GET", "/items/zero")
    assert "n: " in json_error(r, data, 422)
    r, data = call(fast.conn(), "GET", "/items/0")
    assert json_error(r, data, 409) == "zero is taken"
    r, data = call(star.conn(), "HEAD", "/nowhere")  # HEAD: no body to rewrite
    assert r.status == 404 and data == b""


@pytest.mark.parametrize("which", ["star", "fast"])
def test_an_exception_is_a_json_500_and_the_connection_stays_usable(which, request):
    srv = request.getfixturevalue(which)
    path = "/boom" if which == "star" else "/crash"
    c = srv.conn()
    for _ in range(3):  # the same keep-alive connection, again and again
        r, data = call(c, "GET", path)
        assert "the service failed: " in json_error(r, data, 500)
        assert r.getheader("connection") != "close" and still_open(c)
        r, data = call(c, "GET", "/echo" if which == "star" else "/items/3")
        assert r.status == 200, data


def test_a_failure_while_streaming_cuts_the_connection(star):
    c = star.conn()
    c.request("GET", "/half")
    r = c.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead):
        r.read()

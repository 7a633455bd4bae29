"""A real web service for gateway tests: it echoes what it received (uvicorn, in a thread).

    echo = EchoService.start()           # loopback, a free port
    echo.url                             # http://127.0.0.1:<port>
    echo.stop(); echo.restart()          # down, then up again on the same port

Paths:

- ``/health``: ``{"status": "ok"}``;
- ``/set-cookie``: 200 with a cookie of its own and one named like the hub's session
  (``Set-Cookie`` rules);
- ``/redirect``: 302 to ``<its own URL>/landed`` (``Location`` rules);
- ``/slow?s=<seconds>``: answers after that long;
- ``/fail``: 503;
- ``/stream``: a chunk every 0.1 s until the client goes away (``EchoService.streams``:
  how many such streams are open now);
- anything else: JSON ``{"method", "path", "raw_path", "query", "headers": [[name, value]...],
  "body"}``
  of the request as it arrived;
- websocket (any path): every message sent back as it came (text as text, bytes as
  bytes); the text ``"close:<code>"`` makes it close with that code; the first message it
  sends is ``{"hello": <X-Twinhub-User it saw>}``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

#: Open ``/stream`` answers, by the port of the echo service serving them.
_STREAMS: dict[int, int] = {}


async def echo_app(scope: dict[str, Any], receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    path = scope["path"]
    if path == "/stream":
        await _stream(scope, receive, send)
        return
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    status = 200
    if path == "/health":
        out: bytes = b'{"status": "ok"}'
    elif path == "/set-cookie":
        headers += [
            (b"set-cookie", b"echo_own=1; Path=/inner; HttpOnly"),
            (b"set-cookie", b"jupyterhub-session-id=forged; Path=/"),
        ]
        out = b"{}"
    elif path == "/redirect":
        host = dict(scope["headers"]).get(b"host", b"").decode()
        headers.append((b"location", f"http://{host}/landed".encode()))
        status, out = 302, b""
    elif path == "/slow":  # answers after ?s= seconds (a stalled upstream)
        await asyncio.sleep(float(scope["query_string"].decode().partition("=")[2] or 5))
        out = b"{}"
    elif path == "/fail":
        status, out = 503, b'{"status": "failing on purpose"}'
    else:
        out = json.dumps(
            {
                "method": scope["method"],
                "path": path,
                "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
                "query": scope["query_string"].decode("latin-1"),
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
                ],
                "body": body.decode("utf-8", "replace"),
            }
        ).encode()
    headers.append((b"content-length", str(len(out)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": out})


async def _stream(scope: dict[str, Any], receive, send) -> None:
    """Chunks until the client disconnects (an SSE-like endless answer)."""
    port = scope["server"][1]
    _STREAMS[port] = _STREAMS.get(port, 0) + 1
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip

        async def chunks() -> None:
            while True:
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await asyncio.sleep(0.1)

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = [asyncio.ensure_future(chunks()), asyncio.ensure_future(gone())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
    finally:
        _STREAMS[port] -= 1


async def _websocket(scope: dict[str, Any], receive, send) -> None:
    msg = await receive()
    if msg["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    user = dict(scope["headers"]).get(b"x-twinhub-user", b"").decode()
    await send({"type": "websocket.send", "text": json.dumps({"hello": user})})
    while True:
        msg = await receive()
        if msg["type"] == "websocket.disconnect":
            return
        text = msg.get("text")
        if text is not None and text.startswith("close:"):
            await send({"type": "websocket.close", "code": int(text[6:])})
            return
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": msg.get("bytes") or b""})


def free_loopback_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EchoService:
    host: str
    port: int
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, host: str = "127.0.0.1", port: int = 0) -> EchoService:
        svc = cls(host=host, port=port or free_loopback_port(host))
        svc.restart()
        return svc

    @property
    def streams(self) -> int:
        """``/stream`` answers open now."""
        return _STREAMS.get(self.port, 0)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def restart(self, timeout: float = 10) -> None:
        """Serve (again) on the same address; returns once it accepts connections."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            config = uvicorn.Config(
                echo_app,
                host=self.host,
                port=self.port,
                log_level="warning",
                ws="websockets-sansio",
                lifespan="off",
            )
            self._server = uvicorn.Server(config)
            server = self._server
            self._thread = threading.Thread(
                target=lambda: asyncio.run(server.serve()), daemon=True, name="echo-service"
            )
            self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.started:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the echo service did not start on {self.url}")

    def stop(self, timeout: float = 10) -> None:
        """Stop serving (connections refused from then on)."""
        with self._lock:
            if self._server is not None:
                self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout)
            self._server = self._thread = None

"""A real local HTTP server whose answers a test sets per path: a FAKE remote (a STAC API, a
static catalogue, an asset host) for the malformed and hostile edges no real server produces
on demand (bad links, non-dict properties, compression bombs, slow drips, echoed secrets).

    srv = RoutesServer()                       # 127.0.0.1, a free port; srv.origin
    srv.json("/catalog.json", {...})           # a JSON answer
    srv.route("/x", lambda h: (200, {"Content-Encoding": "br"}, data))
    srv.route("/drip", drip(b"{...}", 0.1))  # one byte every 0.1 s
    srv.hits("/catalog.json"), srv.seen[-1]    # requests so far: (method, path, headers)
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, str], bytes]


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def drip(body: bytes, every: float) -> Callable[[BaseHTTPRequestHandler], None]:
    """A route that announces ``body`` and sends it one byte per ``every`` seconds (a server
    that is never silent long enough for a read timeout, and never done)."""

    def handler(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            for i in range(len(body)):
                h.wfile.write(body[i : i + 1])
                h.wfile.flush()
                time.sleep(every)
        except OSError:
            pass  # the client gave up: what the test wants

    return handler


class RoutesServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], Answer | None]] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                path = self.path.split("?", 1)[0]
                with outer.lock:
                    outer.seen.append((self.command, self.path, dict(self.headers.items())))
                fn = outer.routes.get(path)
                answer = fn(self) if fn else (404, {}, b'{"detail": "not found"}')
                if answer is None:  # the route wrote its own answer
                    return
                status, headers, body = answer
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up
                    self.wfile.write(body)

            do_GET = do_POST = _any

            def log_message(self, *a: Any) -> None:
                pass

        self.httpd = _Server((host, 0), H)
        self.port = self.httpd.server_address[1]
        self.origin = f"http://{host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, path: str, fn: Callable[[BaseHTTPRequestHandler], Answer | None]) -> None:
        self.routes[path] = fn

    def json(self, path: str, doc: Any, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(doc).encode()
        self.routes[path] = lambda h: (status, dict(headers or {}), body)

    def hits(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, p, _ in self.seen if p.split("?", 1)[0] == path)

    def headers_of(self, path: str) -> list[dict[str, str]]:
        """The request headers of every request of ``path`` (lower-cased names)."""
        with self.lock:
            return [
                {k.lower(): v for k, v in h.items()}
                for _, p, h in self.seen
                if p.split("?", 1)[0] == path
            ]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

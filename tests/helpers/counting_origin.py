"""A real HTTP origin for cache tests and the bench: static files that count their requests.

    origin = start_origin(root)            # in this process (a thread)
    origin.url, origin.hits("/a/b.bin")    # GETs of that path so far
    python -m tests.helpers.counting_origin --root DIR --port P [--rate BYTES_PER_S]

Besides the files under ``root``:

- ``GET /_hits``: ``{path: GET count}`` as JSON (not counted itself);
- paths under ``/cut-once/<file>``: the first GET announces the whole length, sends half
  and closes the connection (an upstream dying mid-transfer); later GETs are complete;
- ``/redirect-away/<x>``: 302 to an address on another origin;
- ``/redirect-here/<file>``: 302 to ``/<file>`` on this same origin;
- ``rate``: bytes per second per response (a simulated slow link, for overlap and the
  bench's labelled WAN case); 0 = as fast as the machine goes.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BLOCK = 64 * 1024


class _Handler(SimpleHTTPRequestHandler):
    server: _Server
    cut = False  # this response stops halfway (cut-once)
    _length: str | None = None  # the Content-Length sent

    def log_message(self, fmt: str, *args) -> None:  # quiet: counts say what happened
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/_hits":
            with self.server.lock:
                body = json.dumps(dict(self.server.counts)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        with self.server.lock:
            self.server.counts[path] += 1
            first = self.server.counts[path] == 1
        if path.startswith("/redirect-away/"):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.2:9/elsewhere" + path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path.startswith("/redirect-here/"):
            self.send_response(302)
            self.send_header("Location", path.removeprefix("/redirect-here"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path.startswith("/cut-once/"):
            self.path = path.removeprefix("/cut-once")
            self.cut = first
        super().do_GET()

    def copyfile(self, source, outputfile) -> None:
        rate = self.server.rate
        total = 0
        cut_at = None
        if self.cut:
            cut_at = int(self._length or 0) // 2
        t0 = time.monotonic()
        while block := source.read(BLOCK):
            if cut_at is not None and total + len(block) > cut_at:
                outputfile.write(block[: cut_at - total])
                outputfile.flush()
                self.close_connection = True
                return
            outputfile.write(block)
            total += len(block)
            if rate:
                ahead = total / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "content-length":
            self._length = value
        super().send_header(keyword, value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, handler, rate: float) -> None:
        if ":" in addr[0]:  # an IPv6 address ("::1")
            self.address_family = socket.AF_INET6
        super().__init__(addr, handler)
        self.rate = rate
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up: fine
            super().handle_error(request, client_address)


@dataclass
class Origin:
    server: _Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def hits(self, path: str) -> int:
        with self.server.lock:
            return self.server.counts[path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_origin(
    root: str | Path, port: int = 0, rate: float = 0, host: str = "127.0.0.1"
) -> Origin:
    """Serve ``root`` on ``host`` (``port`` 0: any free one) from a daemon thread."""
    server = _Server((host, port), partial(_Handler, directory=str(root)), rate)
    t = threading.Thread(target=server.serve_forever, daemon=True, name="counting-origin")
    t.start()
    return Origin(server, t)


def hits_of(url: str) -> dict[str, int]:
    """The ``/_hits`` document of an origin in another process."""
    import requests

    return requests.get(url.rstrip("/") + "/_hits", timeout=10).json()


def main() -> None:
    ap = argparse.ArgumentParser(description="static files that count their requests")
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0, help="bytes/s per response; 0: unlimited")
    args = ap.parse_args()
    server = _Server(("127.0.0.1", args.port), partial(_Handler, directory=args.root), args.rate)
    print(f"serving {args.root} at http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

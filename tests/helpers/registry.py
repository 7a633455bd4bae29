"""What the registry's tests share: the contract's transition table (as the issue states
it, independent of the code's own table), a counting HTTP server, a route wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

STATES = (
    "submitted", "evaluated", "changes-requested", "approved", "rejected", "integrated",
    "suspended", "retired",
)  # fmt: skip
#: States a provider may still withdraw from.
EARLY = ("submitted", "evaluated", "changes-requested")
#: The contract (issue 14): (from, to) -> the roles that may make the move.
LEGAL: dict[tuple[str, str], set[str]] = {
    ("submitted", "evaluated"): {"platform"},
    ("evaluated", "changes-requested"): {"reviewer"},
    ("evaluated", "approved"): {"reviewer"},
    ("evaluated", "rejected"): {"reviewer"},
    ("changes-requested", "submitted"): {"provider"},
    ("approved", "integrated"): {"admin"},
    ("integrated", "suspended"): {"admin"},
    ("suspended", "integrated"): {"admin"},
    **{
        (s, "retired"): {"admin", "provider"} if s in EARLY else {"admin"}
        for s in STATES
        if s != "retired"
    },
}


@contextmanager
def counting_server(host: str = "127.0.0.1") -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on ``host`` answering every GET with a tiny OpenAPI document and
    counting the paths it was asked for (what the outbound guard must never reach):
    ``(url without a trailing slash, hits)``."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b'{"openapi": "3.0.0", "paths": {}}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer((host, 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{srv.server_address[1]}", hits
    finally:
        srv.shutdown()
        srv.server_close()


def wait_routed(base_url: str, slug: str, timeout: float = 60) -> None:
    """Until the proxy sends ``/services/<slug>/`` to the registry's gateway (a browser
    without a sign-on is sent to ``/services/registry/sso``): the hub adds an integrated
    service's route at its next route check (every <= 30 s with the registry on)."""
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(
            base_url + f"services/{slug}/",
            headers={"Accept": "text/html"},
            allow_redirects=False,
            timeout=30,
        )
        if r.status_code == 302 and "/services/registry/sso" in r.headers.get("location", ""):
            return
        assert time.monotonic() < deadline, f"/services/{slug}/ not routed: {r.status_code}"
        time.sleep(1)

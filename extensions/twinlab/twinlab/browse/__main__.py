"""``python -m twinlab.browse --unix-socket PATH`` (or ``--port N``): serve the page's static
files.

Only jupyter-server-proxy reaches it, behind the user server's authentication; it serves
files from ``static/`` and nothing else (no directory listings, no uploads).  The proxy
starts it on a Unix socket in a private (0700) directory: a loopback TCP port could be
bound first by another user's process on the same machine, which would then serve its own
script at this user's origin.
"""

from __future__ import annotations

import argparse
import functools
import os
import socketserver
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from twinlab.browse import STATIC


class StaticHandler(SimpleHTTPRequestHandler):
    """Files of ``static/``; a directory answers with its index.html or 404."""

    # text is UTF-8: say so, or browsers and clients guess (latin-1 for scripts)
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
        ".png": "image/png",
    }

    def list_directory(self, path):  # type: ignore[override]  # never list directories
        self.send_error(404, "not found")
        return None

    def end_headers(self) -> None:
        # The page is small and changes with the package: always revalidate.
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002  # quiet server log
        pass

    def address_string(self) -> str:
        # a Unix socket's peer has no address (client_address is "")
        return self.client_address[0] if self.client_address else "unix"


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def make_server(port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    handler = functools.partial(StaticHandler, directory=str(STATIC))
    return ThreadingHTTPServer((host, port), handler)


def make_unix_server(path: str) -> UnixHTTPServer:
    handler = functools.partial(StaticHandler, directory=str(STATIC))
    old = os.umask(0o077)  # the socket itself private too, whatever its directory
    try:
        return UnixHTTPServer(path, handler)
    finally:
        os.umask(old)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m twinlab.browse", description=__doc__)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix-socket", help="Unix socket path to listen on")
    where.add_argument("--port", type=int, help="loopback port to listen on")
    args = ap.parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        ap.error(f"--port {args.port} is not a TCP port (1..65535)")
    server: socketserver.BaseServer = (
        make_unix_server(args.unix_socket) if args.unix_socket else make_server(args.port)
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

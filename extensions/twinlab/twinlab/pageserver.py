"""What twinlab's pages share (the Data lake page, :mod:`twinlab.browse`; the Usage page,
:mod:`twinlab.usage`): a handler for a page's ``static/`` files and ``main`` for
``python -m twinlab.<page> --unix-socket PATH`` (or ``--port N``).

Only jupyter-server-proxy reaches a page's server, behind the user server's
authentication. It starts it on a Unix socket in a private (0700) directory: a loopback
TCP port could be bound first by another user's process on the same machine, which would
then serve its own script at this user's origin. A page serves its files and nothing else
(no directory listings, no uploads) and what its own handler adds.
"""

from __future__ import annotations

import argparse
import functools
import os
import socketserver
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class StaticHandler(SimpleHTTPRequestHandler):
    """Files of a page's ``static/``; a directory answers with its index.html or 404."""

    # text is UTF-8: say so, or browsers and clients guess (latin-1 for scripts)
    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
        ".png": "image/png",
    }

    def list_directory(self, path: str | os.PathLike[str]) -> None:  # never list directories
        self.send_error(404, "not found")
        return None

    def end_headers(self) -> None:
        # Pages are small and change with the package (the Usage page's data with every
        # tick): always revalidate.
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # quiet server log
        pass

    def address_string(self) -> str:
        # a Unix socket's peer has no address (client_address is "")
        return self.client_address[0] if self.client_address else "unix"


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def make_server(
    handler: type[StaticHandler], static: Path, port: int, host: str = "127.0.0.1"
) -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(static)))


def make_unix_server(handler: type[StaticHandler], static: Path, path: str) -> UnixHTTPServer:
    old = os.umask(0o077)  # the socket itself private too, whatever its directory
    try:
        return UnixHTTPServer(path, functools.partial(handler, directory=str(static)))
    finally:
        os.umask(old)


def main(
    handler: type[StaticHandler],
    static: Path,
    *,
    prog: str,
    description: str | None,
    argv: list[str] | None = None,
) -> int:
    """Serve ``static`` with ``handler`` until interrupted (a page's ``__main__``)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix-socket", help="Unix socket path to listen on")
    where.add_argument("--port", type=int, help="loopback port to listen on")
    args = ap.parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        ap.error(f"--port {args.port} is not a TCP port (1..65535)")
    server: socketserver.BaseServer = (
        make_unix_server(handler, static, args.unix_socket)
        if args.unix_socket
        else make_server(handler, static, args.port)
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0

"""The cache service process: an ASGI app under uvicorn, behind hub authentication.

``uvicorn --factory twinhub.services.cache.app:create_app`` (the supervisor's ``cache``
component).  Its config file (``$TWINHUB_CACHE_CONFIG``, written by
:func:`twinhub.services.cache.prepare`) holds the sources (with their secret headers), the
directory and the limits.

=================================================  ==========================================
``GET|HEAD assets/<source>/<host[:port]>/<path>``  the remote asset, from the cache or fetched
                                                   once (Range on hits and on downloads)
``GET stats``                                      JSON counters, size, objects (aggregate)
``GET metrics``                                    the same as Prometheus text
``GET health``                                     no auth: "ok" (the supervisor's check)
=================================================  ==========================================

Everything but ``health`` needs a hub token (or browser session) with the service's access
scope (:class:`~twinhub.services.hubauth.HubAuthMiddleware`).  Errors are JSON
``{"code": status, "description": message}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from typing import Any

from ..datalake.sources import SourceError, href_from_cache_path, make_sources
from ..hubauth import HubAuthMiddleware, Receive, Scope, Send, header, send_json
from .store import CacheError, CacheStore, Handle, TooLarge
from .upstream import fetcher, make_client

log = logging.getLogger("twinhub.cache")

PUBLIC_PATHS = ("health",)
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def load_config(path: str | None = None) -> dict[str, Any]:
    path = path or os.environ.get("TWINHUB_CACHE_CONFIG", "")
    if not path:
        raise RuntimeError("TWINHUB_CACHE_CONFIG is not set: it names the cache's config file")
    with open(path) as f:
        return json.load(f)


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range; None: serve the whole object (no or
    several ranges, which RFC 9110 lets a server ignore); ValueError: unsatisfiable."""
    m = RANGE_RE.match(value.strip()) if value else None
    if not m or m.group(1) == m.group(2) == "":
        return None
    first, last = m.groups()
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0:
            raise ValueError("empty suffix range")
        return max(size - n, 0), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        raise ValueError(f"range {value!r} outside the object's {size} bytes")
    return start, end


class CacheApp:
    """Routes requests under ``prefix`` (see the module docstring)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.prefix = "/" + cfg.get("prefix", "/services/cache/").strip("/") + "/"
        self.sources = {s.name: s for s in make_sources(cfg.get("sources", []))}
        self.store = CacheStore(
            cfg["directory"],
            max_size=int(cfg["max_size"]),
            max_age=float(cfg.get("max_age", 0)),
            max_object=int(cfg.get("max_object") or cfg["max_size"]),
        )
        self.fetch_timeout = float(cfg.get("fetch_timeout", 60))
        self.client = None
        self._sweeper: asyncio.Task | None = None

    # -- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        if not path.startswith(self.prefix):
            await send_json(send, 404, {"code": 404, "description": "not found"})
            return
        rel = path[len(self.prefix) :]
        if method not in ("GET", "HEAD"):
            await send_json(
                send,
                405,
                {"code": 405, "description": f"{method} not allowed: the cache is read-only"},
                headers=[(b"allow", b"GET, HEAD")],
            )
            return
        if rel == "health":
            await send_json(send, 200, {"status": "ok"})
        elif rel == "stats":
            await send_json(send, 200, self.store.stats())
        elif rel == "metrics":
            await self._metrics(send)
        elif rel.startswith("assets/"):
            await self._asset(scope, receive, send)
        else:
            await send_json(send, 404, {"code": 404, "description": f"no such endpoint: {rel}"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.client = make_client(self.fetch_timeout)
                if self.store.max_age > 0:
                    self._sweeper = asyncio.create_task(self._sweep())
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self._sweeper:
                    self._sweeper.cancel()
                await self.store.close()
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _sweep(self) -> None:
        """Drop expired objects now and then (a lookup also refuses an expired one)."""
        interval = min(300.0, max(self.store.max_age / 4, 1.0))
        while True:
            await asyncio.sleep(interval)
            n = self.store.expire()
            if n:
                log.info("expired %d cached object(s)", n)

    async def _metrics(self, send: Send) -> None:
        from .metrics import render

        body, ctype = render(self.store.stats())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # -- assets ----------------------------------------------------------------------------
    async def _asset(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The raw (still percent-encoded) path: decoding is href_from_cache_path's job, so
        # that an encoded '/' or '..' is judged as what it is.
        raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        rel = raw.split("?", 1)[0][len(self.prefix) + len("assets/") :]
        query = scope.get("query_string", b"").decode("latin-1")
        name = rel.split("/", 1)[0]
        if name not in self.sources:
            known = ", ".join(sorted(self.sources)) or "none configured"
            await send_json(
                send, 404, {"code": 404, "description": f"unknown source {name!r} ({known})"}
            )
            return
        try:
            url = href_from_cache_path(self.sources, rel, query)
        except SourceError as e:
            await send_json(send, 400, {"code": 400, "description": str(e)})
            return
        source = self.sources[name]
        assert self.client is not None, "lifespan not started"
        key = f"{name} {url}"  # two sources may name one origin with different credentials
        try:
            handle = await self.store.get(key, fetcher(self.client, source, url))
        except TooLarge:
            await self._pass_through(scope, receive, send, source, url)
            return
        except CacheError as e:
            log.warning("%s: %s", url, e.message)
            await send_json(send, e.status, {"code": e.status, "description": e.message})
            return
        await self._serve(scope, receive, send, handle)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, handle: Handle) -> None:
        meta = handle.meta
        status, start, end = 200, 0, meta.size
        headers = [
            (b"content-type", meta.content_type.encode("latin-1")),
            (b"x-twinhub-cache", b"hit" if handle.hit else b"miss"),
            (b"cache-control", b"private, max-age=0"),
        ]
        if meta.etag:
            headers.append((b"etag", meta.etag.encode("latin-1")))
        if meta.last_modified:
            headers.append((b"last-modified", meta.last_modified.encode("latin-1")))
        if meta.size is not None:
            headers.append((b"accept-ranges", b"bytes"))
            try:
                rng = parse_range(header(scope, b"range"), meta.size)
            except ValueError as e:
                handle.close()
                await send_json(
                    send,
                    416,
                    {"code": 416, "description": str(e)},
                    headers=[(b"content-range", f"bytes */{meta.size}".encode())],
                )
                return
            if rng is not None:
                status, (start, end) = 206, rng
                cr = f"bytes {start}-{end - 1}/{meta.size}"
                headers.append((b"content-range", cr.encode()))
            headers.append((b"content-length", str(end - start).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope.get("method") == "HEAD":
            handle.close()
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(receive, send, handle.read(start, end))

    async def _stream(self, receive: Receive, send: Send, blocks: Any) -> None:
        """Send ``blocks``; stop reading when the client hangs up.  A failure after the
        headers went out propagates: uvicorn then cuts the connection, so the client sees
        a short body instead of a complete-looking one."""
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        served = 0
        try:
            async for block in blocks:
                if gone.is_set():
                    break
                await send({"type": "http.response.body", "body": block, "more_body": True})
                served += len(block)
            else:
                await send({"type": "http.response.body", "body": b""})
        except CacheError as e:
            log.warning("transfer cut: %s", e.message)
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await blocks.aclose()
            self.store.count_event(bytes_served=served)

    async def _pass_through(
        self, scope: Scope, receive: Receive, send: Send, source: Any, url: str
    ) -> None:
        """An object too large to keep: streamed straight from the origin, Range forwarded."""
        assert self.client is not None
        fetch = fetcher(self.client, source, url, range_header=header(scope, b"range"))
        started = False
        try:
            async with fetch() as up:
                headers = [
                    (b"content-type", up.meta.content_type.encode("latin-1")),
                    (b"x-twinhub-cache", b"bypass"),
                    (b"accept-ranges", b"bytes"),
                ]
                if up.meta.size is not None:
                    headers.append((b"content-length", str(up.meta.size).encode()))
                if up.content_range:
                    headers.append((b"content-range", up.content_range.encode("latin-1")))
                await send({"type": "http.response.start", "status": up.status, "headers": headers})
                started = True
                if scope.get("method") == "HEAD":
                    await send({"type": "http.response.body", "body": b""})
                    return
                await self._stream(receive, send, up.chunks)
        except CacheError as e:
            if started:
                raise
            await send_json(send, e.status, {"code": e.status, "description": e.message})


def create_app(config: dict[str, Any] | None = None) -> Any:
    """The cache service: :class:`CacheApp` behind hub authentication (all but health)."""
    cfg = config or load_config()
    app = CacheApp(cfg)
    return HubAuthMiddleware(app, prefix=app.prefix, public_paths=PUBLIC_PATHS)

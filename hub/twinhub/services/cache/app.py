"""The cache service process: an ASGI app under uvicorn, behind hub authentication.

``uvicorn --factory twinhub.services.cache.app:create_app`` (the supervisor's ``cache``
component).  Its config file (``$TWINHUB_CACHE_CONFIG``, written by
:class:`twinhub.services.cache.CachePart`) holds the sources (with their secret headers), the
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
``{"code": status, "description": message}``, a failure of the service itself included.

Cached bytes are served from the platform's own origin, so an asset answer can never be a
page that runs: every one carries ``X-Content-Type-Options: nosniff`` and
``Content-Security-Policy: sandbox; default-src 'none'``, and a media type outside
:data:`DATA_TYPES` (HTML, SVG, XML, JavaScript...) is sent as application/octet-stream.
``X-Twinhub-Cache`` (hit/miss/bypass) goes to admins only: it tells whether someone else
read an asset.  ``HEAD`` of an object not cached asks the source (HEAD), downloading
nothing.  Asset URLs take no query string (400): one object would otherwise be many keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from ..asgi import Receive, RequestLimitsMiddleware, Scope, Send, header, send_error, send_json
from ..datalake.sources import SourceError, href_from_cache_path, make_sources
from ..hubauth import HubAuthMiddleware, acts_as_admin
from ..service_config import read_service_config
from . import CachePart
from .metrics import render
from .store import CacheError, CacheStore, Handle, TooLarge
from .upstream import clean_header, fetcher, head, make_client

log = logging.getLogger("twinhub.cache")

PUBLIC_PATHS = ("health",)
#: The cache is read-only: requests carry no body worth the name.
MAX_BODY_BYTES = 64 * 1024
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def load_config(path: str | None = None) -> dict[str, Any]:
    """The config file ``twinhub up`` wrote for this service (``$TWINHUB_CACHE_CONFIG``)."""
    return read_service_config(CachePart.config_env(), path)


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
            max_flights=int(cfg.get("max_downloads", 8)),
            max_user_flights=int(cfg.get("max_user_downloads", 4)),
            admit_wait=float(cfg.get("download_wait", 30)),
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
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._route(scope, receive, tracked)
        except Exception as e:
            if started:  # the body was under way: uvicorn cuts the connection
                raise
            # a full disk, a damaged file...: a JSON answer naming it, not a bare 500
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            what = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            await _error(
                send, 500, f"the cache service failed: {type(e).__name__}: {what} (see its log)"
            )

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        if not path.startswith(self.prefix):
            await send_error(send, 404, "not found")
            return
        rel = path[len(self.prefix) :]
        if method not in ("GET", "HEAD"):
            await send_error(
                send,
                405,
                f"{method} not allowed: the cache is read-only",
                [(b"allow", b"GET, HEAD")],
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
            await send_error(send, 404, f"no such endpoint: {rel}")

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
        raw = raw.split("?", 1)[0]
        base = self.prefix + "assets/"
        if not raw.startswith(base):  # the decoded path matched: part of it was encoded
            await _error(send, 400, f"percent-encoded characters in {base!r}: write it plainly")
            return
        if scope.get("query_string"):
            # a query would make one object many keys (and downloads); asset hrefs with one
            # are not served through the cache (docs/cache.md)
            await _error(send, 400, "asset URLs take no query string: remove it")
            return
        rel = raw[len(base) :]
        name = rel.split("/", 1)[0]
        if name not in self.sources:
            known = ", ".join(sorted(self.sources)) or "none configured"
            await _error(send, 404, f"unknown source {name!r} ({known})")
            return
        try:
            url = href_from_cache_path(self.sources, rel)
        except SourceError as e:
            await _error(send, 400, str(e))
            return
        source = self.sources[name]
        assert self.client is not None, "lifespan not started"
        user = (scope.get("state") or {}).get("hub_user") or {}
        # whether an asset was cached tells who else read it: only admins are told (an
        # admin token narrowed to the cache's access scope is an ordinary user's)
        tell = acts_as_admin(user)
        key = f"{name} {url}"  # two sources may name one origin with different credentials
        try:
            if scope.get("method") == "HEAD" and not self.store.has(key):
                await self._head(send, source, key, url, tell)
                return
            handle = await self.store.get(
                key, fetcher(self.client, source, url), user.get("name", "")
            )
        except TooLarge:
            await self._pass_through(scope, receive, send, source, url, tell)
            return
        except CacheError as e:
            log.warning("%s: %s", url, e.message)
            await _error(send, e.status, e.message)
            return
        await self._serve(scope, receive, send, handle, tell)

    async def _head(self, send: Send, source: Any, key: str, url: str, tell: bool) -> None:
        """HEAD of an object not cached: the source's HEAD, no download (a client's HEAD
        must not cost the cache a whole object)."""
        refused = self.store.refusal(key)
        if refused is not None and not isinstance(refused, TooLarge):
            raise refused
        assert self.client is not None
        meta = await head(self.client, source, url)
        headers = asset_headers(meta.content_type, "miss" if tell else "")
        if meta.size is not None:
            headers.append((b"content-length", str(meta.size).encode()))
            headers.append((b"accept-ranges", b"bytes"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, handle: Handle, tell: bool
    ) -> None:
        meta = handle.meta
        status, start, end = 200, 0, meta.size
        headers = asset_headers(meta.content_type, ("hit" if handle.hit else "miss") * tell)
        headers.append((b"cache-control", b"private, max-age=0"))
        for name, value in ((b"etag", meta.etag), (b"last-modified", meta.last_modified)):
            if clean_header(value):  # rows indexed before headers were cleaned at fetch
                headers.append((name, value.encode()))
        if meta.size is not None:
            headers.append((b"accept-ranges", b"bytes"))
            try:
                rng = parse_range(header(scope, b"range"), meta.size)
            except ValueError as e:
                handle.close()
                await _error(
                    send, 416, str(e), [(b"content-range", f"bytes */{meta.size}".encode())]
                )
                return
            if rng is not None:
                status, (start, end) = 206, rng
                cr = f"bytes {start}-{end - 1}/{meta.size}"
                headers.append((b"content-range", cr.encode()))
            headers.append((b"content-length", str(end - start).encode()))
        if scope.get("method") == "HEAD":
            handle.close()
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
        except BaseException:
            handle.close()
            raise
        await self._stream(receive, send, handle.read(start, end), on_gone=handle.abandon)

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        blocks: Any,
        on_gone: Callable[[], None] | None = None,
    ) -> None:
        """Send ``blocks``; stop reading when the client hangs up (``on_gone`` is called at
        once: a reader leaving a download).  A failure after the headers went out
        propagates: uvicorn then cuts the connection, so the client sees a short body
        instead of a complete-looking one."""
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            if on_gone is not None:
                on_gone()

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
            if gone.is_set():  # the download this reader left was cancelled: nobody to tell
                return
            log.warning("transfer cut: %s", e.message)
            raise
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await blocks.aclose()
            self.store.count_event(bytes_served=served)

    async def _pass_through(
        self, scope: Scope, receive: Receive, send: Send, source: Any, url: str, tell: bool
    ) -> None:
        """An object too large to keep: streamed straight from the origin, Range forwarded
        (HEAD: the origin's HEAD)."""
        assert self.client is not None
        fetch = fetcher(self.client, source, url, range_header=header(scope, b"range"))
        started = False
        try:
            if scope.get("method") == "HEAD":
                meta = await head(self.client, source, url)
                headers = asset_headers(meta.content_type, "bypass" * tell)
                if meta.size is not None:
                    headers.append((b"content-length", str(meta.size).encode()))
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
            async with fetch() as up:
                headers = asset_headers(up.meta.content_type, "bypass" * tell)
                headers.append((b"accept-ranges", b"bytes"))
                if up.meta.size is not None:
                    headers.append((b"content-length", str(up.meta.size).encode()))
                if up.content_range:
                    headers.append((b"content-range", up.content_range.encode()))
                await send({"type": "http.response.start", "status": up.status, "headers": headers})
                started = True
                await self._stream(receive, send, up.chunks)
        except CacheError as e:
            if started:
                raise
            await _error(send, e.status, e.message)


#: Media types served as the source gave them; any other is served as
#: application/octet-stream.  Data formats only: nothing a browser runs or renders as a
#: document (HTML, SVG, XML, JavaScript...), as cached bytes come from the platform's origin.
DATA_TYPES = frozenset(
    {
        "application/octet-stream",
        "application/json",
        "application/geo+json",
        "application/x-netcdf",
        "application/netcdf",
        "application/x-hdf5",
        "application/x-hdf",
        "application/grib",
        "application/x-grib",
        "application/x-grib2",
        "application/wmo-grib",
        "application/vnd+zarr",
        "application/vnd.zarr",
        "application/x-zarr",
        "application/vnd.apache.parquet",
        "application/x-parquet",
        "application/zip",
        "application/gzip",
        "text/plain",
        "text/csv",
        "image/png",
        "image/jpeg",
        "image/tiff",
    }
)
#: On every asset answer: no sniffing a type the browser would run, and, should it render
#: one anyway, a sandbox with nothing allowed (no script, no same-origin access).
SAFE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"sandbox; default-src 'none'"),
]


def safe_content_type(value: str) -> str:
    """The media type of ``value`` (parameters dropped) if it is a data type, else
    application/octet-stream."""
    media = value.split(";", 1)[0].strip().lower()
    return media if media in DATA_TYPES else "application/octet-stream"


def asset_headers(content_type: str, cache_state: str = "") -> list[tuple[bytes, bytes]]:
    """Content type and security headers of an asset answer (``X-Twinhub-Cache`` when
    ``cache_state`` is given: admins only)."""
    out = [(b"content-type", safe_content_type(content_type).encode()), *SAFE_HEADERS]
    if cache_state:
        out.append((b"x-twinhub-cache", cache_state.encode()))
    return out


async def _error(send: Send, status: int, message: str, headers: Any = ()) -> None:
    await send_error(send, status, message, [*SAFE_HEADERS, *headers])


def create_app(config: dict[str, Any] | None = None) -> Any:
    """The cache service: :class:`CacheApp` behind hub authentication (all but health),
    behind the platform's request limits (:mod:`twinhub.services.asgi`)."""
    cfg = config or load_config()
    app = CacheApp(cfg)
    authed = HubAuthMiddleware(app, prefix=app.prefix, public_paths=PUBLIC_PATHS)
    return RequestLimitsMiddleware(authed, max_body_bytes=MAX_BODY_BYTES)

"""What every ASGI service of the platform shares about requests: bounds checked *before* any
parser runs, and JSON error bodies.

Parsers fed by users (JSON, CQL2, GeoJSON) recurse per nesting level: a deep enough input
exhausts the C stack (SIGSEGV, the whole process gone) or Python's recursion limit (a 500).
The depth is therefore counted here by a flat scan that never recurses, and a request over
the limit is refused with a 4xx before it reaches a parser.

:class:`RequestLimitsMiddleware`, outermost in every service (stac, projects, cache):

- header block over ``max_header_bytes`` (or over ``MAX_HEADERS`` headers): 431;
- a path or query that is not UTF-8 once percent-decoded, or holds control characters
  (NUL...), more than ``MAX_QUERY_FIELDS`` parameters, a parameter whose JSON nests deeper
  than ``max_json_depth``: 400;
- a body over ``max_body_bytes``: 413 (a Content-Length over it before keeping a byte,
  otherwise as soon as the chunks read pass it; the rest is read and dropped, up to
  ``DRAIN_BYTES``, so that the proxy's connection stays usable); a body whose JSON nests
  deeper than ``max_json_depth``: 400. The body read is replayed downstream and left in
  ``scope["state"]["body"]`` so that inner layers need not read it again (they take it
  with :func:`read_body`);
- a refusal anywhere in a service is :class:`BadRequest` (message, status), answered by
  :func:`send_refusal`;
- every 4xx/5xx answer goes out as JSON ``{"code": status, "description": message}``:
  Starlette's plain-text 404/405/500, FastAPI's ``{"detail": ...}`` 422 included (bodies that
  already have ``code`` and ``description`` pass as they are);
- an uncaught exception becomes a complete JSON 500 (logged with its traceback). One raised
  after a complete answer (Starlette's ServerErrorMiddleware re-raises after its 500) is
  logged and swallowed: passed on, uvicorn would close a connection the proxy already took
  back for its next request (the next user's request then failed with 503, "socket hang up").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

log = logging.getLogger("twinhub.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Deepest nesting of JSON arrays/objects accepted in a request body or parameter.
MAX_JSON_DEPTH = 64
#: Bytes of the whole header block (names, values, separators) a service accepts; uvicorn
#: reads up to 64 KiB (``uvicorn_argv``), the proxy in front forwards at most 16 KiB.
MAX_HEADER_BYTES = 32 * 1024
#: Headers in one request.
MAX_HEADERS = 100
#: Request body bytes, unless a service says otherwise.
MAX_BODY_BYTES = 16 * 1024 * 1024
#: Query parameters in one request.
MAX_QUERY_FIELDS = 200
#: A refused body up to this size is still read (and dropped) so that the connection stays
#: in step; beyond it, or after DRAIN_WAIT seconds without a byte, the connection is closed.
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_WAIT = 5.0
#: An error body longer than this is passed on as it is rather than rewritten to JSON.
MAX_ERROR_BODY = 64 * 1024

# C0 controls and DEL; a query value may hold tab, CR and LF (CQL2 text spans lines).
_PATH_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_QUERY_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# -- JSON depth ------------------------------------------------------------------------------
# Escapes first (an escaped backslash before an escaped quote), then whole strings: what is
# left of a JSON text outside its strings. Then every byte but the brackets goes, and the
# two kinds become one (depth is all that counts; a mismatch is the parser's to refuse).
_STRING = re.compile(rb'"[^"]*"')
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_SYNTAX = bytes(b for b in range(256) if b not in b'[]{}"')
#: Texts longer than this are scanned with numpy (linear whatever the nesting); shorter ones
#: by peeling passes, each O(size), at most ``stop_at + 1`` (or _MAX_PASSES) of them.
_NUMPY_FROM = 256 * 1024
_MAX_PASSES = 128
_BLOCK = 1 << 20


def json_depth(raw: bytes | str, stop_at: int | None = None) -> int:
    """Greatest nesting of ``[``/``{`` in a JSON text, ignoring brackets inside strings.

    A flat scan (no recursion, no parse): safe on any input, valid JSON or not (brackets
    of a malformed text may count more, never fewer, which only errs towards refusing).
    With ``stop_at`` it may return as soon as that depth is known to be exceeded.

    Everything runs at C speed: about 0.1 s for a 16 MB body, however it nests
    (bench/asgi_limits.py measures it).
    """
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else _as_utf8(raw)
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    if len(data) > _NUMPY_FROM:
        return _depth_numpy(data.translate(None, _NOT_SYNTAX), stop_at)
    if b'"' in data:
        data = _STRING.sub(b"", data)
    s = data.translate(_BRACKETS_ONLY, _NOT_BRACKETS)
    limit = _MAX_PASSES if stop_at is None else min(stop_at + 1, _MAX_PASSES)
    passes = 0
    while s:
        # each pass removes every innermost pair: the number of passes is the depth
        t = s.replace(b"[]", b"")
        if len(t) == len(s):
            break
        s, passes = t, passes + 1
        if passes >= limit:
            if stop_at is not None and passes > stop_at:
                return passes
            return passes + _depth_numpy(s, None)
    # What is left has no "[]": closes without opens, then opens never closed, each of
    # which may hold a forest as high as ``passes``.
    return passes + s.count(b"[")


def _as_utf8(raw: bytes | bytearray | memoryview) -> bytes:
    """``raw`` as UTF-8: ``json.loads`` of bytes also reads UTF-16 and UTF-32 (it detects
    the encoding from the first bytes), whose quote and bracket bytes are not where a byte
    scan looks for them. Undecodable bytes stay as they are: no parser would accept them."""
    data = bytes(raw)
    encoding = json.detect_encoding(data)
    if encoding in ("utf-8", "utf-8-sig"):
        return data
    try:
        return data.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
    except UnicodeError:
        return data


def _depth_numpy(data: bytes, stop_at: int | None) -> int:
    """The same scan, vectorised over ``data`` (brackets and quotes only, escapes gone): a
    walk of +1 per opening and -1 per closing bracket outside strings (a quote's parity
    says which bytes are inside one), reflected at 0. In blocks, to bound memory."""
    # Here, not at the top: only large bodies need it, and services start faster without.
    import numpy as np

    steps = np.zeros(256, dtype=np.int8)
    steps[[0x5B, 0x7B]], steps[[0x5D, 0x7D]] = 1, -1
    a = np.frombuffer(data, dtype=np.uint8)
    parity = level = low = deepest = 0
    for start in range(0, len(a), _BLOCK):
        b = a[start : start + _BLOCK]
        inside = np.bitwise_xor.accumulate(b == 0x22, dtype=np.uint8) ^ np.uint8(parity)
        parity = int(inside[-1])
        step = steps[b]
        step[inside.view(bool)] = 0
        walk = np.cumsum(step, dtype=np.int32) + level
        floor = np.minimum(np.minimum.accumulate(walk), low)
        deepest = max(deepest, int((walk - floor).max()))
        level, low = int(walk[-1]), int(floor[-1])
        if stop_at is not None and deepest > stop_at:
            break
    return deepest


# -- small ASGI helpers ----------------------------------------------------------------------
def header(scope: Scope, name: bytes) -> str:
    """The first value of header ``name`` (lower case), latin-1 decoded; "" if absent."""
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return ""


def error_body(status: int, description: str) -> dict[str, Any]:
    return {"code": status, "description": description}


#: A forwarded host that may be written into links (a name or an address, with a port).
_LINK_HOST = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,300}")


def service_url(request: Any, prefix: str) -> str:
    """``scheme://host<prefix>`` as the client reached the service (the proxy's forwarded
    headers first), for links in API documents; the bare prefix when the host is not one to
    write into links."""
    h = request.headers
    proto = h.get("x-forwarded-proto", "").split(",")[0].strip() or request.url.scheme
    host = h.get("x-forwarded-host", "").split(",")[0].strip() or h.get("host", "")
    if proto not in ("http", "https") or not _LINK_HOST.fullmatch(host):
        return prefix
    return f"{proto}://{host}{prefix}"


async def send_json(send: Send, status: int, body: Any, headers: Any = ()) -> None:
    """A complete JSON answer (``headers``: extra (name, value) byte pairs)."""
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def send_error(send: Send, status: int, description: str, headers: Any = ()) -> None:
    await send_json(send, status, error_body(status, description), headers)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) in one message, then whatever the
    original ``receive`` gives (``http.disconnect`` when the client goes)."""
    sent = False

    async def _receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return _receive


def request_body(scope: Scope) -> bytes | None:
    """The body :class:`RequestLimitsMiddleware` read (None: not read there)."""
    return (scope.get("state") or {}).get("body")


class BadRequest(Exception):
    """A request a service refuses: answered as JSON ``{"code": status, "description":
    message}`` (see :func:`send_refusal`). The one such class of every service (the request
    limits here, the STAC guard and federation, their parsers' bounds).

    ``close``: the body was left unread, so the connection cannot carry another request.
    """

    def __init__(self, message: str, status: int = 400, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = [(b"connection", b"close")] if close else []


async def send_refusal(send: Send, e: BadRequest, headers: Any = ()) -> None:
    """The JSON answer to a refused request."""
    await send_error(send, e.status, e.message, [*e.headers, *headers])


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The request's whole body: the one :class:`RequestLimitsMiddleware` already read, or
    (an app used without it) read here, refused with 413 above ``max_bytes``. The caller
    passes it on with :func:`replay`."""
    body = request_body(scope)
    if body is not None:
        # Read under the outer layer's cap, which need not be this caller's.
        if len(body) > max_bytes:
            raise BadRequest(_too_large(max_bytes), 413)
        return body
    body, size, _more = await _receive_body(receive, max_bytes)
    if size > max_bytes:
        raise BadRequest(_too_large(max_bytes), 413)
    return body


async def _receive_body(receive: Receive, max_bytes: int) -> tuple[bytes, int, bool]:
    """``(body, bytes received, more to come)``: read to the end, or until past
    ``max_bytes`` (then the body is incomplete and ``more`` says whether the client is
    still sending)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise BadRequest("the client went away before sending the whole body")
        data = msg.get("body", b"")
        size += len(data)
        more = bool(msg.get("more_body"))
        if size > max_bytes:
            return b"", size, more
        chunks.append(data)
        if not more:
            return b"".join(chunks), size, False


def _too_large(cap: int) -> str:
    shown = f"{cap // (1024 * 1024)} MiB" if cap >= 1024 * 1024 else f"{cap} bytes"
    return f"request body larger than {shown} (the limit)"


# -- the middleware --------------------------------------------------------------------------
class RequestLimitsMiddleware:
    """Bounds on every request and JSON errors on every answer (see the module docstring).

    ``raw_body_types``: media types whose bodies are not JSON (uploads): not depth-checked.
    Every other body is, whatever its Content-Type: the services parse JSON without looking.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_json_depth: int = MAX_JSON_DEPTH,
        raw_body_types: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.raw_body_types = raw_body_types

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = _JsonErrors(send, scope.get("method") == "HEAD")
        try:
            self._check_head(scope)
            receive = await self._read_body(scope, receive)
        except BadRequest as e:
            await send_refusal(send, e)
            return
        try:
            await self.app(scope, receive, answer)
        except Exception as e:
            if not answer.started:
                log.exception("%s %s failed", scope.get("method"), scope.get("path"))
                await send_error(send, 500, f"the service failed: {type(e).__name__} (see its log)")
            elif answer.complete:
                log.exception("%s %s failed after its answer", scope.get("method"), scope["path"])
            else:  # the body was under way: uvicorn cuts the connection (a short body)
                raise

    # -- checks ----------------------------------------------------------------------------
    def _check_head(self, scope: Scope) -> None:
        headers = scope.get("headers", [])
        size = sum(len(k) + len(v) + 4 for k, v in headers)
        if size > self.max_header_bytes or len(headers) > MAX_HEADERS:
            raise BadRequest(
                f"request headers too large: {len(headers)} headers, {size} bytes (at most "
                f"{MAX_HEADERS} headers, {self.max_header_bytes} bytes)",
                431,
            )
        raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8")
        try:
            path = unquote_to_bytes(raw_path.split(b"?", 1)[0]).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the path is not UTF-8 once percent-decoded") from None
        if _PATH_CONTROLS.search(path):
            raise BadRequest("control characters (such as NUL) are not allowed in paths")
        qs = scope.get("query_string", b"")
        if not qs:
            return
        try:
            fields = parse_qsl(
                qs.decode("latin-1"),
                keep_blank_values=True,
                encoding="utf-8",
                errors="strict",
                max_num_fields=MAX_QUERY_FIELDS,
            )
        except UnicodeDecodeError:
            raise BadRequest("the query string is not UTF-8 once percent-decoded") from None
        except ValueError:
            raise BadRequest(f"too many query parameters (at most {MAX_QUERY_FIELDS})") from None
        for key, value in fields:
            if _QUERY_CONTROLS.search(key) or _QUERY_CONTROLS.search(value):
                raise BadRequest(
                    "control characters (such as NUL) are not allowed in query parameter "
                    f"{key[:64]!r}"
                )
            if json_depth(value, stop_at=self.max_json_depth) > self.max_json_depth:
                raise BadRequest(
                    f"query parameter {key[:64]!r} nests deeper than {self.max_json_depth} "
                    "levels (the limit)"
                )

    async def _read_body(self, scope: Scope, receive: Receive) -> Receive:
        length = header(scope, b"content-length")
        chunked = "chunked" in header(scope, b"transfer-encoding").lower()
        if not chunked and length in ("", "0"):
            return receive  # nothing to read (GET, HEAD, DELETE...)
        if length and not chunked:
            if not length.isdigit():
                raise BadRequest(f"bad Content-Length {length[:32]!r}")
            if int(length) > self.max_body_bytes:
                drained = int(length) <= DRAIN_BYTES and await _drain(receive, 0)
                raise BadRequest(self._too_large(), 413, close=not drained)
        body, size, more = await _receive_body(receive, self.max_body_bytes)
        if size > self.max_body_bytes:
            drained = not more or await _drain(receive, size)
            raise BadRequest(self._too_large(), 413, close=not drained)
        media = header(scope, b"content-type").split(";", 1)[0].strip().lower()
        deep = (
            body
            and media not in self.raw_body_types
            and json_depth(body, stop_at=self.max_json_depth) > self.max_json_depth
        )
        if deep:
            raise BadRequest(
                f"the body's JSON nests deeper than {self.max_json_depth} levels (the limit)"
            )
        scope.setdefault("state", {})["body"] = body
        return replay(body, receive)

    def _too_large(self) -> str:
        return _too_large(self.max_body_bytes)


async def _drain(receive: Receive, size: int) -> bool:
    """Read and drop the rest of a refused body (as nginx's lingering close does): answered
    while the proxy is still sending it, the refusal would race the proxy's writes, and
    the proxy would turn the lost race into a 503. True if the body ended; False if the
    client went, stalled (``DRAIN_WAIT`` seconds) or sent more than ``DRAIN_BYTES``: the
    connection is then closed after the answer."""
    while size <= DRAIN_BYTES:
        try:
            msg = await asyncio.wait_for(receive(), DRAIN_WAIT)
        except TimeoutError:
            return False
        if msg["type"] == "http.disconnect":
            return False
        size += len(msg.get("body", b""))
        if not msg.get("more_body"):
            return size <= DRAIN_BYTES
    return False


class _JsonErrors:
    """A ``send`` that turns every 4xx/5xx answer that is not already JSON
    ``{"code", "description"}`` into one, keeping its status and other headers."""

    def __init__(self, send: Send, head: bool) -> None:
        self.send = send
        self.head = head
        self.started = False
        self.complete = False
        self._held: Message | None = None  # an error's start, while its body is read
        self._chunks: list[bytes] = []
        self._size = 0

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if message["status"] >= 400 and not self.head and _textual(message):
                self._held = message  # not started yet: an exception still gets a JSON 500
                return
            self.started = True
        elif kind == "http.response.body" and self._held is not None:
            body = message.get("body", b"")
            self._chunks.append(body)
            self._size += len(body)
            more = bool(message.get("more_body"))
            if self._size > MAX_ERROR_BODY:  # not an error message: pass it on as it is
                await self._flush_held(more)
            elif not more:
                await self._send_rewritten()
            return
        await self.send(message)
        if kind == "http.response.body" and not message.get("more_body"):
            self.complete = True

    async def _flush_held(self, more: bool) -> None:
        held, chunks = self._held, self._chunks
        self._held, self._chunks = None, []
        assert held is not None
        self.started = True
        await self.send(held)
        await self.send({"type": "http.response.body", "body": b"".join(chunks), "more_body": more})
        self.complete = not more

    async def _send_rewritten(self) -> None:
        held, raw = self._held, b"".join(self._chunks)
        self._held, self._chunks = None, []
        assert held is not None
        status = held["status"]
        doc = _error_doc(status, raw)
        self.started = True
        if doc is None:  # already ours (or STAC's: code and description)
            await self.send(held)
            await self.send({"type": "http.response.body", "body": raw})
        else:
            keep = [
                (k, v)
                for k, v in held.get("headers", [])
                if k.lower() not in (b"content-type", b"content-length")
            ]
            await send_json(self.send, status, doc, keep)
        self.complete = True


def _textual(start: Message) -> bool:
    """Whether an answer's body is a message (text, JSON, none) rather than data."""
    for k, v in start.get("headers", []):
        if k.lower() == b"content-encoding" and v.strip().lower() not in (b"", b"identity"):
            return False  # compressed (stac-fastapi's brotli): a rewrite would break it
    for k, v in start.get("headers", []):
        if k.lower() == b"content-type":
            media = v.split(b";", 1)[0].strip().lower()
            return media.startswith(b"text/") or media.endswith(b"json")
    return True


def _error_doc(status: int, raw: bytes) -> dict[str, Any] | None:
    """The JSON error for an answer's body; None if it already is one."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        doc = json.loads(text) if text[:1] in ("{", "[") else None
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        if "code" in doc and "description" in doc:
            return None
        detail = doc.get("detail", doc.get("message", doc.get("description")))
        if isinstance(detail, list):  # FastAPI's validation errors
            text = "; ".join(_validation_message(d) for d in detail[:20])
        elif detail is not None:
            text = detail if isinstance(detail, str) else json.dumps(detail)
    if not text:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = f"error {status}"
    return error_body(status, text[:2000])


def _validation_message(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    where = ".".join(str(x) for x in d.get("loc", ()) if x != "body")
    return f"{where}: {d.get('msg', '')}" if where else str(d.get("msg", ""))

"""What the STAC API checks before stac-fastapi-pgstac sees a request.

- Bad input gets a 400 naming the problem: a ``limit`` above the page-size cap, a bbox that
  is not 4 or 6 numbers within lon/lat bounds, ``..`` path segments, bodies that are not
  JSON objects; bodies above the size cap get 413.
- Ownership: a collection created by a user belongs to them (``twinhub:owner``, set here,
  whatever the body says). Only its owner (or a hub admin) may change it or add, replace
  and delete its items; collections without an owner (the lake's own) are admins' only.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any
from urllib.parse import parse_qs

from ..hubauth import Receive, Scope, Send, send_json

OWNER = "twinhub:owner"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_COLLECTION_PATH = re.compile(r"^collections/([^/]+)(?:/(items|bulk_items)(?:/([^/]+))?)?/?$")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_bbox(value: Any) -> list[float]:
    """A bbox as 4 or 6 finite numbers, lon in [-180, 180], lat in [-90, 90], south <= north.

    west > east is allowed: the box crosses the antimeridian.
    """
    if isinstance(value, str):
        parts = [p for p in value.split(",")]
    elif isinstance(value, list | tuple):
        parts = list(value)
    else:
        raise BadRequest(f"bbox must be 4 or 6 numbers, got {value!r}")
    if len(parts) not in (4, 6):
        raise BadRequest(f"bbox must have 4 or 6 numbers, got {len(parts)}")
    try:
        nums = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise BadRequest(f"bbox must be numbers, got {value!r}") from None
    if not all(math.isfinite(n) for n in nums):
        raise BadRequest(f"bbox must be finite numbers, got {value!r}")
    half = len(nums) // 2
    west, south, east, north = nums[0], nums[1], nums[half], nums[half + 1]
    for name, v in (("west", west), ("east", east)):
        if not -180 <= v <= 180:
            raise BadRequest(f"bbox {name} longitude {v} is outside [-180, 180]")
    for name, v in (("south", south), ("north", north)):
        if not -90 <= v <= 90:
            raise BadRequest(f"bbox {name} latitude {v} is outside [-90, 90]")
    if south > north:
        raise BadRequest(f"bbox south ({south}) is north of its north ({north})")
    return nums


def check_limit(value: Any, maximum: int) -> int:
    try:
        n = int(value)
        if isinstance(value, float) and n != value:
            raise ValueError
    except (TypeError, ValueError):
        raise BadRequest(f"limit must be a whole number, got {value!r}") from None
    if n < 1:
        raise BadRequest(f"limit must be at least 1, got {n}")
    if n > maximum:
        raise BadRequest(
            f"limit {n} is above the largest page this API serves ({maximum}); "
            "ask for fewer and follow the 'next' links"
        )
    return n


class GuardMiddleware:
    def __init__(self, app: Any, *, prefix: str, max_page_size: int, max_body_bytes: int):
        self.app = app
        self.prefix = "/" + prefix.strip("/") + "/"
        self.max_page_size = max_page_size
        self.max_body_bytes = max_body_bytes

    def _relative(self, path: str) -> str:
        return path[len(self.prefix) :] if path.startswith(self.prefix) else path.lstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._check(scope, receive)
        except BadRequest as e:
            await send_json(send, e.status, {"code": e.status, "description": str(e)})
            return
        await self.app(scope, receive, send)

    async def _check(self, scope: Scope, receive: Receive) -> Receive:
        _normalize_forwarded_host(scope)
        path = self._relative(scope.get("path", ""))
        raw = scope.get("raw_path", b"").decode("latin-1").lower()
        segments = path.split("/")
        if ".." in segments or "." in segments or "%2e%2e" in raw:
            raise BadRequest("'..' and '.' are not allowed in paths")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "limit" in query:
            check_limit(query["limit"][-1], self.max_page_size)
        if "bbox" in query:
            check_bbox(query["bbox"][-1])

        method = scope.get("method", "GET")
        body: Any = None
        if method not in WRITE_METHODS:
            return receive  # GET/HEAD: nothing to read
        body = await self._read_json(scope, receive, required=method in ("POST", "PUT"))
        if path == "search" and method == "POST" and isinstance(body, dict):
            if body.get("limit") is not None:
                check_limit(body["limit"], self.max_page_size)
            if body.get("bbox") is not None:
                check_bbox(body["bbox"])

        if method in WRITE_METHODS and path != "search":
            body = await self._authorize_write(scope, path, method, body)
        try:
            data = json.dumps(body).encode() if body is not None else b""
        except RecursionError:  # parsed, but too deep to write back at this stack depth
            raise BadRequest("the body's JSON is nested too deeply") from None
        # The body may have changed (the owner field): its length must say so.
        scope["headers"] = [
            (k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"
        ] + [(b"content-length", str(len(data)).encode())]
        return _replay_bytes(data)

    async def _read_json(self, scope: Scope, receive: Receive, required: bool) -> Any:
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise BadRequest("the client went away", 400)
            data = msg.get("body", b"")
            size += len(data)
            if size > self.max_body_bytes:
                raise BadRequest(
                    f"request body above {self.max_body_bytes // (1024 * 1024)} MB; send "
                    "fewer items per request",
                    413,
                )
            chunks.append(data)
            if not msg.get("more_body"):
                break
        raw = b"".join(chunks)
        if not raw.strip():
            if required:
                raise BadRequest("this request needs a JSON body")
            return None
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise BadRequest(f"the body is not valid JSON: {e}") from None
        except RecursionError:  # json's C parser recurses per nesting level
            raise BadRequest("the body's JSON is nested too deeply") from None
        if not isinstance(body, dict | list):
            raise BadRequest("the body must be a JSON object")
        return body

    async def _authorize_write(self, scope: Scope, path: str, method: str, body: Any) -> Any:
        user = scope.get("state", {}).get("hub_user") or {}
        name = user.get("name", "")
        admin = bool(user.get("admin"))
        if path.rstrip("/") == "collections" and method == "POST":
            if not isinstance(body, dict):
                raise BadRequest("a collection must be a JSON object")
            if not admin or OWNER not in body:
                body[OWNER] = name  # a user's collection is theirs, whatever the body says
            return body
        m = _COLLECTION_PATH.match(path)
        if not m:
            raise BadRequest(f"{method} is not allowed on /{path}", 405)
        cid, sub = m.group(1), m.group(2)
        owner = await self._owner_of(scope, cid)
        if owner is _MISSING:
            raise BadRequest(f"collection {cid!r} does not exist", 404)
        if not admin and owner != name:
            whose = f"belongs to {owner!r}" if owner else "is the platform's"
            raise BadRequest(
                f"collection {cid!r} {whose}: you may change only your own collections "
                "(create one with POST /collections)",
                403,
            )
        if sub is None and method in ("PUT", "PATCH") and isinstance(body, dict):
            if method == "PATCH" and OWNER in body and body[OWNER] != owner:
                raise BadRequest(f"{OWNER} cannot be changed", 403)
            if method == "PUT":
                if owner:
                    body[OWNER] = owner
                else:
                    body.pop(OWNER, None)
        patches = body if sub is None and method == "PATCH" and isinstance(body, list) else []
        if any(OWNER in str(op.get("path", "")) for op in patches if isinstance(op, dict)):
            raise BadRequest(f"{OWNER} cannot be changed", 403)
        return body

    async def _owner_of(self, scope: Scope, cid: str) -> Any:
        pool = scope["app"].state.readpool
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT content->>$2 AS owner FROM pgstac.collections WHERE id = $1", cid, OWNER
            )
        if row is None:
            return _MISSING
        return row["owner"] or ""


_MISSING = object()


def _normalize_forwarded_host(scope: Scope) -> None:
    """configurable-http-proxy sends X-Forwarded-Host *with* the port and X-Forwarded-Port;
    stac-fastapi joins them ("host:8000:8000") and its links fall back to the service's own
    address. Keep the host name alone."""
    headers = scope.get("headers", [])
    names = {k.lower() for k, _ in headers}
    if b"x-forwarded-host" not in names or b"x-forwarded-port" not in names:
        return
    fixed = []
    for k, v in headers:
        if k.lower() == b"x-forwarded-host" and not v.startswith(b"["):
            v = v.rsplit(b":", 1)[0] if v.count(b":") == 1 else v
        fixed.append((k, v))
    scope["headers"] = fixed


def _replay_bytes(data: bytes) -> Receive:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    return receive

"""The lake's own STAC API (stac-fastapi-pgstac), called in-process as one of the sources.

No HTTP and no second authentication: the request already passed the hub and the guard; it
is replayed into the wrapped app with a new page size and token, and its JSON answer read.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from ...asgi import ASGIApp, Scope
from .fetch import SourceFailure
from .merge import Page
from .params import SearchParams


class LocalAnswer(Exception):
    """The lake answered a client error (bad filter, ...): the client gets it as it is."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body


async def call(
    app: ASGIApp,
    scope: Scope,
    method: str,
    path: str,
    query: str = "",
    body: bytes | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``method path?query`` through ``app``; status, headers and the whole body."""
    drop = {b"accept-encoding", b"content-length", b"content-type"}
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in drop]
    data = body or b""
    if body is not None:
        headers += [(b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(data)).encode()))
    sub = dict(scope)
    sub.update(
        method=method,
        path=path,
        raw_path=path.encode(),
        query_string=query.encode(),
        headers=headers,
    )
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    status = 500
    out_headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def send(msg: dict[str, Any]) -> None:
        nonlocal status, out_headers
        if msg["type"] == "http.response.start":
            status = msg["status"]
            out_headers = list(msg.get("headers", []))
        elif msg["type"] == "http.response.body":
            chunks.append(msg.get("body", b""))

    await app(sub, receive, send)
    return status, out_headers, b"".join(chunks)


class LocalLake:
    """The lake as a federation backend, for one request."""

    def __init__(self, app: ASGIApp, scope: Scope, search_path: str) -> None:
        self.app, self.scope, self.search_path = app, scope, search_path

    async def search(
        self, params: SearchParams, cursor: Any, size: int, collections: list[str] | None
    ) -> Page:
        if params.method == "GET":
            pairs = [(k, v) for k, v in params.raw if k != "limit"] + [("limit", str(size))]
            if cursor:
                pairs.append(("token", str(cursor)))
            status, headers, body = await call(
                self.app, self.scope, "GET", self.search_path, urlencode(pairs)
            )
        else:
            doc = {**params.raw, "limit": size}
            if params.filter is not None:  # checked CQL2-JSON: POST text filters work too
                doc.update({"filter": params.filter, "filter-lang": "cql2-json"})
            if cursor:
                doc["token"] = str(cursor)
            status, headers, body = await call(
                self.app, self.scope, "POST", self.search_path, "", json.dumps(doc).encode()
            )
        if 400 <= status < 500:
            raise LocalAnswer(status, headers, body)
        if status != 200:
            text = body[:200].decode("utf-8", "replace")
            raise SourceFailure(f"the lake's STAC API answered HTTP {status}: {text}")
        doc = json.loads(body)
        matched = doc.get("numberMatched", (doc.get("context") or {}).get("matched"))
        return Page(
            [f for f in doc.get("features") or () if isinstance(f, dict)],
            next=next_token(doc),
            matched=matched if isinstance(matched, int) else None,
        )


def next_token(doc: dict[str, Any]) -> str | None:
    """pgstac's paging token from its ``next`` link (GET: in the query; POST: in the body)."""
    for link in doc.get("links") or ():
        if isinstance(link, dict) and link.get("rel") == "next":
            body = link.get("body")
            if isinstance(body, dict) and isinstance(body.get("token"), str):
                return body["token"]
            token = parse_qs(urlsplit(str(link.get("href", ""))).query).get("token")
            if token:
                return token[-1]
    return None

"""The ASGI layer that makes /services/stac/ federated (between the guard and
stac-fastapi-pgstac).

It answers ``/search`` (GET, POST), ``/collections``, ``/collections/{id}``,
``/collections/{id}/items`` and ``/collections/{id}/items/{item}`` itself, asking the lake
in-process (:mod:`.local`) and the remote sources (:mod:`.engine`); everything else goes
to the lake unchanged.  With no source configured it only checks and removes the
``sources`` parameter, so the lake-only path costs what it did before.  A ``POST /search``
body is the one the guard in front parsed and checked (``scope["state"][SEARCH_BODY]``), not
read and parsed a second time.

A user has at most :data:`MAX_REQUESTS_PER_USER` federated requests in flight; more is a 429:
the remote requests of all users share a bounded pool (:mod:`.engine`), and one user's burst
must be refused rather than make everyone else's sources time out.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from stac_fastapi.api.middleware import ProxyHeaderMiddleware

from twinlab.contract import FIELD_SOURCE, FIELD_SOURCES, FIELD_WARNINGS

from ...asgi import (
    MAX_BODY_BYTES,
    ASGIApp,
    BadRequest,
    Receive,
    Scope,
    Send,
    read_body,
    replay,
    send_json,
    send_refusal,
)
from ..guard import SEARCH_BODY
from ..sources import LOCAL
from .annotate import tag_local
from .engine import Federation, Outcome
from .lake_source import LocalAnswer, LocalLake, call
from .params import FREE_TEXT_STATE, from_body, from_query

GEOJSON = b"application/geo+json"
#: Federated requests (searches, collection and item reads) one user may have in flight.
MAX_REQUESTS_PER_USER = 4
_COLLECTION = re.compile(r"^collections/([^/]+)(?:/items(?:/([^/]+))?)?/?$")


class FederationMiddleware:
    def __init__(
        self, app: ASGIApp, *, prefix: str, federation: Federation, max_page_size: int
    ) -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/") + "/"
        self.fed = federation
        self.max_page_size = max_page_size
        self.max_per_user = MAX_REQUESTS_PER_USER
        self._in_flight: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.fed.start()  # no-op once started (at lifespan startup, or here without one)
        path = scope.get("path", "")
        rel = path[len(self.prefix) :] if path.startswith(self.prefix) else None
        method = scope.get("method", "GET")
        try:
            if rel == "search" and method in ("GET", "POST"):
                if not self.fed.sources:
                    await self._lake_only_search(scope, receive, send)
                else:
                    with self._one_of_the_users(scope):
                        await self._search(scope, receive, send, "search")
                return
            if self.fed.sources and method == "GET" and rel is not None:
                if rel.rstrip("/") == "collections":
                    with self._one_of_the_users(scope):
                        await self._collections(scope, send)
                    return
                m = _COLLECTION.match(rel)
                if m:
                    with self._one_of_the_users(scope):
                        await self._collection_path(scope, receive, send, rel, m)
                    return
        except BadRequest as e:
            await send_refusal(send, e)
            return
        except LocalAnswer as e:
            await _send_raw(send, e.status, e.headers, e.body)
            return
        await self.app(scope, receive, send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> dict[str, Any]:
            msg = await receive()
            if msg.get("type") == "lifespan.startup":
                self.fed.start()
            elif msg.get("type") == "lifespan.shutdown":
                await self.fed.close()
            return msg

        return wrapped

    # -- helpers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _one_of_the_users(self, scope: Scope) -> Iterator[None]:
        """Count a federated request against its user; 429 above the user's share."""
        user = (scope.get("state") or {}).get("hub_user") or {}
        name = str(user.get("name") or "")
        if self._in_flight[name] >= self.max_per_user:
            raise BadRequest(
                f"{self.max_per_user} federated requests of yours are still running; wait "
                "for them before sending more",
                429,
            )
        self._in_flight[name] += 1
        try:
            yield
        finally:
            self._in_flight[name] -= 1
            if not self._in_flight[name]:
                del self._in_flight[name]

    def api_base(self, scope: Scope) -> str:
        """This API's public root URL, as stac-fastapi computes it for its own links."""
        proto, domain, port = ProxyHeaderMiddleware(None)._get_forwarded_url_parts(scope)
        default = (proto == "http" and port == 80) or (proto == "https" and port == 443)
        return f"{proto}://{domain}{'' if default else f':{port}'}{self.prefix}"

    def _sources_param(self, scope: Scope) -> list[str]:
        q = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        given = [s.strip() for s in q.get("sources", "").split(",") if s.strip()]
        return self.fed.choose(given or None)

    # -- search ----------------------------------------------------------------------------
    async def _lake_only_search(self, scope: Scope, receive: Receive, send: Send) -> None:
        """No sources: refuse unknown names in ``sources`` and strip it, nothing more."""
        if scope["method"] == "GET":
            qs = scope.get("query_string", b"")
            if b"sources" in qs:
                pairs = parse_qsl(qs.decode("latin-1"), keep_blank_values=True)
                names = [n for k, v in pairs if k == "sources" for n in v.split(",") if n]
                self.fed.choose(names or None)
                rest = urlencode([(k, v) for k, v in pairs if k != "sources"])
                scope = {**scope, "query_string": rest.encode("latin-1")}
            await self.app(scope, receive, send)
            return
        doc, receive = await _posted_search(scope, receive)
        if isinstance(doc, dict) and "sources" in doc:
            doc = dict(doc)
            names = doc.pop("sources")
            if isinstance(names, str):
                names = [n for n in names.split(",") if n]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise BadRequest("sources must be a list of source names")
            self.fed.choose(names or None)
            body = json.dumps(doc).encode()
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
            scope = {**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}
            receive = replay(body, receive)
        await self.app(scope, receive, send)

    async def _search(
        self, scope: Scope, receive: Receive, send: Send, rel: str, collection: str | None = None
    ) -> None:
        if scope["method"] == "POST":
            doc, receive = await _posted_search(scope, receive)
            params = from_body(doc, self.max_page_size)
        else:
            params = from_query(
                scope.get("query_string", b"").decode("latin-1"), self.max_page_size
            )
        if collection is not None:  # /collections/{id}/items: a search in that collection
            params.collections = [collection]
        params.free_text = (scope.get("state") or {}).get(FREE_TEXT_STATE)
        base = self.api_base(scope)
        local = LocalLake(self.app, scope, self.prefix + "search")
        out = await self.fed.search(params, local, base)
        await _send_doc(send, 200, self._page(out, params, base, rel, scope), GEOJSON)

    def _page(self, out: Outcome, params, base: str, rel: str, scope: Scope) -> dict[str, Any]:
        links: list[dict[str, Any]] = [
            {"rel": "root", "href": base, "type": "application/json"},
        ]
        if params.method == "GET":
            query = scope.get("query_string", b"").decode("latin-1")
            links.append(
                {
                    "rel": "self",
                    "href": f"{base}{rel}" + (f"?{query}" if query else ""),
                    "type": "application/geo+json",
                }
            )
        if out.token:
            if params.method == "GET":
                pairs = list(params.raw)
                if params.sources:
                    pairs.append(("sources", ",".join(params.sources)))
                pairs.append(("token", out.token))
                links.append(
                    {
                        "rel": "next",
                        "href": f"{base}{rel}?{urlencode(pairs)}",
                        "type": "application/geo+json",
                        "method": "GET",
                    }
                )
            else:
                body = dict(params.raw)
                if params.sources:
                    body["sources"] = params.sources
                body["token"] = out.token
                links.append(
                    {
                        "rel": "next",
                        "href": f"{base}{rel}",
                        "type": "application/geo+json",
                        "method": "POST",
                        "body": body,
                    }
                )
        doc: dict[str, Any] = {
            "type": "FeatureCollection",
            "features": out.features,
            "links": links,
            "numberReturned": len(out.features),
        }
        if out.matched is not None:
            doc["numberMatched"] = out.matched
        doc[FIELD_SOURCES] = out.statuses
        doc[FIELD_WARNINGS] = out.warnings
        return doc

    # -- collections -----------------------------------------------------------------------
    async def _collections(self, scope: Scope, send: Send) -> None:
        names = self._sources_param(scope)
        base = self.api_base(scope)
        q = [
            (k, v)
            for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
            if k != "sources"
        ]
        statuses: dict[str, Any] = {}
        if LOCAL in names:
            status, headers, body = await call(
                self.app, scope, "GET", self.prefix + "collections", urlencode(q)
            )
            if status != 200:
                await _send_raw(send, status, headers, body)
                return
            doc = json.loads(body)
            for c in doc.get("collections") or ():
                if isinstance(c, dict):
                    c[FIELD_SOURCE] = LOCAL
            statuses[LOCAL] = {"status": "ok", "returned": len(doc.get("collections") or ())}
        else:
            doc = {"collections": [], "links": [{"rel": "root", "href": base}]}
        warnings: list[str] = []
        # Remote collections come with the first page of the lake's list (its paging
        # continues the lake's own list).
        if not any(k in ("token", "offset") for k, _ in q):
            local_ids = {c.get("id") for c in doc["collections"] if isinstance(c, dict)}
            remote, st, warnings = await self.fed.remote_collections(names, base)
            doc["collections"] += [c for c in remote if c.get("id") not in local_ids]
            statuses.update(st)
        doc["numberReturned"] = len(doc["collections"])
        doc.pop("numberMatched", None) if warnings or len(statuses) > 1 else None
        doc[FIELD_SOURCES] = statuses
        doc[FIELD_WARNINGS] = warnings
        await _send_doc(send, 200, doc, b"application/json")

    async def _collection_path(
        self, scope: Scope, receive: Receive, send: Send, rel: str, m: re.Match
    ) -> None:
        cid, iid = unquote(m.group(1)), m.group(2)
        is_items = iid is None and "/items" in rel
        names = self._sources_param(scope)
        base = self.api_base(scope)
        q = [
            (k, v)
            for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
            if k != "sources"
        ]
        if LOCAL in names:
            # The lake wins a clash: ask it first, exactly as the client asked.
            coll_status, _, _ = await call(
                self.app, scope, "GET", f"{self.prefix}collections/{m.group(1)}"
            )
            if coll_status == 200:
                sub = {**scope, "query_string": urlencode(q).encode("latin-1")}
                status, headers, body = await call(
                    self.app, sub, "GET", scope["path"], urlencode(q)
                )
                if status == 200 and iid is not None:
                    body = json.dumps(tag_local(json.loads(body))).encode()
                elif status == 200 and is_items:
                    doc = json.loads(body)
                    for f in doc.get("features") or ():
                        tag_local(f)
                    body = json.dumps(doc).encode()
                await _send_raw(send, status, headers, body)
                return
        remote = [n for n in names if n != LOCAL]
        if iid is not None:
            item, warnings = await self.fed.find_item(cid, unquote(iid), remote, base)
            if item is None:
                await _not_found(send, f"item {unquote(iid)!r} in collection {cid!r}", warnings)
                return
            await _send_doc(send, 200, item, GEOJSON)
            return
        coll, warnings = await self.fed.find_collection(cid, remote, base)
        if coll is None:
            await _not_found(send, f"collection {cid!r}", warnings)
            return
        if not is_items:
            await _send_doc(send, 200, coll, b"application/json")
            return
        # /collections/{id}/items of a remote collection: a search of its source
        scope = {
            **scope,
            "query_string": urlencode(q + [("sources", coll[FIELD_SOURCE])]).encode(),
        }
        await self._search(scope, receive, send, rel, collection=cid)


async def _not_found(send: Send, what: str, warnings: list[str]) -> None:
    msg = f"{what} not found in the lake or any source"
    if warnings:
        msg += f" (some sources did not answer: {'; '.join(warnings)})"
    await send_json(send, 404, {"code": 404, "description": msg, FIELD_WARNINGS: warnings})


async def _send_doc(send: Send, status: int, doc: Any, ctype: bytes) -> None:
    data = json.dumps(doc, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _send_raw(send: Send, status: int, headers, body: bytes) -> None:
    keep = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    keep.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": keep})
    await send({"type": "http.response.body", "body": body})


async def _posted_search(scope: Scope, receive: Receive) -> tuple[Any, Receive]:
    """A ``POST /search`` body, parsed, and a ``receive`` that still gives it: the guard in
    front checked and parsed it already (``scope["state"][SEARCH_BODY]``); without the guard
    (this layer alone) it is read and parsed here."""
    doc = (scope.get("state") or {}).get(SEARCH_BODY)
    if doc is not None:
        return doc, receive
    body = await read_body(scope, receive, MAX_BODY_BYTES)
    try:
        doc = json.loads(body) if body.strip() else None
    except ValueError as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("the body's JSON is nested too deeply") from None
    return doc, replay(body, receive)

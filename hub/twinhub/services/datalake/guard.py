"""What the STAC API checks before stac-fastapi-pgstac sees a request.

- Bad input gets a 400 naming the problem, before any parser reads it (:mod:`.limits`): a
  ``limit`` above the page-size cap, a bbox that is not 4 or 6 finite numbers within lon/lat
  bounds, ``..`` path segments, filters, ``intersects``, ``sortby``, ``fields`` and JSON
  bodies over their depth and size limits, NaN/Infinity, NUL in strings, bodies that are not
  JSON objects; bodies above the size cap get 413.
- Records (:mod:`.records`): ids of collections and items follow one rule; item geometries
  are valid, in range and finite; extents finite.
- Ownership: a collection created by a user belongs to them (``twinhub:owner``, set here,
  whatever the body says). Only its owner (or an admin whose token carries the admin
  scope: :func:`~twinhub.services.hubauth.acts_as_admin`) may change it or add, replace and
  delete its items; collections without an owner (the lake's own) are admins' only. The
  record checked is the one that will be written: a body whose id (or an item's
  collection) differs from the path is refused, as is a patch of the id, and a new
  collection may not reuse an existing id.
- Reserved ids: ``user-<name>`` (:data:`~twinlab.contract.USER_COLLECTION_PREFIX`) is where
  the processing service's jobs publish ``<name>``'s outputs; only ``<name>`` (or an admin's
  token) may create it, so nobody can take it first and catch or spoof their items.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode

from asyncpg import exceptions as pg_errors

from twinlab.contract import FIELD_OWNER, USER_COLLECTION_PREFIX

from ..asgi import Receive, Scope, Send, read_body, replay, send_refusal
from ..hubauth import acts_as_admin
from .cql2_text import TextParser
from .input_limits import (
    BadRequest,
    check_bbox,
    check_fields,
    check_filter,
    check_free_text,
    check_id_list,
    check_json_text,
    check_limit,
    check_offset,
    check_sortby,
    loads,
)
from .records import Budget, check_collection, check_geometry, check_item, check_record_bbox

#: ``scope["state"]`` key of a checked ``POST /search`` body (a dict), for the layers below
#: (federation) to use instead of parsing the body again.
SEARCH_BODY = "search_body"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_COLLECTION_PATH = re.compile(r"^collections/([^/]+)(?:/(items|bulk_items)(?:/([^/]+))?)?/?$")

#: Database errors that mean the request was wrong, not the service: pgstac's own checks
#: (RAISE: a bad paging token, sort field, CQL2 operator...) and values PostgreSQL refuses
#: (SQLSTATE class 22), syntax errors of the text search ``q`` becomes, and requests over the
#: server's limits. stac_app answers them 400 with the database's message.
REFUSALS = (
    pg_errors.RaiseError,
    pg_errors.DataError,
    pg_errors.PostgresSyntaxError,  # pgstac turns the free-text ``q`` into a tsquery
    pg_errors.ProgramLimitExceededError,  # too complex for the server (stack depth...)
)
#: The database is gone or restarting: 503, the client may try again.
UNAVAILABLE = (
    pg_errors.PostgresConnectionError,  # includes a pooled connection the server closed
    pg_errors.OperatorInterventionError,  # shutting down, starting up, statement cancelled
    ConnectionError,
)

__all__ = ["BadRequest", "GuardMiddleware", "check_bbox", "check_limit"]


class GuardMiddleware:
    def __init__(
        self,
        app: Any,
        *,
        prefix: str,
        max_page_size: int,
        max_body_bytes: int,
        reserved_prefix: str = USER_COLLECTION_PREFIX,
    ):
        #: ``<reserved_prefix><name>`` collections may be created by <name> (or an admin) only.
        self.reserved_prefix = reserved_prefix
        self.app = app
        self.prefix = "/" + prefix.strip("/") + "/"
        self.max_page_size = max_page_size
        self.max_body_bytes = max_body_bytes
        self.cql2 = TextParser()  # CQL2 text is parsed in child processes, never here

    def _relative(self, path: str) -> str:
        return path[len(self.prefix) :] if path.startswith(self.prefix) else path.lstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._check(scope, receive)
        except BadRequest as e:
            await send_refusal(send, e)
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
        self._check_query(query)
        if "filter" in query:
            await self._text_filter_to_json(scope, query)

        method = scope.get("method", "GET")
        if method not in WRITE_METHODS:
            return receive  # GET/HEAD: nothing to read
        body = await self._read_json(scope, receive, required=method in ("POST", "PUT", "PATCH"))
        if path == "search":
            if method != "POST":
                raise BadRequest(f"{method} is not allowed on /search", 405)
            self._check_search_body(body)
            f = body.get("filter")
            # Whatever filter-lang says: no layer below may parse text (see .cql2_text).
            if isinstance(f, str) and f.strip() and not f.lstrip().startswith("{"):
                body["filter"] = await self.cql2.to_json(f, _caller(scope))
                body["filter-lang"] = "cql2-json"
            scope.setdefault("state", {})[SEARCH_BODY] = body
        else:
            body = await self._authorize_write(scope, path, method, body)
        data = json.dumps(body).encode() if body is not None else b""
        # The body may have changed (the owner field): its length must say so.
        scope["headers"] = [
            (k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"
        ] + [(b"content-length", str(len(data)).encode())]
        return replay(data, receive)

    # -- searches --------------------------------------------------------------------------
    def _check_query(self, query: dict[str, list[str]]) -> None:
        """GET parameters of /search, /collections and /collections/{id}/items."""
        if "limit" in query:
            check_limit(query["limit"][-1], self.max_page_size)
        for bbox in query.get("bbox", ()):
            check_bbox(bbox)
        for value in query.get("filter", ()):
            check_filter(value)
        for value in query.get("intersects", ()):
            check_json_text(value, "intersects")
            check_geometry(loads(value, "intersects"), "intersects")
        for value in query.get("query", ()):
            check_json_text(value, "query")
            if not isinstance(loads(value, "query"), dict):
                raise BadRequest("query must be a JSON object")
        for value in query.get("sortby", ()):
            check_sortby(value)
        for value in query.get("fields", ()):
            check_fields(value)
        for key in ("ids", "collections"):
            for value in query.get(key, ()):
                check_id_list(value, key)
        for value in query.get("offset", ()):
            check_offset(value)
        for value in query.get("q", ()):
            check_free_text(value)

    async def _text_filter_to_json(self, scope: Scope, query: dict[str, list[str]]) -> None:
        """A CQL2 text ``filter`` parameter becomes CQL2 JSON (parsed in a child process:
        :mod:`.cql2_text`), so that no layer below parses text."""
        # Whatever filter-lang says: a text filter below would be parsed in this process
        # (the federation's matcher), where a malformed deep one costs 2^depth.
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        out: list[tuple[str, str]] = []
        for key, value in pairs:
            if key == "filter" and value.strip() and not value.lstrip().startswith("{"):
                value = json.dumps(
                    await self.cql2.to_json(value, _caller(scope)), separators=(",", ":")
                )
            if key != "filter-lang":
                out.append((key, value))
        out.append(("filter-lang", "cql2-json"))
        scope["query_string"] = urlencode(out).encode("latin-1")

    def _check_search_body(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("a search body must be a JSON object")
        if body.get("limit") is not None:
            check_limit(body["limit"], self.max_page_size)
        if body.get("bbox") is not None:
            check_bbox(body["bbox"])
        check_filter(body.get("filter"))
        if body.get("intersects") is not None:
            check_geometry(body["intersects"], "intersects")
        if body.get("query") is not None and not isinstance(body["query"], dict):
            raise BadRequest("query must be a JSON object")
        check_sortby(body.get("sortby"))
        check_fields(body.get("fields"))
        q = body.get("q")
        for value in q if isinstance(q, list) else ([] if q is None else [q]):
            check_free_text(value)
        for key in ("ids", "collections"):
            if isinstance(body.get(key), str):  # GET's comma-separated form
                raise BadRequest(f"{key} must be a list of strings in a search body")
            check_id_list(body.get(key), key)
        q = body.get("q")
        for value in [q] if isinstance(q, str) else q if isinstance(q, list) else ():
            check_free_text(value)
        if body.get("token") is not None and not isinstance(body["token"], str):
            raise BadRequest("token must be a string")

    async def _read_json(self, scope: Scope, receive: Receive, required: bool) -> Any:
        raw = await read_body(scope, receive, self.max_body_bytes)
        if not raw.strip():
            if required:
                raise BadRequest("this request needs a JSON body")
            return None
        body = loads(raw, "the body")
        if not isinstance(body, dict | list):
            raise BadRequest("the body must be a JSON object")
        return body

    # -- writes ----------------------------------------------------------------------------
    async def _authorize_write(self, scope: Scope, path: str, method: str, body: Any) -> Any:
        user = scope.get("state", {}).get("hub_user") or {}
        name = user.get("name", "")
        admin = acts_as_admin(user)
        if path.rstrip("/") == "collections":
            if method != "POST":
                raise BadRequest(f"{method} is not allowed on /collections", 405)
            body = check_collection(body)
            cid = body["id"]
            check_reserved(cid, name, admin, self.reserved_prefix)
            existing = await self._owner_of(scope, cid)
            if existing is not _MISSING:
                raise BadRequest(
                    f"collection {cid!r} already exists ({_whose(existing)}): choose another "
                    "id, or PUT /collections/{id} to replace a collection of yours",
                    409,
                )
            if not admin or FIELD_OWNER not in body:
                body[FIELD_OWNER] = name  # a user's collection is theirs, whatever the body says
            elif not isinstance(body[FIELD_OWNER], str):
                raise BadRequest(f"{FIELD_OWNER} must be a user name (or '' for the platform's)")
            return body
        m = _COLLECTION_PATH.match(path)
        if not m:
            raise BadRequest(f"{method} is not allowed on /{path}", 405)
        cid, sub, iid = m.group(1), m.group(2), m.group(3)
        owner = await self._owner_of(scope, cid)
        if owner is _MISSING:
            raise BadRequest(f"collection {cid!r} does not exist", 404)
        if not admin and owner != name:
            raise BadRequest(
                f"collection {cid!r} {_whose(owner)}: you may change only your own "
                "collections (create one with POST /collections)",
                403,
            )
        if sub is None:
            return _collection_write(method, body, cid, owner)
        if sub == "bulk_items":
            if iid is not None or method != "POST":
                raise BadRequest(f"{method} is not allowed on /{path}", 405)
            return _bulk_items(body, cid)
        if iid is None:
            if method != "POST":
                raise BadRequest(f"{method} is not allowed on /{path}", 405)
            return _new_items(body, cid)
        if method == "PUT":
            return check_item(body, cid, iid)
        if method == "PATCH":
            _check_patch(body, "item", iid, collection=cid)
            return body
        if method != "DELETE":
            raise BadRequest(f"{method} is not allowed on /{path}", 405)
        return body

    async def _owner_of(self, scope: Scope, cid: str) -> Any:
        pool = scope["app"].state.readpool
        try:
            async with pool.acquire() as conn:
                row = await conn.fetchrow(
                    "SELECT content->>$2 AS owner FROM pgstac.collections WHERE id = $1",
                    cid,
                    FIELD_OWNER,
                )
        except UNAVAILABLE:
            raise BadRequest("the lake's database is not available; try again", 503) from None
        if row is None:
            return _MISSING
        return row["owner"] or ""


def check_reserved(cid: str, name: str, admin: bool, prefix: str = USER_COLLECTION_PREFIX) -> None:
    """Refuse (403) creating collection ``cid`` when it is ``<prefix><someone>`` and the
    caller ``name`` is not that someone (admins' tokens may)."""
    if admin or not prefix or not cid.startswith(prefix):
        return
    if cid[len(prefix) :] != name:
        raise BadRequest(
            f"collection ids starting with {prefix!r} are reserved: {cid!r} is for the user "
            f"{cid[len(prefix) :]!r} (their processing outputs); choose another id",
            403,
        )


def _whose(owner: str) -> str:
    return f"belongs to {owner!r}" if owner else "is the platform's"


def _collection_write(method: str, body: Any, cid: str, owner: str) -> Any:
    """PUT, PATCH or DELETE of collection ``cid`` (whose owner may write it)."""
    if method == "PUT":
        body = check_collection(body, cid)
        if owner:
            body[FIELD_OWNER] = owner
        else:
            body.pop(FIELD_OWNER, None)
    elif method == "PATCH":
        _check_patch(body, "collection", cid, owner=owner)
    elif method != "DELETE":
        raise BadRequest(f"{method} is not allowed on /collections/{cid}", 405)
    return body


def _new_items(body: Any, cid: str) -> Any:
    """POST /collections/{cid}/items: one Feature or a FeatureCollection of them."""
    if isinstance(body, dict) and body.get("type") == "FeatureCollection":
        features = body.get("features")
        if not isinstance(features, list):
            raise BadRequest("a FeatureCollection needs a list of features")
        budget = Budget()  # one for the whole batch
        body = dict(body, features=[check_item(f, cid, budget=budget) for f in features])
        _unique([f["id"] for f in body["features"]])
        return body
    return check_item(body, cid)


def _bulk_items(body: Any, cid: str) -> Any:
    """POST /collections/{cid}/bulk_items: {"items": {id: item}, "method": ...}. Every item
    is checked first: one bad item refuses the request (nothing partial is stored)."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), dict):
        raise BadRequest('bulk_items needs {"items": {"<id>": <item>, ...}}')
    if body.get("method", "insert") not in ("insert", "upsert"):
        raise BadRequest("bulk_items method must be 'insert' or 'upsert'")
    budget = Budget()  # one for the whole batch
    items = {key: check_item(item, cid, key, budget) for key, item in body["items"].items()}
    return dict(body, items=items)


def _unique(ids: list[str]) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise BadRequest(f"item {i!r} appears twice in the request")
        seen.add(i)


def _check_patch(
    body: Any, kind: str, target: str, *, owner: str = "", collection: str = ""
) -> None:
    """A PATCH keeps the record where it is and whose it is: no change of id, of an item's
    collection or of a collection's owner; an item's geometry and bbox only as a whole."""
    if isinstance(body, dict):  # JSON merge patch: the fields it sets
        changes = [(key, "replace", value) for key, value in body.items()]
    elif isinstance(body, list):  # JSON Patch: the top-level field each operation touches
        changes = []
        for op in body:
            if not isinstance(op, dict) or not isinstance(op.get("op"), str):
                raise BadRequest('JSON Patch operations are objects like {"op": .., "path": ..}')
            if op["op"] == "test":
                continue
            for key in ("path", "from"):
                pointer = op.get(key)
                if pointer is None and key == "from":
                    continue
                if not isinstance(pointer, str):
                    raise BadRequest(f"JSON Patch {key} must be a string")
                top = pointer.split("/")[1] if pointer.startswith("/") else ""
                if not top:
                    raise BadRequest("a PATCH cannot replace the whole record: patch its fields")
                top = top.replace("~1", "/").replace("~0", "~")
                whole = key == "path" and pointer == "/" + top and op["op"] in ("add", "replace")
                changes.append((top, "replace" if whole else "part", op.get("value")))
    else:
        raise BadRequest("a PATCH body is a JSON object (merge patch) or an array (JSON Patch)")
    for field, how, value in changes:
        if field == "id" and (how != "replace" or value != target):
            raise BadRequest(f"a PATCH cannot change the {kind}'s id ({target!r})")
        if kind == "collection" and field == FIELD_OWNER and (how != "replace" or value != owner):
            raise BadRequest(f"{FIELD_OWNER} cannot be changed", 403)
        if kind == "item" and field == "collection" and (how != "replace" or value != collection):
            raise BadRequest("a PATCH cannot move an item to another collection")
        if kind == "item" and field in ("geometry", "bbox"):
            if how != "replace":
                raise BadRequest(f"an item's {field} can only be replaced as a whole")
            if field == "geometry":
                check_geometry(value, f"item {target!r} geometry")
            elif value is not None:
                check_record_bbox(value, f"item {target!r} bbox")
        if kind == "collection" and field == "extent":
            check_collection(
                {"id": target, "extent": value} if how == "replace" else {"id": target}
            )


_MISSING = object()


def _caller(scope: Scope) -> str:
    """Who sends the request (hub user or service), for per-caller bounds."""
    return str((scope.get("state", {}).get("hub_user") or {}).get("name", ""))


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

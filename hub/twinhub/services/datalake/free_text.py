"""Free text (``q``) of item searches: parsed here, searched by pgstac as a CQL2 filter.

stac-fastapi-pgstac offers free text for collections only; for items this layer (between
the guard and the federation, :mod:`.stac_app`) reads ``q`` of ``/search`` (GET, POST) and
``/collections/{id}/items`` (GET) by the platform's rules (:func:`twinlab.contract.parse_free_text`:
every word must match unless ``OR`` or a comma separates them, quoted phrases, ``-word``,
variables' long names, units and synonyms, grid names), and replaces it with the CQL2
filter it means, "and"-ed with the request's own filter. The free-text extension leaves the
combination of words to the server; AND by default is our documented choice.

Ranking: unless the request sorts (``sortby``), items whose parameter the query names
(``temperature`` names ``2t``) come first. A first page asks the whole search; when all of it
fits in the page, the ranking is a stable partition of that page. Otherwise the search runs
in two phases, those items then the rest, each in pgstac's order (the first phase's first
page is asked together with the whole search); the paging token says which phase a page continues
(``rank:A:<token>``, ``rank:B:<token>``; ``rank:U:`` when sorted) and the next link
repeats the client's own ``q``, not the long filter it became.
A ``q`` that cannot be parsed is a 400 naming the problem.

The filter reads the lake's search text (``twinhub:search``, :mod:`.search_text`): one
``LIKE`` per word. The federation's other sources get the parsed query instead
(:class:`.federation.params.FreeText` in the scope's state): static catalogues match it in
Python, remote APIs get the client's ``q`` and their items are checked by the same rules.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

from stac_fastapi.api.middleware import ProxyHeaderMiddleware

from twinlab.contract import (
    FIELD_SOURCES,
    FIELD_WARNINGS,
    PARAM_PROPERTY,
    FreeTextQuery,
    parse_free_text,
)

from ..asgi import BadRequest, Receive, Scope, Send, send_refusal
from .federation.lake_source import call
from .federation.lake_source import next_token as inner_token
from .federation.params import FREE_TEXT_STATE, FreeText
from .guard import SEARCH_BODY

#: Conformance class of item-search free text (the free-text extension).
ITEM_FREE_TEXT = "https://api.stacspec.org/v1.0.0-rc.1/item-search#free-text"
RANK_PREFIX = "rank:"
GEOJSON = b"application/geo+json"
_ITEMS = re.compile(r"^collections/[^/]+/items/?$")
_DEFAULT_LIMIT = 10
#: Parameters that bound a search in space, time or ids (it usually fits in a page).
_BOUNDS = ("bbox", "intersects", "datetime", "ids")
_PARAM_NULL = {"op": "isNull", "args": [{"property": PARAM_PROPERTY}]}


class FreeTextMiddleware:
    def __init__(self, app: Any, *, prefix: str) -> None:
        self.app = app
        self.prefix = "/" + prefix.strip("/") + "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        rel = path[len(self.prefix) :] if path.startswith(self.prefix) else None
        method = scope.get("method", "GET")
        searching = (rel == "search" and method in ("GET", "POST")) or (
            rel is not None and method == "GET" and _ITEMS.match(rel) is not None
        )
        if not searching:
            await self.app(scope, receive, send)
            return
        try:
            if method == "GET":
                done = await self._get(scope, receive, send, rel or "")
            else:
                done = await self._post(scope, receive, send)
        except BadRequest as e:
            await send_refusal(send, e)
            return
        if not done:
            await self.app(scope, receive, send)

    # -- the two forms of a search ---------------------------------------------------------
    async def _get(self, scope: Scope, receive: Receive, send: Send, rel: str) -> bool:
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
        qs = [v for k, v in pairs if k == "q" and v.strip()]
        if not qs:
            return False
        raw_q = ",".join(qs)
        query = _parse(raw_q)
        rest = [(k, v) for k, v in pairs if k not in ("q", "filter", "filter-lang", "token")]
        own = _filter_of(next((v for k, v in reversed(pairs) if k == "filter"), None))
        token = next((v for k, v in reversed(pairs) if k == "token"), None)
        limit = _limit(next((v for k, v in reversed(pairs) if k == "limit"), None))

        def request(flt: dict[str, Any], tok: str | None, size: int) -> dict[str, Any]:
            sub = [(k, v) for k, v in rest if k != "limit"] + [
                ("filter", json.dumps(flt, separators=(",", ":"))),
                ("filter-lang", "cql2-json"),
                ("limit", str(size)),
            ]
            return {"query_string": urlencode(sub + ([("token", tok)] if tok else []))}

        def next_link(tok: str) -> dict[str, Any]:
            keep = [(k, v) for k, v in pairs if k != "token"] + [("token", tok)]
            href = f"{self.api_base(scope)}{rel}?{urlencode(keep)}"
            return {"rel": "next", "href": href, "type": "application/geo+json", "method": "GET"}

        ranked = not any(k == "sortby" and v for k, v in pairs)
        part = FreeText(query, raw_q, own)
        bounded = any(k in _BOUNDS and v for k, v in pairs)
        await self._answer(scope, send, part, token, limit, ranked, bounded, request, next_link)
        return True

    async def _post(self, scope: Scope, receive: Receive, send: Send) -> bool:
        body = (scope.get("state") or {}).get(SEARCH_BODY)
        if not isinstance(body, dict) or not body.get("q"):
            return False  # no free text (the guard parsed and checked every POST body)
        q = body["q"]
        raw_q = q if isinstance(q, str) else ",".join(str(t) for t in q)
        query = _parse(raw_q)
        rest = {k: v for k, v in body.items() if k not in ("q", "filter", "filter-lang", "token")}
        own = _filter_of(body.get("filter"))
        token = body.get("token")
        limit = _limit(body.get("limit"))

        def request(flt: dict[str, Any], tok: str | None, size: int) -> dict[str, Any]:
            sub = {**rest, "filter": flt, "filter-lang": "cql2-json", "limit": size}
            if tok:
                sub["token"] = tok
            return {"body": sub}

        def next_link(tok: str) -> dict[str, Any]:
            return {
                "rel": "next",
                "href": f"{self.api_base(scope)}search",
                "type": "application/geo+json",
                "method": "POST",
                "body": {**body, "token": tok},
                "merge": False,
            }

        ranked = not body.get("sortby")
        part = FreeText(query, raw_q, own)
        bounded = any(body.get(k) for k in _BOUNDS)
        await self._answer(scope, send, part, token, limit, ranked, bounded, request, next_link)
        return True

    # -- one page --------------------------------------------------------------------------
    async def _answer(
        self,
        scope: Scope,
        send: Send,
        part: FreeText,
        token: Any,
        limit: int,
        ranked: bool,
        bounded: bool,
        request: Any,
        next_link: Any,
    ) -> None:
        query, own = part.query, part.own
        text = _and(own, query.to_cql2())
        exact = query.exact_cql2()
        ranked = ranked and exact is not None
        if token is not None and not isinstance(token, str):
            raise BadRequest("token must be a string")
        phase, tok = ("A" if ranked else "U"), None
        if token and token.startswith(RANK_PREFIX):
            phase, _, tok = token[len(RANK_PREFIX) :].partition(":")
            if phase not in ("A", "B", "U") or (phase != "U") != ranked:
                raise BadRequest(f"token {token[:60]!r} is not one this search gave")
        elif token:
            phase, tok = "U", token  # a token of the layers below
        phases = {"U": text}
        if exact is not None:
            # an item without a parameter is one of the rest (NOT of NULL is not true)
            named = {"op": "and", "args": [{"op": "not", "args": [_PARAM_NULL]}, exact]}
            phases.update(A=_and(text, exact), B=_and(text, {"op": "not", "args": [named]}))
        # the federation's other sources: the parsed query and the phase (FreeText.accepts)
        parts = {
            "U": part,
            "A": replace(part, exact=True),
            "B": replace(part, exact=False),
        }
        first_a = None
        if phase == "A" and tok is None:
            # A first page: the whole search first. When it fits in one page (no next
            # token: the common case of a search bounded in space or time), the ranking is a
            # stable partition of it; else the ranked items' page answers, completed by the
            # rest's (phase B). An unbounded search rarely fits: its ranked items' page is
            # asked at the same time (one process: in a bounded one it would delay the next).
            if not bounded:
                first_a = asyncio.ensure_future(
                    self._inner(scope, request(phases["A"], None, limit), parts["A"])
                )
                _AHEAD.add(first_a)
                first_a.add_done_callback(_forget)
            status, headers, doc = await self._inner(
                scope, request(phases["U"], None, limit), parts["U"]
            )
            if status != 200:
                await _send_raw(send, status, headers, doc)
                return
            if not inner_token(doc):
                found = doc.get("features") or []
                ranked_page = [f for f in found if query.named(f)]
                ranked_page += [f for f in found if not query.named(f)]
                out = _merge([doc], ranked_page)
                if isinstance(doc.get("numberMatched"), int):
                    out["numberMatched"] = doc["numberMatched"]
                await _send_raw(send, 200, [(b"content-type", GEOJSON)], json.dumps(out).encode())
                return
        features: list[Any] = []
        docs: list[dict[str, Any]] = []
        nxt: str | None = None
        if phase in ("U", "A"):
            if first_a is not None:
                status, headers, doc = await first_a
            else:
                req = request(phases[phase], tok, limit)
                status, headers, doc = await self._inner(scope, req, parts[phase])
            if status != 200:
                await _send_raw(send, status, headers, doc)
                return
            docs.append(doc)
            features += doc.get("features") or []
            more = inner_token(doc)
            if more:
                nxt = f"{RANK_PREFIX}{phase}:{more}"
            elif phase == "A":
                phase, tok = "B", None
        if phase == "B" and nxt is None:
            room = limit - len(features)
            # a full page: look one item ahead, so that the last page is never empty
            req = request(phases["B"], tok, room or 1)
            status, headers, doc = await self._inner(scope, req, parts["B"])
            if status != 200:
                await _send_raw(send, status, headers, doc)
                return
            found = doc.get("features") or []
            if room:
                docs.append(doc)
                features += found
                more = inner_token(doc)
                nxt = f"{RANK_PREFIX}B:{more}" if more else None
            elif found:
                nxt = f"{RANK_PREFIX}B:"
        out = _merge(docs, features)
        if nxt:
            out["links"].append(next_link(nxt))
        data = json.dumps(out).encode()
        await _send_raw(send, 200, [(b"content-type", GEOJSON)], data)

    async def _inner(
        self, scope: Scope, req: dict[str, Any], part: FreeText
    ) -> tuple[int, Any, Any]:
        """One search through the layers below: (status, headers, JSON or raw body)."""
        sub = dict(scope)
        state = {**(scope.get("state") or {}), FREE_TEXT_STATE: part}
        if "body" in req:
            state[SEARCH_BODY] = req["body"]
            data = json.dumps(req["body"]).encode()
            status, headers, raw = await call(
                self.app, {**sub, "state": state}, "POST", scope["path"], "", data
            )
        else:
            state.pop(SEARCH_BODY, None)
            status, headers, raw = await call(
                self.app, {**sub, "state": state}, "GET", scope["path"], req["query_string"]
            )
        if status != 200:
            return status, headers, raw
        return status, headers, json.loads(raw)

    def api_base(self, scope: Scope) -> str:
        """This API's public root URL, as stac-fastapi computes it for its own links."""
        proto, domain, port = ProxyHeaderMiddleware(None)._get_forwarded_url_parts(scope)
        default = (proto == "http" and port == 80) or (proto == "https" and port == 443)
        return f"{proto}://{domain}{'' if default else f':{port}'}{self.prefix}"


#: First-page searches still running (a reference, so that they are not collected early).
_AHEAD: set[Any] = set()


def _forget(task: Any) -> None:
    """A first-page search ended: drop it, its failure too (when the answer did not need it)."""
    _AHEAD.discard(task)
    if not task.cancelled():
        task.exception()


def _parse(q: str) -> FreeTextQuery:
    try:
        return parse_free_text(q)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _limit(value: Any) -> int:
    """The page size (the guard checked it against the cap)."""
    return int(value) if value not in (None, "") else _DEFAULT_LIMIT


def _filter_of(value: Any) -> dict[str, Any] | None:
    """The request's own filter, CQL2-JSON (the guard turned CQL2 text into JSON)."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest("filter is not valid CQL2-JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("filter must be a CQL2-JSON object")
    return value


def _and(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    return b if a is None else {"op": "and", "args": [a, b]}


def _merge(docs: list[dict[str, Any]], features: list[Any]) -> dict[str, Any]:
    """One FeatureCollection of the phases' answers: their features in order, the first
    answer's links (but ``next``), the federation's sources and warnings of all."""
    first = docs[0] if docs else {}
    out: dict[str, Any] = {
        "type": "FeatureCollection",
        "features": features,
        "links": [lk for lk in first.get("links") or () if lk.get("rel") != "next"],
        "numberReturned": len(features),
    }
    warnings: list[str] = []
    sources: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for w in doc.get(FIELD_WARNINGS) or ():
            if w not in warnings:
                warnings.append(w)
        for name, st in (doc.get(FIELD_SOURCES) or {}).items():
            have = sources.setdefault(name, {**st, "returned": 0})
            if st.get("status") != "ok":
                have.update({k: v for k, v in st.items() if k != "returned"})
            have["returned"] += int(st.get("returned") or 0)
    if docs and all(isinstance(d.get("numberMatched"), int) for d in docs) and len(docs) == 2:
        out["numberMatched"] = sum(d["numberMatched"] for d in docs)
    if warnings or any(FIELD_WARNINGS in d for d in docs):  # as the federation says it
        out[FIELD_WARNINGS] = warnings
    if sources:
        out[FIELD_SOURCES] = sources
    return out


async def _send_raw(send: Send, status: int, headers: Any, body: bytes) -> None:
    """An answer as it is (the inner one's headers but its length, which is re-counted)."""
    heads = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    heads.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": heads})
    await send({"type": "http.response.body", "body": body})

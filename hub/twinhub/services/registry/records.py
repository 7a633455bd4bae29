"""OGC API - Records (Part 1, core) over the registry's one collection, ``services``.

==========================================  =====================================================
``GET ""``                                  landing page: links to conformance and collections
``GET conformance``                         the conformance classes implemented here (only those)
``GET collections``                         the one collection, ``services`` (``itemType: record``)
``GET collections/services``                the collection
``GET collections/services/items``          search: ``q`` (comma: OR of terms; spaces: AND),
                                            ``bbox``, ``datetime``, ``thematic_area``, ``kind`` /
                                            ``type``, ``ids`` (repeatable or comma-separated),
                                            ``externalIds`` (records have none: a value
                                            matches nothing),
                                            ``limit`` (10; 1..1000), ``offset``, ``facets``
                                            (true), ``f``
``GET collections/services/items/{slug}``   one record (404: unknown *or* not visible)
==========================================  =====================================================

Every path answers anonymous callers (public entries only) and logged-in ones (what their
visibility allows: :func:`.entry.viewer_scope`), in JSON by default, in HTML with ``f=html``
or a browser's ``Accept: text/html`` (server-rendered, autoescaped, Markdown rendered without
raw HTML). Links are absolute, built from the request's forwarded host and scheme. Records
are GeoJSON features with the Records core properties plus ``twinhub:*`` ones (status and
latency of the last health check, visibility, provider, version).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from ..asgi import BadRequest
from ..base import platform_name
from . import metrics, pages, search
from .context import RegistryContext
from .entry import WEB_KINDS, viewer_scope

COLLECTION = "services"
DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
#: Query parameters of the items path; any other -> 400 (a misspelt filter must not
#: silently widen a search).
ITEM_PARAMS = frozenset(
    {"q", "bbox", "datetime", "thematic_area", "kind", "type", "ids", "externalIds", "limit",
     "offset", "facets", "f"}
)  # fmt: skip

GEOJSON = "application/geo+json"
JSON = "application/json"
HTML = "text/html"
OPENAPI_JSON = "application/vnd.oai.openapi+json;version=3.0"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
REL_CONFORMANCE = "http://www.opengis.net/def/rel/ogc/1.0/conformance"
REL_DATA = "http://www.opengis.net/def/rel/ogc/1.0/data"

_REC = "http://www.opengis.net/spec/ogcapi-records-1/1.0/conf/"
#: Only what this module really does: no sorting, no CQL2 filtering, no OpenAPI document.
CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-common-2/1.0/conf/collections",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
    _REC + "core",
    _REC + "record-core",
    _REC + "record-collection",
    _REC + "record-api",
    _REC + "record-core-query-parameters",
    _REC + "searchable-catalog",
    _REC + "json",
    _REC + "html",
)

#: Media types of an endpoint's description document, by the entry's endpoint type.
DESCRIPTION_TYPES = {"openapi": OPENAPI_JSON, "ogcapi": JSON}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
    autoescape=jinja2.select_autoescape(["html"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


# -- request helpers --------------------------------------------------------------------------
def public_origin(request: Request) -> str:
    """``scheme://host[:port]`` as the caller reached us (through the proxy's forwarded
    headers; the first value is the outermost proxy's)."""
    h = request.headers
    proto = h.get("x-forwarded-proto", "").split(",")[0].strip() or request.url.scheme
    host = h.get("x-forwarded-host", "").split(",")[0].strip() or h.get("host", "")
    if not host:
        host = request.url.netloc
    return f"{proto}://{host}"


def wants_html(request: Request) -> bool:
    """``f=html``/``f=json`` decide; without ``f``, a browser's ``Accept: text/html``."""
    f = request.query_params.get("f")
    if f is not None:
        if f.lower() not in ("json", "html"):
            raise BadRequest(f"f={f[:40]!r}: use f=json or f=html", 400)
        return f.lower() == "html"
    return HTML in request.headers.get("accept", "")


async def viewer(
    ctx: RegistryContext, request: Request
) -> tuple[dict[str, Any] | None, frozenset[str] | None]:
    """The caller with the hub's admin flag and groups (None: anonymous; a user the hub no
    longer knows, or a hub out of reach, reads as anonymous: never more than that), and the
    visibilities they may see (None: all)."""
    user = await pages.viewer(ctx, request)
    return user, viewer_scope(user)


def _one(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"give {name} once", 400)
    return values[0] if values else None


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = _one(request, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw[:40]!r}: give a whole number", 400) from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name}={value}: allowed {lo}..{hi}", 400)
    return value


def _bool(request: Request, name: str, default: bool) -> bool:
    raw = _one(request, name)
    if raw is None or raw == "":
        return default
    if raw.lower() not in ("true", "false", "1", "0"):
        raise BadRequest(f"{name}={raw[:40]!r}: give true or false", 400)
    return raw.lower() in ("true", "1")


def _headers(user: dict[str, Any] | None) -> dict[str, str]:
    """What a visitor sees is public; a user's answer holds what their visibility allows:
    never kept by a shared cache."""
    return {
        "Cache-Control": "private, no-cache" if user else "no-cache",
        "Vary": "Accept, Cookie, Authorization",
    }


def _json(body: dict[str, Any], media: str, user: dict[str, Any] | None) -> Response:
    return Response(json.dumps(body), media_type=media, headers=_headers(user))


def _html(ctx: RegistryContext, request: Request, template: str, **variables: Any) -> Response:
    user = variables.pop("user")
    html = _env.get_template(template).render(**pages.common_vars(ctx, request, user), **variables)
    headers = {
        **pages.page_headers(user is not None, request, ctx.prefix),
        "Vary": "Accept, Cookie, Authorization, Sec-Fetch-Dest, Sec-Fetch-Mode",
    }
    return HTMLResponse(html, headers=headers)


def _link(href: str, rel: str, media: str, title: str = "") -> dict[str, str]:
    out = {"href": href, "rel": rel, "type": media}
    if title:
        out["title"] = title
    return out


# -- records ----------------------------------------------------------------------------------
def geometry(bbox: Any) -> dict[str, Any] | None:
    """An entry's [w, s, e, n] as a GeoJSON polygon (two across the antimeridian)."""
    if not bbox:
        return None
    w, s, e, n = (float(x) for x in bbox)

    def ring(a: float, b: float) -> list[list[list[float]]]:
        return [[[a, s], [b, s], [b, n], [a, n], [a, s]]]

    if w <= e:
        return {"type": "Polygon", "coordinates": ring(w, e)}
    return {"type": "MultiPolygon", "coordinates": [ring(w, 180.0), ring(-180.0, e)]}


def _time_value(value: str | None) -> str:
    """An entry's ISO date or date-time as the Records time schema writes it: a date as is,
    a date-time in UTC with ``Z``, an open end as ``..``."""
    if not value:
        return ".."
    if len(value) == 10:
        return value
    instant = search.parse_datetime(value)
    assert instant is not None  # validated at submission (entry.py)
    return datetime.fromtimestamp(instant[0], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_time(temporal: Any) -> dict[str, Any] | None:
    if not isinstance(temporal, dict) or not (temporal.get("start") or temporal.get("end")):
        return None
    return {"interval": [_time_value(temporal.get("start")), _time_value(temporal.get("end"))]}


def _contacts(e: dict[str, Any]) -> list[dict[str, Any]]:
    contact = str(e.get("contact") or "")
    who: dict[str, Any] = {"organization": str(e.get("provider") or "")}
    if "@" in contact and "://" not in contact:
        who["emails"] = [{"value": contact}]
    elif contact:
        who["links"] = [_link(contact, "about", HTML, "contact")]
    return [who] if who["organization"] or len(who) > 1 else []


def record(
    row: dict[str, Any],
    *,
    base: str,
    origin: str,
    service_root: str,
    labels: dict[str, str],
    health: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """A published row as an OGC API - Records record (a GeoJSON feature)."""
    e = row.get("entry") or {}
    slug = str(row["slug"])
    h = health.get(slug) or {}
    self_href = f"{base}collections/{COLLECTION}/items/{quote(slug, safe='')}"
    licence = str(e.get("licence") or "")
    licence_is_link = licence.startswith(("http://", "https://"))
    props: dict[str, Any] = {
        "type": e.get("kind", ""),
        "title": e.get("name", slug),
        "description": e.get("description", ""),
        "keywords": list(e.get("keywords") or ()),
        "themes": [
            {
                "concepts": [
                    {"id": a, "title": labels.get(a, a)} for a in e.get("thematic_areas") or ()
                ],
                "scheme": f"{base}api/v1/vocabulary",
            }
        ]
        if e.get("thematic_areas")
        else [],
        "contacts": _contacts(e),
        "created": row.get("created"),
        "updated": row.get("updated"),
        "twinhub:status": h.get("status") or "unknown",
        "twinhub:latency_ms": h.get("latency_ms"),
        "twinhub:checked_at": h.get("checked_at"),
        "twinhub:visibility": e.get("visibility", "public"),
        "twinhub:provider": e.get("provider", ""),
        "twinhub:version": row.get("version"),
        "twinhub:thematic_areas": list(e.get("thematic_areas") or ()),
    }
    if not props["themes"]:
        del props["themes"]  # the schema wants at least one theme when there is the member
    if licence:
        props["license"] = "other" if licence_is_link else licence
    for k in ("created", "updated"):
        if not props[k]:
            del props[k]
    links = [
        _link(self_href, "self", GEOJSON, "this record"),
        _link(self_href + "?f=html", "alternate", HTML, "this record as HTML"),
        _link(f"{base}collections/{COLLECTION}", "collection", JSON, "the services catalogue"),
    ]
    if e.get("kind") in WEB_KINDS:
        service = f"{origin}{service_root}{quote(slug, safe='')}/"
        links.append(_link(service, "service", HTML, f"{props['title']} on this platform"))
    for ep in e.get("endpoints") or ():
        if ep.get("url"):
            links.append(_link(ep["url"], "related", JSON, "endpoint"))
        if ep.get("description_url"):
            media = DESCRIPTION_TYPES.get(ep.get("type", ""), JSON)
            links.append(_link(ep["description_url"], "service-desc", media, "description"))
    if e.get("documentation"):
        links.append(_link(e["documentation"], "describedby", HTML, "documentation"))
    if licence_is_link:
        links.append(_link(licence, "license", HTML, "licence"))
    return {
        "id": slug,
        "type": "Feature",
        "conformsTo": [_REC + "record-core"],
        "geometry": geometry(e.get("bbox")),
        "time": record_time(e.get("temporal")),
        "properties": props,
        "links": links,
    }


# -- the router -------------------------------------------------------------------------------
def records_router(ctx: RegistryContext) -> APIRouter:
    """The Records paths at the prefix root (app.py includes it under the prefix)."""
    router = APIRouter()
    title = f"{platform_name(ctx.rt)} services"
    description = (
        "The catalogue of services, APIs, notebooks, datasets and processing offered on "
        "this platform, by thematic area (OGC API - Records)."
    )

    def urls(request: Request) -> tuple[str, str, str]:
        origin = public_origin(request)
        return origin, origin + ctx.prefix, pages.service_root(ctx.prefix)

    def labels() -> dict[str, str]:
        return dict(ctx.settings.thematic_areas)

    def collection_doc(base: str) -> dict[str, Any]:
        here = f"{base}collections/{COLLECTION}"
        return {
            "id": COLLECTION,
            "type": "Collection",
            "itemType": "record",
            "title": title,
            "description": description,
            "keywords": ["services", "catalogue", "digital twin"],
            "extent": {
                "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]], "crs": CRS84},
                "temporal": {"interval": [[None, None]]},
            },
            "links": [
                _link(here, "self", JSON, "this collection"),
                _link(here + "?f=html", "alternate", HTML, "this collection as HTML"),
                _link(here + "/items", "items", GEOJSON, "the records"),
                _link(here + "/items?f=html", "items", HTML, "the records as HTML"),
            ],
        }

    @router.get("/", include_in_schema=False)
    async def landing(request: Request) -> Response:
        user, _ = await viewer(ctx, request)
        _, base, _ = urls(request)
        doc = {
            "title": title,
            "description": description,
            "links": [
                _link(base, "self", JSON, "this document"),
                _link(base + "?f=html", "alternate", HTML, "this document as HTML"),
                _link(base + "conformance", "conformance", JSON, "conformance classes"),
                _link(base + "conformance", REL_CONFORMANCE, JSON, "conformance classes"),
                _link(base + "collections", "data", JSON, "collections"),
                _link(base + "collections", REL_DATA, JSON, "collections"),
                _link(base + "welcome", "service-doc", HTML, "the platform's services"),
            ],
        }
        if wants_html(request):
            return _html(ctx, request, "records_doc.html", user=user, doc=doc, view="landing")
        return _json(doc, JSON, user)

    @router.get("/conformance", include_in_schema=False)
    async def conformance(request: Request) -> Response:
        user, _ = await viewer(ctx, request)
        doc = {"conformsTo": list(CONFORMANCE)}
        if wants_html(request):
            return _html(
                ctx, request, "records_doc.html", user=user, view="conformance",
                doc={"title": "Conformance", "description": "", "links": [], **doc},
            )  # fmt: skip
        return _json(doc, JSON, user)

    @router.get("/collections", include_in_schema=False)
    async def collections(request: Request) -> Response:
        user, _ = await viewer(ctx, request)
        _, base, _ = urls(request)
        doc = {
            "collections": [collection_doc(base)],
            "links": [
                _link(base + "collections", "self", JSON, "this document"),
                _link(base + "collections?f=html", "alternate", HTML, "this document as HTML"),
            ],
        }
        if wants_html(request):
            page = {"title": "Collections", "description": "", "links": [], **doc}
            return _html(ctx, request, "records_doc.html", user=user, doc=page, view="collections")
        return _json(doc, JSON, user)

    @router.get(f"/collections/{COLLECTION}", include_in_schema=False)
    async def collection(request: Request) -> Response:
        user, _ = await viewer(ctx, request)
        _, base, _ = urls(request)
        doc = collection_doc(base)
        if wants_html(request):
            return _html(ctx, request, "records_doc.html", user=user, doc=doc, view="collection")
        return _json(doc, "application/ogc-catalog+json", user)

    @router.get(f"/collections/{COLLECTION}/items", include_in_schema=False)
    async def items(request: Request) -> Response:
        user, scope = await viewer(ctx, request)
        unknown = sorted(set(request.query_params) - ITEM_PARAMS)
        if unknown:
            raise BadRequest(
                f"unknown query parameter {unknown[0][:40]!r}; known: "
                + ", ".join(sorted(ITEM_PARAMS)),
                400,
            )
        html = wants_html(request)
        limit = _int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        offset = _int(request, "offset", 0, 0, 10**9)
        facets = _bool(request, "facets", True)
        qp = request.query_params
        areas = qp.getlist("thematic_area")
        kinds = [*qp.getlist("kind"), *qp.getlist("type")]
        q = _one(request, "q")
        await search.ensure_fresh(ctx)
        assert ctx.index is not None  # app.py builds it before any route runs
        started = time.perf_counter()
        try:
            # in a thread: a search over a large catalogue is CPU-bound work that would
            # hold every other request (the gateway's too) on the event loop
            found = await asyncio.to_thread(
                ctx.index.search,
                q=q,
                bbox=_one(request, "bbox"),
                datetime=_one(request, "datetime"),
                areas=areas,
                kinds=kinds,
                ids=qp.getlist("ids"),
                external_ids=qp.getlist("externalIds"),
                viewer=scope,
                limit=limit,
                offset=offset,
                facets=facets or html,
            )
        except search.SearchError as e:
            raise BadRequest(str(e), 400) from None
        origin, base, root = urls(request)
        health = await pages.health_rows(ctx)
        vocab = labels()
        features = [
            record(r, base=base, origin=origin, service_root=root, labels=vocab, health=health)
            for r in found.items
        ]
        # The search, its facets and the records: what a catalogue answer costs here.
        metrics.SEARCH_SECONDS.observe(time.perf_counter() - started)
        here = f"{base}collections/{COLLECTION}/items"
        kept = [(k, v) for k, v in qp.multi_items() if k not in ("f", "offset")]

        def page_url(at: int, f: str) -> str:
            params = [*kept, *([("offset", str(at))] if at else []), ("f", f)]
            return f"{here}?{urlencode(params)}"

        links = [
            _link(page_url(offset, "json"), "self", GEOJSON, "this page"),
            _link(page_url(offset, "html"), "alternate", HTML, "this page as HTML"),
            _link(f"{base}collections/{COLLECTION}", "collection", JSON, "the collection"),
        ]
        nxt = offset + limit if offset + limit < found.matched else None
        prev = max(0, offset - limit) if offset > 0 else None
        if nxt is not None:
            links.append(_link(page_url(nxt, "json"), "next", GEOJSON, "next page"))
        if prev is not None:
            links.append(_link(page_url(prev, "json"), "prev", GEOJSON, "previous page"))
        buckets = {
            "thematic_area": [
                {"value": v, "count": n, "title": vocab.get(v, v)}
                for v, n in found.facets.get("thematic_areas", {}).items()
            ],
            "kind": [
                {"value": v, "count": n, "title": pages.KIND_LABELS.get(v, v)}
                for v, n in found.facets.get("kind", {}).items()
            ],
        }
        if html:
            return _html(
                ctx, request, "records_items.html",
                user=user, features=features, matched=found.matched, limit=limit,
                offset=offset, facets=buckets, q=q or "", areas=areas, kinds=kinds,
                chosen=set(areas) | set(kinds), vocab=vocab, kind_labels=pages.KIND_LABELS,
                here=here, kept=kept, json_url=page_url(offset, "json"),
                next_url=None if nxt is None else page_url(nxt, "html"),
                prev_url=None if prev is None else page_url(prev, "html"),
                toggle=lambda name, value: _toggle_url(here, kept, name, value),
                summary=pages.summary,
            )  # fmt: skip
        body: dict[str, Any] = {
            "type": "FeatureCollection",
            "features": features,
            "numberMatched": found.matched,
            "numberReturned": len(features),
            "links": links,
        }
        if facets:
            body["facets"] = buckets
        return _json(body, GEOJSON, user)

    @router.get(f"/collections/{COLLECTION}/items/{{slug}}", include_in_schema=False)
    async def item(request: Request, slug: str) -> Response:
        user, scope = await viewer(ctx, request)
        html = wants_html(request)
        await search.ensure_fresh(ctx)
        assert ctx.index is not None
        row = ctx.index.get(slug, scope)
        if row is None:  # unknown and invisible answer alike: nothing reveals an entry
            raise BadRequest(f"no record {slug[:64]!r} in {COLLECTION!r}", 404)
        origin, base, root = urls(request)
        health = await pages.health_rows(ctx)
        rec = record(
            row, base=base, origin=origin, service_root=root, labels=labels(), health=health
        )
        if html:
            return _html(
                ctx, request, "records_item.html",
                user=user, rec=rec, entry=row.get("entry") or {},
                description_html=pages.render_markdown(str(rec["properties"]["description"])),
                kind_label=pages.KIND_LABELS.get(rec["properties"]["type"], ""),
                visibility_note=pages.visibility_note(rec["properties"]["twinhub:visibility"]),
                items_url=f"{base}collections/{COLLECTION}/items?f=html",
            )  # fmt: skip
        return _json(rec, GEOJSON, user)

    return router


def _toggle_url(here: str, kept: list[tuple[str, str]], name: str, value: str) -> str:
    """The HTML items page with filter ``name=value`` added, or removed when present
    (paging restarts at the first page)."""
    present = (name, value) in kept
    params = [kv for kv in kept if kv != (name, value)]
    if not present:
        params.append((name, value))
    return f"{here}?{urlencode([*params, ('f', 'html')])}"

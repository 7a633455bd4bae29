"""OGC API - Tiles 1.0 (with OGC API - Common's landing page, conformance and collections)
under ``/services/tiles/``, and the ``layers/{item}`` summary the pages read (docs/vizlab.md).

=========================================================  ==================================
``""``                                                     landing page (JSON links; a
                                                           browser's HTML: 302 to ``vizlab``)
``conformance``                                            conformance classes
``tileMatrixSets``, ``tileMatrixSets/{tms}``               the two TMS (OGC 2D TMS 2.0 JSON)
``collections``, ``collections/{item}/{variable}``         one collection per layer
``collections/{item}/{variable}/map/tiles``                its tilesets (one per TMS)
``collections/{item}/{variable}/map/tiles/{tms}``          tileset metadata
``collections/{item}/{variable}/map/tiles/{tms}/{z}/{row}/{col}``  a PNG tile; ``datetime=``,
                                                           ``cmap=``, ``vmin=``, ``vmax=``,
                                                           ``method=``
``layers/{item}``                                          an item's variables, times, ranges,
                                                           zooms, extra dims (for pages)
=========================================================  ==================================

Tiles, views and legends take the layer's other dimensions (levels: ``layers/{item}`` lists
them) as parameters of their names (``?level=500``); without, the first value.
A collection is one layer, ``<item id>/<variable>`` (its id); its tilesets' limits are zoom
0..native + ``max_zoom_beyond_native`` with full row/column ranges, and a tile deeper is
refused with 400 naming the limit; a row/column outside the matrix is 404.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

import twinlab.viz.tms as tmsmod

from ..asgi import BadRequest, service_url
from .access import caller_of
from .context import TilesContext
from .layers import LayerInfo, layer_info, list_layers
from .listing import iso, iso_duration, time_runs
from .params import (
    check_grid,
    check_id,
    check_tms,
    default_range,
    matrix_limits,
    max_zoom,
    native_zoom,
    parse_int,
    parse_style,
    times_iso,
)
from .serve import extra_dims, open_selected, tile_response

JSON = "application/json"
#: Time values one collections document writes at most: beyond it, a layer's times are
#: written as ISO 8601 repeating intervals ``R<n>/<start>/<period>`` with their count.
TIME_VALUES = 50_000
PNG = "image/png"
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
TILES_CONF = "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/"
CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/landing-page",
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-common-2/1.0/conf/collections",
    TILES_CONF + "core",
    TILES_CONF + "tileset",
    TILES_CONF + "tilesets-list",
    TILES_CONF + "geodata-tilesets",
    TILES_CONF + "datetime",
    TILES_CONF + "png",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
]


def link(href: str, rel: str, media: str = JSON, title: str = "", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"href": href, "rel": rel, "type": media}
    if title:
        doc["title"] = title
    doc.update(extra)
    return doc


def prefers_html(request: Request) -> bool:
    """``f=html``, or an Accept naming text/html before (or without) JSON: a browser."""
    f = request.query_params.get("f")
    if f:
        return f == "html"
    accept = request.headers.get("accept", "")
    html, js = accept.find("text/html"), accept.find(JSON)
    return html >= 0 and (js < 0 or html < js)


# -- documents (pure: built from LayerInfos; the routes fetch them) -----------------------------
def landing(base: str) -> dict[str, Any]:
    return {
        "title": "twinhub tiles",
        "description": "Maps of every lake item's variables on their native grids: OGC API - "
        "Tiles, WMTS, OGC API - EDR and the VizLab page.",
        "links": [
            link(base, "self", title="this document"),
            link(base + "conformance", REL + "conformance", title="conformance classes"),
            link(base + "collections", REL + "data", title="the layers (item/variable)"),
            link(base + "tileMatrixSets", REL + "tiling-schemes", title="tile matrix sets"),
            link(
                base + "wmts?SERVICE=WMTS&REQUEST=GetCapabilities",
                "alternate",
                "application/xml",
                "WMTS capabilities",
            ),  # fmt: skip
            link(base + "edr/", "alternate", JSON, "OGC API - EDR"),
            link(base + "vizlab", "alternate", "text/html", "VizLab"),
        ],
    }


def tms_summary(base: str, tms_id: str) -> dict[str, Any]:
    doc = tmsmod.tms_document(tms_id, 0)
    return {
        "id": tms_id,
        "title": doc.get("title", tms_id),
        "uri": doc.get("uri"),
        "links": [link(f"{base}tileMatrixSets/{tms_id}", REL + "tiling-scheme", title=tms_id)],
    }


def layer_base(base: str, info: LayerInfo) -> str:
    return f"{base}collections/{info.item_id}/{info.variable}"


def temporal(info: LayerInfo) -> list[list[str | None]]:
    times = times_iso(info)
    return [[times[0], times[-1]]] if times else [[None, None]]


def temporal_extent(info: LayerInfo, budget: int = TIME_VALUES) -> dict[str, Any]:
    """``interval`` and the times: every one within ``budget``, else ``count`` and, when
    they fit, runs of a constant step as ``R<n>/<start>/<period>`` (a lone time as itself)."""
    out: dict[str, Any] = {"interval": temporal(info)}
    if len(info.times) <= budget:
        out["values"] = times_iso(info)
        return out
    out["count"] = len(info.times)
    runs = time_runs(info.times)
    if len(runs) <= budget:
        out["values"] = [
            iso(t0) if n == 1 else f"R{n}/{iso(t0)}/{iso_duration(step)}" for t0, n, step in runs
        ]
    return out


def collection(base: str, info: LayerInfo, time_budget: int = TIME_VALUES) -> dict[str, Any]:
    here = layer_base(base, info)
    return {
        "id": info.layer_id,
        "title": info.title or info.layer_id,
        "description": info.description,
        "itemId": info.item_id,
        "variable": info.variable,
        "units": info.units,
        "stacCollection": info.collection,
        "extent": {
            "spatial": {"bbox": [list(info.bbox)], "crs": CRS84},
            "temporal": temporal_extent(info, time_budget),
        },
        "links": [
            link(here, "self", title=info.layer_id),
            link(here + "/map/tiles", REL + "tilesets-map", title="map tilesets"),
            link(
                f"{base}legend/{info.item_id}/{info.variable}.png", "describedby", PNG, "legend"
            ),  # fmt: skip
            link(f"{base}edr/collections/{info.item_id}", "alternate", JSON, "OGC API - EDR"),
        ],
    }


def tileset(base: str, info: LayerInfo, tms_id: str, z_max: int) -> dict[str, Any]:
    """The tileset metadata of one layer in one TMS (z 0..z_max, full row/col ranges)."""
    doc = tmsmod.tms_document(tms_id, 0)
    here = f"{layer_base(base, info)}/map/tiles/{tms_id}"
    times = times_iso(info)
    return {
        "title": f"{info.title or info.layer_id} ({tms_id})",
        "dataType": "map",
        "crs": doc.get("crs"),
        "tileMatrixSetURI": doc.get("uri"),
        "tileMatrixSetLimits": [
            {
                "tileMatrix": str(lim["z"]),
                "minTileRow": lim["minrow"],
                "maxTileRow": lim["maxrow"],
                "minTileCol": lim["mincol"],
                "maxTileCol": lim["maxcol"],
            }
            for lim in matrix_limits(tms_id, z_max)
        ],
        "boundingBox": {
            "lowerLeft": list(info.bbox[:2]),
            "upperRight": list(info.bbox[2:]),
            "crs": CRS84,
        },
        "datetime": {"default": times[0] if times else None, "values": times},
        "links": [
            link(here, "self", title=f"{info.layer_id} in {tms_id}"),
            link(f"{base}tileMatrixSets/{tms_id}", REL + "tiling-scheme", title=tms_id),
            link(layer_base(base, info), REL + "geodata", title=info.layer_id),
            link(
                here + "/{tileMatrix}/{tileRow}/{tileCol}", "item", PNG, "PNG tiles", templated=True
            ),  # fmt: skip
        ],
    }


def tilesets(base: str, info: LayerInfo, zooms: dict[str, int]) -> dict[str, Any]:
    out = []
    for tms_id in tmsmod.TMS_IDS:
        doc = tmsmod.tms_document(tms_id, 0)
        here = f"{layer_base(base, info)}/map/tiles/{tms_id}"
        out.append(
            {
                "title": f"{info.layer_id} ({tms_id})",
                "dataType": "map",
                "crs": doc.get("crs"),
                "tileMatrixSetURI": doc.get("uri"),
                "maxTileMatrix": str(zooms[tms_id]),
                "links": [
                    link(here, "self", title=tms_id),
                    link(f"{base}tileMatrixSets/{tms_id}", REL + "tiling-scheme", title=tms_id),
                ],
            }
        )
    return {"tilesets": out, "links": [link(layer_base(base, info) + "/map/tiles", "self")]}


def collections_of(base: str, infos: list[LayerInfo]) -> list[dict[str, Any]]:
    """Blocking: the collections of ``infos``, their times within one ``TIME_VALUES``
    budget for the whole document."""
    out, budget = [], TIME_VALUES
    for info in infos:
        out.append(collection(base, info, max(budget, 0)))
        budget -= len(out[-1]["extent"]["temporal"].get("values", ()))
    return out


# -- the routes ---------------------------------------------------------------------------------
#: Cache-Control of JSON answers that depend on the caller (what they may view) or on the
#: request's host: never kept by shared caches nor stored.
NO_STORE = "private, no-store"
#: Cache-Control of documents the same for everyone, whatever the host (no links in them).
SHARED = "public, max-age=3600"


def _no_store(response: Response) -> None:
    """Every JSON answer of the router is per-user unless its route says otherwise."""
    response.headers["Cache-Control"] = NO_STORE


def router(ctx: TilesContext) -> APIRouter:
    r = APIRouter(dependencies=[Depends(_no_store)])
    p = ctx.prefix

    def zooms(info: LayerInfo, grid: Any = None) -> dict[str, int]:
        return {t: max_zoom(ctx, info, t, grid) for t in tmsmod.TMS_IDS}

    async def one(request: Request, item: str, variable: str) -> LayerInfo:
        check_id(item)
        check_id(variable, "variable")
        infos = await layer_info(ctx, caller_of(request), item, variable)
        if not infos:
            raise BadRequest(f"item {item!r} has no variable {variable!r}", 404)
        return infos[0]

    @r.get(p, include_in_schema=False)
    async def landing_page(request: Request) -> Response:
        if prefers_html(request):
            return RedirectResponse(p + "vizlab", status_code=302)
        return JSONResponse(landing(service_url(request, p)), headers={"Cache-Control": NO_STORE})

    @r.get(p + "conformance", include_in_schema=False)
    async def conformance(response: Response) -> dict[str, Any]:
        response.headers["Cache-Control"] = SHARED
        return {"conformsTo": CONFORMANCE}

    @r.get(p + "tileMatrixSets", include_in_schema=False)
    async def matrix_sets(request: Request) -> dict[str, Any]:
        base = service_url(request, p)
        return {
            "tileMatrixSets": [tms_summary(base, t) for t in tmsmod.TMS_IDS],
            "links": [link(base + "tileMatrixSets", "self")],
        }

    @r.get(p + "tileMatrixSets/{tms_id}", include_in_schema=False)
    async def matrix_set(tms_id: str, response: Response) -> dict[str, Any]:
        check_tms(tms_id)
        response.headers["Cache-Control"] = SHARED
        return tmsmod.tms_document(tms_id)

    @r.get(p + "collections", include_in_schema=False)
    async def collections(request: Request) -> dict[str, Any]:
        base = service_url(request, p)
        infos, truncated = await list_layers(ctx, caller_of(request), ctx.settings.max_layers)
        doc: dict[str, Any] = {
            # in a thread: up to max_layers layers of up to 10k times each
            "collections": await asyncio.to_thread(collections_of, base, infos),
            "links": [link(base + "collections", "self")],
            "numberReturned": len(infos),
        }
        if truncated:
            doc["description"] = (
                f"only the first {len(infos)} layers are listed (TwinhubTiles.max_layers)"
            )
        return doc

    @r.get(p + "collections/{item}/{variable}", include_in_schema=False)
    async def one_collection(request: Request, item: str, variable: str) -> dict[str, Any]:
        return collection(service_url(request, p), await one(request, item, variable))

    @r.get(p + "collections/{item}/{variable}/map/tiles", include_in_schema=False)
    async def tilesets_list(request: Request, item: str, variable: str) -> dict[str, Any]:
        info = await one(request, item, variable)
        return tilesets(service_url(request, p), info, zooms(info))

    @r.get(p + "collections/{item}/{variable}/map/tiles/{tms_id}", include_in_schema=False)
    async def tileset_metadata(
        request: Request, item: str, variable: str, tms_id: str
    ) -> dict[str, Any]:
        check_tms(tms_id)
        info = await one(request, item, variable)
        return tileset(service_url(request, p), info, tms_id, zooms(info)[tms_id])

    @r.get(
        p + "collections/{item}/{variable}/map/tiles/{tms_id}/{z}/{row}/{col}",
        include_in_schema=False,
    )
    async def tile(
        request: Request, item: str, variable: str, tms_id: str, z: str, row: str, col: str
    ) -> Response:
        check_id(item)
        check_id(variable, "variable")
        check_tms(tms_id)
        zi, ri, ci = parse_int("tileMatrix", z), parse_int("tileRow", row), parse_int("tileCol", col)  # fmt: skip
        q = request.query_params
        style = parse_style(q.get("cmap"), q.get("vmin"), q.get("vmax"), q.get("method"))
        return await tile_response(
            request, ctx, item, variable, tms_id, zi, ri, ci, q.get("datetime"), style
        )

    @r.get(p + "layers/{item}", include_in_schema=False)
    async def layers_of(request: Request, item: str) -> dict[str, Any]:
        check_id(item)
        caller = caller_of(request)
        infos = await layer_info(ctx, caller, item)
        if not infos:
            raise BadRequest(f"item {item!r} has no variables to show", 404)
        # each variable is opened (and its range read) below: bounded before any of it
        cap = int(ctx.settings.max_variables)
        if len(infos) > cap:
            raise BadRequest(
                f"item {item!r} has {len(infos)} variables, beyond the limit "
                f"TwinhubTiles.max_variables = {cap}; ask for them one at a time "
                "(collections/{item}/{variable})"
            )
        check_grid(ctx, infos[0])
        base = service_url(request, p)
        variables, opened = [], []
        for info in infos:
            layer = await open_selected(request, ctx, item, info.variable)
            opened.append(layer.info)
            lo, hi = await default_range(ctx, layer)
            grid = layer.field.grid
            variables.append(
                {
                    "variable": info.variable,
                    "layer_id": info.layer_id,
                    "title": info.title,
                    "long_name": layer.field.long_name or info.description,
                    "units": info.units or layer.field.units,
                    "default_range": [lo, hi],
                    "native_zoom": {t: native_zoom(info, t, grid) for t in tmsmod.TMS_IDS},
                    "max_zoom": zooms(info, grid),
                    "extra_dims": await extra_dims(ctx, layer),
                    "tiles": {
                        t: f"{layer_base(base, info)}/map/tiles/{t}/{{z}}/{{y}}/{{x}}"
                        for t in tmsmod.TMS_IDS
                    },
                    "legend": f"{base}legend/{info.item_id}/{info.variable}.png",
                }
            )
        # the data's own valid times (what ``datetime=``/``TIME`` must name)
        first = opened[0]
        times = times_iso(first)
        return {
            "item_id": item,
            "collection": first.collection,
            "title": first.title,
            "public": first.public,
            "bbox": list(first.bbox),
            "grid": first.grid,
            "times": times,
            "default_time": times[0] if times else None,
            "variables": variables,
        }

    return r

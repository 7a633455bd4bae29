"""WMTS 1.0.0 at ``/services/tiles/wmts``: KVP and RESTful encodings (docs/vizlab.md).

=======================================================================  ======================
``wmts?SERVICE=WMTS&REQUEST=GetCapabilities``                            the capabilities
``wmts?SERVICE=WMTS&REQUEST=GetTile&LAYER=<item>/<var>&STYLE=default``   a 256x256 PNG
``&FORMAT=image/png&TILEMATRIXSET=..&TILEMATRIX=z&TILEROW=..&TILECOL=..``
``[&TIME=<ISO instant>][&cmap=&vmin=&vmax=&method=][&<dim>=]``           (vendor parameters)
``wmts/1.0.0/WMTSCapabilities.xml``                                      the same document
``wmts/1.0.0/{item}/{var}/{style}/{time}/{tms}/{z}/{row}/{col}.png``     the same tile
=======================================================================  ======================

One layer per lake item and variable the caller may view (``<item id>/<variable>``), each
with a ``time`` dimension (its valid times; the default is the first), the ``default``
style (its LegendURL is ``legend/<item>/<variable>.png``), both tile matrix sets
(WebMercatorQuad, WorldCRS84Quad) limited to zoom native + ``max_zoom_beyond_native``.
Parameter names are case-insensitive (values are not). Errors are OWS 1.1 exception
reports (``application/xml``) with the HTTP status of the refusal: 400 for bad or missing
parameters, a refused limit and ``TileOutOfRange``; 401/403 for access; 404 for an item
that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from lxml import etree
from lxml.builder import ElementMaker

import twinlab.viz.tms as tmsmod

from ..asgi import BadRequest, service_url
from .access import caller_of
from .context import TilesContext
from .layers import LayerInfo, list_layers
from .listing import iso, iso_duration, plain_text, time_runs
from .metrics import REFUSAL_STATE
from .params import (
    Style,
    TileOutOfRange,
    check_id,
    matrix_limits,
    max_zoom,
    parse_int,
    parse_style,
    query,
    split_layer_id,
    times_iso,
)
from .serve import tile_response

log = logging.getLogger("twinhub.tiles.wmts")

WMTS_NS = "http://www.opengis.net/wmts/1.0"
OWS_NS = "http://www.opengis.net/ows/1.1"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA = "http://www.opengis.net/wmts/1.0 http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"  # fmt: skip
XML_MEDIA = "application/xml"
PNG = "image/png"
STYLE = "default"
#: WMTS's names of the two tile matrix sets' CRSs (axis order as the TopLeftCorner's).
SUPPORTED_CRS = {
    "WebMercatorQuad": "urn:ogc:def:crs:EPSG::3857",
    "WorldCRS84Quad": "urn:ogc:def:crs:OGC:1.3:CRS84",
}
WELL_KNOWN = {
    "WebMercatorQuad": "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible",
    "WorldCRS84Quad": "urn:ogc:def:wkss:OGC:1.0:GoogleCRS84Quad",
}
#: Time values (``Value`` elements) one capabilities document writes at most: beyond it, a
#: layer's times are written as ``start/end/period`` runs (WMTS 1.0.0 Dimension values).
TIME_VALUES = 50_000

#: The GetTile parameters a client must send (TIME and the style's are optional).
REQUIRED = ("layer", "tilematrixset", "tilematrix", "tilerow", "tilecol")

W = ElementMaker(namespace=WMTS_NS, nsmap={None: WMTS_NS, "ows": OWS_NS, "xlink": XLINK_NS, "xsi": XSI_NS})  # fmt: skip
O = ElementMaker(namespace=OWS_NS)  # noqa: E741 (the OWS namespace, as in the standard)
HREF = f"{{{XLINK_NS}}}href"


class OwsError(BadRequest):
    """A refusal with its OWS exception code and locator."""

    def __init__(self, message: str, code: str, locator: str = "", status: int = 400) -> None:
        super().__init__(message, status)
        self.code = code
        self.locator = locator


# -- errors -----------------------------------------------------------------------------------
def exception_report(code: str, message: str, locator: str = "") -> bytes:
    """An OWS 1.1 ExceptionReport with one Exception."""
    E = ElementMaker(namespace=OWS_NS, nsmap={"ows": OWS_NS})
    # messages quote what the client or an item sent: only XML 1.0 characters
    exc = E.Exception(E.ExceptionText(plain_text(message, 4000)), exceptionCode=code)
    if locator:
        exc.set("locator", plain_text(locator, 100))
    root = E.ExceptionReport(exc, version="1.1.0")
    root.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def as_ows(e: BadRequest, locator: str = "") -> OwsError:
    """``e`` with an OWS code: kept if it has one, else by what it is."""
    if isinstance(e, OwsError):
        return e
    if isinstance(e, TileOutOfRange):
        return OwsError(e.message, "TileOutOfRange", e.locator, 400)
    if e.status == 400:
        return OwsError(e.message, "InvalidParameterValue", locator, 400)
    if e.status == 404:
        return OwsError(e.message, "InvalidParameterValue", locator or "LAYER", 404)
    return OwsError(e.message, "NoApplicableCode", locator, e.status)


def error_response(request: Request, e: BadRequest, locator: str = "") -> Response:
    ows = as_ows(e, locator)
    # app.py's metrics: a limit named in a 400 counts as one
    reason = {401: "auth", 403: "forbidden", 404: "not_found", 413: "limit"}.get(ows.status)
    if reason is None:
        reason = "limit" if "limit" in ows.message else "bad_request"
    request.scope.setdefault("state", {})[REFUSAL_STATE] = reason
    headers = {k.decode(): v.decode() for k, v in e.headers}
    if ows.status == 401:
        headers["WWW-Authenticate"] = 'token realm="jupyterhub"'
    return Response(
        exception_report(ows.code, ows.message, ows.locator),
        status_code=ows.status,
        media_type=XML_MEDIA,
        headers=headers or None,
    )


def located(locator: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, its refusal located at parameter ``locator``."""
    try:
        return fn(*args)
    except OwsError:
        raise
    except BadRequest as e:
        raise as_ows(e, locator) from None


# -- the capabilities -------------------------------------------------------------------------
def _get(href: str, encoding: str) -> Any:
    return O.Get(O.Constraint(O.AllowedValues(O.Value(encoding)), name="GetEncoding"), {HREF: href})


def _operation(name: str, kvp: str, rest: str) -> Any:
    return O.Operation(O.DCP(O.HTTP(_get(kvp, "KVP"), _get(rest, "RESTful"))), name=name)


def _tile_template(base: str, info: LayerInfo) -> str:
    time = "{time}" if info.times else "default"
    return (
        f"{base}wmts/1.0.0/{info.item_id}/{info.variable}/{{Style}}/{time}/"
        "{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}.png"
    )


def time_values(info: LayerInfo, budget: int) -> list[str]:
    """The layer's ``time`` Dimension values: every time if they fit ``budget``, else runs
    of a constant step as ``start/end/period`` (a lone time as itself); if even those do
    not fit, the whole span as one ``start/end/period`` of the shortest step."""
    if len(info.times) <= budget:
        return times_iso(info)
    runs = time_runs(info.times)
    out = [
        iso(t0) if n == 1 else f"{iso(t0)}/{iso(t0 + (n - 1) * step)}/{iso_duration(step)}"
        for t0, n, step in runs
    ]
    if len(out) <= max(budget, 1):
        return out
    step = min(b - a for a, b in zip(info.times, info.times[1:], strict=False))
    return [f"{iso(info.times[0])}/{iso(info.times[-1])}/{iso_duration(step)}"]


def layer_element(
    base: str, info: LayerInfo, zooms: dict[str, int], time_budget: int = TIME_VALUES
) -> Any:
    """One ``Layer`` (elements in the schema's order). Every text from the item goes through
    :func:`.listing.plain_text` (only XML 1.0 characters: others make lxml raise); its
    time values within ``time_budget`` (see :func:`time_values`)."""
    w, s, e, n = info.bbox
    abstract = info.description or f"{info.variable} of item {info.item_id}"
    if info.units:
        abstract += f" ({info.units})"
    legend = plain_text(f"{base}legend/{info.item_id}/{info.variable}.png")
    layer = W.Layer(
        O.Title(plain_text(info.title or info.layer_id)),
        O.Abstract(plain_text(abstract)),
        O.WGS84BoundingBox(O.LowerCorner(f"{w:g} {s:g}"), O.UpperCorner(f"{e:g} {n:g}")),
        O.Identifier(plain_text(info.layer_id)),
        W.Style(
            O.Title("default"),
            O.Identifier(STYLE),
            W.LegendURL({HREF: legend, "format": PNG}),
            isDefault="true",
        ),
        W.Format(PNG),
    )
    if info.times:
        layer.append(
            W.Dimension(
                O.Identifier("time"),
                O.UOM("ISO8601"),
                W.Default(iso(info.times[0])),
                *(W.Value(t) for t in time_values(info, time_budget)),
            )
        )
    for tms_id in tmsmod.TMS_IDS:
        limits = W.TileMatrixSetLimits(
            *(
                W.TileMatrixLimits(
                    W.TileMatrix(str(lim["z"])),
                    W.MinTileRow(str(lim["minrow"])),
                    W.MaxTileRow(str(lim["maxrow"])),
                    W.MinTileCol(str(lim["mincol"])),
                    W.MaxTileCol(str(lim["maxcol"])),
                )
                for lim in matrix_limits(tms_id, zooms[tms_id])
            )
        )
        layer.append(W.TileMatrixSetLink(W.TileMatrixSet(tms_id), limits))
    template = plain_text(_tile_template(base, info))
    layer.append(W.ResourceURL(format=PNG, resourceType="tile", template=template))
    return layer


def tile_matrix_set_element(tms_id: str, z_max: int) -> Any:
    """A ``TileMatrixSet`` 0..z_max from the OGC 2D TMS definition; TopLeftCorner in the
    CRS's axis order (EPSG:3857 x y, CRS84 lon lat)."""
    doc = tmsmod.tms_document(tms_id, z_max)
    matrices = []
    for m in doc["tileMatrices"][: z_max + 1]:
        z = int(m["id"])
        west, _south, _east, north = tmsmod.tile_bounds_crs(tms_id, z, 0, 0)
        matrices.append(
            W.TileMatrix(
                O.Identifier(str(m["id"])),
                W.ScaleDenominator(repr(float(m["scaleDenominator"]))),
                W.TopLeftCorner(f"{west!r} {north!r}"),
                W.TileWidth(str(m["tileWidth"])),
                W.TileHeight(str(m["tileHeight"])),
                W.MatrixWidth(str(m["matrixWidth"])),
                W.MatrixHeight(str(m["matrixHeight"])),
            )
        )
    return W.TileMatrixSet(
        O.Title(str(doc.get("title") or tms_id)),
        O.Identifier(tms_id),
        O.SupportedCRS(SUPPORTED_CRS[tms_id]),
        W.WellKnownScaleSet(WELL_KNOWN[tms_id]),
        *matrices,
    )


def capabilities(
    base: str,
    infos: Iterable[LayerInfo],
    zoom_of: Callable[[LayerInfo, str], int],
    truncated: bool = False,
) -> bytes:
    """The GetCapabilities document for ``infos`` (``zoom_of(info, tms)``: the layer's
    deepest zoom); ``base``: the service's URL, ending in ``/``."""
    infos = list(infos)
    kvp, rest = f"{base}wmts?", f"{base}wmts/1.0.0/WMTSCapabilities.xml"
    abstract = (
        "Every lake item's variables on their native grids (HEALPix, octahedral, Gaussian, "
        "lat-lon), rendered without regridding."
    )
    if truncated:
        abstract += (
            f" Only the first {len(infos)} layers are listed (TwinhubTiles.max_layers); "
            "the OGC API collections and item pages reach the others."
        )
    zooms = {i.layer_id: {t: zoom_of(i, t) for t in tmsmod.TMS_IDS} for i in infos}
    layers, budget = [], TIME_VALUES
    for info in infos:
        try:  # one item's text or metadata never fails everyone's document
            layers.append(layer_element(base, info, zooms[info.layer_id], budget))
            budget -= len(layers[-1].findall(f"{{{WMTS_NS}}}Dimension/{{{WMTS_NS}}}Value"))
        except Exception as e:
            log.warning("layer %.120r left out of capabilities: %s: %.200s", info.layer_id, type(e).__name__, e)  # fmt: skip
    root = W.Capabilities(
        O.ServiceIdentification(
            O.Title("twinhub tiles"),
            O.Abstract(abstract),
            O.ServiceType("OGC WMTS"),
            O.ServiceTypeVersion("1.0.0"),
        ),
        O.OperationsMetadata(
            _operation("GetCapabilities", kvp, rest),
            _operation("GetTile", kvp, f"{base}wmts/1.0.0/"),
        ),
        W.Contents(
            *layers,
            *(
                tile_matrix_set_element(t, max((z[t] for z in zooms.values()), default=0))
                for t in tmsmod.TMS_IDS
            ),
        ),
        W.ServiceMetadataURL({HREF: rest}),
        version="1.0.0",
    )
    root.set(f"{{{XSI_NS}}}schemaLocation", SCHEMA)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


# -- GetTile ----------------------------------------------------------------------------------
def check_format(raw: str | None) -> None:
    if raw and raw.lower() != PNG:
        raise OwsError(f"unknown FORMAT {raw[:64]!r}: this service has {PNG}", "InvalidParameterValue", "FORMAT")  # fmt: skip


def check_style(raw: str | None) -> None:
    if raw and raw != STYLE:
        raise OwsError(f"unknown STYLE {raw[:64]!r}: the layers have {STYLE!r}", "InvalidParameterValue", "STYLE")  # fmt: skip


def vendor_style(q: Any) -> Style:
    """The vendor parameters cmap, vmin, vmax, method."""
    try:
        return parse_style(q.get("cmap"), q.get("vmin"), q.get("vmax"), q.get("method"))
    except BadRequest as e:
        word = e.message.split(" ", 2)
        locator = word[1] if word[0] == "unknown" else word[0]
        raise OwsError(e.message, "InvalidParameterValue", locator) from None


def router(ctx: TilesContext) -> APIRouter:
    r = APIRouter()
    p = ctx.prefix

    async def capabilities_response(request: Request) -> Response:
        infos, truncated = await list_layers(ctx, caller_of(request), ctx.settings.max_layers)
        base = service_url(request, p)

        def build() -> bytes:  # in a thread: thousands of layers and times are no loop work
            kept, zooms = [], {}
            for info in infos:
                try:
                    zooms[info.layer_id] = {t: max_zoom(ctx, info, t) for t in tmsmod.TMS_IDS}
                    kept.append(info)
                except Exception as e:  # one item's bad grid never fails the document
                    log.warning("layer %.120r left out of capabilities: %.200s", info.layer_id, e)  # fmt: skip
            return capabilities(base, kept, lambda i, t: zooms[i.layer_id][t], truncated)

        doc = await asyncio.to_thread(build)
        return Response(doc, media_type=XML_MEDIA, headers={"Cache-Control": "private, no-cache"})

    async def get_tile(request: Request, q: Any) -> Response:
        missing = [k.upper() for k in REQUIRED if not q.get(k)]
        if missing:
            raise OwsError(f"GetTile needs {', '.join(missing)}", "MissingParameterValue", missing[0])  # fmt: skip
        item, variable = located("LAYER", split_layer_id, q["layer"])
        check_style(q.get("style"))
        check_format(q.get("format"))
        tms_id = q["tilematrixset"]
        z = located("TILEMATRIX", parse_int, "TILEMATRIX", q["tilematrix"])
        row = located("TILEROW", parse_int, "TILEROW", q["tilerow"])
        col = located("TILECOL", parse_int, "TILECOL", q["tilecol"])
        style = vendor_style(q)
        return await _tile(request, item, variable, tms_id, z, row, col, q.get("time"), style)

    async def _tile(request: Request, item: str, variable: str, tms_id: str, z: int, row: int,
                    col: int, time: str | None, style: Style) -> Response:  # fmt: skip
        if tms_id not in tmsmod.TMS_IDS:
            raise OwsError(
                f"unknown TILEMATRIXSET {tms_id[:64]!r}: use one of {', '.join(tmsmod.TMS_IDS)}",
                "InvalidParameterValue",
                "TILEMATRIXSET",
            )
        try:
            return await tile_response(request, ctx, item, variable, tms_id, z, row, col, time, style)  # fmt: skip
        except OwsError:
            raise
        except BadRequest as e:
            if isinstance(e, TileOutOfRange):
                raise as_ows(e) from None
            msg = e.message
            locator = "TIME" if "time" in msg.lower() and e.status == 400 else ""
            if "zoom" in msg and e.status == 400:
                locator = "TILEMATRIX"
            raise as_ows(e, locator) from None

    @r.get(p + "wmts", include_in_schema=False)
    async def kvp(request: Request) -> Response:
        q = query(request)
        try:
            service = q.get("service", "")
            if service.upper() != "WMTS":
                if not service:
                    raise OwsError("SERVICE=WMTS is required", "MissingParameterValue", "SERVICE")  # fmt: skip
                raise OwsError(f"unknown SERVICE {service[:32]!r}: this is WMTS", "InvalidParameterValue", "SERVICE")  # fmt: skip
            req = q.get("request", "")
            version = q.get("version") or q.get("acceptversions")
            if version and "1.0.0" not in version.split(","):
                raise OwsError(f"unknown VERSION {version[:32]!r}: this is WMTS 1.0.0", "VersionNegotiationFailed", "VERSION")  # fmt: skip
            if req.lower() == "getcapabilities":
                return await capabilities_response(request)
            if req.lower() == "gettile":
                return await get_tile(request, q)
            if not req:
                raise OwsError("REQUEST is required (GetCapabilities or GetTile)", "MissingParameterValue", "REQUEST")  # fmt: skip
            raise OwsError(
                f"unknown REQUEST {req[:32]!r}: use GetCapabilities or GetTile (legends: each "
                "layer style's LegendURL)",
                "OperationNotSupported",
                "REQUEST",
            )
        except BadRequest as e:
            return error_response(request, e)

    @r.get(p + "wmts/1.0.0/WMTSCapabilities.xml", include_in_schema=False)
    async def rest_capabilities(request: Request) -> Response:
        try:
            return await capabilities_response(request)
        except BadRequest as e:
            return error_response(request, e)

    @r.get(
        p + "wmts/1.0.0/{item}/{variable}/{style}/{time}/{tms_id}/{z}/{row}/{col}.png",
        include_in_schema=False,
    )
    async def rest_tile(request: Request, item: str, variable: str, style: str, time: str,
                        tms_id: str, z: str, row: str, col: str) -> Response:  # fmt: skip
        try:
            located("LAYER", check_id, item)
            located("LAYER", check_id, variable, "variable")
            check_style(style)
            zi = located("TILEMATRIX", parse_int, "TileMatrix", z)
            ri = located("TILEROW", parse_int, "TileRow", row)
            ci = located("TILECOL", parse_int, "TileCol", col)
            vendor = vendor_style(query(request))
            return await _tile(request, item, variable, tms_id, zi, ri, ci, time, vendor)
        except BadRequest as e:
            return error_response(request, e)

    return r

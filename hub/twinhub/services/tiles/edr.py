"""OGC API - Environmental Data Retrieval 1.1 at ``/services/tiles/edr/``: the lake's items as
collections, ``position`` and ``area`` queries answered with the native cells' own values as
CoverageJSON (docs/vizlab.md).

==============================================  ==================================================
``GET edr/``                                    landing page (links)
``GET edr/conformance``                         the conformance classes
``GET edr/collections``                         the items the caller may view (one collection each)
``GET edr/collections/{item}``                  extent, parameters, data queries
``GET edr/collections/{item}/position``         ``coords=POINT(lon lat)``: the native cell holding
                                                (HEALPix) or nearest to (other grids) the point,
                                                over the selected times: ``PointSeries``
``GET edr/collections/{item}/area``             ``coords=POLYGON((lon lat, ...))``: every native
                                                cell whose centre is inside: ``MultiPointSeries``
==============================================  ==================================================

Query parameters: ``parameter-name=a,b`` (absent: all the item's variables; OWSLib's
``parameter_names`` is read the same), ``datetime=``
(an instant that must be a valid time, ``a/b``, ``../b``, ``a/..``; absent: every time),
``z=`` (a value of the one dimension besides time and the grid, a level) or that dimension
by name (``level=850``; absent: its first value; the domain's ``twinhub:selection`` says),
``crs`` (CRS84 only), ``f`` (CoverageJSON, or json for ``application/json``). Who may see an
item is :mod:`.layers`'s decision (401/403/404); limits (``TwinhubTiles.max_time_steps``,
``max_edr_area_deg2``, ``max_edr_cells``) refuse with a 400 naming the setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from twinlab.grids.ops import polygon_cells
from twinlab.viz.locate import cell_centers, nearest_index

from ..asgi import BadRequest, service_url
from . import coveragejson as cj
from . import layers, listing
from .access import caller_of
from .context import TilesContext
from .gridsize import check_cells as check_grid_cells
from .serve import open_selected, selected_values
from .wkt import Point, Polygon, WktError
from .wkt import parse as parse_wkt

JSON_MEDIA = "application/json"
CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-common-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-common-2/1.0/conf/collections",
    # 1.1 answers 1.0's clients the same (position/area, CoverageJSON): both are named
    "http://www.opengis.net/spec/ogcapi-edr-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-edr-1/1.0/conf/collections",
    "http://www.opengis.net/spec/ogcapi-edr-1/1.0/conf/json",
    "http://www.opengis.net/spec/ogcapi-edr-1/1.0/conf/covjson",
    "http://www.opengis.net/spec/ogcapi-edr-1/1.1/conf/core",
    "http://www.opengis.net/spec/ogcapi-edr-1/1.1/conf/collections",
    "http://www.opengis.net/spec/ogcapi-edr-1/1.1/conf/json",
    "http://www.opengis.net/spec/ogcapi-edr-1/1.1/conf/covjson",
    "http://www.opengis.net/spec/ogcapi-edr-1/1.1/conf/queries",
)
TRS = "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"
#: ``f=`` values of data queries -> media type.
DATA_FORMATS = {"coveragejson": cj.MEDIA_TYPE, "covjson": cj.MEDIA_TYPE, "json": JSON_MEDIA}
MAX_PARAMETERS = 64
MAX_DATETIME_CHARS = 100
#: A collection lists its valid times one by one up to this many.
MAX_LISTED_TIMES = 1000


# -- request parts ---------------------------------------------------------------------------
def check_item_id(item: str) -> str:
    """The one rule of every route of the service (:func:`.listing.check_item_id`)."""
    return listing.check_item_id(item)


def parameter_names(
    text: str | None, available: Sequence[str], max_variables: int = MAX_PARAMETERS
) -> list[str]:
    """``parameter-name`` -> the variables asked for (absent: all), each one of ``available``;
    more than ``max_variables`` (each is opened and read) -> 400 naming the limit."""
    limit = f"TwinhubTiles.max_variables = {max_variables}"
    if text is None or not text.strip():
        if len(available) > max_variables:
            raise BadRequest(
                f"this item has {len(available)} parameters, beyond the limit {limit}: "
                "name those you want with parameter-name",
                400,
            )
        return list(available)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if len(set(names)) > max_variables:
        raise BadRequest(
            f"parameter-name lists {len(set(names))} names, beyond the limit {limit}", 400
        )
    unknown = [n for n in names if n not in available]
    if unknown:
        raise BadRequest(
            f"unknown parameter-name {', '.join(repr(n[:64]) for n in unknown)}; "
            f"this item's parameters: {', '.join(available) or '(none)'}",
            400,
        )
    return list(dict.fromkeys(names))


def _instant(text: str, whole: str) -> np.datetime64:
    t = text.strip()
    try:
        d = datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise BadRequest(
            f"datetime {whole!r}: {t[:40]!r} is not an RFC 3339 instant "
            "(e.g. 2024-01-01T00:00:00Z, a/b, ../b, a/..)",
            400,
        ) from None
    try:  # (an offset can push 9999-12-31 past datetime's range)
        d = d.astimezone(UTC).replace(tzinfo=None) if d.tzinfo else d
    except OverflowError:
        d = None
    if d is None or not 1678 <= d.year <= 2261:  # datetime64[ns] wraps outside these
        raise BadRequest(f"datetime {whole[:80]!r}: {t[:40]!r} is outside the years 1678-2261", 400)
    return np.datetime64(d, "ns")


def _valid_range(times: np.ndarray) -> str:
    if times.size == 0:
        return "no valid times"
    first, last = cj.iso_times([times[0], times[-1]])
    return f"valid times: {first} .. {last} ({times.size} steps)"


def select_times(times: np.ndarray | None, text: str | None, max_steps: int) -> np.ndarray | None:
    """Indices (ascending) of the valid ``times`` (datetime64, ascending) that ``datetime``
    selects; None for a timeless field. Refusals (400) name the valid range or the limit."""
    if times is None:
        if text:
            raise BadRequest(f"datetime {text[:40]!r}: this item has no time axis", 400)
        return None
    times = np.asarray(times, dtype="datetime64[ns]")
    if text is None or not text.strip():
        chosen = np.arange(times.size)
        what = "all times (no datetime given)"
    else:
        if len(text) > MAX_DATETIME_CHARS:
            raise BadRequest(f"datetime is longer than {MAX_DATETIME_CHARS} characters", 400)
        parts = text.split("/")
        if len(parts) > 2:
            raise BadRequest(f"datetime {text!r} must be an instant or start/end", 400)
        if len(parts) == 1:
            t = _instant(parts[0], text)
            chosen = np.nonzero(times == t)[0]
            if chosen.size == 0:
                raise BadRequest(
                    f"datetime {text!r} is not a valid time of this item; {_valid_range(times)}",
                    400,
                )
            return chosen[:1]
        lo_text, hi_text = (p.strip() for p in parts)
        if lo_text in ("", "..") and hi_text in ("", ".."):
            raise BadRequest(f"datetime {text!r} has no start and no end", 400)
        lo = None if lo_text in ("", "..") else _instant(lo_text, text)
        hi = None if hi_text in ("", "..") else _instant(hi_text, text)
        if lo is not None and hi is not None and lo > hi:
            raise BadRequest(f"datetime {text!r}: start is after end", 400)
        keep = np.ones(times.size, dtype=bool)
        if lo is not None:
            keep &= times >= lo
        if hi is not None:
            keep &= times <= hi
        chosen = np.nonzero(keep)[0]
        if chosen.size == 0:
            raise BadRequest(
                f"datetime {text!r} holds no valid time of this item; {_valid_range(times)}", 400
            )
        what = f"datetime {text!r}"
    if chosen.size > max_steps:
        raise BadRequest(
            f"{what} selects {chosen.size} time steps, beyond the limit "
            f"TwinhubTiles.max_time_steps = {max_steps}; ask for a shorter datetime interval",
            400,
        )
    return chosen


def data_media(f: str | None) -> str:
    if f is None or not f.strip():
        return cj.MEDIA_TYPE
    media = DATA_FORMATS.get(f.strip().lower())
    if media is None:
        raise BadRequest(f"f={f[:40]!r} is not an output format here: CoverageJSON or json", 400)
    return media


def check_crs(crs: str | None) -> None:
    if crs and crs.strip() not in ("CRS84", cj.CRS84, "EPSG:4326", "OGC:CRS84"):
        raise BadRequest(f"crs {crs[:80]!r} is not supported: CRS84 only (lon lat degrees)", 400)


def check_metadata_format(f: str | None) -> None:
    if f and f.strip().lower() not in ("json", "application/json"):
        raise BadRequest(f"f={f[:40]!r} is not a format here: json", 400)


def _link(href: str, rel: str, media: str = JSON_MEDIA, title: str = "") -> dict[str, str]:
    doc = {"href": href, "rel": rel, "type": media}
    if title:
        doc["title"] = title
    return doc


# -- documents -------------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    """Equal values of a dimension (NaN, a level of its own, equals itself)."""
    return bool(a == b) or (a != a and b != b)


def collection_document(infos: Sequence[Any], edr: str) -> dict[str, Any]:
    """One item's collection (``infos``: its :class:`~.layers.LayerInfo`, one per variable).
    ``edr``: the EDR root URL ending in ``/``. Built from the STAC item alone (no data read)."""
    first = infos[0]
    item = first.item_id
    # a layer's title is "<item title>: <variable's description>" (listing.layer_infos)
    suffix = f": {first.description or first.variable}"
    title = first.title.removesuffix(suffix) if first.title.endswith(suffix) else first.title
    title = title or item
    here = f"{edr}collections/{item}"
    times = cj.iso_times(first.times)
    extent: dict[str, Any] = {"spatial": {"bbox": [list(first.bbox)], "crs": cj.CRS84}}
    if times:
        extent["temporal"] = {"interval": [[times[0], times[-1]]], "trs": TRS}
        if len(times) <= MAX_LISTED_TIMES:  # (longer lists: the interval says enough)
            extent["temporal"]["values"] = times
    crs_details = [{"crs": "CRS84", "wkt": 'GEOGCS["WGS 84",DATUM["WGS_1984"],UNIT["degree",0.0174532925199433]]'}]  # fmt: skip
    queries = {}
    for query, example in (("position", "POINT(lon lat)"), ("area", "POLYGON((lon lat, ...))")):
        queries[query] = {
            "link": {
                "href": f"{here}/{query}?coords={{coords}}",
                "rel": "data",
                "templated": True,
                "variables": {
                    "title": f"{query.capitalize()} query",
                    "description": f"coords={example} (CRS84); z=<level> for a variable "
                    "with levels (their values: the tiles service's layers/<item>)",
                    "query_type": query,
                    "coords": example,
                    "output_formats": ["CoverageJSON"],
                    "default_output_format": "CoverageJSON",
                    "crs_details": crs_details,
                },
            }
        }
    params = {}
    for info in infos:
        label = info.description or info.variable
        p: dict[str, Any] = {
            "type": "Parameter",
            "id": info.variable,
            "description": label,
            "observedProperty": {"id": info.variable, "label": label},
        }
        if info.units:
            p["unit"] = {"label": info.units, "symbol": info.units}
        params[info.variable] = p
    return {
        "id": item,
        "title": title,
        "description": f"{title} (collection {first.collection}): "
        + "; ".join(f"{i.variable}: {i.description or i.variable}" for i in infos),
        "links": [
            _link(here, "self"),
            _link(f"{edr}collections", "collection", title="all collections"),
            _link(f"{here}/position?coords={{coords}}", "data", cj.MEDIA_TYPE, "position query"),
            _link(f"{here}/area?coords={{coords}}", "data", cj.MEDIA_TYPE, "area query"),
        ],
        "extent": extent,
        "data_queries": queries,
        "crs": ["CRS84"],
        "output_formats": ["CoverageJSON"],
        "parameter_names": params,
        "twinhub:grid": first.grid,
        "twinhub:public": first.public,
    }


def _grouped(infos: Sequence[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for info in infos:
        out.setdefault(info.item_id, []).append(info)
    return out


# -- the reads (in the render pool) ----------------------------------------------------------
def check_cost(
    fields: dict[str, Any], index: np.ndarray, t_idx: np.ndarray | None, max_bytes: int
) -> int:
    """Bytes of data chunks reading ``index`` at ``t_idx`` of every field decodes (a point's
    series: one chunk per time block, a whole field each when chunks are whole fields);
    over ``max_bytes`` -> 400 naming ``TwinhubTiles.max_series_bytes``, before any read."""
    times = [0] if t_idx is None else t_idx
    total = sum(int(f.series_bytes(index, times)) for f in fields.values())
    if total > max_bytes:
        nt = len(times)
        raise BadRequest(
            f"this query decodes {total} bytes of data chunks ({len(fields)} parameter(s) x "
            f"{nt} time step(s)), beyond the limit TwinhubTiles.max_series_bytes = "
            f"{max_bytes}; ask for fewer times (datetime=a/b) or parameters",
            400,
        )
    return total


def _position_read(
    fields: dict[str, Any], lon: float, lat: float, t_idx: np.ndarray | None, max_bytes: int
) -> dict:
    """``fields``: parameter name -> Field (the name asked for: a GRIB variable's name in
    the data may differ). ``max_bytes``: :func:`check_cost`'s budget."""
    grid = next(iter(fields.values())).grid
    wrapped = (lon + 180.0) % 360.0 - 180.0
    index = np.asarray(nearest_index(grid, np.array([wrapped]), np.array([lat])), dtype=np.int64)
    check_cost(fields, index, t_idx, max_bytes)
    clon, clat = cell_centers(grid, index)
    out = {}
    for name, f in fields.items():
        if t_idx is None:
            out[name] = np.asarray(f.read(0, index), dtype=np.float64).reshape(1)
        else:
            out[name] = np.asarray(f.read_series(index, t_idx), dtype=np.float64)[:, 0]
    return {
        "values": out,
        "cell": {"index": int(index[0]), "lon": float(clon[0]), "lat": float(clat[0])},
    }


def _area_cells(grid: Any, polygon: Polygon) -> np.ndarray:
    try:
        return np.asarray(polygon_cells(grid, polygon.vertices), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"coords: {e}", 400) from None


def _area_read(
    fields: dict[str, Any], cells: np.ndarray, t_idx: np.ndarray | None, max_bytes: int
) -> dict:
    check_cost(fields, cells, t_idx, max_bytes)
    lons, lats = cell_centers(next(iter(fields.values())).grid, cells)
    out = {}
    for name, f in fields.items():
        if t_idx is None:
            out[name] = np.asarray(f.read(0, cells), dtype=np.float64)
        else:
            out[name] = np.asarray(f.read_series(cells, t_idx), dtype=np.float64)
    return {"values": out, "lons": lons, "lats": lats}


# -- routes ----------------------------------------------------------------------------------
def router(ctx: TilesContext) -> APIRouter:
    """The EDR routes, full paths under ``ctx.prefix``."""
    r = APIRouter()
    p = ctx.prefix + "edr"
    settings = ctx.settings

    def edr_root(request: Request) -> str:
        return service_url(request, ctx.prefix) + "edr/"

    def answer(doc: dict[str, Any]) -> JSONResponse:
        # per user (what they may view) and per host (links): never shared nor stored
        return JSONResponse(doc, headers={"Cache-Control": "private, no-store"})

    @r.get(p)
    @r.get(p + "/")
    async def landing(request: Request, f: str | None = None) -> JSONResponse:
        check_metadata_format(f)
        root = edr_root(request)
        return answer(
            {
                "title": "twinhub OGC API - EDR",
                "description": "Values of the data lake's items at their native grid cells: "
                "position (a point's time series) and area queries, as CoverageJSON.",
                "links": [
                    _link(root, "self", title="this document"),
                    _link(f"{root}conformance", "conformance", title="conformance classes"),
                    _link(f"{root}collections", "data", title="the lake's items"),
                ],
            }
        )

    @r.get(p + "/conformance")
    async def conformance(f: str | None = None) -> JSONResponse:
        check_metadata_format(f)
        return answer({"conformsTo": list(CONFORMANCE)})

    @r.get(p + "/collections")
    async def collections(request: Request, f: str | None = None) -> JSONResponse:
        check_metadata_format(f)
        root = edr_root(request)
        infos, truncated = await layers.list_layers(ctx, caller_of(request), settings.max_layers)
        docs = [collection_document(group, root) for group in _grouped(infos).values()]
        doc: dict[str, Any] = {
            "links": [_link(f"{root}collections", "self")],
            "collections": docs,
        }
        if truncated:
            doc["twinhub:truncated"] = (
                f"only the first {settings.max_layers} layers (TwinhubTiles.max_layers)"
            )
        return answer(doc)

    @r.get(p + "/collections/{item}")
    async def collection(request: Request, item: str, f: str | None = None) -> JSONResponse:
        check_metadata_format(f)
        infos = await layers.layer_info(ctx, caller_of(request), check_item_id(item))
        if not infos:
            raise BadRequest(f"item {item!r} has no variable to query", 404)
        return answer(collection_document(infos, edr_root(request)))

    async def asked(request: Request, item: str) -> list[str]:
        """The variables asked for, access-checked (401/403/404 before any limit)."""
        infos = await layers.layer_info(ctx, caller_of(request), check_item_id(item))
        q = request.query_params
        # "parameter_names": what OWSLib's EDR client sends for the standard's parameter-name
        asked_for = q.get("parameter-name", q.get("parameter_names"))
        names = parameter_names(asked_for, [i.variable for i in infos], int(settings.max_variables))
        if infos:  # the grid's size from the item's metadata, before anything is opened
            check_grid_cells(infos[0].grid, int(settings.max_grid_cells), f"item {item!r}")
        if not names:
            raise BadRequest(f"item {item!r} has no variable to query", 404)
        return names

    async def open_fields(
        request: Request, item: str, names: list[str]
    ) -> tuple[dict[str, Any], Any, np.ndarray | None, dict[str, Any]]:
        """The fields of ``names`` (by the names asked for) at the level asked for (``z``,
        or a dimension by name: ``?level=850``; else each dimension's first value), the
        first one (its grid and times are every one's), the selected time indices and the
        values of the extra dimensions the fields are at."""
        z = request.query_params.get("z")
        opened = {n: await open_selected(request, ctx, item, n, z=z) for n in names}
        fields = {n: layer.field for n, layer in opened.items()}
        at: dict[str, Any] = {}
        for name, layer in opened.items():
            for dim, value in selected_values(layer).items():
                if not _same(at.setdefault(dim, value), value):
                    raise BadRequest(
                        f"parameters {names[0]} and {name} are at different {dim} values "
                        f"({at[dim]}, {value}); name the {dim} (?{dim}=) or ask for them "
                        "one at a time",
                        400,
                    )
        base = fields[names[0]]
        for name, other in fields.items():
            if other.grid != base.grid or other.ntimes != base.ntimes:
                raise BadRequest(
                    f"parameters {names[0]} and {name} lie on different grids or time axes; "
                    "ask for them one at a time",
                    400,
                )
        when = request.query_params.get("datetime")
        return fields, base, select_times(base.times, when, settings.max_time_steps), at

    def times_of(field: Any, t_idx: np.ndarray | None) -> np.ndarray | None:
        return None if t_idx is None else np.asarray(field.times)[t_idx]

    def described(fields: dict[str, Any]) -> list[cj.Parameter]:
        return [cj.Parameter(n, f.units, f.long_name) for n, f in fields.items()]

    def coverage_response(doc: dict[str, Any], media: str, at: dict[str, Any]) -> Response:
        if at:  # the level (...) the values are at
            doc["domain"][cj.SELECTION_MEMBER] = at
        return Response(cj.dumps(doc), media_type=media, headers={"Cache-Control": "private, no-store"})  # fmt: skip

    @r.get(p + "/collections/{item}/position")
    async def position(request: Request, item: str) -> Response:
        q = request.query_params
        media = data_media(q.get("f"))
        check_crs(q.get("crs"))
        try:
            point = parse_wkt(q.get("coords"), ("POINT",))
        except WktError as e:
            raise BadRequest(str(e), 400) from None
        assert isinstance(point, Point)
        fields, base, t_idx, at = await open_fields(request, item, await asked(request, item))
        got = await layers.run_render(
            ctx, _position_read, fields, point.lon, point.lat, t_idx, settings.max_series_bytes
        )
        cell = {**got["cell"], "grid": base.grid.key}
        doc = cj.point_series(
            point.lon, point.lat, times_of(base, t_idx), described(fields), got["values"], cell
        )
        return coverage_response(doc, media, at)

    @r.get(p + "/collections/{item}/area")
    async def area(request: Request, item: str) -> Response:
        q = request.query_params
        media = data_media(q.get("f"))
        check_crs(q.get("crs"))
        try:
            polygon = parse_wkt(q.get("coords"), ("POLYGON",))
        except WktError as e:
            raise BadRequest(str(e), 400) from None
        assert isinstance(polygon, Polygon)
        names = await asked(request, item)
        size = polygon.area_deg2()
        if size > settings.max_edr_area_deg2:
            raise BadRequest(
                f"the polygon's bounding box covers {size:.6g} square degrees, beyond the limit "
                f"TwinhubTiles.max_edr_area_deg2 = {settings.max_edr_area_deg2:g}",
                400,
            )
        fields, base, t_idx, at = await open_fields(request, item, names)
        cells = await layers.run_render(ctx, _area_cells, base.grid, polygon)
        nt = 1 if t_idx is None else int(t_idx.size)
        if cells.size * nt > settings.max_edr_cells:
            raise BadRequest(
                f"the area holds {cells.size} native cells x {nt} time steps = "
                f"{cells.size * nt} values, beyond the limit TwinhubTiles.max_edr_cells = "
                f"{settings.max_edr_cells}; ask for a smaller area or fewer times",
                400,
            )
        got = await layers.run_render(
            ctx, _area_read, fields, cells, t_idx, settings.max_series_bytes
        )
        doc = cj.multipoint_series(
            got["lons"],
            got["lats"],
            times_of(base, t_idx),
            described(fields),
            got["values"],
            {"index": cells.tolist(), "grid": base.grid.key},
        )
        return coverage_response(doc, media, at)

    return r

"""Server-side views and legends (docs/vizlab.md).

=================================================================  =============================
``view/{item}/{variable}.png?projection=&center=lon,lat&zoom=``    the field in a projection
``&width=&height=&time=&cmap=&vmin=&vmax=&method=``                (platecarree, webmercator,
                                                                   robinson, mollweide,
                                                                   orthographic: a globe)
``legend/{item}/{variable}.png?cmap=&vmin=&vmax=``                 its colour bar
=================================================================  =============================

A view is :class:`twinlab.viz.View` rendered on the native grid (nearest cell or
bilinear), NaN and off-map pixels transparent; ``width x height`` is at most
``TwinhubTiles.max_view_pixels`` (400 naming the limit). Without vmin/vmax both take the
layer's default range, as tiles do.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import Response

from twinlab.viz.projections import PROJECTIONS, View, check_view

from ..asgi import BadRequest
from .context import TilesContext
from .params import check_id, parse_float, parse_int, parse_style
from .serve import legend_response, view_response

DEFAULT_PROJECTION = "platecarree"
DEFAULT_WIDTH, DEFAULT_HEIGHT = 1024, 512
#: Deepest zoom of a view (2^24: about a metre at the equator on a 1024-pixel view).
MAX_VIEW_ZOOM = float(2**24)
#: Decimals kept of a view's centre (degrees: 1e-4, about 11 m) and zoom (1e-3).
CENTER_DECIMALS, ZOOM_DECIMALS = 4, 3


def parse_center(raw: str | None) -> tuple[float, float]:
    """``lon,lat`` (degrees; lon any, folded into [-180, 180); lat in [-90, 90])."""
    if raw is None or raw == "":
        return 0.0, 0.0
    parts = raw.split(",")
    if len(parts) != 2:
        raise BadRequest(f"center must be 'lon,lat' in degrees, not {raw[:64]!r}")
    lon = parse_float("center's longitude", parts[0].strip())
    lat = parse_float("center's latitude", parts[1].strip())
    assert lon is not None and lat is not None  # (empty parts: parse_float gives None)
    if not -90.0 <= lat <= 90.0:
        raise BadRequest(f"center's latitude {lat:g} is outside -90..90")
    return (lon + 180.0) % 360.0 - 180.0, lat


def parse_view(q: dict[str, str], max_pixels: int) -> View:
    """The view's parameters, checked (each refusal names the parameter or the limit)."""
    projection = q.get("projection") or DEFAULT_PROJECTION
    if projection not in PROJECTIONS:
        raise BadRequest(
            f"unknown projection {projection[:64]!r}: use one of {', '.join(PROJECTIONS)}"
        )
    width = parse_int("width", q.get("width") or str(DEFAULT_WIDTH))
    height = parse_int("height", q.get("height") or str(DEFAULT_HEIGHT))
    if width < 1 or height < 1:
        raise BadRequest(f"width and height must be at least 1 (got {width} x {height})")
    if width * height > max_pixels:
        raise BadRequest(
            f"view of {width} x {height} = {width * height} pixels is beyond the limit: "
            f"TwinhubTiles.max_view_pixels {max_pixels}"
        )
    zoom = parse_float("zoom", q.get("zoom"))
    zoom = 1.0 if zoom is None else zoom
    if not 0.0 < zoom <= MAX_VIEW_ZOOM or not math.isfinite(zoom):
        raise BadRequest(f"zoom must be in (0, {MAX_VIEW_ZOOM:g}], not {zoom:g}")
    lon, lat = parse_center(q.get("center"))
    # rounded (1e-4 deg is about 11 m, far below the kilometre cells of the lake's grids) so
    # that a client sending every float of a pan cannot make each request a new PNG cache
    # entry (the cache key is the view's)
    lon, lat = round(lon, CENTER_DECIMALS), round(lat, CENTER_DECIMALS)
    lon = -180.0 if lon >= 180.0 else lon
    zoom = max(round(zoom, ZOOM_DECIMALS), 10.0**-ZOOM_DECIMALS)
    view = View(
        projection=projection, width=width, height=height,
        center_lon=lon, center_lat=lat, zoom=zoom,
    )  # fmt: skip
    try:
        check_view(view, max_pixels)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    return view


def router(ctx: TilesContext) -> APIRouter:
    r = APIRouter()
    p = ctx.prefix

    @r.get(p + "view/{item}/{variable}.png", include_in_schema=False)
    async def view(request: Request, item: str, variable: str) -> Response:
        check_id(item)
        check_id(variable, "variable")
        q = dict(request.query_params)
        v = parse_view(q, int(ctx.settings.max_view_pixels))
        style = parse_style(q.get("cmap"), q.get("vmin"), q.get("vmax"), q.get("method"))
        return await view_response(request, ctx, item, variable, v, q.get("time"), style)

    @r.get(p + "legend/{item}/{variable}.png", include_in_schema=False)
    async def legend(request: Request, item: str, variable: str) -> Response:
        check_id(item)
        check_id(variable, "variable")
        q = request.query_params
        style = parse_style(q.get("cmap"), q.get("vmin"), q.get("vmax"))
        return await legend_response(request, ctx, item, variable, style)

    return r

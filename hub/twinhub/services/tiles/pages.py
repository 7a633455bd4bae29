"""The VizLab page (``/services/tiles/vizlab``) and its static files (docs/vizlab.md).

One page, for any lake item, with no notebook. ``static/vizlab.js`` draws the map, the
controls and the time-series chart (with ``vizmaps.js``: tile matrix sets and projections;
``vizcommon.js``: helpers and the URL state; ``vizseries.js``: the chart; ``vizplayer.js``:
the time player; ``vizfinder.js``: the layer list) from the service's own answers
(``layers/{item}``, OGC API - Tiles PNGs, ``view/...png`` for the projections tiles cannot
show, the legend, EDR ``position``), so the page never shows more than the caller's own
requests would. Its state (item, variable, time, projection, view, colours, levels) lives in
the URL, which the script keeps up to date: a link to the page is a link to that view.

The page needs a hub login (it is never one of the middleware's anonymous paths; an
anonymous request that got here anyway is refused). Nothing comes from elsewhere (CSP:
this origin only, no inline script or style), and no page may frame it.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from .. import base
from ..asgi import BadRequest
from ..base import platform_name
from .context import TilesContext

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

#: Every static file served and its media type: a fixed table, so no request path reaches
#: the file system (no traversal, no listing).
STATIC_FILES = {
    "vizlab.css": "text/css; charset=utf-8",
    "vizlab.js": "text/javascript; charset=utf-8",
    "vizmaps.js": "text/javascript; charset=utf-8",
    "vizcommon.js": "text/javascript; charset=utf-8",
    "vizseries.js": "text/javascript; charset=utf-8",
    "vizplayer.js": "text/javascript; charset=utf-8",
    "vizfinder.js": "text/javascript; charset=utf-8",
}

#: This origin only (tiles, views, legends and EDR answers are this service's own), no
#: inline script or style, never framed (users serve their own pages on this origin).
#: ``style-src`` allows no inline styles: the script sets element styles through the DOM
#: (CSSOM), which CSP does not restrict.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'; "
    "object-src 'none'"
)

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Frame-Options": "DENY",  # browsers without CSP frame-ancestors
        "X-Content-Type-Options": "nosniff",
        # The page is the same for every item (the script reads the URL), but it names the
        # logged-in user: kept by this browser only.
        "Cache-Control": "private, no-cache",
        "Vary": "Cookie, Authorization",
        "Referrer-Policy": "same-origin",
    }


def render_page(ctx: TilesContext, request: Request, user: str) -> HTMLResponse:
    """The VizLab page for ``user``; what it shows comes from the URL (the script)."""
    prefix = ctx.prefix
    html = _env.get_template("vizlab.html").render(
        platform_name=platform_name(ctx.rt),
        user=user,
        prefix=prefix,
        static=prefix + "static/",
        # The hub's base URL (``/`` or ``/<base>/``): the service's prefix less "services/...".
        base=prefix.split("services/", 1)[0] or "/",
        max_view_pixels=ctx.settings.max_view_pixels,
    )
    return HTMLResponse(html, headers=page_headers())


def static_file(name: str) -> Response:
    return base.static_file(STATIC_DIR, STATIC_FILES, name, CSP)


def router(ctx: TilesContext) -> APIRouter:
    """``vizlab`` (the page) and ``static/{name}`` (its script and style), full paths."""
    r = APIRouter()
    p = ctx.prefix

    @r.get(p + "vizlab", include_in_schema=False)
    async def vizlab(request: Request) -> Response:
        user = (request.scope.get("state") or {}).get("hub_user")
        if not user:
            # The middleware logs browsers in first; this is for an app configured to let
            # the page through anonymously by mistake: the page is for logged-in users.
            raise BadRequest("the VizLab page needs a hub login", 401)
        return render_page(ctx, request, str(user.get("name") or ""))

    @r.get(p + "static/{name:path}", include_in_schema=False)
    async def static(name: str) -> Response:
        return static_file(name)

    return r

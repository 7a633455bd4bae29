"""The desk's page (``/services/desk/``) and its static files.

One server-rendered page (Jinja2, autoescaped): the caller's tickets (staff: every ticket,
with filters) and the new-ticket form, or, with ``?ticket=<id>``, one ticket's thread with
the reply form and the close/reopen buttons. Writes go through ``static/desk.js`` to the
REST API with the page's XSRF token. API clients asking for the page get JSON (the default
without ``Accept: text/html`` or ``f=html``). Nothing comes from elsewhere (CSP: self only).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .. import base
from ..base import platform_name
from . import SERVICE_PREFIX, store

if TYPE_CHECKING:
    from .context import Caller, Desk

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

#: Every static file served and its media type: a fixed table, so no request path reaches
#: the file system (no traversal, no listing).
STATIC_FILES = {
    "desk.css": "text/css; charset=utf-8",
    "desk.js": "text/javascript; charset=utf-8",
}

#: This origin only, no inline script or style, forms post here only, and never framed:
#: not even by a page of this origin (users serve their own pages here, under /user/...),
#: which could otherwise read the embedded XSRF value out of a frame or trick clicks in it.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'self'"
)

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def wants_html(request: Request) -> bool:
    f = request.query_params.get("f", "")
    if f:
        return f == "html"
    return "text/html" in request.headers.get("accept", "")


def _page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        # For browsers without CSP frame-ancestors.
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
        # the embedded XSRF value depends on these (navigations only)
        "Vary": "Cookie, Authorization, Sec-Fetch-Dest, Sec-Fetch-Mode",
        "Referrer-Policy": "same-origin",
    }


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name, "")
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


async def landing(desk: Desk, request: Request, me: Caller) -> Response:
    """The page, or its JSON for API clients."""
    services, projects = await asyncio.gather(desk.services_for(me), desk.projects_of(me))
    q = request.query_params
    state = q.get("state", "") if q.get("state", "") in store.STATES else ""
    service = q.get("service", "")[:64] or None
    project = q.get("project", "")[:255] or None
    owner = q.get("owner", "")[:255] or None
    listed_owner = me.viewer if me.viewer is not None else owner
    tickets = await asyncio.to_thread(
        store.list_tickets,
        desk.db_url,
        owner=listed_owner,
        state=state or None,
        service=service if me.staff else None,
        project=project if me.staff else None,
    )
    if not wants_html(request):
        return JSONResponse(
            {
                "user": me.name,
                "staff": me.staff,
                "tickets": tickets,
                "services": services,
                "projects": projects,
                "links": {"tickets": SERVICE_PREFIX + "api/v1/tickets"},
            }
        )
    ticket: dict[str, Any] | None = None
    wanted = q.get("ticket")
    if wanted is not None:
        tid = _int_param(request, "ticket")
        try:
            if tid is None:
                raise store.DeskError(f"no ticket {wanted[:20]!r}", 404)
            ticket = await asyncio.to_thread(store.get_ticket, desk.db_url, tid, viewer=me.viewer)
        except store.DeskError as e:
            return render("error.html", desk, request, me, status=e.status, message=e.message)
    names = {e["slug"]: e["name"] for e in services}
    return render(
        "desk.html",
        desk,
        request,
        me,
        tickets=tickets,
        ticket=ticket,
        services=services,
        service_names=names,
        projects=projects,
        filters={
            "state": state,
            "service": service or "",
            "project": project or "",
            "owner": owner or "",
        },  # fmt: skip
        states=store.STATES,
        max_bytes=desk.settings.max_attachment_bytes,
        max_files=desk.settings.max_attachments,
        max_chars=desk.settings.max_body_chars,
    )


def render(
    template: str, desk: Desk, request: Request, me: Caller, *, status: int = 200, **kw: Any
) -> HTMLResponse:
    html = _env.get_template(template).render(
        platform_name=platform_name(desk.rt),
        user=me.name,
        staff=me.staff,
        xsrf=(request.scope.get("state") or {}).get("xsrf", ""),
        prefix=SERVICE_PREFIX,
        api=SERVICE_PREFIX + "api/v1/",
        static=SERVICE_PREFIX + "static/",
        registry="registry" in desk.rt.ports,
        **kw,
    )
    return HTMLResponse(html, status_code=status, headers=_page_headers())


def static_file(name: str) -> Response:
    return base.static_file(STATIC_DIR, STATIC_FILES, name, CSP)

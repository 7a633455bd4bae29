"""The service's HTML representation (``f=html``, or a browser's ``Accept``) and its static
files.

Pages are rendered here (Jinja2, autoescaped) from the same documents the JSON answers
carry, for the same caller: a page never shows more than the API would. Writes (execute,
dismiss) go through ``static/processing.js`` to the API with the page's XSRF value; the job
page's script refreshes it every 2 s while the job runs. Nothing comes from elsewhere
(CSP: this origin only) and no page may be framed. Refusals stay JSON, pages or not (the
request limits turn every error answer into the platform's JSON error).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from .. import base
from ..asgi import BadRequest

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

#: Every static file served and its media type: a fixed table, so no request path reaches
#: the file system (no traversal, no listing).
STATIC_FILES = {
    "processing.css": "text/css; charset=utf-8",
    "processing.js": "text/javascript; charset=utf-8",
}

#: This origin only, no inline script or style, forms post here only, never framed (users
#: serve their own pages on this origin, which could read the XSRF value out of a frame).
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'self'"
)

#: Stages shown on a job's page, in order (``queued`` is the wait before the first).
SHOWN_STAGES = ("queued", "scheduling", "fetching", "processing", "ingesting")
#: Log lines shown at the foot of a job's page.
LOG_TAIL = 200

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)


# -- negotiation ------------------------------------------------------------------------------
def _accept_q(accept: str) -> dict[str, float]:
    """Media range -> quality of an ``Accept`` header (malformed qualities count as 0)."""
    out: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        out[media.lower()] = max(q, out.get(media.lower(), 0.0))
    return out


def prefers_html(accept: str) -> bool:
    """Whether ``Accept`` asks for HTML before JSON: ``text/html`` named, with a quality at
    least that of ``application/json``. No header, ``*/*``: JSON (the contract's default)."""
    q = _accept_q(accept)
    html = q.get("text/html", 0.0)
    return html > 0 and html >= q.get("application/json", 0.0)


def representation(request: Request, allowed: tuple[str, ...] = ("json", "html")) -> str:
    """``f`` if given (one of ``allowed``, else 400), else by ``Accept`` (JSON by default)."""
    f = request.query_params.get("f")
    if f is not None:
        if f not in allowed:
            raise BadRequest(f"unknown f={f[:32]!r}: use one of {', '.join(allowed)}")
        return f
    return (
        "html" if "html" in allowed and prefers_html(request.headers.get("accept", "")) else "json"
    )


# -- what the pages show ----------------------------------------------------------------------
def example_value(schema: Any) -> Any:
    """A value to start an input's field with: its default, first example or enum value,
    else an empty value of its type (None when the schema says nothing)."""
    if not isinstance(schema, dict):
        return None
    if "default" in schema:
        return schema["default"]
    for key in ("examples", "enum"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    if "const" in schema:
        return schema["const"]
    for key in ("oneOf", "anyOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_value(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    return {"string": "", "number": 0, "integer": 0, "boolean": False, "array": [],
            "object": {}}.get(kind)  # fmt: skip


def example_inputs(description: dict[str, Any]) -> dict[str, Any]:
    """The execute form's starting inputs: every required input (and optional ones with a
    default), each with :func:`example_value`."""
    out: dict[str, Any] = {}
    for name, spec in (description.get("inputs") or {}).items():
        if not isinstance(spec, dict):
            continue
        schema = spec.get("schema") or {}
        if spec.get("minOccurs", 1) == 0 and "default" not in schema:
            continue
        out[name] = example_value(schema)
    return out


def stage_rows(status: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"name", "started", "finished", "progress", "current"}]`` of a status document's
    stages, in order."""
    stages = status.get("stages") or {}
    rows = []
    for name in SHOWN_STAGES:
        s = stages.get(name) or {}
        rows.append(
            {
                "name": name,
                "started": s.get("started") or "",
                "finished": s.get("finished") or "",
                "progress": s.get("progress"),
                "current": status.get("stage") == name,
            }
        )
    return rows


def running(status: dict[str, Any]) -> bool:
    return status.get("status") in ("accepted", "running")


# -- rendering --------------------------------------------------------------------------------
def page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Frame-Options": "DENY",  # browsers without CSP frame-ancestors
        "X-Content-Type-Options": "nosniff",
        # Pages embed the XSRF value of a browser session: never stored.
        "Cache-Control": "private, no-store",
        "Vary": "Accept, Cookie, Authorization, Sec-Fetch-Dest, Sec-Fetch-Mode",
        "Referrer-Policy": "same-origin",
    }


def render(
    template: str,
    request: Request,
    *,
    prefix: str,
    platform: str,
    user: str,
    **variables: Any,
) -> HTMLResponse:
    """Template ``template`` with what every page shows (name, user, links, XSRF value)."""
    html = _env.get_template(template).render(
        platform_name=platform,
        user=user,
        prefix=prefix,
        static=prefix + "static/",
        base=prefix.split("services/", 1)[0] or "/",
        xsrf=(request.scope.get("state") or {}).get("xsrf") or "",
        **variables,
    )
    return HTMLResponse(html, headers=page_headers())


def static_file(name: str) -> Response:
    return base.static_file(STATIC_DIR, STATIC_FILES, name, CSP)

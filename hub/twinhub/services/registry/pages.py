"""The registry's own pages: the platform's public face (``welcome``), ``login``, the
onboarding page (providers, reviewers, admins) and the static files they use.

Pages are rendered here (Jinja2, autoescaped) from what the visitor may see: entries are
filtered by :func:`entry.can_see` even when the search index already filtered them, so an
entry a viewer may not see is never rendered. The onboarding page is a shell; its script
(``static/onboarding.js``) drives the REST API (``api/v1/``) with the page's XSRF token.
No asset comes from elsewhere: the Content-Security-Policy allows only this origin.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

from ..asgi import BadRequest
from ..base import platform_name, static_file
from ..datalake import StacPart
from ..projects.catalog import ProjectCatalog
from ..projects.catalog import is_enabled as projects_enabled
from . import entry as entries
from . import search, store
from .api import caller
from .context import RegistryContext

log = logging.getLogger("twinhub.registry.pages")

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

#: Every static file served, and its media type: a fixed table, so no request path ever
#: reaches the file system (no traversal, no listing).
STATIC_FILES = {
    "registry.css": "text/css; charset=utf-8",
    "onboarding.js": "text/javascript; charset=utf-8",
    "logo.svg": "image/svg+xml",
}

#: Every page: this origin only, no inline script or style, not framed elsewhere. Images
#: only from the registry's own static files (``{static}``: their absolute URL, as a CSP
#: source with a path needs a host): an ``<img>`` that slipped through could otherwise make
#: every visitor's browser GET a platform URL with their cookies (``/hub/logout``).
CSP = (
    "default-src 'self'; img-src {static} data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors {ancestors}"
)

KIND_LABELS = {
    "web-application": "Web application",
    "api": "API",
    "notebook": "Notebook",
    "dataset": "Dataset",
    "processing": "Processing",
}

#: Collections of the lake kept for the landing page (titles and descriptions only).
MAX_LAKE_COLLECTIONS = 200
#: Entries on the landing page at most; the catalogue (Records) lists them all.
MAX_CARDS = 1000
#: Characters of a description shown on a card.
SUMMARY_CHARS = 240
#: Seconds the health rows are kept between two reads (the landing page may be busy).
HEALTH_TTL = 1.0

#: The platform's own collections carry no owner; users' collections do (twinlab.contract).
FIELD_OWNER = "twinhub:owner"

_EXTRAS = "pages"


def _image_as_text(self: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
    # an image in a provider's Markdown becomes its alt text: an <img> loads by itself, so
    # ``![](/hub/logout)`` would act with every visitor's cookies (no click needed)
    return escapeHtml(self.renderInlineAsText(tokens[idx].children or [], options, env))


# Raw HTML in a provider's Markdown is escaped, not passed through; markdown-it refuses
# javascript:/vbscript:/file:/data: link targets by itself; images: see above.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
_markdown.add_render_rule("image", _image_as_text)


def render_markdown(text: str) -> str:
    """HTML of a provider's Markdown (descriptions): no raw HTML, no images."""
    return _markdown.render(text or "")


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
    autoescape=jinja2.select_autoescape(["html"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


# -- what the pages show ------------------------------------------------------------------
def summary(markdown: str, limit: int = SUMMARY_CHARS) -> str:
    """A plain-text start of a Markdown description (escaped later by the template)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", markdown or "")  # links, images
    text = re.sub(r"(?m)^\s{0,3}(#{1,6}|>|[-*+]|\d+\.)\s+", "", text)  # headings, lists
    text = re.sub(r"[*_`]+", "", text)
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "…"


def visibility_note(visibility: str) -> str:
    """How a card says who else sees it ("" for public entries)."""
    if visibility == "users":
        return "for logged-in users"
    if visibility.startswith("project:"):
        return f"for project {visibility.split(':', 1)[1]}"
    return ""


def entry_href(prefix: str, row: dict[str, Any]) -> str:
    """Where a card links: the service itself for web kinds, else its record's page."""
    slug = quote(row["slug"], safe="")
    if row["entry"].get("kind") in entries.WEB_KINDS:
        return f"{service_root(prefix)}{slug}/"
    return f"{prefix}collections/services/items/{slug}?f=html"


def service_root(prefix: str) -> str:
    """``/services/`` (the registry's prefix without its own name)."""
    return prefix.rstrip("/").rsplit("/", 1)[0] + "/"


def base_url(prefix: str) -> str:
    """The platform's base URL path (``/``): what precedes ``services/``."""
    return prefix.split("services/", 1)[0] or "/"


def card(prefix: str, row: dict[str, Any], health: dict[str, dict]) -> dict[str, Any]:
    """One entry as the landing page shows it."""
    e = row["entry"]
    h = health.get(row["slug"]) or {}
    latency = h.get("latency_ms")
    return {
        "slug": row["slug"],
        "name": e.get("name", row["slug"]),
        "kind": e.get("kind", ""),
        "kind_label": KIND_LABELS.get(e.get("kind", ""), e.get("kind", "")),
        "provider": e.get("provider") or row.get("provider", ""),
        "summary": summary(e.get("description", "")),
        "href": entry_href(prefix, row),
        "status": h.get("status") or "unknown",
        "latency": None if latency is None else round(float(latency)),
        "note": visibility_note(e.get("visibility", "public")),
        "areas": list(e.get("thematic_areas") or ()),
    }


def group_by_area(cards: list[dict], vocabulary: dict[str, str]) -> list[dict[str, Any]]:
    """``[{"id", "label", "cards"}]`` in the vocabulary's order; an entry is under each of
    its areas; areas no longer in the vocabulary go under "Other"."""
    groups: dict[str, list[dict]] = {a: [] for a in vocabulary}
    other: list[dict] = []
    for c in sorted(cards, key=lambda c: (c["name"].lower(), c["slug"])):
        known = [a for a in c["areas"] if a in groups]
        for a in known:
            groups[a].append(c)
        if not known:
            other.append(c)
    out = [{"id": a, "label": vocabulary[a], "cards": cs} for a, cs in groups.items() if cs]
    if other:
        out.append({"id": "other", "label": "Other", "cards": other})
    return out


def is_reviewer(user: dict[str, Any] | None, settings: Any) -> bool:
    return bool(user) and settings.reviewers_group in (user.get("groups") or ())


# -- reading through the context (cached) ---------------------------------------------------
def _extras(ctx: RegistryContext) -> dict[str, Any]:
    return ctx.extras.setdefault(_EXTRAS, {"health": (0.0, {}), "lake": [], "lake_at": 0.0})


async def visible_rows(ctx: RegistryContext, user: dict[str, Any] | None) -> tuple[list[dict], int]:
    """The published rows ``user`` (None: a visitor) may see, at most :data:`MAX_CARDS`,
    and how many more there are beyond those."""
    if ctx.index is not None:
        await search.ensure_fresh(ctx)
        viewer_scope = entries.viewer_scope(user)
        result = ctx.index.search(viewer=viewer_scope, limit=MAX_CARDS, facets=False)
        rows, more = list(result.items), max(0, result.matched - len(result.items))
    else:  # before the lifespan built the index
        rows = await asyncio.to_thread(store.published, ctx.db_url)
        more = 0
    # Checked again here: whatever the index holds, a page never shows what it must not.
    seen = [r for r in rows if entries.can_see(r["entry"].get("visibility", "public"), user)]
    return seen[:MAX_CARDS], more + max(0, len(seen) - MAX_CARDS)


async def health_rows(ctx: RegistryContext) -> dict[str, dict]:
    """``store.health_all``, read at most once every :data:`HEALTH_TTL` seconds."""
    cache = _extras(ctx)
    at, rows = cache["health"]
    now = time.monotonic()
    if now - at >= HEALTH_TTL:
        rows = await asyncio.to_thread(store.health_all, ctx.db_url)
        cache["health"] = (now, rows)
    return rows


def lake_collections(ctx: RegistryContext) -> list[dict[str, str]]:
    """The lake's collections as :func:`refresh_lake` last found them."""
    return list(_extras(ctx)["lake"])


async def refresh_lake(ctx: RegistryContext) -> None:
    """Keep the titles and descriptions of the lake's own collections (never users':
    those carry an owner) for the landing page. Asked of the STAC service straight, with
    the registry's token; any failure keeps the list found before."""
    if "stac" not in ctx.rt.ports or ctx.hub is None:
        return
    url = StacPart().api_url(ctx.rt) + "collections"
    try:
        r = await ctx.hub.get(url, params={"limit": MAX_LAKE_COLLECTIONS}, timeout=10.0)
        r.raise_for_status()
        doc = r.json()
    except (httpx.HTTPError, ValueError) as e:
        log.warning("cannot list the lake's collections at %s: %s", url, e)
        return
    found = doc.get("collections") if isinstance(doc, dict) else None
    if not isinstance(found, list):
        log.warning("the lake's collections at %s: no 'collections' list", url)
        return
    cache = _extras(ctx)
    cache["lake"] = lake_rows(found)
    cache["lake_at"] = time.monotonic()


def lake_rows(collections: list[Any]) -> list[dict[str, str]]:
    """``[{"id", "title", "description"}]`` of the collections without an owner."""
    out = []
    for c in collections:
        if not isinstance(c, dict) or c.get(FIELD_OWNER) or not isinstance(c.get("id"), str):
            continue
        title = c.get("title") if isinstance(c.get("title"), str) else c["id"]
        desc = c.get("description") if isinstance(c.get("description"), str) else ""
        out.append({"id": c["id"], "title": title, "description": summary(desc, 400)})
        if len(out) >= MAX_LAKE_COLLECTIONS:
            break
    return sorted(out, key=lambda c: c["title"].lower())


def user_projects(ctx: RegistryContext, user: dict[str, Any] | None) -> list[str]:
    """The user's groups that are projects (sorted); none when projects are off."""
    if not user or not projects_enabled(ctx.rt):
        return []
    known = ProjectCatalog.from_runtime(ctx.rt).entries()
    return sorted(g for g in (user.get("groups") or ()) if g in known)


# -- rendering --------------------------------------------------------------------------------
def csp(static_url: str, *, frames: bool = True) -> str:
    """The pages' CSP; ``static_url``: the absolute URL of the static files (images come
    from there only); ``frames``: the platform's own pages may frame it (else none may)."""
    return CSP.format(static=static_url, ancestors="'self'" if frames else "'none'")


def static_url(request: Request, prefix: str) -> str:
    """``scheme://host<prefix>static/`` as the browser reached us (the proxy's forwarded
    headers first)."""
    h = request.headers
    proto = h.get("x-forwarded-proto", "").split(",")[0].strip() or request.url.scheme
    host = h.get("x-forwarded-host", "").split(",")[0].strip() or h.get("host", "")
    if proto not in ("http", "https") or not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]{1,300}", host):
        return "'self'"  # a host we would not write into a header: the origin, any path
    return f"{proto}://{host}{prefix}static/"


def page_headers(private: bool, request: Request, prefix: str) -> dict[str, str]:
    # A page that embeds the XSRF value (a cookie session) is never stored at all: with
    # ``no-cache`` a same-origin script could read the stored navigation response back by
    # fetch(..., {cache: "force-cache"}) and so get the value that only page loads receive.
    holds_xsrf = bool((request.scope.get("state") or {}).get("xsrf"))
    # (what an anonymous visitor sees is public: revalidated, may be kept)
    cache = "private, no-store" if holds_xsrf or private else "no-cache"
    return {
        "Content-Security-Policy": csp(static_url(request, prefix)),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": cache,
        # the XSRF value depends on these (navigations only): no cache may mix the answers
        "Vary": "Cookie, Authorization, Sec-Fetch-Dest, Sec-Fetch-Mode",
    }


def render(name: str, **variables: Any) -> str:
    return _env.get_template(name).render(**variables)


def common_vars(
    ctx: RegistryContext, request: Request, user: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "platform_name": platform_name(ctx.rt),
        "prefix": ctx.prefix,
        "base": base_url(ctx.prefix),
        "static": ctx.prefix + "static/",
        "user": user,
        "xsrf": (request.scope.get("state") or {}).get("xsrf", ""),
        "desk_url": service_root(ctx.prefix) + "desk/" if "desk" in ctx.rt.ports else "",
    }


def hub_user(request: Request) -> dict[str, Any] | None:
    """The token's user as hub auth found it (name, scopes; None: a visitor)."""
    return (request.scope.get("state") or {}).get("hub_user")


async def viewer(ctx: RegistryContext, request: Request) -> dict[str, Any] | None:
    """The caller with the hub's admin flag and groups (tokens issued to services carry no
    groups: the API's :func:`caller` asks the hub). On the landing page a user the hub
    no longer knows, or a hub out of reach, reads as a visitor: never more than that."""
    try:
        return await caller(ctx, request)
    except BadRequest as e:
        log.warning("welcome page shown as to a visitor: %s", e.message)
        return None


async def welcome_vars(ctx: RegistryContext, user: dict[str, Any] | None) -> dict[str, Any]:
    """What the landing page shows ``user`` (None: a visitor)."""
    rows, more = await visible_rows(ctx, user)
    health = await health_rows(ctx)
    cards = [card(ctx.prefix, r, health) for r in rows]
    projects = await asyncio.to_thread(user_projects, ctx, user)
    return {
        "areas": group_by_area(cards, dict(ctx.settings.thematic_areas)),
        "more": more,
        "collections": lake_collections(ctx),
        "projects": projects,
        "reviewer": is_reviewer(user, ctx.settings),
    }


def pages_router(ctx: RegistryContext) -> APIRouter:
    """``welcome``, ``login``, ``onboarding`` and ``static/<file>`` under the prefix."""
    router = APIRouter()

    @router.get("/welcome", response_class=HTMLResponse, include_in_schema=False)
    async def welcome(request: Request) -> HTMLResponse:
        user = await viewer(ctx, request)
        html = render(
            "welcome.html", **common_vars(ctx, request, user), **await welcome_vars(ctx, user)
        )
        return HTMLResponse(html, headers=page_headers(user is not None, request, ctx.prefix))

    @router.get("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        # Hub auth stood in front (not an anonymous path): whoever gets here is logged in.
        return RedirectResponse(ctx.prefix + "welcome", status_code=302)

    @router.get("/onboarding", response_class=HTMLResponse, include_in_schema=False)
    async def onboarding(request: Request) -> Response:
        if hub_user(request) is None:  # only without hub auth in front: never anonymous
            return RedirectResponse(ctx.prefix + "login", status_code=302)
        user = await caller(ctx, request)
        assert user is not None
        projects = await asyncio.to_thread(user_projects, ctx, user)
        html = render(
            "onboarding.html",
            **common_vars(ctx, request, user),
            api=ctx.prefix + "api/v1/",
            areas=dict(ctx.settings.thematic_areas),
            kinds=[(k, KIND_LABELS.get(k, k)) for k in entries.KINDS],
            projects=projects,
            reviewer=is_reviewer(user, ctx.settings),
            admin=bool(user.get("admin")),
            acts_as_admin=entries.registry_admin(user),
        )
        headers = page_headers(True, request, ctx.prefix)
        # the page that holds an admin's powers: never inside another page (clickjacking,
        # a same-origin frame scripted by its parent)
        headers["Content-Security-Policy"] = csp(static_url(request, ctx.prefix), frames=False)
        headers["X-Frame-Options"] = "DENY"
        return HTMLResponse(html, headers=headers)

    @router.get("/static/{name:path}", include_in_schema=False)
    async def static(name: str) -> Response:
        return static_file(STATIC_DIR, STATIC_FILES, name, csp("'self'"))

    return router

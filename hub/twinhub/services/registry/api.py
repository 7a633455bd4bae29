"""The registry's REST API at ``/services/registry/api/v1/`` (JSON; errors
``{"code", "description"}``).

=====================================  ==============================================================
``POST requests``                      any logged-in user (the provider): a new request (201;
                                       429 past ``max_open_requests`` waiting for review)
``GET  requests[?state=&limit=&offset=]``  own requests; reviewers and admins: all (paged:
                                       ``total``, ``next``)
``GET  requests/{id}``                 the provider, reviewers, admins (others: 404)
``POST requests/{id}/transitions``     ``{"to", "comment"?, "entry"?, "upstream"?, "allow_private"?,
                                       "sandbox"?}``: the workflow's roles (:mod:`.workflow`)
``POST requests/{id}/comments``        ``{"comment"}``: whoever sees the request (201)
``POST requests/{id}/reviews``         ``{"decision", "comment"}``: reviewers (a transition)
``PUT  requests/{id}/entry``           ``{"entry"}``: the provider while changes-requested; an
                                       admin while integrated (a new version; the provider
                                       asks in a comment: nobody would review the change)
``GET  entries``                       published entries the caller may see (anonymous: public)
``GET  entries/{slug}[/versions]``     one entry, its version history (the versions the
                                       caller may see; ``actor`` for those who see the request)
``GET  vocabulary``                    thematic areas, kinds, states (anonymous)
=====================================  ==============================================================

Who the caller is: the hub's token check (middleware) says the name and the token's scopes;
the admin flag and groups (reviewers, projects) are read with the service's own token
(cached briefly), since tokens issued to services carry no groups. Admins: see
:func:`.entry.registry_admin`. Integrating with ``allow_private`` or without ``sandbox``
needs a header token: any page on the platform's origin can drive a browser session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..asgi import BadRequest
from ..hubauth import hub_user_model
from . import hubservices, metrics, store, workflow
from .context import RegistryContext
from .entry import (
    ENDPOINT_TYPES,
    KINDS,
    WEB_KINDS,
    EntryError,
    can_see,
    registry_admin,
    validate_entry,
)
from .workflow import STATES, TransitionError

log = logging.getLogger("twinhub.registry.api")

#: Seconds the hub's model of a user (admin flag, groups) is reused.
USER_MODEL_TTL = 10.0
USER_MODEL_MAX = 4096
MAX_COMMENT = 10_000
MAX_ACTIVITY = 10_000
#: What a request may say it needs (numbers) besides the project it runs under.
RESOURCE_NUMBERS = ("cpu", "memory_gb", "gpu", "storage_gb", "servers")
DECISIONS = ("approved", "rejected", "changes-requested")
#: ``GET requests`` pages: this many by default, at most MAX_PAGE.
DEFAULT_PAGE, MAX_PAGE = 100, 500
#: Why the two switches below need a header token (a 403's text; the page shows it).
HEADER_ONLY = "needs an Authorization: token header, not a browser session"
_EXTRAS = "api.users"


# -- the caller ------------------------------------------------------------------------------
async def caller(ctx: RegistryContext, request: Request) -> dict[str, Any] | None:
    """The hub's user behind the request (token scopes + the hub's admin flag and groups);
    None: anonymous."""
    who = getattr(request.state, "hub_user", None)
    if who is None:
        return None
    if who.get("kind", "user") != "user" or ctx.hub is None:
        return dict(who)
    cache: dict[str, tuple[float, dict | None]] = ctx.extras.setdefault(_EXTRAS, {})
    hit = cache.get(who["name"])
    if hit is None or hit[0] < time.monotonic():
        model = await hub_user_model(ctx.hub, ctx.hub_api, who["name"])
        if len(cache) >= USER_MODEL_MAX:
            cache.pop(next(iter(cache)))
        cache[who["name"]] = hit = (time.monotonic() + USER_MODEL_TTL, model)
    model = hit[1]
    if model is None:
        raise BadRequest(f"user {who['name']!r} no longer exists", 403)
    return {**who, "admin": bool(model.get("admin")), "groups": list(model.get("groups") or [])}


async def logged_in(ctx: RegistryContext, request: Request) -> dict[str, Any]:
    user = await caller(ctx, request)
    if user is None:
        raise BadRequest("log in, or send 'Authorization: token <JupyterHub API token>'", 401)
    return user


def may_see_request(req: dict[str, Any], user: dict[str, Any], settings: Any) -> bool:
    """The provider, reviewers and admins see a request."""
    return bool(workflow.roles(req, user, settings) - {workflow.PLATFORM})


# -- bodies ----------------------------------------------------------------------------------
async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        doc = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON: {e}", 400) from None
    if not isinstance(doc, dict):
        raise BadRequest("the body must be a JSON object", 400)
    return doc


def text_field(doc: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    v = doc.get(name, "")
    if v is None:
        v = ""
    if not isinstance(v, str):
        raise BadRequest(f"{name} must be a string", 400)
    v = v.strip()
    if required and not v:
        raise BadRequest(f"{name} is required", 400)
    if len(v) > limit:
        raise BadRequest(f"{name} is {len(v)} characters long; at most {limit}", 400)
    return v


def resources_field(v: Any) -> dict[str, Any]:
    """``{"project": hub group, "cpu", "memory_gb", "gpu", "storage_gb", "servers"}``, all
    optional; numbers >= 0."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise BadRequest("resources must be an object", 400)
    unknown = sorted(str(k) for k in v if k not in ("project", *RESOURCE_NUMBERS))
    if unknown:
        raise BadRequest(
            f"resources: unknown key(s) {unknown}; allowed: project, {', '.join(RESOURCE_NUMBERS)}",
            400,
        )
    out: dict[str, Any] = {}
    project = v.get("project")
    if project not in (None, ""):
        if not isinstance(project, str) or len(project) > 255:
            raise BadRequest("resources.project must be a hub group name", 400)
        out["project"] = project
    for k in RESOURCE_NUMBERS:
        n = v.get(k)
        if n is None:
            continue
        if isinstance(n, bool) or not isinstance(n, int | float) or not 0 <= n <= 1e9:
            raise BadRequest(f"resources.{k} must be a number >= 0, not {n!r}", 400)
        out[k] = n
    return out


def entry_field(doc: dict[str, Any], settings: Any) -> dict[str, Any]:
    if "entry" not in doc:
        raise BadRequest("the body needs 'entry'", 400)
    try:
        return validate_entry(doc["entry"], settings)
    except EntryError as e:
        raise BadRequest(str(e), 400) from None


# -- answers ---------------------------------------------------------------------------------
def request_doc(req: dict[str, Any], user: dict[str, Any] | None, settings: Any) -> dict:
    return {**req, "allowed": workflow.allowed_targets(req, user, settings)}


def entry_doc(row: dict[str, Any], health: dict[str, Any] | None) -> dict[str, Any]:
    """A published row as the API shows it: the entry's fields, version, status, URL."""
    entry = row["entry"]
    health = health or {}
    return {
        **entry,
        "url": f"/services/{row['slug']}/" if entry.get("kind") in WEB_KINDS else None,
        "version": row["version"],
        "status": health.get("status", "unknown"),
        "latency_ms": health.get("latency_ms"),
        "checked_at": health.get("checked_at"),
        "created": row["created"],
        "updated": row["updated"],
    }


def refusal(e: TransitionError | store.StoreError) -> BadRequest:
    return BadRequest(e.message, e.status)


async def _hub_call(what: str, coro) -> None:
    try:
        await coro
    except BadRequest as e:
        raise BadRequest(f"{what} failed: {e.message}", 502) from None
    except Exception as e:
        log.exception("%s failed", what)
        raise BadRequest(f"{what} failed: {type(e).__name__}: {e}", 502) from None


def _paging(value: str | None, name: str, default: int, top: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {value[:32]!r}", 400) from None
    if not 0 <= n <= top:
        raise BadRequest(f"{name} must be between 0 and {top}, not {n}", 400)
    return n


def _browser_refusal(integration: dict[str, Any] | None, auth_source: str | None) -> None:
    """403 for a browser session (cookie) turning on ``allow_private`` or off ``sandbox``:
    a script on any page of the platform's origin can drive an admin's session, and these
    two reach internal addresses or put a service's scripts on the platform's origin."""
    if auth_source != "cookie" or integration is None:
        return
    if integration["allow_private"]:
        raise BadRequest(f"integrating with allow_private: true {HEADER_ONLY}", 403)
    if not integration["sandbox"]:
        raise BadRequest(f"integrating with sandbox: false {HEADER_ONLY}", 403)


async def apply_transition(
    ctx: RegistryContext,
    req: dict[str, Any],
    user: dict[str, Any],
    body: dict[str, Any],
    auth_source: str | None = None,
) -> dict[str, Any]:
    """Check and apply one transition (the order: :func:`workflow.check`, the body, the
    hub's route, the compare-and-set). ``auth_source``: how the caller authenticated."""
    to = body.get("to")
    try:
        workflow.check(req, to, user, ctx.settings)
    except TransitionError as e:
        raise refusal(e) from None
    comment = text_field(body, "comment", MAX_COMMENT)
    kwargs: dict[str, Any] = {}
    if to == "submitted":
        # The contract: the provider resubmits "with an updated entry" (the whole entry,
        # re-validated: the vocabulary or reserved slugs may have changed meanwhile).
        if "entry" not in body:
            raise BadRequest(
                "resubmitting needs the updated entry: send 'entry' (the whole entry, "
                "as changed for the reviewers' comments) with 'to': 'submitted'",
                400,
            )
        entry = entry_field(body, ctx.settings)
        if entry["slug"] != req["slug"]:
            raise BadRequest(f"the slug cannot change (it is {req['slug']!r})", 400)
        kwargs["entry"] = entry
    if to == "integrated":
        if req["state"] == "suspended" and "upstream" not in body:
            kwargs["integration"] = None  # back as it was
            # (resuming a service with those switches is turning them on again)
            _browser_refusal({k: req[k] for k in ("allow_private", "sandbox")}, auth_source)
        else:
            try:
                kwargs["integration"] = workflow.integration(req["entry"], body)
            except TransitionError as e:
                raise refusal(e) from None
            _browser_refusal(kwargs["integration"], auth_source)

    slug, state = req["slug"], req["state"]
    name = user["name"]

    def commit() -> dict[str, Any]:
        return store.transition(
            ctx.db_url, req["id"], expect=state, to=to, actor=name, comment=comment, **kwargs
        )

    # The hub's route first, then the state: a route without an integrated request only
    # reaches the gateway, which serves nothing for it (store.route is None); a state
    # without its route would be a published service nobody can reach. If the commit then
    # fails (another caller moved the request first), the route is made to match what the
    # request is now. One route change per slug at a time in this process; replicas are
    # kept right by that re-read and by the periodic reconcile_routes.
    routed = to == "integrated" or (to == "retired" and state in ROUTED)
    if not routed:
        done = await asyncio.to_thread(commit)
    else:
        async with hubservices.route_lock(ctx, slug):
            if to == "integrated":
                await _publish(ctx, slug)
            else:  # withdrawn first: after a failed withdrawal the service is as it was
                await _hub_call(f"withdrawing /services/{slug}/ from the hub", hubservices.withdraw_route(ctx, slug))  # fmt: skip
            try:
                done = await asyncio.to_thread(commit)
            except Exception:
                await _route_as_stored(ctx, req["id"], slug)
                raise
    metrics.TRANSITIONS.labels(to=to).inc()
    return done


#: States whose request has its /services/<slug>/ route.
ROUTED = ("integrated", "suspended")


async def _publish(ctx: RegistryContext, slug: str) -> None:
    try:
        await hubservices.publish_route(ctx, slug)
    except hubservices.SlugTaken as e:  # an operator's own hub service: not the hub's fault
        raise BadRequest(str(e), 409) from None
    except BadRequest as e:
        raise BadRequest(f"publishing /services/{slug}/ with the hub failed: {e.message}", 502) from None  # fmt: skip
    except Exception as e:
        log.exception("publishing /services/%s/ failed", slug)
        raise BadRequest(f"publishing /services/{slug}/ with the hub failed: {type(e).__name__}: {e}", 502) from None  # fmt: skip


async def _route_as_stored(ctx: RegistryContext, request_id: str, slug: str) -> None:
    """After a failed commit: the route as the request now is (another caller may have
    integrated or retired it meanwhile: its route must stay, or go)."""
    try:
        now = await asyncio.to_thread(store.get_request, ctx.db_url, request_id)
        if now is not None and now["state"] in ROUTED:
            await hubservices.publish_route(ctx, slug)
        else:
            await hubservices.withdraw_route(ctx, slug)
    except Exception:  # the periodic reconcile_routes puts it right
        log.exception("could not put the hub route of %s back as stored", slug)


# -- the router ------------------------------------------------------------------------------
def api_router(ctx: RegistryContext) -> APIRouter:
    """``api/v1/...`` under the registry's prefix."""
    router = APIRouter(prefix="/api/v1")
    settings = ctx.settings

    async def visible_request(request: Request, rid: str) -> tuple[dict, dict]:
        user = await logged_in(ctx, request)
        req = await asyncio.to_thread(store.get_request, ctx.db_url, rid)
        if req is None or not may_see_request(req, user, settings):
            raise BadRequest(f"no request {rid[:64]!r}", 404)
        return req, user

    @router.post("/requests")
    async def create(request: Request) -> JSONResponse:
        user = await logged_in(ctx, request)
        body = await json_body(request)
        unknown = sorted(str(k) for k in body if k not in ("entry", "resources", "activity"))
        if unknown:
            raise BadRequest(f"unknown field(s) {unknown}; allowed: entry, resources, activity", 400)  # fmt: skip
        entry = entry_field(body, settings)
        resources = resources_field(body.get("resources"))
        activity = text_field(body, "activity", MAX_ACTIVITY)
        try:
            req = await asyncio.to_thread(
                store.create_request,
                ctx.db_url,
                provider=user["name"],
                entry=entry,
                resources=resources,
                activity=activity,
                max_open=settings.max_open_requests,
            )
        except store.StoreError as e:
            raise refusal(e) from None
        metrics.TRANSITIONS.labels(to="submitted").inc()
        return JSONResponse(request_doc(req, user, settings), status_code=201)

    @router.get("/requests")
    async def list_(
        request: Request,
        state: str | None = None,
        limit: str | None = None,
        offset: str | None = None,
    ) -> dict[str, Any]:
        user = await logged_in(ctx, request)
        if state is not None and state not in STATES:
            raise BadRequest(f"unknown state {state!r}; states: {', '.join(STATES)}", 400)
        size = _paging(limit, "limit", DEFAULT_PAGE, MAX_PAGE)
        start = _paging(offset, "offset", 0, 10**9)
        everyone = registry_admin(user) or settings.reviewers_group in user.get("groups", ())
        which = {"provider": None if everyone else user["name"], "state": state}
        rows = await asyncio.to_thread(
            store.list_requests, ctx.db_url, limit=size, offset=start, **which
        )
        total = await asyncio.to_thread(store.count_requests, ctx.db_url, **which)
        nxt = None
        if start + len(rows) < total and size > 0:
            query = {"state": state, "limit": size, "offset": start + len(rows)}
            nxt = f"{ctx.prefix}api/v1/requests?" + "&".join(
                f"{k}={v}" for k, v in query.items() if v is not None
            )
        return {
            "requests": [request_doc(r, user, settings) for r in rows],
            "total": total,
            "next": nxt,
        }

    @router.get("/requests/{rid}")
    async def get(request: Request, rid: str) -> dict[str, Any]:
        req, user = await visible_request(request, rid)
        return request_doc(req, user, settings)

    @router.post("/requests/{rid}/transitions")
    async def transitions(request: Request, rid: str) -> dict[str, Any]:
        req, user = await visible_request(request, rid)
        body = await json_body(request)
        source = getattr(request.state, "auth_source", None)
        try:
            done = await apply_transition(ctx, req, user, body, source)
        except store.StoreError as e:
            raise refusal(e) from None
        return request_doc(done, user, settings)

    @router.post("/requests/{rid}/reviews")
    async def reviews(request: Request, rid: str) -> dict[str, Any]:
        req, user = await visible_request(request, rid)
        body = await json_body(request)
        decision = body.get("decision")
        if decision not in DECISIONS:
            raise BadRequest(f"decision {decision!r} is not one of: {', '.join(DECISIONS)}", 400)
        try:
            done = await apply_transition(
                ctx, req, user, {"to": decision, "comment": body.get("comment", "")}
            )
        except store.StoreError as e:
            raise refusal(e) from None
        return request_doc(done, user, settings)

    @router.post("/requests/{rid}/comments")
    async def comments(request: Request, rid: str) -> JSONResponse:
        _, user = await visible_request(request, rid)
        body = await json_body(request)
        comment = text_field(body, "comment", MAX_COMMENT, required=True)
        try:
            event = await asyncio.to_thread(
                store.add_comment,
                ctx.db_url,
                rid,
                actor=user["name"],
                comment=comment,
                max_comments=settings.max_comments,
            )
        except store.StoreError as e:
            raise refusal(e) from None
        return JSONResponse(event, status_code=201)

    @router.put("/requests/{rid}/entry")
    async def put_entry(request: Request, rid: str) -> dict[str, Any]:
        req, user = await visible_request(request, rid)
        roles = workflow.roles(req, user, settings)
        state = req["state"]
        if not roles & {workflow.PROVIDER, workflow.ADMIN}:
            raise BadRequest("changing an entry needs the request's provider or an admin", 403)
        if state == "changes-requested" and workflow.PROVIDER not in roles:
            raise BadRequest("while changes are requested, only the provider changes the entry", 403)  # fmt: skip
        # A published entry changes without review or evaluation: only admins may do that.
        if state == "integrated" and workflow.ADMIN not in roles:
            raise BadRequest(
                "an integrated entry is changed by an admin only (a new version); the "
                "provider asks for the change in a comment on the request",
                403,
            )
        if state not in ("changes-requested", "integrated"):
            raise BadRequest(
                f"the request is {state!r}: its entry changes only while "
                "'changes-requested' (the provider) or 'integrated' (a new version)",
                409,
            )
        body = await json_body(request)
        entry = entry_field(body, settings)
        if entry["slug"] != req["slug"]:
            raise BadRequest(f"the slug cannot change (it is {req['slug']!r})", 400)
        try:
            done = await asyncio.to_thread(
                store.update_entry, ctx.db_url, rid, expect=state, entry=entry, actor=user["name"]
            )
        except store.StoreError as e:
            raise refusal(e) from None
        return request_doc(done, user, settings)

    # -- the catalogue (anonymous allowed) -------------------------------------------------
    async def visible_entry(request: Request, slug: str) -> tuple[dict, dict | None]:
        user = await caller(ctx, request)
        row = await asyncio.to_thread(store.published_one, ctx.db_url, slug)
        if row is None or not can_see(row["entry"].get("visibility", "public"), user):
            raise BadRequest(f"no entry {slug[:64]!r}", 404)
        return row, user

    @router.get("/entries")
    async def entries(request: Request) -> dict[str, Any]:
        user = await caller(ctx, request)
        rows = await asyncio.to_thread(store.published, ctx.db_url)
        health = await asyncio.to_thread(store.health_all, ctx.db_url)
        return {
            "entries": [
                entry_doc(r, health.get(r["slug"]))
                for r in rows
                if can_see(r["entry"].get("visibility", "public"), user)
            ]
        }

    @router.get("/entries/{slug}")
    async def entry(request: Request, slug: str) -> dict[str, Any]:
        row, _ = await visible_entry(request, slug)
        health = await asyncio.to_thread(store.health_all, ctx.db_url)
        return entry_doc(row, health.get(slug))

    @router.get("/entries/{slug}/versions")
    async def entry_versions(request: Request, slug: str) -> dict[str, Any]:
        row, user = await visible_entry(request, slug)
        rows = await asyncio.to_thread(store.versions, ctx.db_url, row["id"])
        # A version published more narrowly (project:x) stays hidden from those outside it;
        # who edited it (hub user names) only for those who see the request itself.
        insider = user is not None and may_see_request(row, user, settings)
        shown = [
            v if insider else {k: x for k, x in v.items() if k != "actor"}
            for v in rows
            if can_see(v["entry"].get("visibility", "public"), user)
        ]
        return {"slug": slug, "versions": shown}

    @router.get("/vocabulary")
    async def vocabulary() -> dict[str, Any]:
        return {
            "thematic_areas": dict(settings.thematic_areas),
            "kinds": list(KINDS),
            "endpoint_types": list(ENDPOINT_TYPES),
            "states": list(STATES),
            "transitions": [
                {"to": r.to, "from": list(r.sources), "role": r.role} for r in workflow.RULES
            ],
            "reviewers_group": settings.reviewers_group,
        }

    return router

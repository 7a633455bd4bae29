"""The ``projects`` service: a REST API over projects and allocations (FastAPI).

``uvicorn --factory twinhub.services.projects.app:create_app`` (the supervisor's ``projects``
component).  Every request but ``health`` passes :class:`~twinhub.services.hubauth.
HubAuthMiddleware` (token or browser SSO, service access scope); who is an admin, and who is
in which group, is asked of the hub with the service's own token at each request, so a
change in the hub counts at once.

=========================================  ==================================================
``GET  api/projects``                      tokens with ``read:groups``: every project;
                                           others: their own
``GET  api/projects/{name}``               one project (own, or ``read:groups``; else 404)
``PUT  api/projects/{name}``               admins: set a project's whole allocation
``PATCH api/projects/{name}``              admins: change some keys of an existing project
``DELETE api/projects/{name}``             admins: back to the configured allocation
``GET  api/users/{name}/allocation``       the user, or ``read:users:groups`` (of that user):
                                           the effective allocation
=========================================  ==================================================

Powers come from the token's scopes, as in JupyterHub's own API (docs/projects.md has the
table): "admins" means an admin whose token carries ``admin:users``; an admin's token narrowed
to ``access:services!service=projects`` acts as an ordinary user's. Errors are JSON
``{"code": status, "description": message}``; a refused change stores nothing. Requests pass
the platform's request limits first (:mod:`twinhub.services.asgi`: 64 KiB bodies here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from twinlab.contract import ENV_HUB_API_URL, ENV_HUB_TOKEN

from ... import __version__
from ...objectstore import syncs_project_storage
from ...objectstore.project_buckets import sync_project_storage
from ...process.runtime import Runtime
from ..asgi import BadRequest, RequestLimitsMiddleware, error_body
from ..hubauth import HubAuthMiddleware, admin_refusal, has_scope, hub_user_model
from . import SERVICE_PREFIX, allocations, overrides
from .catalog import ProjectCatalog, TwinhubProjects

PUBLIC_PATHS = ("health",)
#: Bodies are one allocation (a few hundred bytes).
MAX_BODY_BYTES = 64 * 1024
#: Scopes that let a token read every project / another user's groups (JupyterHub's own).
READ_PROJECTS_SCOPE = "read:groups"
READ_USER_GROUPS_SCOPE = "read:users:groups"


log = logging.getLogger("twinhub.projects")


async def _sync_storage_forever(rt: Runtime) -> None:
    """Keep project buckets and their members' access in step with hub groups."""
    if not syncs_project_storage(rt):
        return
    interval = TwinhubProjects(config=rt.config).storage_sync_interval
    last = None
    while True:
        try:
            last = await asyncio.to_thread(sync_project_storage, rt, last)
        except Exception as e:  # the object store may be restarting: try again later
            log.warning("project storage sync failed: %s", e)
        await asyncio.sleep(interval)


def create_app(rt: Runtime | None = None, catalog: ProjectCatalog | None = None) -> FastAPI:
    """The service app; ``rt`` defaults to the running platform's ($TWINHUB_STATE)."""
    rt = rt or Runtime.load()
    catalog = catalog or ProjectCatalog.from_runtime(rt)
    hub_api = os.environ.get(ENV_HUB_API_URL, rt.hub_api_url).rstrip("/")
    token = os.environ.get(ENV_HUB_TOKEN, "")
    p = SERVICE_PREFIX

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sync = asyncio.create_task(_sync_storage_forever(rt))
        try:
            async with httpx.AsyncClient(
                headers={"Authorization": f"token {token}"}, timeout=30
            ) as client:
                app.state.hub = client
                yield
        finally:
            sync.cancel()

    app = FastAPI(
        title="twinhub projects",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.exception_handler(BadRequest)
    async def _refused(_request: Request, e: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(e.status, e.message), status_code=e.status)

    # -- helpers -----------------------------------------------------------------------------
    async def hub_user(request: Request, name: str) -> dict[str, Any] | None:
        """The hub's model of user ``name`` (admin flag, groups); None if there is none."""
        return await hub_user_model(request.app.state.hub, hub_api, name)

    async def caller(request: Request) -> dict[str, Any]:
        who = request.state.hub_user
        if who.get("kind", "user") != "user":
            raise BadRequest(f"{who.get('name')!r} is not a user: allocations are per user", 403)
        model = await hub_user(request, who["name"])
        if model is None:
            raise BadRequest(f"user {who['name']!r} no longer exists", 403)
        return model

    def token_of(request: Request, me: dict[str, Any]) -> dict[str, Any]:
        """The token's scopes with the hub's current admin flag (a narrowed token's model
        may lack the flag; the hub's model read with the service's token has it)."""
        return {**request.state.hub_user, "admin": bool(me.get("admin")), "name": me["name"]}

    def reads_every_project(request: Request, me: dict[str, Any], name: str = "") -> bool:
        target = f"group={name}" if name else ""
        return has_scope(token_of(request, me), READ_PROJECTS_SCOPE, target)

    async def admin(request: Request) -> dict[str, Any]:
        me = await caller(request)
        refusal = admin_refusal(token_of(request, me), "change allocations")
        if refusal:
            raise BadRequest(refusal, 403)
        return me

    def name_of(raw: str) -> str:
        try:
            return allocations.project_name(raw)
        except allocations.AllocationError as e:
            raise BadRequest(str(e), 400) from None

    async def body_of(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            data = json.loads(raw or b"null")
        except ValueError as e:
            raise BadRequest(f"request body is not valid JSON: {e}", 400) from None
        if not isinstance(data, dict):
            raise BadRequest(f"request body must be a JSON object, not {type(data).__name__}", 400)
        return data

    def validated(data: dict[str, Any], name: str) -> dict[str, Any]:
        try:
            return allocations.validate_allocation(
                data, catalog.profiles, f"allocation of {name!r}"
            )
        except allocations.AllocationError as e:
            raise BadRequest(str(e), 400) from None

    async def entries() -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(catalog.entries)

    def view(name: str, entry: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, **entry}

    # -- routes ------------------------------------------------------------------------------
    @app.get(p + "health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(p + "api/projects")
    async def list_projects(request: Request) -> dict[str, Any]:
        me = await caller(request)
        everything = await entries()
        mine = everything if reads_every_project(request, me) else {
            n: e for n, e in everything.items() if n in set(me.get("groups") or [])
        }  # fmt: skip
        return {"projects": [view(n, e) for n, e in sorted(mine.items())]}

    @app.get(p + "api/projects/{name:path}")
    async def get_project(request: Request, name: str) -> dict[str, Any]:
        name = name_of(name)
        me = await caller(request)
        entry = (await entries()).get(name)
        mine = name in (me.get("groups") or [])
        if entry is None or not (mine or reads_every_project(request, me, name)):
            raise BadRequest(f"no project {name!r} among yours", 404)
        return view(name, entry)

    @app.put(p + "api/projects/{name:path}")
    async def put_project(request: Request, name: str) -> dict[str, Any]:
        name = name_of(name)
        me = await admin(request)
        alloc = validated(await body_of(request), name)
        await asyncio.to_thread(overrides.set_override, catalog.db_url, name, alloc, me["name"])
        return view(name, (await entries())[name])

    @app.patch(p + "api/projects/{name:path}")
    async def patch_project(request: Request, name: str) -> dict[str, Any]:
        name = name_of(name)
        me = await admin(request)
        change = await body_of(request)
        entry = (await entries()).get(name)
        if entry is None:
            raise BadRequest(f"no project {name!r}: create it with PUT", 404)
        alloc = validated({**entry["allocation"], **change}, name)
        await asyncio.to_thread(overrides.set_override, catalog.db_url, name, alloc, me["name"])
        return view(name, (await entries())[name])

    @app.delete(p + "api/projects/{name:path}")
    async def reset_project(request: Request, name: str) -> dict[str, Any]:
        name = name_of(name)
        await admin(request)
        had = await asyncio.to_thread(overrides.delete_override, catalog.db_url, name)
        if name in catalog.configured:
            return view(name, (await entries())[name])
        if had:
            return {"name": name, "deleted": True}
        raise BadRequest(f"no project {name!r}", 404)

    @app.get(p + "api/users/{user}/allocation")
    async def user_allocation(request: Request, user: str) -> dict[str, Any]:
        me = await caller(request)
        token = token_of(request, me)
        if user != me["name"] and not has_scope(token, READ_USER_GROUPS_SCOPE, f"user={user}"):
            raise BadRequest(
                f"{me['name']!r} may read only their own allocation: reading {user!r}'s "
                f"needs a token with the scope {READ_USER_GROUPS_SCOPE!r} (or "
                f"{READ_USER_GROUPS_SCOPE}!user={user})",
                403,
            )
        model = me if user == me["name"] else await hub_user(request, user)
        if model is None:
            raise BadRequest(f"no user {user!r}", 404)
        eff = await asyncio.to_thread(catalog.effective, list(model.get("groups") or []))
        return {"user": user, **eff.as_dict()}

    # The hub decides who may call; the health check alone answers without credentials.
    # Starlette: the last added runs first, so the request limits come before everything.
    app.add_middleware(HubAuthMiddleware, prefix=p, public_paths=PUBLIC_PATHS)
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=MAX_BODY_BYTES)
    return app

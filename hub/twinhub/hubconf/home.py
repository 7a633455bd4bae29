"""``/hub/home``: where a login lands, the user's platform at a glance.

Rendered server-side (``templates/home.html``) from what the hub process knows of the
logged-in user, and of nobody else: their servers (start with an explicit click, stop,
profile), the profiles they may start, their projects and what these allow (the projects
part's :attr:`~twinhub.hubconf.face.TwinhubHomeHooks.allocation_reader`), their Dask clusters
(the gateway's API, asked with a short-lived token of the user's own), the services they may
use (``$TWINHUB_SERVICES``), the Data lake page, docs and help.  JupyterHub's "Named Servers"
block is shown only when the allocation allows more than one server.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from jupyterhub.handlers import BaseHandler
from jupyterhub.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from ..spawn.profiles import default_profile
from .face import TwinhubHomeHooks

GATEWAY = "dask-gateway"
# One token per user for the home page's look at their clusters, renewed before it expires.
_TOKEN_LIFETIME = 3600
_TOKEN_MARGIN = 300
# Keyed by (user id, cookie_id), never by name: a renamed user's token must not serve a new
# user of the old name, and ended sessions (a new cookie_id) drop it too.
_gateway_tokens: dict[tuple[int, str], tuple[str, float]] = {}
# What each of the platform's services is for a user (others are listed by name alone).
SERVICE_DESCRIPTIONS = {
    "stac": "the data lake's STAC API (twinlab.datalake, pystac-client)",
    "dask-gateway": "Dask clusters on demand (dask_gateway.Gateway())",
    "projects": "your projects and allocations (REST API)",
    "cache": "the rolling cache of remote data",
}


def _profile_of(spawner: Any) -> str:
    """The profile slug a server was started with ('' when unknown)."""
    profile = getattr(spawner, "profile", None) or {}
    return (
        profile.get("slug") or (getattr(spawner, "user_options", None) or {}).get("profile") or ""
    )


def _project_of(spawner: Any, orm_spawner: Any) -> str:
    """The project a server is charged to ('' when unknown: not started since the hub did)."""
    project = getattr(spawner, "project", "") if spawner else ""
    if not project:
        project = (orm_spawner.user_options or {}).get("project") or ""
    return project if isinstance(project, str) else ""


def named_servers_allowed(allow_named_servers: bool, summary: dict | None) -> bool:
    """Offer named servers when the hub allows them and the user's allocation allows more
    than one server at once (no allocation known: as the hub says)."""
    if not allow_named_servers:
        return False
    if summary is None:
        return True
    limit = summary["effective"].get("max_servers_per_user")
    return limit is None or limit > 1


def _token_key(user: Any) -> tuple[int, str]:
    return (user.orm_user.id, user.orm_user.cookie_id)


def gateway_token(user: Any) -> str:
    """A token of hub user ``user`` for the gateway's API, cached until near its expiry."""
    cached = _gateway_tokens.get(_token_key(user))
    if cached and cached[1] - time.monotonic() > _TOKEN_MARGIN:
        return cached[0]
    token = user.new_api_token(
        note="twinhub home page: your Dask clusters",
        expires_in=_TOKEN_LIFETIME,
        scopes=[f"access:services!service={GATEWAY}"],
    )
    now = time.monotonic()
    # Expired entries go: those of renamed, deleted or logged-out users are never read again.
    for key in [k for k, (_, until) in _gateway_tokens.items() if until < now]:
        del _gateway_tokens[key]
    _gateway_tokens[_token_key(user)] = (token, now + _TOKEN_LIFETIME)
    return token


class TwinhubHomeHandler(BaseHandler):
    """The home page (replaces JupyterHub's ``/home``)."""

    @web.authenticated
    async def get(self) -> None:
        user = self.current_user
        if user.running:
            # As JupyterHub's own home page: notice a server that died since.
            await user.spawner.poll_and_notify()
        hooks = TwinhubHomeHooks(config=self.settings["config"])
        summary = await self._allocation(hooks, user)
        offered = await self._profiles(user)
        names = {p["slug"]: p.get("display_name") or p["slug"] for p in offered}
        servers = self._servers(user, names)
        clusters = await self._clusters(user)
        services = self._services(user)
        html = await self.render_template(
            "home.html",
            user=user,
            # JupyterHub's home.html names: its home.js drives the stop/start buttons.
            url=url_path_join(self.hub.base_url, "spawn", user.escaped_name),
            default_server=user.spawner,
            allow_named_servers=named_servers_allowed(self.allow_named_servers, summary),
            named_server_limit_per_user=await self.get_current_user_named_server_limit(),
            url_path_join=url_path_join,
            invalid_server_names=[],
            servers=servers,
            offered_profiles=offered,
            default_profile=default_profile(offered)["slug"] if offered else "",
            allocation=summary,
            clusters=clusters,
            platform_services=services,
            datalake_url=user.server_url("") + "datalake/",
            default_running=bool(user.spawner.ready),
        )
        self.finish(html)

    async def _allocation(self, hooks: TwinhubHomeHooks, user: Any) -> dict | None:
        reader = hooks.allocation_reader
        if reader is None:
            return None
        groups = [g.name for g in user.groups]
        try:
            return await asyncio.to_thread(reader, groups)
        except Exception as e:  # a stored allocation the catalog refuses: show no projects
            self.log.warning("home page: allocation of %s unreadable: %s", user.name, e)
            return None

    async def _profiles(self, user: Any) -> list[dict]:
        for_user = getattr(user.spawner, "profiles_for_user", None)
        if for_user is None:
            return []
        return list(await for_user())

    def _servers(self, user: Any, names: dict[str, str]) -> list[dict]:
        out = []
        for name, orm_spawner in sorted(user.orm_user.orm_spawners.items()):
            spawner = user.spawners.get(name)
            active = bool(spawner and spawner.active)
            slug = _profile_of(spawner) if spawner else ""
            if not slug and orm_spawner.user_options:
                slug = (orm_spawner.user_options or {}).get("profile") or ""
            out.append(
                {
                    "name": name,
                    "label": name or "default",
                    "active": active,
                    "ready": bool(spawner and spawner.ready),
                    "pending": (spawner.pending if spawner else None) or "",
                    "url": user.server_url(name),
                    "profile": slug,
                    "profile_name": names.get(slug, slug),
                    "project": _project_of(spawner, orm_spawner),
                    "last_activity": orm_spawner.last_activity,
                }
            )
        if not out or out[0]["name"] != "":
            out.insert(
                0,
                {
                    "name": "",
                    "label": "default",
                    "active": False,
                    "ready": False,
                    "pending": "",
                    "url": user.server_url(""),
                    "profile": "",
                    "profile_name": "",
                    "project": "",
                    "last_activity": None,
                },
            )
        return out

    def _services(self, user: Any) -> list[dict]:
        """What ``$TWINHUB_SERVICES`` lists for the user's servers, those the user may reach
        through the hub (the access scope) marked."""
        listed = dict(getattr(user.spawner, "services", None) or {})
        reachable = {s.name: s.href for s in self.get_accessible_services(user)}
        return [
            {
                "name": name,
                "url": reachable.get(name) or url,
                "api_only": name not in reachable,
                "description": SERVICE_DESCRIPTIONS.get(name, ""),
            }
            for name, url in sorted(listed.items())
        ]

    async def _clusters(self, user: Any) -> dict:
        """``{"available", "items": [{name, status, dashboard}], "error"}``: the user's own
        clusters, as the gateway answers them for the user's token."""
        service = self.services.get(GATEWAY)
        if service is None or not service.url:
            return {"available": False, "items": [], "error": ""}
        base = url_path_join(self.base_url, "services", GATEWAY + "/")
        url = service.url.rstrip("/") + url_path_join(base, "api/v1/clusters/")
        try:
            r = await AsyncHTTPClient().fetch(
                url,
                headers={"Authorization": f"jupyterhub {gateway_token(user)}"},
                request_timeout=5,
            )
            found = json.loads(r.body or b"{}")
        except (HTTPClientError, OSError, ValueError) as e:
            self.log.warning("home page: Dask clusters of %s unknown: %s", user.name, e)
            _gateway_tokens.pop(_token_key(user), None)
            return {"available": True, "items": [], "error": "the gateway did not answer"}
        items = []
        for name, c in sorted(found.items()):
            items.append(
                {
                    "name": name,
                    "status": str(c.get("status", "")).lower(),
                    "dashboard": url_path_join(base, "clusters", name, "status"),
                }
            )
        return {"available": True, "items": items, "error": ""}

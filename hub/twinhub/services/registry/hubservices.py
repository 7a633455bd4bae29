"""The hub's routes of integrated web services: ``/services/<slug>/`` → the registry itself.

An integrated entry becomes a hub service named after its slug (``POST /hub/api/services/
<slug>``, JupyterHub's runtime services) whose URL is the registry's own address, so the
proxy sends ``/services/<slug>/...`` (the full path) to the registry, where the sign-on
gateway (gateway.py) answers. The service has no token and no OAuth client of its own: the
gateway authenticates users itself. Its ``info`` marks it as ours, so that reconciling
never touches another service.

JupyterHub (6.1.1, ``apihandlers/services.py``) records a runtime service and polls its
URL, but adds its proxy route only at the next ``check_routes`` (start, and every
``last_activity_interval``, 5 minutes by default); ``POST /hub/api/proxy`` (scope
``proxy``) runs that check at once, and so does :func:`sync_proxy` after every change.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

import httpx

from . import RegistryPart, store
from .context import RegistryContext

log = logging.getLogger("twinhub.registry.routes")

#: ``info`` of the hub services the registry made (reconcile_routes touches only these).
MARK = {"twinhub-registry": "integrated entry"}


class HubRouteError(RuntimeError):
    """The hub refused or failed a route change; the message names its answer."""


def registry_url(ctx: RegistryContext) -> str:
    """Where the hub reaches the registry (loopback embedded, its Service in Kubernetes):
    the address the hub registered for the registry itself."""
    return RegistryPart().base_url(ctx.rt)


def _url(ctx: RegistryContext, slug: str) -> str:
    return f"{ctx.hub_api}/services/{quote(slug, safe='')}"


def _answer(r: httpx.Response) -> str:
    try:
        msg = r.json().get("message", "")
    except (ValueError, AttributeError):
        msg = r.text[:200]
    return f"{r.status_code} {msg}".strip()


async def _call(ctx: RegistryContext, method: str, url: str, **kw: Any) -> httpx.Response:
    assert ctx.hub is not None, "the app's lifespan opens the hub client"
    try:
        return await ctx.hub.request(method, url, **kw)
    except httpx.HTTPError as e:
        raise HubRouteError(f"cannot reach the hub ({method} {url}): {e}") from e


async def sync_proxy(ctx: RegistryContext) -> None:
    """Ask the hub to bring the proxy's routes in line now (not at its next check)."""
    r = await _call(ctx, "POST", f"{ctx.hub_api}/proxy")
    if r.status_code >= 300:
        # not fatal: the hub's own periodic check adds the route later
        log.warning("the hub did not sync its proxy routes now: %s", _answer(r))


async def publish_route(ctx: RegistryContext, slug: str, *, sync: bool = True) -> None:
    """Make ``/services/<slug>/`` reach the registry. Idempotent: a service of that name
    already there and ours (same URL) is fine; another's is an error naming it."""
    url = registry_url(ctx)
    r = await _call(ctx, "POST", _url(ctx, slug), json={"url": url, "display": False, "info": MARK})
    if r.status_code == 409:
        have = await _call(ctx, "GET", _url(ctx, slug))
        model = have.json() if have.status_code == 200 else {}
        if model.get("url") == url:
            return  # an earlier publish of ours (a retry, another replica)
        if (model.get("info") or {}).get("twinhub-registry"):
            # ours, at an address of an earlier run (the port changed): replace it
            await withdraw_route(ctx, slug, sync=False)
            return await publish_route(ctx, slug, sync=sync)
        raise HubRouteError(
            f"the hub already has a service {slug!r} that is not the registry's "
            f"({model.get('url') or 'no URL'}): /services/{slug}/ cannot be routed here"
        )
    if r.status_code != 201:
        raise HubRouteError(f"the hub refused the route /services/{slug}/: {_answer(r)}")
    if sync:
        await sync_proxy(ctx)


async def withdraw_route(ctx: RegistryContext, slug: str, *, sync: bool = True) -> None:
    """Remove ``/services/<slug>/`` (no such service: nothing to do)."""
    r = await _call(ctx, "DELETE", _url(ctx, slug))
    if r.status_code not in (200, 204, 404):
        raise HubRouteError(f"the hub refused to remove /services/{slug}/: {_answer(r)}")
    if sync:
        await sync_proxy(ctx)


async def reconcile_routes(ctx: RegistryContext) -> None:
    """At start: every integrated or suspended slug routed here; every service of ours
    whose slug is no longer live withdrawn (a change the registry missed while down).
    The hub out of reach raises (the app tries again); a refused slug is logged."""
    live = set(await asyncio.to_thread(store.routed_slugs, ctx.db_url))
    r = await _call(ctx, "GET", f"{ctx.hub_api}/services")
    if r.status_code != 200:
        raise HubRouteError(f"cannot list the hub's services: {_answer(r)}")
    url = registry_url(ctx)
    ours = {
        name
        for name, m in r.json().items()
        if (m.get("info") or {}).get("twinhub-registry") or m.get("url") == url
    }
    # the registry's own entry (from the config) has its URL too: never withdraw it
    ours.discard(RegistryPart.name)
    problems = []
    for slug in sorted(ours - live):
        try:
            await withdraw_route(ctx, slug, sync=False)
            log.info("withdrew the stale route /services/%s/", slug)
        except HubRouteError as e:
            problems.append(str(e))
    for slug in sorted(live):
        try:
            await publish_route(ctx, slug, sync=False)
        except HubRouteError as e:
            problems.append(str(e))
    await sync_proxy(ctx)
    for p in problems:  # not retried: each needs an operator (a name taken by another)
        log.error("reconciling the hub's routes: %s", p)

"""The hub's routes of integrated web services: ``/services/<slug>/`` → the registry itself.

An integrated entry becomes a hub service named after its slug (``POST /hub/api/services/
<slug>``, JupyterHub's runtime services) whose URL is the registry's own address, so the
proxy sends ``/services/<slug>/...`` (the full path) to the registry, where the sign-on
gateway (gateway.py) answers. The service has no token and no OAuth client of its own: the
gateway authenticates users itself. Its ``info`` marks it as ours, so that reconciling
never touches another service.

JupyterHub (6.1.1, ``apihandlers/services.py``) records a runtime service and polls its
URL, but adds (or removes) its proxy route only at the next ``check_routes``: at start and
every ``JupyterHub.last_activity_interval``, which RegistryPart lowers to at most 30 s. The
registry does not ask for the check itself (``POST /hub/api/proxy``): that needs the
``proxy`` scope, which could also point the hub at another proxy, too much for the
platform's most exposed service. So a route comes within ~30 s of integration; until then
the hub answers ``/services/<slug>/`` itself (404), and after a withdrawal the gateway
answers 404 until the route goes.
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


#: Seconds between two reconciliations of the hub's routes with the requests (a route change
#: that slipped, e.g. two replicas racing, heals by itself within this time).
RECONCILE_INTERVAL = 300.0


class HubRouteError(RuntimeError):
    """The hub refused or failed a route change; the message names its answer."""


class SlugTaken(HubRouteError):
    """The hub has a service of that name that is not the registry's (an operator's own):
    the slug cannot be routed here (the API's 409, not the hub's failure)."""


def route_lock(ctx: RegistryContext, slug: str) -> asyncio.Lock:
    """The lock held around every change of ``slug``'s route in this process (an API call's
    publish-then-commit, a reconciliation), so that they do not undo each other."""
    locks: dict[str, asyncio.Lock] = ctx.extras.setdefault("route_locks", {})
    return locks.setdefault(slug, asyncio.Lock())


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


async def publish_route(ctx: RegistryContext, slug: str) -> None:
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
            await withdraw_route(ctx, slug)
            return await publish_route(ctx, slug)
        raise SlugTaken(
            f"the hub already has a service {slug!r} that is not the registry's "
            f"({model.get('url') or 'no URL'}): /services/{slug}/ cannot be routed here; "
            "an admin renames one of them (a new request with another slug)"
        )
    if r.status_code != 201:
        raise HubRouteError(f"the hub refused the route /services/{slug}/: {_answer(r)}")


async def withdraw_route(ctx: RegistryContext, slug: str) -> None:
    """Remove ``/services/<slug>/`` (no such service: nothing to do)."""
    r = await _call(ctx, "DELETE", _url(ctx, slug))
    if r.status_code not in (200, 204, 404):
        raise HubRouteError(f"the hub refused to remove /services/{slug}/: {_answer(r)}")


async def reconcile_loop(ctx: RegistryContext, interval: float = RECONCILE_INTERVAL) -> None:
    """:func:`reconcile_routes` now and every ``interval`` seconds, forever (a failed round
    is logged; the next one tries again)."""
    while True:
        try:
            await reconcile_routes(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconciling the hub's routes failed; again in %.0f s", interval)
        await asyncio.sleep(interval)


async def reconcile_routes(ctx: RegistryContext) -> None:
    """Every integrated or suspended slug routed here; every service of ours whose slug is
    no longer live withdrawn (a change the registry missed while down, or lost to a race).
    Each slug is re-read under its :func:`route_lock` before its route changes, so a
    transition made meanwhile is not undone. The hub out of reach raises; a refused slug
    is logged."""
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
    for slug in sorted(ours | live):
        async with route_lock(ctx, slug):
            routed = await asyncio.to_thread(store.route, ctx.db_url, slug) is not None
            try:
                if routed:
                    await publish_route(ctx, slug)
                elif slug in ours:
                    await withdraw_route(ctx, slug)
                    log.info("withdrew the stale route /services/%s/", slug)
            except HubRouteError as e:
                problems.append(str(e))
    for p in problems:  # not retried: each needs an operator (a name taken by another)
        log.error("reconciling the hub's routes: %s", p)

"""The reconciliation of the hub's routes with the requests (hubservices.py): stale routes
of ours withdrawn, live ones published, other services never touched, and a transition
made while it runs not undone (each slug re-read under its route lock).

The one faked edge is the hub's services API (:class:`FakeHub`, an httpx ``MockTransport``
keeping a table of services as JupyterHub's runtime services API would); the store is the
real one on SQLite. The integration test ``test_registry_hub_routes.py`` does the same
against a real hub and proxy.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from traitlets.config import Config

from twinhub import db
from twinhub.process.runtime import Runtime
from twinhub.services.registry import hubservices, store
from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.context import RegistryContext
from twinhub.services.registry.entry import validate_entry

HUB_API = "http://hub.fake/hub/api"
PREFIX = "/hub/api/services"


class FakeHub:
    """FAKE of ``/hub/api/services``: GET (list, one), POST (409 if it exists), DELETE;
    ``on_list`` runs when the list is read (to change the store meanwhile)."""

    def __init__(self, services: dict[str, dict]) -> None:
        self.services = services
        self.calls: list[tuple[str, str]] = []
        self.on_list = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        name = path.removeprefix(PREFIX).strip("/")
        self.calls.append((method, name))
        if path == PREFIX and method == "GET":
            if self.on_list:
                self.on_list()
            return httpx.Response(200, json=self.services)
        if method == "GET":
            return httpx.Response(200, json=self.services[name]) if name in self.services else httpx.Response(404)  # fmt: skip
        if method == "POST":
            if name in self.services:
                return httpx.Response(409, json={"message": f"service {name} exists"})
            self.services[name] = {"name": name, **json.loads(request.content)}
            return httpx.Response(201, json=self.services[name])
        if method == "DELETE":
            return httpx.Response(200 if self.services.pop(name, None) else 404)
        return httpx.Response(405)


@pytest.fixture
def ctx(tmp_path: Path) -> RegistryContext:
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    cfg = Config()
    cfg.Twinhub.db_url = url
    rt = Runtime(state_dir=tmp_path, config=cfg, mode="multi-user", ports={"public": 9, "registry": 7})  # fmt: skip
    return RegistryContext(rt=rt, settings=TwinhubRegistry(), db_url=url, hub_api=HUB_API, token="t", prefix="/services/registry/")  # fmt: skip


def request_in(db_url: str, slug: str, state: str) -> str:
    """A request of ``slug`` walked to ``state`` through the store."""
    doc = {"name": slug, "slug": slug, "provider": "Org", "description": "x",
           "thematic_areas": ["water"], "kind": "api", "endpoints": [{"url": "https://x.example/", "type": "other"}]}  # fmt: skip
    rid = store.create_request(db_url, provider="pat", entry=validate_entry(doc, TwinhubRegistry()), resources={}, activity="")["id"]  # fmt: skip
    path = {"integrated": ["evaluated", "approved", "integrated"], "suspended": ["evaluated", "approved", "integrated", "suspended"], "approved": ["evaluated", "approved"]}  # fmt: skip
    now = "submitted"
    for to in path[state]:
        store.transition(db_url, rid, expect=now, to=to, actor="x")
        now = to
    return rid


def run(ctx: RegistryContext, hub: FakeHub, coro_fn) -> None:
    async def go():
        ctx.hub = httpx.AsyncClient(transport=httpx.MockTransport(hub))
        try:
            await coro_fn(ctx)
        finally:
            await ctx.hub.aclose()

    asyncio.run(go())


def test_reconcile_publishes_live_withdraws_stale_and_leaves_others(ctx):
    ours = {"url": "http://127.0.0.1:7", "info": dict(hubservices.MARK)}
    hub = FakeHub({
        "registry": {"name": "registry", "url": "http://127.0.0.1:7"},  # the registry itself
        "stale": {"name": "stale", **ours},
        "alpha": {"name": "alpha", **ours},
        "theirs": {"name": "theirs", "url": "http://10.0.0.9:80", "info": {}},
    })  # fmt: skip
    request_in(ctx.db_url, "alpha", "integrated")
    request_in(ctx.db_url, "beta", "suspended")
    request_in(ctx.db_url, "theirs", "approved")  # not routed: its name is another's anyway
    run(ctx, hub, hubservices.reconcile_routes)
    assert set(hub.services) == {"registry", "alpha", "beta", "theirs"}
    assert hub.services["theirs"]["url"] == "http://10.0.0.9:80"
    assert ("DELETE", "stale") in hub.calls
    assert not any(m == "DELETE" and n in ("registry", "theirs", "alpha") for m, n in hub.calls)


def test_a_transition_during_reconciliation_is_not_undone(ctx):
    """The slug read as not live at the start is integrated (another replica) before its
    turn comes: re-read under its lock, its route stays."""
    ours = {"url": "http://127.0.0.1:7", "info": dict(hubservices.MARK)}
    hub = FakeHub({"gamma": {"name": "gamma", **ours}})
    rid = request_in(ctx.db_url, "gamma", "approved")

    def integrate_now():  # after reconcile_routes read the routed slugs
        store.transition(ctx.db_url, rid, expect="approved", to="integrated", actor="root")

    hub.on_list = integrate_now
    run(ctx, hub, hubservices.reconcile_routes)
    assert "gamma" in hub.services and ("DELETE", "gamma") not in hub.calls


def test_route_locks_are_one_per_slug(ctx):
    a = hubservices.route_lock(ctx, "a")
    assert hubservices.route_lock(ctx, "a") is a and hubservices.route_lock(ctx, "b") is not a


def test_publishing_over_another_service_names_it(ctx):
    hub = FakeHub({"theirs": {"name": "theirs", "url": "http://10.0.0.9:80", "info": {}}})
    with pytest.raises(hubservices.SlugTaken, match="already has a service 'theirs'"):
        run(ctx, hub, lambda c: hubservices.publish_route(c, "theirs"))
    assert ("DELETE", "theirs") not in hub.calls

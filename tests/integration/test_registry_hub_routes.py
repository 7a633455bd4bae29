"""The registry's hub routes (hubservices.py) against a real JupyterHub and its proxy.

A real hub (tests.helpers.localhub, with configurable-http-proxy) and twinhub's database on
SQLite; the "registry" here is the echo service (tests.helpers.echo_service): a route made by
:func:`publish_route` must bring ``/services/<slug>/...`` through the proxy to it with the full
path, at the hub's next ``check_routes`` (the registry has no ``proxy`` scope to ask for it
sooner); withdrawing removes the route; reconciling puts the hub in line with the database
and leaves services that are not the registry's alone.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import requests
from traitlets.config import Config

from tests.helpers.echo_service import EchoService
from tests.helpers.localhub import LocalHub
from tests.integration.test_spawner import _base
from twinhub import db
from twinhub.db.models import RegistryRequest
from twinhub.process.runtime import Runtime
from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.context import RegistryContext
from twinhub.services.registry.hubservices import (
    MARK,
    publish_route,
    reconcile_routes,
    withdraw_route,
)

pytestmark = [pytest.mark.integration]

# The role the registry's token has on the platform (RegistryPart.scopes: admin:services,
# not proxy), for the hub's test service here; routes are checked every 5 s (the platform:
# at most 30 s, RegistryPart).
EXTRA = """
c.JupyterHub.load_roles.append(
    {"name": "registry-like", "services": ["tester"], "scopes": ["admin:services"]}
)
c.JupyterHub.last_activity_interval = 5
"""
#: Seconds a route may take to appear or go (the hub's check_routes, then the proxy).
ROUTE_WAIT = 60


@pytest.fixture(scope="module")
def hub() -> Iterator[LocalHub]:
    base = _base("routes")
    h = LocalHub(base, "personal", {}, extra=EXTRA).start()
    try:
        yield h
    finally:
        h.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoService]:
    e = EchoService.start()
    yield e
    e.stop()


def context(hub: LocalHub, tmp: Path, port: int) -> RegistryContext:
    url = f"sqlite:///{tmp / 'twinhub.sqlite'}"
    if not (tmp / "twinhub.sqlite").exists():
        db.upgrade(url)
    rt = Runtime(state_dir=tmp, config=Config(), ports={"registry": port}, mode="multi-user",
                 instance_id="routes")  # fmt: skip
    return RegistryContext(
        rt=rt,
        settings=TwinhubRegistry(),
        db_url=url,
        hub_api=hub.url + "hub/api",
        token=hub.token,
        prefix="/services/registry/",
    )


def run(ctx: RegistryContext, fn, *args) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"token {ctx.token}"}) as c:
            ctx.hub = c
            await fn(ctx, *args)

    asyncio.run(go())


def routed(hub: LocalHub, slug: str) -> bool:
    """Whether the proxy sends ``/services/<slug>/`` to the echo service (which answers
    with the path it got; the hub itself would answer with a page or a redirect). The
    proxy's table is not read: that needs the ``proxy`` scope, which the registry lacks."""
    r = requests.get(hub.url + f"services/{slug}/probe", timeout=30, allow_redirects=False)
    try:
        return r.status_code == 200 and r.json().get("path") == f"/services/{slug}/probe"
    except ValueError:
        return False


def wait_route(hub: LocalHub, slug: str, present: bool = True) -> None:
    """Until the proxy routes (or no longer routes) ``/services/<slug>/`` to the echo
    service: at the hub's next check_routes."""
    deadline = time.monotonic() + ROUTE_WAIT
    while routed(hub, slug) != present:
        assert time.monotonic() < deadline, f"{slug}: {'never came' if present else 'stayed'}"
        time.sleep(0.5)


def services(hub: LocalHub) -> dict:
    return hub.api("GET", "/services").json()


def add_request(url: str, slug: str, state: str) -> None:
    now = datetime.now(UTC)
    with db.session(url) as s:
        s.add(
            RegistryRequest(
                id=slug.replace("-", "")[:32], slug=slug, provider="pat", state=state,
                entry={"slug": slug}, version=1, resources={}, activity="",
                created_at=now, updated_at=now,
            )
        )  # fmt: skip


def test_publish_routes_the_full_path_at_once_and_withdraw_removes_it(
    hub: LocalHub, echo: EchoService, tmp_path: Path
) -> None:
    ctx = context(hub, tmp_path, echo.port)
    run(ctx, publish_route, "alpha")
    wait_route(hub, "alpha")
    model = services(hub)["alpha"]
    assert model["url"] == echo.url and model["info"] == MARK and not model["display"]
    r = requests.get(hub.url + "services/alpha/x/y?z=1", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/services/alpha/x/y" and r.json()["query"] == "z=1"
    run(ctx, publish_route, "alpha")  # again: nothing to do, no error
    run(ctx, withdraw_route, "alpha")
    assert "alpha" not in services(hub)
    wait_route(hub, "alpha", present=False)
    r = requests.get(hub.url + "services/alpha/x", timeout=30, allow_redirects=False)
    assert r.status_code != 200 or "path" not in r.text
    run(ctx, withdraw_route, "alpha")  # gone already: fine


def test_a_name_taken_by_another_service_is_refused(
    hub: LocalHub, echo: EchoService, tmp_path: Path
) -> None:
    elsewhere = hub.url.rstrip("/")  # a URL that answers (the hub polls it), not ours
    r = hub.api("POST", "/services/foreign", json={"url": elsewhere})
    assert r.status_code == 201, r.text
    ctx = context(hub, tmp_path, echo.port)
    with pytest.raises(RuntimeError, match="'foreign' that is not the registry's"):
        run(ctx, publish_route, "foreign")
    assert services(hub)["foreign"]["url"] == elsewhere
    hub.api("DELETE", "/services/foreign")


def test_reconcile(hub: LocalHub, echo: EchoService, tmp_path: Path) -> None:
    ctx = context(hub, tmp_path, echo.port)
    for slug, state in (("beta", "integrated"), ("gamma", "suspended"), ("delta", "retired"),
                        ("eps", "approved")):  # fmt: skip
        add_request(ctx.db_url, slug, state)
    # what an earlier run left: delta (since retired), beta at an old port; and another's
    earlier = EchoService.start()  # the registry of an earlier run, at another port
    try:
        old = context(hub, tmp_path, earlier.port)
        run(old, publish_route, "delta")
        run(old, publish_route, "beta")
    finally:
        earlier.stop()
    elsewhere = hub.url.rstrip("/")
    assert hub.api("POST", "/services/other", json={"url": elsewhere}).status_code == 201
    run(ctx, reconcile_routes)
    have = services(hub)
    assert have["beta"]["url"] == echo.url and have["gamma"]["url"] == echo.url
    assert "delta" not in have and "eps" not in have
    assert have["other"]["url"] == elsewhere  # not ours: untouched
    wait_route(hub, "beta")
    wait_route(hub, "gamma")
    wait_route(hub, "delta", present=False)
    r = requests.get(hub.url + "services/gamma/", timeout=30)
    assert r.status_code == 200 and r.json()["path"] == "/services/gamma/"
    hub.api("DELETE", "/services/other")

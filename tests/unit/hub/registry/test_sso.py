"""The sign-on endpoint (services/registry/sso.py) through the real service app: hub auth
(cookie session, header token), the gateway's visibility rule and the signed cookie, against
a real SQLite store. The fakes: the hub's token check (``FakeHubAuth``, conftest.py) and the hub's REST API for
a user's model (:func:`fake_hub_api`, an httpx mock transport over the same table).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from twinhub.services.hubauth import token_cookie_name
from twinhub.services.registry.app import create_app
from twinhub.services.registry.gateway_rules import SSO_COOKIE, verify_sso

PREFIX = "/services/registry/"
SSO = PREFIX + "sso?next="


def fake_hub_api(hub_users: dict) -> httpx.AsyncClient:
    """A fake of the hub's ``GET /hub/api/users/<name>``: the models of ``hub_users``."""
    by_name = {m["name"]: m for m in hub_users.values()}

    def answer(request: httpx.Request) -> httpx.Response:
        name = request.url.path.rsplit("/", 1)[-1]
        if name not in by_name:
            return httpx.Response(404, json={"status": 404})
        model = {k: v for k, v in by_name[name].items() if k != "scopes"}
        return httpx.Response(200, json=model)

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


@pytest.fixture
def app(registry_ctx, registry_entries, hub_auth, hub_users):
    registry_ctx.hub = fake_hub_api(hub_users)
    make_entry, publish = registry_entries
    s = registry_ctx.settings
    publish(registry_ctx.db_url, make_entry(s, "open-svc", "Open Waves", "public"))
    publish(registry_ctx.db_url, make_entry(s, "lab-svc", "Lab Tides", "project:other-lab"))
    return create_app(ctx=registry_ctx, hub_auth=hub_auth, background=False)


def get(app, path: str, *, cookies=None, headers=None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", cookies=cookies or {}
        ) as c:
            return await c.get(path, headers=headers or {})

    return asyncio.run(go())


def sso_cookie(r: httpx.Response, slug: str) -> str | None:
    for raw in r.headers.get_list("set-cookie"):
        name, _, rest = raw.partition("=")
        if name == SSO_COOKIE + slug:
            return rest.split(";", 1)[0]
    return None


def test_a_browser_session_gets_the_services_signed_cookie(app, registry_ctx) -> None:
    session = {token_cookie_name(PREFIX): "alice-token"}
    r = get(app, SSO + "/services/open-svc/x%3Fy%3D1", cookies=session)  # next, escaped
    assert r.status_code == 302, r.text
    assert r.headers["location"] == "/services/open-svc/x?y=1"
    value = sso_cookie(r, "open-svc")
    assert value and verify_sso(registry_ctx.sso_key, value, "open-svc") == "alice"
    assert verify_sso(registry_ctx.sso_key, value, "lab-svc") is None  # bound to its slug
    assert "Path=/services/open-svc/" in r.headers["set-cookie"]


def test_no_cookie_for_a_service_the_user_may_not_see(app) -> None:
    r = get(app, SSO + "/services/lab-svc/", cookies={token_cookie_name(PREFIX): "alice-token"})
    assert r.status_code == 403, r.text
    assert "project:other-lab" in r.json()["description"]
    assert sso_cookie(r, "lab-svc") is None


def test_after_the_hubs_logout_the_session_is_dropped_not_renewed(app, hub_auth) -> None:
    """The hub auth cache still names the user; sso asks the hub afresh and sends the
    browser back through the login, deleting the registry's session cookie."""
    hub_auth.revoked.add("alice-token")
    name = token_cookie_name(PREFIX)
    r = get(app, SSO + "/services/open-svc/", cookies={name: "alice-token"})
    assert r.status_code == 302, r.text
    assert r.headers["location"] == SSO.removesuffix("?next=") + "?next=/services/open-svc/"
    assert sso_cookie(r, "open-svc") is None
    (deleted,) = [c for c in r.headers.get_list("set-cookie") if c.startswith(name + "=")]
    assert "Max-Age=0" in deleted and f"Path={PREFIX}" in deleted


def test_a_header_token_is_checked_as_it_came(app, hub_auth) -> None:
    """No fresh check for a header token (hub auth checked it): the cookie is set."""
    hub_auth.revoked.add("bob-token")
    r = get(app, SSO + "/services/open-svc/", headers={"Authorization": "token bob-token"})
    assert r.status_code == 302 and sso_cookie(r, "open-svc"), r.text


@pytest.mark.parametrize(
    ("next_", "why"),
    [
        ("https://evil.example/", "next must be a path under /services/<slug>/"),
        ("/hub/admin", "next must be a path under /services/<slug>/"),
        ("/services/open-svc", "next must be a path under /services/<slug>/"),
        ("/services/open-svc//x", "next must be a path under /services/<slug>/"),
        ("/services/no-such-svc/", "no service 'no-such-svc' is registered here"),
    ],
)
def test_next_must_be_a_registered_service(app, next_, why) -> None:
    r = get(app, SSO + next_, cookies={token_cookie_name(PREFIX): "alice-token"})
    assert r.status_code == 400, r.text
    assert r.json() == {**r.json(), "code": 400} and why in r.json()["description"]
    assert "location" not in r.headers

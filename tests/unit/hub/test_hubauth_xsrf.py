"""``HubAuthMiddleware``'s anonymous paths and browser writes with an anti-forgery value.

A real Starlette app behind the real middleware, driven over httpx's ASGI transport. The
hub's token check is the one edge faked (:class:`FakeHubAuth`: JupyterHub's ``HubOAuth``
with ``user_for_token`` answering from a table instead of the hub's API); scope checks,
PKCE and OAuth redirects are HubOAuth's own.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from jupyterhub.services.auth import HubOAuth
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from twinhub.services.hubauth import HubAuthMiddleware, xsrf_token

PREFIX = "/services/registry/"
SERVICE_TOKEN = "service-token-0123456789"
ACCESS = "access:services!service=registry"
BASE = "http://twinhub.test"
ANONYMOUS = ("", "conformance", "collections", "collections/", "welcome", "static/")

USERS = {
    "alice-token": {"kind": "user", "name": "alice", "admin": False, "groups": [], "scopes": [ACCESS]},
    "bob-token": {"kind": "user", "name": "bob", "admin": False, "groups": [], "scopes": [ACCESS]},
    "narrow-token": {"kind": "user", "name": "carol", "admin": False, "groups": [], "scopes": ["read:users"]},
}  # fmt: skip


class FakeHubAuth(HubOAuth):
    """FAKE of the hub's token check (``GET /hub/api/user``): answers from :data:`USERS`
    (None = unknown or expired token) and counts the calls; the rest is HubOAuth's."""

    calls = 0

    async def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        type(self).calls += 1
        return USERS.get(token)


async def _echo(request):
    """What the app sees: the user (name) and the anti-forgery value."""
    user = getattr(request.state, "hub_user", None)  # public paths: not set
    return JSONResponse(
        {
            "user": user and user["name"],
            "xsrf": getattr(request.state, "xsrf", None),
            "auth_source": getattr(request.state, "auth_source", None),
            "method": request.method,
            "path": request.url.path,
        }
    )


def _client(**options) -> httpx.AsyncClient:
    app = Starlette(
        routes=[Route("/{path:path}", _echo, methods=["GET", "HEAD", "POST", "PUT", "DELETE"])]
    )
    auth = FakeHubAuth(
        api_token=SERVICE_TOKEN,
        api_url="http://127.0.0.1:9/hub/api",
        oauth_client_id="service-registry",
        oauth_redirect_uri=BASE + PREFIX + "oauth_callback",
        oauth_authorization_url="/hub/api/oauth2/authorize",
        access_scopes={ACCESS},
    )
    mw = HubAuthMiddleware(app, prefix=PREFIX, hub_auth=auth, public_paths=("health",), **options)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url=BASE)


def _call(options: dict, method: str, path: str, *, cookie=None, token=None, headers=None):
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"token {token}"
    if cookie:
        headers["Cookie"] = f"twinhub-services-registry-token={cookie}"

    async def go():
        async with _client(**options) as c:
            return await c.request(method, PREFIX + path, headers=headers)

    return asyncio.run(go())


def _xsrf(cookie: str) -> str:
    return xsrf_token(SERVICE_TOKEN, cookie)


WRITES = {"xsrf_writes": True, "anonymous_paths": ANONYMOUS}


# -- the anti-forgery value ------------------------------------------------------------------------
def test_xsrf_token_is_keyed_by_the_service_and_bound_to_the_session():
    a = xsrf_token(SERVICE_TOKEN, "alice-token")
    assert a == xsrf_token(SERVICE_TOKEN, "alice-token") and len(a) == 64
    assert a != xsrf_token(SERVICE_TOKEN, "bob-token")
    assert a != xsrf_token("another-service", "alice-token")
    assert "alice-token" not in a


def test_cookie_sessions_get_the_value_header_tokens_do_not():
    r = _call({}, "GET", "x", cookie="alice-token")
    assert r.json() == {
        "user": "alice",
        "xsrf": _xsrf("alice-token"),
        "auth_source": "cookie",
        "method": "GET",
        "path": PREFIX + "x",
    }
    r = _call({}, "GET", "x", token="alice-token")
    assert (r.json()["user"], r.json()["xsrf"]) == ("alice", None)
    assert r.json()["auth_source"] == "header"


def test_anonymous_callers_have_no_auth_source():
    r = _call(WRITES, "GET", "welcome")
    assert (r.json()["user"], r.json()["auth_source"]) == (None, None)
    r = _call(WRITES, "GET", "welcome", cookie="expired-token")  # stale: anonymous
    assert (r.json()["user"], r.json()["auth_source"]) == (None, None)


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
        {"Sec-Fetch-Mode": "navigate"},
        {"Sec-Fetch-Dest": "document"},
        {},  # plain http on another host: browsers send neither; unchanged
    ],
)
def test_navigations_get_the_value(headers):
    r = _call(WRITES, "GET", "onboarding", cookie="alice-token", headers=headers)
    assert r.json()["xsrf"] == _xsrf("alice-token")


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},  # fetch() from a script
        {"Sec-Fetch-Mode": "same-origin", "Sec-Fetch-Dest": "empty"},
        {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},  # a frame
        {"Sec-Fetch-Mode": "no-cors"},
        {"Sec-Fetch-Dest": "iframe"},
    ],
)
def test_scripts_and_frames_do_not_get_the_value(headers):
    r = _call(WRITES, "GET", "onboarding", cookie="alice-token", headers=headers)
    assert r.status_code == 200
    assert (r.json()["user"], r.json()["auth_source"], r.json()["xsrf"]) == ("alice", "cookie", None)  # fmt: skip
    # The value stays valid for writes: a page loaded earlier goes on working.
    h = {"X-Twinhub-XSRF": _xsrf("alice-token"), **headers}
    r = _call(WRITES, "POST", "api/v1/requests", cookie="alice-token", headers=h)
    assert r.status_code == 200 and r.json()["auth_source"] == "cookie"


# -- writes from a browser session ----------------------------------------------------------------
def test_without_xsrf_writes_a_cookie_may_only_read():
    r = _call(
        {},
        "POST",
        "api/v1/requests",
        cookie="alice-token",
        headers={"X-Twinhub-XSRF": _xsrf("alice-token")},
    )
    assert r.status_code == 403
    assert r.json() == {"code": 403, "description": r.json()["description"]}
    assert "may only read" in r.json()["description"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_a_cookie_write_with_the_value_passes(method):
    h = {"X-Twinhub-XSRF": _xsrf("alice-token"), "Origin": BASE, "Sec-Fetch-Site": "same-origin"}
    r = _call(WRITES, method, "api/v1/requests", cookie="alice-token", headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["user"], r.json()["method"]) == ("alice", method)


def test_a_cookie_write_without_origin_headers_passes():  # older clients send neither
    r = _call(
        WRITES,
        "POST",
        "api/v1/requests",
        cookie="alice-token",
        headers={"X-Twinhub-XSRF": _xsrf("alice-token")},
    )
    assert r.status_code == 200


GOOD = xsrf_token(SERVICE_TOKEN, "alice-token")  # alice's session's value


@pytest.mark.parametrize(
    "headers, words",
    [
        ({}, "needs the X-Twinhub-XSRF header"),
        ({"X-Twinhub-XSRF": "0" * 64}, "does not match"),
        ({"X-Twinhub-XSRF": xsrf_token(SERVICE_TOKEN, "bob-token")}, "does not match"),
        ({"X-Twinhub-XSRF": xsrf_token("other-service", "alice-token")}, "does not match"),
        ({"X-Twinhub-XSRF": GOOD[:-1]}, "does not match"),
        ({"X-Twinhub-XSRF": b"\xe9"}, "does not match"),
        ({"X-Twinhub-XSRF": GOOD, "Sec-Fetch-Site": "cross-site"}, "another site"),
        ({"X-Twinhub-XSRF": GOOD, "Sec-Fetch-Site": "same-site"}, "another site"),
        ({"X-Twinhub-XSRF": GOOD, "Origin": "http://evil.test"}, "is not this site"),
        ({"X-Twinhub-XSRF": GOOD, "Origin": "null"}, "is not this site"),
        ({"X-Twinhub-XSRF": GOOD, "Origin": "http://twinhub.test.evil.test"}, "is not this site"),
        ({"X-Twinhub-XSRF": GOOD, "Origin": "http://twinhub.test:8080"}, "is not this site"),
        ({"X-Twinhub-XSRF": GOOD, "Origin": "https://twinhub.test", "X-Forwarded-Proto": "http"}, "is not this site"),
    ],
)  # fmt: skip
def test_forged_cookie_writes_are_refused(headers, words):
    FakeHubAuth.calls = 0
    r = _call(WRITES, "POST", "api/v1/requests", cookie="alice-token", headers=headers)
    assert r.status_code == 403, r.text
    assert words in r.json()["description"]
    assert FakeHubAuth.calls == 0  # refused before the hub is asked


def test_origin_may_be_the_forwarded_host():
    h = {
        "X-Twinhub-XSRF": _xsrf("alice-token"),
        "Origin": "https://platform.example.org",
        "X-Forwarded-Host": "platform.example.org",
        "X-Forwarded-Proto": "https",
    }
    assert _call(WRITES, "POST", "x", cookie="alice-token", headers=h).status_code == 200


def test_a_write_with_a_stale_cookie_is_401():
    h = {"X-Twinhub-XSRF": _xsrf("expired-token")}
    r = _call(WRITES, "POST", "api/v1/requests", cookie="expired-token", headers=h)
    assert r.status_code == 401


def test_header_tokens_write_without_the_value():
    r = _call(WRITES, "POST", "api/v1/requests", token="alice-token")
    assert (r.status_code, r.json()["user"]) == (200, "alice")


# -- anonymous paths ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "",
        "conformance",
        "collections",
        "collections/services/items/era5",
        "welcome",
        "static/app.css",
    ],
)
def test_anonymous_paths_pass_without_credentials(path):
    r = _call(WRITES, "GET", path, headers={"Accept": "text/html"})
    assert r.status_code == 200, r.text
    assert r.json()["user"] is None and r.json()["xsrf"] is None


def test_the_root_without_its_slash_is_anonymous_too():
    async def go():
        async with _client(**WRITES) as c:
            return await c.get(PREFIX.rstrip("/"))

    assert asyncio.run(go()).json()["user"] is None


@pytest.mark.parametrize(
    "path",
    [
        "api/v1/requests",
        "welcomeX",
        "conformance/x",
        "onboarding",
        "static/../api/v1/requests",
        "sso",
    ],
)
def test_other_paths_still_need_credentials(path):
    r = _call(WRITES, "GET", path)
    assert r.status_code == 401 and "authentication required" in r.json()["description"]
    r = _call(WRITES, "GET", path, headers={"Accept": "text/html"})
    assert r.status_code == 302 and "/hub/api/oauth2/authorize?" in r.headers["location"]


def test_without_anonymous_paths_nothing_changes():
    r = _call({}, "GET", "", headers={"Accept": "text/html"})
    assert r.status_code == 302  # the browser goes to log in, as before
    assert _call({}, "GET", "collections").status_code == 401


def test_anonymous_paths_see_the_user_when_credentials_come():
    r = _call(WRITES, "GET", "collections", cookie="alice-token")
    assert (r.json()["user"], r.json()["xsrf"]) == ("alice", _xsrf("alice-token"))
    assert _call(WRITES, "GET", "welcome", token="bob-token").json()["user"] == "bob"


@pytest.mark.parametrize("cookie", ["expired-token", "not a token"])
def test_a_stale_cookie_on_an_anonymous_path_is_anonymous(cookie):
    r = _call(WRITES, "GET", "welcome", cookie=cookie, headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.json()["user"] is None  # no OAuth round trip
    r = _call(WRITES, "GET", "onboarding", cookie="expired-token", headers={"Accept": "text/html"})
    assert r.status_code == 302  # elsewhere a stale session still logs in again


def test_a_bad_header_token_on_an_anonymous_path_is_401():
    r = _call(WRITES, "GET", "collections", token="expired-token")
    assert r.status_code == 401 and r.json()["description"] == "invalid or expired token"
    assert _call(WRITES, "GET", "collections", token="a b").status_code == 401


def test_a_token_without_the_access_scope_is_403_on_an_anonymous_path():
    r = _call(WRITES, "GET", "collections", token="narrow-token")
    assert r.status_code == 403 and ACCESS in r.json()["description"]


def test_public_paths_are_untouched():
    assert _call(WRITES, "GET", "health").json()["user"] is None


@pytest.mark.parametrize("path", ["static/../api/v1/requests", "collections/./x", "static/.."])
def test_dot_segments_are_not_anonymous(path):
    """httpx removes dot segments from URLs, other clients and servers may not: the
    middleware is called with the raw path here."""
    sent = []

    async def reached(scope, receive, send):
        raise AssertionError("reached the app anonymously")

    async def send(msg):
        sent.append(msg)

    async def receive():
        return {"type": "http.request", "body": b""}

    mw = HubAuthMiddleware(reached, prefix=PREFIX, hub_auth=FakeHubAuth(), **WRITES)
    scope = {"type": "http", "method": "GET", "path": PREFIX + path, "headers": []}
    asyncio.run(mw(scope, receive, send))
    assert sent[0]["status"] == 401

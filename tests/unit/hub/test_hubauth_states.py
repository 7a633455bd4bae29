"""Pending OAuth logins of :class:`twinhub.services.hubauth.HubAuthMiddleware` travel in a
signed cookie, not in the process: any replica of a service (same token) finishes a login
another began; nothing is kept per login (anyone can start one); a cookie that is forged,
altered, expired, of another service or of another login is refused; the cookie stays
small whatever URL the browser asked for.

The middleware is driven through its ASGI interface. The one faked edge is the hub's token
endpoint (:class:`FakeHubOAuth`: ``token_for_code`` answers from a table of codes and
records the PKCE verifier it got); the rest (authorize URL, scope checks) is HubOAuth's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import pytest
from jupyterhub.services.auth import HubOAuth

from twinhub.services import hubauth
from twinhub.services.hubauth import HubAuthMiddleware

PREFIX = "/services/stac/"
CODE = "the-code"


class FakeHubOAuth(HubOAuth):
    """FAKE of the hub's ``POST /hub/api/oauth2/token``: the code :data:`CODE` gives
    ``user-token`` when the PKCE verifier matches the challenge the login sent."""

    challenges: dict[str, str] = {}  # code -> the challenge the hub saw at authorize

    async def _token_for_code(self, code, code_verifier=None):
        digest = hashlib.sha256((code_verifier or "").encode()).digest()
        if self.challenges.get(code) != base64.urlsafe_b64encode(digest).decode().rstrip("="):
            raise ValueError("400: invalid code_verifier")
        return "user-token"


async def _never_called(scope, receive, send):  # login requests never reach the app
    raise AssertionError("an unauthenticated request reached the app")


def _middleware(token: str = "service-token", prefix: str = PREFIX) -> HubAuthMiddleware:
    auth = FakeHubOAuth(
        api_token=token,
        api_url="http://127.0.0.1:9/hub/api",
        oauth_client_id="service-stac",
        oauth_redirect_uri="http://127.0.0.1:9/services/stac/oauth_callback",
        oauth_authorization_url="/hub/api/oauth2/authorize",
    )
    return HubAuthMiddleware(_never_called, prefix=prefix, hub_auth=auth)


def _asgi(mw, path: str, query: bytes = b"", cookie: str = "") -> dict:
    """One GET through the middleware: {"status", "headers" (name -> [values]), "body"}."""
    sent: list[dict] = []

    async def send(msg):
        sent.append(msg)

    async def receive():
        return {"type": "http.request", "body": b""}

    headers = [(b"accept", b"text/html")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query, "headers": headers}  # fmt: skip
    asyncio.run(mw(scope, receive, send))
    out: dict[str, list[str]] = {}
    for k, v in sent[0]["headers"]:
        out.setdefault(k.decode(), []).append(v.decode())
    return {"status": sent[0]["status"], "headers": out, "body": sent[1].get("body", b"")}


def _login(mw, path: str, query: bytes = b"") -> tuple[str, str]:
    """A logged-out browser asks for ``path``: (the OAuth state in the hub redirect, the
    state cookie as ``name=value``); the fake hub is told the challenge for :data:`CODE`."""
    r = _asgi(mw, path, query)
    assert r["status"] == 302
    params = parse_qs(urlsplit(r["headers"]["location"][0]).query)
    assert params["code_challenge_method"] == ["S256"]
    FakeHubOAuth.challenges[CODE] = params["code_challenge"][0]
    jar = SimpleCookie()
    jar.load(r["headers"]["set-cookie"][0])
    (morsel,) = jar.values()
    assert morsel.key == mw.state_cookie and morsel["httponly"] and morsel["path"] == PREFIX
    return params["state"][0], f"{morsel.key}={morsel.value}"


def _callback(mw, state: str, cookie: str, code: str = CODE) -> dict:
    query = f"code={code}&state={state}".encode()
    return _asgi(mw, PREFIX + "oauth_callback", query, cookie)


def test_a_login_begun_on_one_replica_finishes_on_another():
    first, second = _middleware(), _middleware()  # two processes, one service token
    state, cookie = _login(first, PREFIX + "collections", b"f=html")
    r = _callback(second, state, cookie)
    assert r["status"] == 302, r["body"]
    assert r["headers"]["location"] == [PREFIX + "collections?f=html"]
    cookies = r["headers"]["set-cookie"]
    assert any(c.startswith(f"{second.cookie}=user-token;") for c in cookies)
    assert any(c.startswith(f"{second.state_cookie}=;") and "Max-Age=0" in c for c in cookies)


def test_nothing_is_kept_per_login():
    mw = _middleware()
    before = dict(vars(mw))
    for i in range(50):
        _login(mw, PREFIX + f"collections/{i}")
    assert vars(mw) == before


@pytest.mark.parametrize(
    "case", ["other service token", "other login", "altered next", "no cookie", "garbage"]
)
def test_a_state_cookie_that_is_not_this_login_is_refused(case):
    mw = _middleware()
    state, cookie = _login(mw, PREFIX + "a")
    if case == "other service token":
        state, cookie = _login(_middleware(token="another-service"), PREFIX + "a")
    elif case == "other login":
        _, cookie = _login(mw, PREFIX + "b")
    elif case == "altered next":
        name, _, value = cookie.partition("=")
        body, _, mac = value.partition(".")
        raw = hubauth._unb64(body).replace(PREFIX.encode() + b"a", b"/hub/admin")
        cookie = f"{name}={hubauth._b64(raw)}.{mac}"
    elif case == "no cookie":
        cookie = ""
    else:
        cookie = f"{mw.state_cookie}=not.base64!"
    r = _callback(mw, state, cookie)
    assert r["status"] == 403 and b"OAuth state does not match" in r["body"]


def test_an_expired_login_is_refused(monkeypatch):
    mw = _middleware()
    state, cookie = _login(mw, PREFIX + "a")
    now = hubauth.time.time()
    monkeypatch.setattr(hubauth.time, "time", lambda: now + hubauth.STATE_MAX_AGE + 2)
    r = _callback(mw, state, cookie)
    assert r["status"] == 403 and b"expired" in r["body"]
    monkeypatch.setattr(hubauth.time, "time", lambda: now + hubauth.STATE_MAX_AGE - 5)
    assert _callback(mw, state, cookie)["status"] == 302  # within the limit: accepted


def test_the_verifier_is_checked_by_the_hub():
    """The verifier the callback sends is the one whose challenge went to the hub: another
    login's challenge makes the (fake) hub refuse the code."""
    mw = _middleware()
    state, cookie = _login(mw, PREFIX + "a")
    _login(mw, PREFIX + "b")  # the hub now holds b's challenge for CODE
    r = _callback(mw, state, cookie)
    assert r["status"] == 403 and b"OAuth login failed" in r["body"]


def test_over_long_or_odd_next_urls_keep_the_cookie_small():
    mw = _middleware()
    for path, query, back in (
        (PREFIX + "search", b"q=" + b"x" * 16_000, PREFIX),  # too long: the root
        (PREFIX + "\u00e9" * 2000, b"", PREFIX),  # grows when encoded: the root
        (PREFIX + "search", b"q=msl", PREFIX + "search?q=msl"),  # kept
    ):
        state, cookie = _login(mw, path, query)
        assert len(cookie) < 4000
        r = _callback(mw, state, cookie)
        assert r["status"] == 302 and r["headers"]["location"] == [back]


@pytest.mark.parametrize(
    "path",
    [
        PREFIX + "../../user/mallory/proxy/8000/",
        PREFIX + "..",
        PREFIX + "a/./b",
        PREFIX + "%2e%2e/%2E%2e/user/mallory/",  # (the decoded path of %252e%252e)
        PREFIX + "%252E%252e/hub/logout",
        PREFIX + "..\\..\\user/mallory/",
    ],
)
def test_a_next_with_dot_segments_goes_back_to_the_service_root(path):
    """The prefix check alone keeps ``<prefix>../../user/mallory/``, which the browser
    resolves to another user's page (same site, after a genuine login)."""
    mw = _middleware()
    state, cookie = _login(mw, path, b"x=1")
    r = _callback(mw, state, cookie)
    assert r["status"] == 302 and r["headers"]["location"] == [PREFIX]


def test_a_signed_next_with_dot_segments_is_not_followed():
    """A state cookie signed before the login-time check (or by another replica's older
    code) still cannot send the browser off the service."""
    mw = _middleware()
    state, _ = _login(mw, PREFIX + "a")
    pending = {"s": state, "n": PREFIX + "%2e%2e/%2e%2e/hub/logout", "t": int(time.time())}
    cookie = f"{mw.state_cookie}={mw._sign_state(pending)}"
    r = _callback(mw, state, cookie)
    assert r["status"] == 302 and r["headers"]["location"] == [PREFIX]


def test_a_next_with_dots_inside_names_is_kept():
    mw = _middleware()
    state, cookie = _login(mw, PREFIX + "items/v1..2/a.b", b"next=../x")
    r = _callback(mw, state, cookie)
    assert r["headers"]["location"] == [PREFIX + "items/v1..2/a.b?next=../x"]


@pytest.mark.parametrize("path", [PREFIX, PREFIX + "collections"])
def test_redirect_goes_to_the_hub_authorize_url(path):
    mw = _middleware()
    assert mw.cookie == hubauth.token_cookie_name(PREFIX) == "twinhub-services-stac-token"
    r = _asgi(mw, path)
    location = r["headers"]["location"][0]
    assert r["status"] == 302 and location.startswith("/hub/api/oauth2/authorize?")
    assert parse_qs(urlsplit(location).query)["client_id"] == ["service-stac"]

"""Pending OAuth logins of :class:`twinhub.services.hubauth.HubAuthMiddleware` stay bounded:
anyone can start one (a GET with ``Accept: text/html`` and no token), so their number is
capped (oldest dropped) and an over-long next URL is not kept.

The middleware is driven through its ASGI interface with a real ``HubOAuth`` configured for
a hub that is never contacted (no token is checked on this path)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import pytest
from jupyterhub.services.auth import HubOAuth

from twinhub.services import hubauth
from twinhub.services.hubauth import HubAuthMiddleware

PREFIX = "/services/stac/"


async def _never_called(scope, receive, send):  # the app behind: login requests never reach it
    raise AssertionError("an unauthenticated request reached the app")


def _middleware() -> HubAuthMiddleware:
    auth = HubOAuth(
        api_token="not-used",
        api_url="http://127.0.0.1:9/hub/api",
        oauth_client_id="service-stac",
        oauth_redirect_uri="http://127.0.0.1:9/services/stac/oauth_callback",
        oauth_authorization_url="/hub/api/oauth2/authorize",
    )
    return HubAuthMiddleware(_never_called, prefix=PREFIX, hub_auth=auth)


def _browse(mw: HubAuthMiddleware, path: str, query: bytes = b"") -> tuple[int, str]:
    """A logged-out browser's GET: (status, the OAuth state in the redirect)."""
    sent: list[dict] = []

    async def send(msg):
        sent.append(msg)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "query_string": query,
        "headers": [(b"accept", b"text/html")],
    }
    asyncio.run(mw(scope, receive, send))
    start = sent[0]
    location = dict(start["headers"])[b"location"].decode()
    state = parse_qs(urlsplit(location).query)["state"][0]
    return start["status"], state


def test_pending_states_are_capped_oldest_first(monkeypatch):
    monkeypatch.setattr(hubauth, "MAX_PENDING_STATES", 50)
    mw = _middleware()
    states = [_browse(mw, PREFIX + f"collections/{i}")[1] for i in range(120)]
    assert len(mw._states) == 50
    assert list(mw._states) == states[-50:]  # the newest kept, the oldest dropped
    assert mw._states[states[-1]][0] == PREFIX + "collections/119"


def test_over_long_next_url_returns_to_the_service_root():
    mw = _middleware()
    status, state = _browse(mw, PREFIX + "search", b"q=" + b"x" * 16_000)
    assert status == 302
    assert mw._states[state][0] == PREFIX  # not the 16 kB URL
    status, state = _browse(mw, PREFIX + "search", b"q=msl")
    assert mw._states[state][0] == PREFIX + "search?q=msl"  # a normal one is kept


def test_old_states_are_forgotten(monkeypatch):
    mw = _middleware()
    _, old = _browse(mw, PREFIX + "a")
    now = hubauth.time.monotonic()
    monkeypatch.setattr(hubauth.time, "monotonic", lambda: now + hubauth.STATE_MAX_AGE + 1)
    _, new = _browse(mw, PREFIX + "b")
    assert list(mw._states) == [new]


@pytest.mark.parametrize("path", [PREFIX, PREFIX + "collections"])
def test_redirect_goes_to_the_hub_authorize_url(path):
    mw = _middleware()
    status, state = _browse(mw, path)
    assert status == 302 and state in mw._states

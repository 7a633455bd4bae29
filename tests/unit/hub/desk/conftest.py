"""The desk's app on a real database, in process, with two fakes for what cannot run in unit
tests: ``FakeHub`` (the hub's REST API: users' groups, the support group's members) and
``FakeHubAuth`` (the hub's token check: it puts the user a test names into the request's
state, as HubAuthMiddleware does after asking the hub)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from traitlets.config import Config

from twinhub.process.runtime import Runtime
from twinhub.services.asgi import RequestLimitsMiddleware
from twinhub.services.desk import TwinhubDesk
from twinhub.services.desk.app import JSON_OVERHEAD, UPLOAD_MEDIA, UploadTypes, build_api
from twinhub.services.desk.context import Desk

USERS = {
    "alice": {"name": "alice", "admin": False, "groups": ["lab"]},
    "bob": {"name": "bob", "admin": False, "groups": []},
    "sam": {"name": "sam", "admin": False, "groups": ["support"]},
    "root": {"name": "root", "admin": True, "groups": []},
    # An admin whose token carries only the desk's access scope, as a browser's sign-on
    # token does (the hub's OAuth gives services no admin scopes).
    "ada": {"name": "ada", "admin": True, "groups": []},
}
SCOPES = {"root": ["admin:users", "read:metrics"]}


def fake_hub(request: httpx.Request) -> httpx.Response:
    """FakeHub: the two hub API calls the desk makes, answered from USERS."""
    path = request.url.path
    if path.startswith("/hub/api/users/"):
        user = USERS.get(path.rsplit("/", 1)[1])
        return httpx.Response(200, json=user) if user else httpx.Response(404)
    if path == "/hub/api/groups/support":
        members = [n for n, u in USERS.items() if "support" in u["groups"]]
        return httpx.Response(200, json={"name": "support", "users": members})
    return httpx.Response(404)


class FakeHubAuth:
    """FakeHubAuth: ``X-Test-User: <name>`` becomes the request's hub user (token model)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            name = dict(scope["headers"]).get(b"x-test-user", b"").decode()
            if name:
                scope.setdefault("state", {})["hub_user"] = {
                    "kind": "user",
                    "name": name,
                    "admin": USERS.get(name, {}).get("admin", False),
                    "scopes": ["access:services!service=desk", *SCOPES.get(name, [])],
                }
                scope["state"]["xsrf"] = "xsrf-of-" + name
        await self.app(scope, receive, send)


class DeskClient:
    def __init__(self, client: httpx.AsyncClient, desk: Desk) -> None:
        self.client, self.desk = client, desk

    async def call(self, method: str, path: str, user: str | None = "alice", **kw):
        headers = kw.pop("headers", {})
        if user:
            headers["X-Test-User"] = user
        if "json" in kw:
            kw["content"] = json.dumps(kw.pop("json"))
            headers.setdefault("Content-Type", "application/json")
        return await self.client.request(method, "/services/desk/" + path, headers=headers, **kw)


@pytest.fixture
def desk_settings() -> dict:
    """Overridden by tests that need other TwinhubDesk values."""
    return {"max_attachment_bytes": 1024, "max_attachments": 2, "max_body_chars": 500}


@pytest.fixture
async def desk(twinhub_db, tmp_path: Path, desk_settings: dict):
    (tmp_path / "mail").mkdir(mode=0o700)  # as DeskPart.prepare_service leaves it
    rt = Runtime(
        state_dir=tmp_path,
        config=Config(
            {
                "Twinhub": {"db_url": twinhub_db},
                "TwinhubDesk": desk_settings,
                "TwinhubProjects": {"projects": {"lab": {}, "other": {}}},
            }
        ),
        ports={"public": 8000},
        mode="multi-user",
    )
    settings = TwinhubDesk(config=rt.config)
    d = Desk(rt, settings, "http://hub.test/hub/api", "service-token")
    d.hub = httpx.AsyncClient(transport=httpx.MockTransport(fake_hub))
    app = UploadTypes(
        RequestLimitsMiddleware(
            FakeHubAuth(build_api(d)),
            max_body_bytes=max(
                settings.max_attachment_bytes, 4 * settings.max_body_chars + JSON_OVERHEAD
            ),
            raw_body_types=frozenset({UPLOAD_MEDIA}),
        )
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://desk.test"
    ) as client:
        yield DeskClient(client, d)
    await d.mailer.drain()
    await d.hub.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

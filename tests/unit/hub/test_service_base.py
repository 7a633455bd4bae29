"""The base of the hub services (twinhub.services.base.AsgiService), their config file, and
the request helpers every service shares (twinhub.services.asgi: one BadRequest, body read
once, the STAC guard's parsed search body handed on to the federation layer)."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from typing import Any, ClassVar

import pytest
from traitlets.config import Config

from twinhub.process.components import Component
from twinhub.process.runtime import Runtime
from twinhub.services.accounting import AccountingPart
from twinhub.services.asgi import BadRequest, read_body, send_refusal
from twinhub.services.base import AsgiService, running_public_url
from twinhub.services.cache import CachePart
from twinhub.services.datalake import StacPart
from twinhub.services.datalake.federation.engine import Federation
from twinhub.services.datalake.federation.middleware import FederationMiddleware
from twinhub.services.datalake.guard import SEARCH_BODY, GuardMiddleware
from twinhub.services.projects import ProjectsPart
from twinhub.services.service_config import read_service_config


class NotesPart(AsgiService):
    """A minimal service, as base.py's docstring shows one."""

    name = "notes"
    factory = "notes.app:create_app"
    uvicorn_options = ("--proxy-headers",)
    url_env = "NOTES_URL"
    listed = True
    scopes = ("read:users",)
    config_path = "run/notes.json"
    on: ClassVar[bool] = True

    def enabled(self, rt: Runtime) -> bool:
        return self.on

    def service_config(self, rt: Runtime) -> dict[str, Any]:
        return {"prefix": self.prefix(), "secret": "s3cr3t"}

    def extra_components(self, rt: Runtime) -> list[Component]:
        return [Component(name="notes-db", argv=["true"])]


def runtime(tmp_path) -> Runtime:
    return Runtime(state_dir=tmp_path, config=Config(), ports={"public": 8000, "hub": 8081})


def test_names_and_urls(tmp_path):
    rt = runtime(tmp_path)
    part = NotesPart()
    part.plan(rt)
    port = rt.ports["notes"]
    assert part.active(rt) and part.port(rt) == port
    assert NotesPart.prefix() == "/services/notes/"
    assert NotesPart.secret_name() == "service-notes"
    assert NotesPart.config_env() == "TWINHUB_NOTES_CONFIG"
    assert part.api_url(rt) == f"http://127.0.0.1:{port}/services/notes/"
    assert part.public_url(rt) == "http://127.0.0.1:8000/services/notes/"
    assert running_public_url(rt, "notes") == part.public_url(rt)
    assert running_public_url(rt, "absent") == ""


def test_disabled_means_no_port_no_component_no_registration(tmp_path, monkeypatch):
    monkeypatch.setattr(NotesPart, "on", False)
    rt = runtime(tmp_path)
    part = NotesPart()
    part.plan(rt)
    assert "notes" not in rt.ports and not part.active(rt)
    part.prepare(rt)
    assert not part.config_file(rt).exists()
    assert part.components(rt) == []
    c = Config()
    part.configure_hub(c, rt)
    assert "services" not in c.JupyterHub


def test_a_port_from_an_earlier_run_does_not_turn_a_disabled_service_on(tmp_path, monkeypatch):
    """A restart after a crash takes the earlier run's ports; a service switched off since
    keeps its old port key but must not run, register or be granted to users."""
    rt = runtime(tmp_path)
    rt.ports["notes"] = 12345  # what _reuse_ports copied from the earlier runtime.json
    monkeypatch.setattr(NotesPart, "on", False)
    part = NotesPart()
    assert not part.active(rt)
    assert part.components(rt) == []
    c = Config()
    part.configure_hub(c, rt)
    assert "services" not in c.JupyterHub


def test_the_config_file_is_private_and_read_back(tmp_path, monkeypatch):
    rt = runtime(tmp_path)
    part = NotesPart()
    part.plan(rt)
    part.prepare(rt)
    f = part.config_file(rt)
    assert f == tmp_path / "run" / "notes.json"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(f.parent.stat().st_mode) == 0o700
    monkeypatch.setenv(NotesPart.config_env(), str(f))
    assert read_service_config(NotesPart.config_env())["secret"] == "s3cr3t"
    monkeypatch.delenv(NotesPart.config_env())
    with pytest.raises(RuntimeError, match="TWINHUB_NOTES_CONFIG is not set"):
        read_service_config(NotesPart.config_env())


def test_the_uvicorn_component_waits_for_the_services_own(tmp_path):
    rt = runtime(tmp_path)
    part = NotesPart()
    part.plan(rt)
    db, svc = part.components(rt)
    assert db.name == "notes-db"
    assert svc.name == "notes" and svc.after == ("notes-db",) and svc.background
    assert svc.port == rt.ports["notes"]
    assert svc.argv[:5] == [sys.executable, "-m", "uvicorn", "--factory", "notes.app:create_app"]
    assert "--proxy-headers" in svc.argv
    assert svc.argv[svc.argv.index("--port") + 1] == str(rt.ports["notes"])
    assert svc.env["TWINHUB_NOTES_CONFIG"] == str(part.config_file(rt))
    assert svc.env["JUPYTERHUB_SERVICE_NAME"] == "notes"
    assert svc.env["JUPYTERHUB_API_TOKEN"] == rt.secret("service-notes")


def test_hub_registration(tmp_path):
    rt = runtime(tmp_path)
    part = NotesPart()
    part.plan(rt)
    c = Config()
    c.TwinhubSpawner.services = {}
    c.Spawner.environment = {}
    part.configure_hub(c, rt)
    (svc,) = c.JupyterHub.services
    assert svc["name"] == "notes" and svc["url"] == f"http://127.0.0.1:{rt.ports['notes']}"
    assert svc["api_token"] == rt.secret("service-notes")
    user_role = next(r for r in c.JupyterHub.load_roles if r["name"] == "user")
    assert "access:services!service=notes" in user_role["scopes"]
    own = next(r for r in c.JupyterHub.load_roles if r["name"] == "notes-service")
    assert own == {"name": "notes-service", "scopes": ["read:users"], "services": ["notes"]}
    assert c.Spawner.environment["NOTES_URL"] == "http://127.0.0.1:8000/services/notes/"
    assert c.TwinhubSpawner.services == {"notes": rt.url + "services/notes/"}


def test_the_platforms_services_use_the_base():
    for part in (StacPart, CachePart, ProjectsPart, AccountingPart):
        assert issubclass(part, AsgiService)
    assert StacPart.config_env() == "TWINHUB_STAC_CONFIG"
    assert CachePart.config_env() == "TWINHUB_CACHE_CONFIG"
    # Every service a user may use is in $TWINHUB_SERVICES (the info endpoint lists them).
    assert all(p.listed for p in (StacPart, CachePart, ProjectsPart, AccountingPart))


# -- asgi helpers ----------------------------------------------------------------------------
def receiver(*chunks: bytes):
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def test_one_bad_request_class():
    e = BadRequest("no")
    assert (e.status, e.message, str(e), e.headers) == (400, "no", "no", [])
    e = BadRequest("too big", 413, close=True)
    assert e.status == 413 and e.headers == [(b"connection", b"close")]
    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    asyncio.run(send_refusal(send, e))
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"code": 413, "description": "too big"}


def test_read_body_takes_what_the_limits_layer_read_or_reads_with_a_cap():
    async def never():
        raise AssertionError("the body was read already")

    scope = {"state": {"body": b"{}"}}
    assert asyncio.run(read_body(scope, never, 10)) == b"{}"
    # Read under an outer cap larger than this caller's: still refused here.
    with pytest.raises(BadRequest, match="larger than 1 bytes") as e:
        asyncio.run(read_body(scope, never, 1))
    assert e.value.status == 413
    assert asyncio.run(read_body({}, receiver(b"ab", b"cd"), 10)) == b"abcd"
    with pytest.raises(BadRequest, match="larger than 3 bytes") as e:
        asyncio.run(read_body({}, receiver(b"ab", b"cd"), 3))
    assert e.value.status == 413


def test_the_guard_hands_the_parsed_search_body_to_federation():
    """The federation layer takes the body the guard parsed (its text filter already turned
    into JSON) from the scope; it neither reads nor parses it again."""
    seen: dict[str, Any] = {}

    async def lake(scope, receive, send):
        msg = await receive()
        seen["lake"] = json.loads(msg["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    class Spy:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            seen["state"] = scope["state"].get(SEARCH_BODY)
            await self.app(scope, receive, send)

    fed = Federation([], "", token_key=b"k" * 32)
    federation = FederationMiddleware(lake, prefix="/stac/", federation=fed, max_page_size=10)
    guard = GuardMiddleware(Spy(federation), prefix="/stac/", max_page_size=10, max_body_bytes=1024)
    body = json.dumps({"limit": 2, "sources": ["local"]}).encode()
    scope = {"type": "http", "method": "POST", "path": "/stac/search", "raw_path": b"/stac/search",
             "query_string": b"", "headers": [(b"content-length", str(len(body)).encode())],
             "state": {}}  # fmt: skip
    sent: list[dict] = []

    async def send(m):
        sent.append(m)

    async def go():
        try:
            await guard(scope, receiver(body), send)
        finally:
            await fed.close()

    asyncio.run(go())
    assert sent[0]["status"] == 200
    assert seen["state"] == {"limit": 2, "sources": ["local"]}
    assert seen["lake"] == {"limit": 2}  # "sources" is the federation's, not the lake's

"""The registry's REST API through the real service app (request limits, hub auth, FastAPI,
the store on SQLite, the automated evaluation through the real outbound guard).

Fakes, named: the hub's token check (:class:`FakeHubAuth`), the hub's user API (an httpx
``MockTransport`` answering ``GET /users/<name>`` with admin flag and groups) and the hub's
route calls (``hubservices.publish_route`` / ``withdraw_route`` replaced by recorders): no
hub runs in unit tests. The integration test drives the same workflow on the real platform.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from jupyterhub.services.auth import HubOAuth
from traitlets.config import Config

from twinhub import db
from twinhub.process.runtime import Runtime
from twinhub.services.registry import evaluate, hubservices, store
from twinhub.services.registry.app import create_app
from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.context import RegistryContext

PREFIX = "/services/registry/"
API = PREFIX + "api/v1/"
ACCESS = "access:services!service=registry"
HUB_API = "http://hub.fake/hub/api"

# name -> the hub's model (admin flag, groups), what GET /users/<name> answers
HUB_USERS = {
    "pat": {"name": "pat", "admin": False, "groups": ["climate"]},
    "rita": {"name": "rita", "admin": False, "groups": ["registry-reviewers"]},
    "root": {"name": "root", "admin": True, "groups": []},
    "olga": {"name": "olga", "admin": False, "groups": []},
}
# token -> (name, the token's scopes); tokens issued to services carry no groups
TOKENS = {
    "pat-token": ("pat", [ACCESS]),
    "rita-token": ("rita", [ACCESS]),
    "root-token": ("root", [ACCESS, "admin:users"]),
    "root-narrow": ("root", [ACCESS]),
    "olga-token": ("olga", [ACCESS]),
}


class FakeHubAuth(HubOAuth):
    """A fake of the hub's token check: the tokens of :data:`TOKENS` only."""

    async def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        if token not in TOKENS:
            return None
        name, scopes = TOKENS[token]
        return {"name": name, "kind": "user", "scopes": scopes}


def fake_hub(request: httpx.Request) -> httpx.Response:
    """A fake of the hub's user API (the service's own token reads users)."""
    assert request.headers["authorization"] == "token svc-token"
    name = request.url.path.rsplit("/", 1)[-1]
    if request.method == "GET" and name in HUB_USERS:
        return httpx.Response(200, json=HUB_USERS[name])
    return httpx.Response(404, json={"status": 404})


ENTRY = {
    "name": "Flood maps",
    "slug": "flood-maps",
    "provider": "Example Institute",
    "description": "# Floods\n\n*Daily* extents.",
    "thematic_areas": ["water"],
    "kind": "web-application",
    "visibility": "users",
}


class Client:
    def __init__(self, app) -> None:
        self.app = app

    def call(self, method: str, path: str, token: str | None = None, body=None, raw=None):
        headers = {"Authorization": f"token {token}"} if token else {}

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                if raw is not None:
                    return await c.request(method, path, headers=headers, content=raw)
                return await c.request(method, path, headers=headers, json=body)

        return asyncio.run(go())


@pytest.fixture
def counting_server():
    """A loopback HTTP server counting what reaches it (the guard must send nothing)."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = b'{"openapi": "3.0.0", "paths": {}}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()


@pytest.fixture
def ctx(tmp_path: Path) -> RegistryContext:
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    cfg = Config()
    cfg.Twinhub.db_url = url
    cfg.TwinhubProjects.projects = {"climate": {"max_servers_per_user": 2, "storage_gb": 100}}
    rt = Runtime(state_dir=tmp_path, config=cfg, mode="multi-user", ports={"public": 9})
    c = RegistryContext(
        rt=rt,
        settings=TwinhubRegistry(config=cfg),
        db_url=url,
        hub_api=HUB_API,
        token="svc-token",
        prefix=PREFIX,
    )
    c.hub = httpx.AsyncClient(
        transport=httpx.MockTransport(fake_hub), headers={"Authorization": "token svc-token"}
    )
    return c


@pytest.fixture
def routes(monkeypatch):
    """The hub's route calls, recorded; ``routes["fail"] = True`` makes them fail."""
    calls = {"log": [], "fail": False}

    def recorder(what):
        async def call(ctx, slug):
            if calls["fail"]:
                raise RuntimeError("the hub answered 503")
            calls["log"].append((what, slug))

        return call

    monkeypatch.setattr(hubservices, "publish_route", recorder("publish"))
    monkeypatch.setattr(hubservices, "withdraw_route", recorder("withdraw"))
    return calls


@pytest.fixture
def client(ctx) -> Client:
    hub_auth = FakeHubAuth(
        api_token="svc-token",
        api_url=HUB_API,
        oauth_client_id="service-registry",
        oauth_redirect_uri="http://t/services/registry/oauth_callback",
        oauth_authorization_url="/hub/api/oauth2/authorize",
        access_scopes={ACCESS},
    )
    return Client(create_app(ctx=ctx, hub_auth=hub_auth, background=False))


def submit(client, endpoint_url="http://127.0.0.1:9/", **changes) -> dict:
    entry = {**ENTRY, "endpoints": [{"url": endpoint_url, "type": "openapi",
                                     "description_url": endpoint_url + "openapi.json"}],
             **changes}  # fmt: skip
    r = client.call(
        "POST",
        API + "requests",
        "pat-token",
        {"entry": entry, "resources": {"project": "climate", "cpu": 1, "servers": 1},
         "activity": "daily maps"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()


def move(client, rid, token, to, **body):
    return client.call("POST", f"{API}requests/{rid}/transitions", token, {"to": to, **body})


def get(client, rid, token="root-token"):
    r = client.call("GET", f"{API}requests/{rid}", token)
    assert r.status_code == 200, r.text
    return r.json()


# -- the whole workflow ----------------------------------------------------------------------
def test_the_workflow_end_to_end(client, ctx, routes, counting_server):
    base, hits = counting_server
    req = submit(client, base + "/")
    rid = req["id"]
    assert req["state"] == "submitted" and req["provider"] == "pat"
    assert req["allowed"] == ["retired"]  # the provider may withdraw it
    assert req["entry"]["description"] == ENTRY["description"]  # Markdown stays raw

    # The platform evaluates: an endpoint on loopback is flagged, never fetched.
    done = asyncio.run(evaluate.evaluate(ctx, rid))
    assert done["state"] == "evaluated"
    flagged = [f for f in done["findings"] if not f["ok"]]
    assert any("private address" in f["message"] and "127.0.0.1" in f["message"] for f in flagged)
    assert {"check": "resources", "ok": True, "message": "fits project 'climate''s allocation"} in done["findings"]  # fmt: skip
    assert hits == []
    assert asyncio.run(evaluate.evaluate(ctx, rid)) is None  # once only

    assert get(client, rid, "rita-token")["allowed"] == ["changes-requested", "approved", "rejected"]  # fmt: skip
    r = client.call("POST", f"{API}requests/{rid}/reviews", "rita-token",
                    {"decision": "changes-requested", "comment": "Add a licence"})  # fmt: skip
    assert r.status_code == 200 and r.json()["state"] == "changes-requested"

    # The provider changes the entry, then submits it again.
    changed = {**req["entry"], "licence": "CC-BY-4.0"}
    r = client.call("PUT", f"{API}requests/{rid}/entry", "pat-token", {"entry": changed})
    assert r.status_code == 200 and r.json()["version"] == 2
    r = client.call("PUT", f"{API}requests/{rid}/entry", "pat-token",
                    {"entry": {**changed, "slug": "other"}})  # fmt: skip
    assert r.status_code == 400 and "slug cannot change" in r.json()["description"]
    r = move(client, rid, "pat-token", "submitted", comment="licence added")
    assert r.status_code == 200 and r.json()["state"] == "submitted"
    asyncio.run(evaluate.evaluate(ctx, rid))
    r = client.call("POST", f"{API}requests/{rid}/reviews", "rita-token",
                    {"decision": "approved", "comment": "fine"})  # fmt: skip
    assert r.json()["state"] == "approved"

    # Integration: web kinds need an upstream; the hub's route first.
    r = move(client, rid, "root-token", "integrated")
    assert r.status_code == 400 and "needs 'upstream'" in r.json()["description"]
    r = move(client, rid, "root-token", "integrated", upstream=base + "/", allow_private=True)
    assert r.status_code == 200, r.text
    assert r.json()["upstream"] == base + "/" and r.json()["allow_private"] is True
    assert routes["log"] == [("publish", "flood-maps")]

    # Published: visible to logged-in users (visibility "users"), not to anonymous ones.
    r = client.call("GET", API + "entries", "olga-token")
    (e,) = r.json()["entries"]
    assert e["slug"] == "flood-maps" and e["url"] == "/services/flood-maps/"
    assert e["version"] == 2 and e["status"] == "unknown" and e["licence"] == "CC-BY-4.0"
    assert client.call("GET", API + "entries").json() == {"entries": []}
    assert client.call("GET", API + "entries/flood-maps").status_code == 404
    assert client.call("GET", API + "entries/flood-maps", "olga-token").status_code == 200
    r = client.call("GET", API + "entries/flood-maps/versions", "olga-token")
    assert [v["version"] for v in r.json()["versions"]] == [2, 1]

    # A new version while integrated (provider or admin); suspension keeps the route.
    r = client.call("PUT", f"{API}requests/{rid}/entry", "root-token",
                    {"entry": {**changed, "name": "Flood maps 2"}})  # fmt: skip
    assert r.status_code == 200 and r.json()["version"] == 3
    assert move(client, rid, "root-token", "suspended").json()["state"] == "suspended"
    assert client.call("GET", API + "entries", "olga-token").json() == {"entries": []}
    r = move(client, rid, "root-token", "integrated")
    assert r.status_code == 200 and r.json()["upstream"] == base + "/"
    r = move(client, rid, "root-token", "retired", comment="end of service")
    assert r.status_code == 200 and r.json()["state"] == "retired"
    assert routes["log"][-1] == ("withdraw", "flood-maps")
    kinds = [(ev["kind"], ev["to"]) for ev in get(client, rid)["events"]]
    assert ("evaluation", None) in kinds and kinds[-1] == ("transition", "retired")
    assert move(client, rid, "root-token", "retired").status_code == 409


def test_refusals_change_nothing(client, ctx, routes):
    rid = submit(client)["id"]
    before = get(client, rid)
    cases = [
        ("olga-token", "approved", 404),  # cannot see it at all
        ("pat-token", "approved", 403),  # a provider does not review
        ("root-token", "approved", 403),  # admins are not reviewers
        ("root-narrow", "retired", 404),  # a narrowed admin token is an ordinary user's
        ("rita-token", "evaluated", 403),  # only the platform evaluates
        ("rita-token", "approved", 409),  # not evaluated yet
        ("root-token", "integrated", 409),
        ("root-token", "suspended", 409),
        ("pat-token", "submitted", 409),
        ("pat-token", "nonsense", 400),
    ]
    for token, to, status in cases:
        r = move(client, rid, token, to)
        assert r.status_code == status, (token, to, r.text)
        body = r.json()
        assert body["code"] == status and body["description"]
        if status == 409:
            assert "'submitted'" in body["description"]
        assert get(client, rid) == before, (token, to)
    assert routes["log"] == []


def test_a_failing_hub_call_is_a_502_and_rolls_back(client, ctx, routes):
    rid = submit(client)["id"]
    asyncio.run(evaluate.evaluate(ctx, rid))
    move(client, rid, "rita-token", "approved")
    before = get(client, rid)
    routes["fail"] = True
    r = move(client, rid, "root-token", "integrated", upstream="http://127.0.0.1:9/")
    assert r.status_code == 502 and "publishing /services/flood-maps/" in r.json()["description"]
    assert get(client, rid) == before
    routes["fail"] = False
    assert move(client, rid, "root-token", "integrated", upstream="http://127.0.0.1:9/").status_code == 200  # fmt: skip
    routes["fail"] = True
    r = move(client, rid, "root-token", "retired")
    assert r.status_code == 502 and get(client, rid)["state"] == "integrated"


def test_visibility_of_requests(client):
    rid = submit(client)["id"]
    assert client.call("GET", f"{API}requests/{rid}", "olga-token").status_code == 404
    assert client.call("GET", f"{API}requests/{rid}", "root-narrow").status_code == 404
    for token in ("pat-token", "rita-token", "root-token"):
        assert client.call("GET", f"{API}requests/{rid}", token).status_code == 200
    assert client.call("GET", API + "requests", "olga-token").json() == {"requests": []}
    for token in ("pat-token", "rita-token", "root-token"):
        (r,) = client.call("GET", API + "requests", token).json()["requests"]
        assert r["id"] == rid
    assert client.call("GET", API + "requests?state=approved", "root-token").json() == {"requests": []}  # fmt: skip
    assert client.call("GET", API + "requests?state=bogus", "root-token").status_code == 400
    r = client.call("POST", f"{API}requests/{rid}/comments", "olga-token", {"comment": "hi"})
    assert r.status_code == 404
    r = client.call("POST", f"{API}requests/{rid}/comments", "rita-token", {"comment": "Which licence?"})  # fmt: skip
    assert r.status_code == 201 and r.json()["actor"] == "rita"
    assert get(client, rid, "pat-token")["events"][-1]["comment"] == "Which licence?"


def test_anonymous_callers(client):
    assert client.call("POST", API + "requests", None, {"entry": ENTRY}).status_code == 401
    assert client.call("GET", API + "requests").status_code == 401
    r = client.call("GET", API + "vocabulary")
    assert r.status_code == 200
    v = r.json()
    assert "water" in v["thematic_areas"] and "web-application" in v["kinds"]
    assert v["states"][0] == "submitted" and v["reviewers_group"] == "registry-reviewers"
    assert client.call("GET", PREFIX + "health").json()["status"] == "ok"
    assert client.call("GET", PREFIX + "metrics").status_code == 401


def test_bad_requests_store_nothing(client, ctx):
    def count():
        return len(store.list_requests(ctx.db_url))

    cases = [
        (b"{not json", "not JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps({"entry": {**ENTRY, "slug": "Bad Slug"}}).encode(), "slug 'Bad Slug'"),
        (json.dumps({"entry": ENTRY}).encode(), "needs at least one endpoint"),
        (json.dumps({"entry": ENTRY, "extra": 1}).encode(), "unknown field(s) ['extra']"),
        (json.dumps({"entry": {**ENTRY, "kind": "dataset"}, "resources": {"cpu": -1}}).encode(),
         "resources.cpu must be a number >= 0"),
        (json.dumps({"entry": {**ENTRY, "kind": "dataset"}, "resources": {"ram": 1}}).encode(),
         "unknown key(s) ['ram']"),
    ]  # fmt: skip
    for raw, message in cases:
        r = client.call("POST", API + "requests", "pat-token", raw=raw)
        assert r.status_code == 400, r.text
        assert message in r.json()["description"]
    assert count() == 0
    submit(client)
    r = client.call("POST", API + "requests", "olga-token",
                    {"entry": {**ENTRY, "endpoints": [{"url": "https://x.org/"}]}})  # fmt: skip
    assert r.status_code == 409 and "slug 'flood-maps' is taken" in r.json()["description"]
    assert count() == 1


def test_put_entry_rules(client, ctx):
    rid = submit(client)["id"]
    entry = get(client, rid)["entry"]
    # Submitted: not a state where the entry changes.
    r = client.call("PUT", f"{API}requests/{rid}/entry", "pat-token", {"entry": entry})
    assert r.status_code == 409 and "'submitted'" in r.json()["description"]
    asyncio.run(evaluate.evaluate(ctx, rid))
    move(client, rid, "rita-token", "changes-requested")
    r = client.call("PUT", f"{API}requests/{rid}/entry", "root-token", {"entry": entry})
    assert r.status_code == 403
    r = client.call("PUT", f"{API}requests/{rid}/entry", "rita-token", {"entry": entry})
    assert r.status_code == 403
    assert get(client, rid)["version"] == 1

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
from pathlib import Path

import httpx
import pytest
from jupyterhub.services.auth import HubOAuth
from traitlets.config import Config

from tests.helpers.registry import counting_server as counting
from twinhub import db
from twinhub.process.runtime import Runtime
from twinhub.services.hubauth import xsrf_token
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
    # what the registry's browser sign-on gives an admin (oauth_client_allowed_scopes)
    "root-browser": ("root", [ACCESS, "admin-ui"]),
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

    def call(
        self, method: str, path: str, token: str | None = None, body=None, raw=None, cookie=None
    ):
        headers = {"Authorization": f"token {token}"} if token else {}
        if cookie:  # a browser session: the sign-on cookie and the page's XSRF value
            headers["Cookie"] = f"twinhub-services-registry-token={cookie}"
            headers["X-Twinhub-XSRF"] = xsrf_token("svc-token", cookie)
            headers["Sec-Fetch-Site"] = "same-origin"

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
    with counting() as served:
        yield served


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
    assert any("resolves to a non-public address" in f["message"] for f in flagged)
    assert not any("127.0.0.1" in f["message"] for f in flagged)  # no address (finding 10)
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
    assert r.status_code == 400 and "resubmitting needs the updated entry" in r.json()["description"]  # fmt: skip
    assert get(client, rid)["state"] == "changes-requested"
    r = move(client, rid, "pat-token", "submitted", comment="licence added", entry=changed)
    assert r.status_code == 200 and r.json()["state"] == "submitted" and r.json()["version"] == 3
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
    assert e["version"] == 3 and e["status"] == "unknown" and e["licence"] == "CC-BY-4.0"
    assert client.call("GET", API + "entries").json() == {"entries": []}
    assert client.call("GET", API + "entries/flood-maps").status_code == 404
    assert client.call("GET", API + "entries/flood-maps", "olga-token").status_code == 200
    r = client.call("GET", API + "entries/flood-maps/versions", "olga-token")
    assert [v["version"] for v in r.json()["versions"]] == [3, 2, 1]

    # A new version while integrated (provider or admin); suspension keeps the route.
    r = client.call("PUT", f"{API}requests/{rid}/entry", "root-token",
                    {"entry": {**changed, "name": "Flood maps 2"}})  # fmt: skip
    assert r.status_code == 200 and r.json()["version"] == 4
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
    assert client.call("GET", API + "requests", "olga-token").json() == {
        "requests": [], "total": 0, "next": None
    }  # fmt: skip
    for token in ("pat-token", "rita-token", "root-token"):
        (r,) = client.call("GET", API + "requests", token).json()["requests"]
        assert r["id"] == rid
    assert client.call("GET", API + "requests?state=approved", "root-token").json()["requests"] == []  # fmt: skip
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


def approved(client, ctx, **changes) -> str:
    rid = submit(client, **changes)["id"]
    asyncio.run(evaluate.evaluate(ctx, rid))
    assert move(client, rid, "rita-token", "approved").status_code == 200
    return rid


# -- finding 1: an admin's browser session -----------------------------------------------------
def test_browser_admins_cannot_turn_on_the_dangerous_switches(client, ctx, routes):
    rid = approved(client, ctx)
    before = get(client, rid)
    up = "http://127.0.0.1:9/"
    for body, words in (
        ({"allow_private": True}, "allow_private: true"),
        ({"sandbox": False}, "sandbox: false"),
        ({"allow_private": True, "sandbox": False}, "allow_private: true"),
    ):
        r = client.call("POST", f"{API}requests/{rid}/transitions", cookie="root-browser",
                        body={"to": "integrated", "upstream": up, **body})  # fmt: skip
        assert r.status_code == 403, r.text
        assert r.json()["description"] == (
            f"integrating with {words} needs an Authorization: token header, not a browser session"
        )
        assert get(client, rid) == before
    assert routes["log"] == []
    # The rest of an admin's work goes on from the page (admin-ui makes the admin).
    r = client.call("POST", f"{API}requests/{rid}/transitions", cookie="root-browser",
                    body={"to": "integrated", "upstream": up})  # fmt: skip
    assert r.status_code == 200 and (r.json()["allow_private"], r.json()["sandbox"]) == (False, True)  # fmt: skip
    r = client.call("POST", f"{API}requests/{rid}/transitions", cookie="root-browser",
                    body={"to": "suspended"})  # fmt: skip
    assert r.status_code == 200
    # With a header token the admin may (the CLI, the API).
    r = move(client, rid, "root-token", "integrated", upstream=up, allow_private=True, sandbox=False)  # fmt: skip
    assert r.status_code == 200 and r.json()["allow_private"] is True
    # Suspended, it is not resumed with those switches from a browser either.
    assert move(client, rid, "root-token", "suspended").status_code == 200
    r = client.call("POST", f"{API}requests/{rid}/transitions", cookie="root-browser",
                    body={"to": "integrated"})  # fmt: skip
    assert r.status_code == 403 and "allow_private: true" in r.json()["description"]
    assert get(client, rid)["state"] == "suspended"
    assert move(client, rid, "root-token", "integrated").status_code == 200


def test_a_narrowed_admin_token_in_the_browser_is_no_admin(client, ctx, routes):
    rid = approved(client, ctx)
    r = client.call("POST", f"{API}requests/{rid}/transitions", cookie="root-narrow",
                    body={"to": "integrated", "upstream": "http://127.0.0.1:9/"})  # fmt: skip
    assert r.status_code == 404  # an ordinary user's: cannot even see the request
    assert client.call("GET", API + "requests", cookie="root-narrow").json()["requests"] == []
    (row,) = client.call("GET", API + "requests", cookie="root-browser").json()["requests"]
    assert row["id"] == rid and row["allowed"] == ["integrated", "retired"]


# -- finding 5: integrated entries ---------------------------------------------------------------
def test_providers_do_not_change_integrated_entries(client, ctx, routes):
    rid = approved(client, ctx)
    move(client, rid, "root-token", "integrated", upstream="http://127.0.0.1:9/")
    entry = get(client, rid)["entry"]
    r = client.call("PUT", f"{API}requests/{rid}/entry", "pat-token",
                    {"entry": {**entry, "visibility": "public"}})  # fmt: skip
    assert r.status_code == 403
    assert "by an admin only" in r.json()["description"]
    assert "comment" in r.json()["description"]
    assert get(client, rid)["version"] == 1 and get(client, rid)["entry"]["visibility"] == "users"
    r = client.call("PUT", f"{API}requests/{rid}/entry", "root-token",
                    {"entry": {**entry, "name": "Flood maps 2"}})  # fmt: skip
    assert r.status_code == 200 and r.json()["version"] == 2


# -- finding 7: quotas and paging ----------------------------------------------------------------
def test_open_requests_per_provider_are_capped(client, ctx):
    ctx.settings.max_open_requests = 2
    first = submit(client, slug="one")
    submit(client, slug="two")
    r = client.call("POST", API + "requests", "pat-token",
                    {"entry": {**ENTRY, "slug": "three", "kind": "dataset"}})  # fmt: skip
    assert r.status_code == 429
    assert r.json() == {"code": 429, "description": r.json()["description"]}
    assert "at most 2" in r.json()["description"]
    assert len(store.list_requests(ctx.db_url)) == 2
    # Another provider is not held up; a decided request frees a place.
    r = client.call("POST", API + "requests", "olga-token",
                    {"entry": {**ENTRY, "slug": "three", "kind": "dataset"}})  # fmt: skip
    assert r.status_code == 201
    assert move(client, first["id"], "pat-token", "retired").status_code == 200
    assert submit(client, slug="four")["state"] == "submitted"


def test_comments_per_request_are_capped(client, ctx):
    ctx.settings.max_comments = 2
    rid = submit(client)["id"]
    for token in ("rita-token", "pat-token"):
        r = client.call("POST", f"{API}requests/{rid}/comments", token, {"comment": "hi"})
        assert r.status_code == 201
    r = client.call("POST", f"{API}requests/{rid}/comments", "rita-token", {"comment": "more"})
    assert r.status_code == 429 and "at most 2" in r.json()["description"]
    assert [e["comment"] for e in get(client, rid)["events"] if e["kind"] == "comment"] == ["hi", "hi"]  # fmt: skip


def test_requests_are_paged(client, ctx):
    ctx.settings.max_open_requests = 10
    ids = [submit(client, slug=f"s{i}")["id"] for i in range(5)]
    r = client.call("GET", API + "requests?limit=2", "rita-token").json()
    assert r["total"] == 5 and len(r["requests"]) == 2
    assert r["next"] == "/services/registry/api/v1/requests?limit=2&offset=2"
    seen = [x["id"] for x in r["requests"]]
    while r["next"]:
        r = client.call("GET", r["next"], "rita-token").json()
        seen += [x["id"] for x in r["requests"]]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    r = client.call("GET", API + "requests?state=submitted&limit=4&offset=1", "pat-token").json()
    assert len(r["requests"]) == 4 and r["next"] is None
    assert len(client.call("GET", API + "requests", "pat-token").json()["requests"]) == 5
    for q, words in (("limit=501", "between 0 and 500"), ("limit=x", "whole number"),
                     ("offset=-1", "offset must be between")):  # fmt: skip
        r = client.call("GET", f"{API}requests?{q}", "rita-token")
        assert r.status_code == 400 and words in r.json()["description"], q


# -- finding 12: version history -----------------------------------------------------------------
def test_versions_show_what_the_viewer_may_see(client, ctx, routes):
    rid = approved(client, ctx, visibility="project:climate")
    move(client, rid, "root-token", "integrated", upstream="http://127.0.0.1:9/")
    entry = get(client, rid)["entry"]
    r = client.call("PUT", f"{API}requests/{rid}/entry", "root-token",
                    {"entry": {**entry, "visibility": "public", "description": "Open now"}})  # fmt: skip
    assert r.status_code == 200
    url = API + "entries/flood-maps/versions"
    anon = client.call("GET", url).json()["versions"]
    assert [v["version"] for v in anon] == [2] and "actor" not in anon[0]
    assert anon[0]["entry"]["description"] == "Open now"
    olga = client.call("GET", url, "olga-token").json()["versions"]  # not in project climate
    assert [v["version"] for v in olga] == [2] and "actor" not in olga[0]
    pat = client.call("GET", url, "pat-token").json()["versions"]  # the provider
    assert [(v["version"], v["actor"]) for v in pat] == [(2, "root"), (1, "pat")]
    # A reviewer outside the project: actors, but not the project-only version.
    rita = client.call("GET", url, "rita-token").json()["versions"]
    assert [(v["version"], v["actor"]) for v in rita] == [(2, "root")]


# -- finding 13: no self-review ------------------------------------------------------------------
def test_reviewers_do_not_approve_their_own_requests(client, ctx):
    r = client.call("POST", API + "requests", "rita-token",
                    {"entry": {**ENTRY, "kind": "dataset", "slug": "ritas"}})  # fmt: skip
    rid = r.json()["id"]
    asyncio.run(evaluate.evaluate(ctx, rid))
    assert get(client, rid, "rita-token")["allowed"] == ["retired"]
    r = client.call("POST", f"{API}requests/{rid}/reviews", "rita-token",
                    {"decision": "approved", "comment": "mine"})  # fmt: skip
    assert r.status_code == 403 and "reviewers group" in r.json()["description"]
    assert get(client, rid)["state"] == "evaluated"


def test_the_search_index_is_built_at_start(ctx, client, routes, monkeypatch):
    """The lifespan's background jobs build the index once (the other loops idle here)."""
    from twinhub.services.registry import app as registry_app

    rid = approved(client, ctx)
    move(client, rid, "root-token", "integrated", upstream="http://127.0.0.1:9/")

    async def idle(_ctx):
        await asyncio.sleep(3600)

    for name in ("evaluation_loop", "health_loop", "reconcile_loop", "lake_loop"):
        monkeypatch.setattr(registry_app, name, idle)

    async def go():
        assert ctx.index.search(viewer=None).matched == 0
        tasks = registry_app.background_tasks(ctx)
        try:
            for _ in range(100):
                if ctx.index.search(viewer=None).matched:
                    break
                await asyncio.sleep(0.05)
            return ctx.index.search(viewer=None).items
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    (item,) = asyncio.run(go())
    assert item["slug"] == "flood-maps"


# -- review finding 5: racing route changes --------------------------------------------------
def _rival_moves_first(monkeypatch, to_rival: str, **rival_kw):
    """``store.transition`` as if another admin (another replica) made ``to_rival`` just
    before our commit: ours then fails its compare-and-set (409)."""
    real = store.transition

    def transition(db_url, request_id, *, expect, to, actor, **kw):
        if to == to_rival and actor == "root":
            real(db_url, request_id, expect=expect, to=to, actor="other-admin", **rival_kw)
        return real(db_url, request_id, expect=expect, to=to, actor=actor, **kw)

    monkeypatch.setattr(store, "transition", transition)


def test_losing_an_integration_race_keeps_the_winners_route(client, ctx, routes, monkeypatch):
    rid = approved(client, ctx)
    up = "http://127.0.0.1:9/"
    _rival_moves_first(monkeypatch, "integrated", integration={"upstream": up, "allow_private": False, "sandbox": True})  # fmt: skip
    r = move(client, rid, "root-token", "integrated", upstream=up)
    assert r.status_code == 409 and "'integrated'" in r.json()["description"]
    assert get(client, rid)["state"] == "integrated"
    # published by us, then put as stored (integrated: published), never withdrawn
    assert routes["log"] == [("publish", "flood-maps"), ("publish", "flood-maps")]


def test_losing_a_retirement_race_does_not_bring_the_route_back(client, ctx, routes, monkeypatch):  # fmt: skip
    rid = approved(client, ctx)
    assert move(client, rid, "root-token", "integrated", upstream="http://127.0.0.1:9/").status_code == 200  # fmt: skip
    routes["log"].clear()
    _rival_moves_first(monkeypatch, "retired")
    r = move(client, rid, "root-token", "retired")
    assert r.status_code == 409 and get(client, rid)["state"] == "retired"
    assert ("publish", "flood-maps") not in routes["log"]
    assert routes["log"][0] == ("withdraw", "flood-maps")


def test_a_failed_commit_with_the_request_unchanged_withdraws_the_new_route(client, ctx, routes, monkeypatch):  # fmt: skip
    rid = approved(client, ctx)

    def refuse(*a, **kw):
        raise store.StoreError(409, "refused for the test")

    monkeypatch.setattr(store, "transition", refuse)
    r = move(client, rid, "root-token", "integrated", upstream="http://127.0.0.1:9/")
    assert r.status_code == 409 and get(client, rid)["state"] == "approved"
    assert routes["log"] == [("publish", "flood-maps"), ("withdraw", "flood-maps")]


# -- review findings 8c and 10 ---------------------------------------------------------------
def test_integrating_a_slug_another_hub_service_holds_is_a_409(client, ctx):
    """The real hubservices.publish_route against a fake hub (MockTransport) that already
    has an operator's own service named like the slug."""
    calls: list[tuple[str, str]] = []

    def hub(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls.append((request.method, path))
        if path.startswith("/hub/api/users/"):
            return fake_hub(request)
        if path == "/hub/api/services/flood-maps" and request.method == "POST":
            return httpx.Response(409, json={"message": "service flood-maps exists"})
        if path == "/hub/api/services/flood-maps" and request.method == "GET":
            return httpx.Response(200, json={"name": "flood-maps", "url": "http://10.1.2.3:8000", "info": {}})  # fmt: skip
        return httpx.Response(500, json={"message": "unexpected in this test"})

    ctx.hub = httpx.AsyncClient(transport=httpx.MockTransport(hub), headers={"Authorization": "token svc-token"})  # fmt: skip
    ctx.rt.ports["registry"] = 9  # where the hub would reach the registry (not contacted)
    rid = approved(client, ctx)
    r = move(client, rid, "root-token", "integrated", upstream="http://127.0.0.1:9/")
    assert r.status_code == 409, r.text
    assert "already has a service 'flood-maps' that is not the registry's" in r.json()["description"]  # fmt: skip
    assert get(client, rid)["state"] == "approved"
    assert ("DELETE", "/hub/api/services/flood-maps") not in calls  # theirs: never removed

"""Registered web services behind the platform's sign-on, on the real multi-user platform.

A real web service (tests.helpers.echo_service, on loopback, started here) is onboarded
through the registry's REST API by three users (provider submits, the platform evaluates,
a reviewer approves, an admin integrates it with ``allow_private``), then reached through
the real proxy at ``/services/<slug>/``: who gets in, what upstream sees (identity headers
set by the platform, no credentials, no platform cookies), websockets, health checks, and
the outbound guard at evaluation (a counting server on 127.0.0.2 that must see nothing).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import pytest
import requests
import websocket

from tests.helpers.counting_origin import start_origin
from tests.helpers.echo_service import EchoService, free_loopback_port
from tests.helpers.platform import Platform

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

REVIEWERS = "registry-reviewers"
#: The session platform's health interval (tests/fixtures/platforms.py).
HEALTH_INTERVAL = 2.0


@dataclass
class World:
    p: Platform
    echo: EchoService
    team: str
    users: dict[str, str] = field(default_factory=dict)  # role -> hub user name
    passwords: dict[str, str] = field(default_factory=dict)
    slugs: dict[str, str] = field(default_factory=dict)  # "users"/"project" -> slug
    ids: dict[str, str] = field(default_factory=dict)  # slug -> request id

    def api(self, method: str, path: str, role: str | None = None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        if role:
            headers["Authorization"] = f"token {self.p.token(self.users[role])}"
        url = self.p.url + "services/registry/api/v1/" + path
        return requests.request(method, url, headers=headers, timeout=60, **kw)

    def service(self, slug: str, path: str = "", role: str | None = None, **kw):
        headers = kw.pop("headers", {})
        if role:
            headers["Authorization"] = f"token {self.p.token(self.users[role])}"
        kw.setdefault("allow_redirects", False)
        url = self.p.url + f"services/{slug}/" + path
        return requests.request(kw.pop("method", "GET"), url, headers=headers, timeout=60, **kw)


def entry(slug: str, url: str, visibility: str, kind: str = "web-application") -> dict:
    return {
        "name": f"Echo {slug}",
        "slug": slug,
        "provider": "Echo Labs",
        "description": "Echoes what it receives (a **test** service).",
        "thematic_areas": ["climate-adaptation"],
        "kind": kind,
        "endpoints": [{"url": url, "type": "other"}],
        "licence": "CC-BY-4.0",
        "contact": "echo@example.org",
        "visibility": visibility,
    }


def submit(w: World, doc: dict) -> requests.Response:
    return w.api("POST", "requests", "provider", json={"entry": doc, "activity": "tests"})


def wait_state(w: World, rid: str, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    doc: dict = {}
    while time.monotonic() < deadline:
        r = w.api("GET", f"requests/{rid}", "provider")
        assert r.status_code == 200, r.text
        doc = r.json()
        if doc["state"] == state:
            return doc
        time.sleep(0.5)
    raise AssertionError(f"request {rid} not {state} after {timeout} s: {doc.get('state')}")


def onboard(w: World, slug: str, visibility: str, sandbox: bool = False) -> str:
    r = submit(w, entry(slug, w.echo.url + "/health", visibility))
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    wait_state(w, rid, "evaluated")
    r = w.api(
        "POST", f"requests/{rid}/reviews", "reviewer",
        json={"decision": "approved", "comment": "fine"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    r = w.api(
        "POST", f"requests/{rid}/transitions", "admin",
        json={"to": "integrated", "upstream": w.echo.url, "allow_private": True,
              "sandbox": sandbox},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "integrated"
    return rid


def wait_reachable(w: World, slug: str, timeout: float = 60) -> None:
    """Until the proxy routes /services/<slug>/ to the registry (the gateway answers): at
    the hub's next check_routes (every 30 s at most; the registry may not ask sooner)."""
    deadline = time.monotonic() + timeout
    r = None
    while time.monotonic() < deadline:
        r = w.service(slug, "health", "member")
        if r.status_code == 200:
            return
        time.sleep(0.5)
    raise AssertionError(f"/services/{slug}/ not reachable: {r and (r.status_code, r.text)}")


@pytest.fixture(scope="module")
def world(multiuser_platform: Platform) -> Iterator[World]:
    p = multiuser_platform
    tag = secrets.token_hex(2)
    team = f"h4team{tag}"
    echo = EchoService.start()
    w = World(p=p, echo=echo, team=team)
    groups = {"provider": (), "reviewer": (REVIEWERS,), "member": (team,), "outsider": ()}
    for role, in_groups in groups.items():
        name = f"h4{role[:4]}{tag}"
        w.users[role] = name
        w.passwords[role] = p.add_user(name, groups=in_groups)
    # `twinhub user add --admin` is refused by the hub (the CLI's service is no admin):
    # the platform's first admin account integrates
    first = re.search(r"first admin account: (\S+)", "\n".join(p.output))
    assert first, "the platform printed no first admin account"
    w.users["admin"], w.passwords["admin"] = first.group(1), p.admin_password
    w.slugs = {"users": f"echo-users-{tag}", "project": f"echo-team-{tag}"}
    w.ids[w.slugs["users"]] = onboard(w, w.slugs["users"], "users")
    w.ids[w.slugs["project"]] = onboard(w, w.slugs["project"], f"project:{team}", sandbox=True)
    for slug in w.slugs.values():
        wait_reachable(w, slug)
    yield w
    echo.stop()


def echoed(r: requests.Response) -> tuple[dict, dict[str, list[str]]]:
    assert r.status_code == 200, (r.status_code, r.text[:500])
    doc = r.json()
    headers: dict[str, list[str]] = {}
    for k, v in doc["headers"]:
        headers.setdefault(k, []).append(v)
    return doc, headers


# -- who gets in ---------------------------------------------------------------------------------
def test_anonymous_browser_is_sent_to_sign_on_and_api_client_gets_401(world: World) -> None:
    slug = world.slugs["users"]
    r = world.service(slug, "page?x=1", headers={"Accept": "text/html"})
    assert r.status_code == 302, r.text
    loc = urlsplit(r.headers["location"])
    assert loc.path == "/services/registry/sso"
    assert unquote(loc.query) == f"next=/services/{slug}/page?x=1"
    # followed: the registry's sign-on needs a login, which the hub's login form asks for
    r = requests.get(world.p.url + f"services/{slug}/", headers={"Accept": "text/html"}, timeout=60)
    assert urlsplit(r.url).path == "/hub/login", r.url
    r = world.service(slug, "api/thing")
    assert r.status_code == 401
    assert r.json()["code"] == 401 and "authentication required" in r.json()["description"]
    assert r.headers["www-authenticate"].startswith("token")
    r = world.service(slug, headers={"Authorization": "token not-a-real-token-0000"})
    assert r.status_code == 401, r.text


def test_token_user_reaches_upstream_with_platform_identity_only(world: World) -> None:
    slug = world.slugs["users"]
    forged = {
        "X-Twinhub-User": "mallory",
        "X-Twinhub-Groups": "admins",
        "X-Forwarded-User": "mallory",
        "X-Remote-User": "mallory",
        "X-Auth-Request-User": "mallory",
        "Cookie": "jupyterhub-session-id=forged; _xsrf=x; theirs=kept",
    }
    r = world.service(slug, "a/b?q=1&r=two", "member", headers=forged)
    doc, h = echoed(r)
    assert doc["path"] == "/a/b" and doc["query"] == "q=1&r=two" and doc["method"] == "GET"
    assert h["x-twinhub-user"] == [world.users["member"]]
    assert h["x-twinhub-groups"] == [world.team]
    assert h["x-forwarded-prefix"] == [f"/services/{slug}"]
    assert "authorization" not in h
    assert h["cookie"] == ["theirs=kept"]
    for name in ("x-forwarded-user", "x-remote-user", "x-auth-request-user"):
        assert name not in h, name
    assert "mallory" not in json.dumps(doc)
    # a body goes through as it was sent
    r = world.service(slug, "post", "member", method="POST", data=b"x" * 70_000)
    doc, _ = echoed(r)
    assert doc["method"] == "POST" and doc["body"] == "x" * 70_000


def test_browser_session_signs_on_through_the_hub(world: World) -> None:
    slug = world.slugs["users"]
    s = world.p.login_session(world.users["outsider"], world.passwords["outsider"])
    s.headers["Accept"] = "text/html"
    r = s.get(world.p.url + f"services/{slug}/page?x=1", timeout=60)
    assert r.url == world.p.url + f"services/{slug}/page?x=1", [h.url for h in r.history]
    hops = [urlsplit(h.url).path for h in r.history]
    assert "/services/registry/sso" in hops, hops
    doc, h = echoed(r)
    assert h["x-twinhub-user"] == [world.users["outsider"]]
    assert h["x-twinhub-groups"] == [""]
    assert "authorization" not in h
    for cookie in h.get("cookie", []):
        assert "jupyterhub-" not in cookie and "twinhub-" not in cookie, cookie
    sso = [c for c in s.cookies if c.name == f"twinhub-sso-{slug}"]
    assert sso and sso[0].path == f"/services/{slug}/" and sso[0].has_nonstandard_attr("HttpOnly")
    # the cookie is bound to its service: copied to another slug's name it is worthless
    other = world.slugs["project"]
    r = requests.get(
        world.p.url + f"services/{other}/",
        cookies={f"twinhub-sso-{other}": sso[0].value},
        timeout=60,
    )
    assert r.status_code == 401, r.text


def _drop_sso_cookie(s: requests.Session, slug: str) -> None:
    """What the browser does when the sign-on cookie's Max-Age has passed."""
    for c in [c for c in s.cookies if c.name == f"twinhub-sso-{slug}"]:
        s.cookies.clear(c.domain, c.path, c.name)


def test_sign_on_is_short_lived_and_ends_with_the_hub_logout(world: World) -> None:
    slug = world.slugs["users"]
    s = world.p.login_session(world.users["outsider"], world.passwords["outsider"])
    s.headers["Accept"] = "text/html"
    r = s.get(world.p.url + f"services/{slug}/page", timeout=60)
    assert r.status_code == 200 and r.url.endswith(f"/services/{slug}/page"), r.url
    (sso,) = [c for c in s.cookies if c.name == f"twinhub-sso-{slug}"]
    assert sso.expires is not None and sso.expires - time.time() <= 15 * 60 + 5
    # expired: the next navigation renews it silently (the registry's session still holds)
    _drop_sso_cookie(s, slug)
    r = s.get(world.p.url + f"services/{slug}/again", timeout=60)
    assert r.status_code == 200 and r.url.endswith(f"/services/{slug}/again"), r.url
    hops = [urlsplit(h.url).path for h in r.history]
    assert "/services/registry/sso" in hops and "/hub/login" not in hops, hops
    # the hub's logout revokes the registry's session: renewing the cookie now needs a login
    r = s.get(world.p.url + "hub/logout", timeout=60)
    assert r.status_code == 200, r.status_code
    _drop_sso_cookie(s, slug)
    r = s.get(world.p.url + f"services/{slug}/after", timeout=60)
    assert urlsplit(r.url).path == "/hub/login", (r.url, [h.url for h in r.history])


def test_project_visibility(world: World) -> None:
    slug = world.slugs["project"]
    r = world.service(slug, "", "outsider")
    assert r.status_code == 403, r.text
    assert f"project:{world.team}" in r.json()["description"]
    for role in ("member", "admin", "provider"):
        r = world.service(slug, "", role)
        _, h = echoed(r)
        assert h["x-twinhub-user"] == [world.users[role]], role
        # integrated with sandbox: its pages run in an opaque origin
        assert r.headers["content-security-policy"].startswith("sandbox allow-scripts")
    # the sign-on endpoint refuses too (no cookie for a service one may not use)
    s = world.p.login_session(world.users["outsider"], world.passwords["outsider"])
    r = s.get(world.p.url + f"services/{slug}/", headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 403, (r.status_code, r.url)
    assert not [c for c in s.cookies if c.name == f"twinhub-sso-{slug}"]


def test_sso_refuses_next_outside_registered_services(world: World) -> None:
    s = world.p.login_session(world.users["member"], world.passwords["member"])
    # signed on once (the registry's own session, through the hub's OAuth)
    r = s.get(world.p.url + f"services/{world.slugs['users']}/", headers={"Accept": "text/html"})
    assert r.status_code == 200, r.text
    base = world.p.url + "services/registry/sso?next="
    users = world.slugs["users"]
    for bad, status, why in (
        ("https://evil.example/", 400, "next must be a path under /services/<slug>/"),
        ("/hub/admin", 400, "next must be a path under /services/<slug>/"),
        ("//evil/x", 400, "next must be a path under /services/<slug>/"),
        (f"/services/{users}", 400, "next must be a path under /services/<slug>/"),
        ("/services/registry/", 400, "no service 'registry' is registered here"),
        ("/services/no-such-service/", 400, "no service 'no-such-service' is registered"),
    ):
        r = s.get(base + requests.utils.quote(bad, safe=""), allow_redirects=False, timeout=60)
        assert r.status_code == status, (bad, r.status_code, r.text)
        assert r.json()["code"] == status and why in r.json()["description"], (bad, r.text)
        assert "location" not in r.headers


def test_upstream_cookies_and_redirects_stay_under_the_prefix(world: World) -> None:
    slug = world.slugs["users"]
    r = world.service(slug, "set-cookie", "member")
    assert r.status_code == 200
    assert "content-security-policy" not in r.headers  # integrated without sandbox
    cookies = r.raw.headers.getlist("Set-Cookie")
    assert cookies == [f"echo_own=1; Path=/services/{slug}/inner; HttpOnly"], cookies
    r = world.service(slug, "redirect", "member")
    assert r.status_code == 302 and r.headers["location"] == f"/services/{slug}/landed"


def test_suspended_service_answers_503_and_comes_back(world: World) -> None:
    slug, rid = world.slugs["users"], world.ids[world.slugs["users"]]
    r = world.api("POST", f"requests/{rid}/transitions", "admin", json={"to": "suspended"})
    assert r.status_code == 200, r.text
    try:
        deadline = time.monotonic() + 5
        while (r := world.service(slug, "", "member")).status_code != 503:
            assert time.monotonic() < deadline, (r.status_code, r.text)
            time.sleep(0.3)
        assert "suspended" in r.json()["description"]
    finally:
        r = world.api("POST", f"requests/{rid}/transitions", "admin", json={"to": "integrated"})
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 5
    while world.service(slug, "", "member").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.3)


# -- websockets ----------------------------------------------------------------------------------
def test_websocket_round_trip_through_the_proxy(world: World) -> None:
    slug = world.slugs["users"]
    ws_url = world.p.url.replace("http", "ws", 1) + f"services/{slug}/ws"
    token = world.p.token(world.users["member"])
    ws = websocket.create_connection(
        ws_url, header=[f"Authorization: token {token}", "X-Twinhub-User: mallory"], timeout=30
    )
    try:
        assert json.loads(ws.recv()) == {"hello": world.users["member"]}
        ws.send("ping")
        assert ws.recv() == "ping"
        ws.send_binary(b"\x00\xffbin")
        assert ws.recv() == b"\x00\xffbin"
        ws.send("close:4001")  # the service closes with its own code: the client sees it
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == 4001
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        websocket.create_connection(ws_url, timeout=30)
    assert e.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException):
        other = world.p.token(world.users["outsider"])
        websocket.create_connection(
            ws_url.replace(slug, world.slugs["project"]),
            header=[f"Authorization: token {other}"],
            timeout=30,
        )


# -- health --------------------------------------------------------------------------------------
def status_of(w: World, slug: str) -> dict:
    r = w.api("GET", "entries", "member")
    assert r.status_code == 200, r.text
    found = [e for e in r.json()["entries"] if e["slug"] == slug]
    assert found, slug
    return found[0]


def welcome_status(w: World, slug: str) -> str | None:
    """The status on ``slug``'s card of the landing page (``welcome``) as a member sees it."""
    r = requests.get(
        w.p.url + "services/registry/welcome",
        headers={"Authorization": f"token {w.p.token(w.users['member'])}", "Accept": "text/html"},
        timeout=60,
    )
    assert r.status_code == 200, r.text[:500]
    m = re.search(
        rf'<article class="th-card" data-slug="{re.escape(slug)}"[^>]*>.*?data-status="([^"]*)"',
        r.text,
        re.S,
    )
    return m.group(1) if m else None


def wait_status(w: World, slug: str, status: str, within: float) -> float:
    """Seconds until both the API's entry and the landing page's card show ``status``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if status_of(w, slug)["status"] == status and welcome_status(w, slug) == status:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(
        f"{slug} not {status} within {within} s: api {status_of(w, slug)}, "
        f"landing page card {welcome_status(w, slug)!r}"
    )


def test_health_turns_down_when_the_service_stops_and_up_again(world: World) -> None:
    """On the API's entries and on the landing page's card (the issue's check)."""
    slug = world.slugs["users"]
    wait_status(world, slug, "up", 3 * HEALTH_INTERVAL)
    assert status_of(world, slug)["latency_ms"] is not None
    world.echo.stop()
    try:
        # two intervals, and a second for the poll and this 2-core machine
        took = wait_status(world, slug, "down", 2 * HEALTH_INTERVAL + 1)
        r = world.service(slug, "", "member")
        assert r.status_code == 502 and r.json()["code"] == 502
    finally:
        world.echo.restart()
    wait_status(world, slug, "up", 2 * HEALTH_INTERVAL + 1)
    print(f"down seen {took:.1f} s after the stop")


# -- the outbound guard at evaluation ------------------------------------------------------------
def test_evaluation_never_fetches_private_addresses(world: World, tmp_path) -> None:
    (tmp_path / "openapi.json").write_text('{"openapi": "3.0.0", "paths": {}}')
    origin = start_origin(tmp_path, host="127.0.0.2")
    port = origin.server.server_address[1]
    try:
        urls = {
            "loopback": f"{origin.url}/openapi.json",
            "metadata": "http://169.254.169.254/latest/meta-data/",
            "redirect": f"{origin.url}/redirect-away/x",
            "localhost": f"http://localhost:{port}/openapi.json",
            "ipv6": f"http://[::1]:{free_loopback_port()}/",
        }
        ids = {}
        for name, url in urls.items():
            doc = entry(f"guard-{name}-{secrets.token_hex(2)}", url, "public", kind="api")
            doc["endpoints"][0].update(type="openapi", description_url=url)
            r = submit(world, doc)
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]
        for name, rid in ids.items():
            doc = wait_state(world, rid, "evaluated")
            bad = [f for f in doc["findings"] if not f["ok"]]
            assert any("not fetched" in f["message"] for f in bad), (name, doc["findings"])
        # file: refused at submission already (only http(s) URLs are entries' URLs)
        doc = entry(f"guard-file-{secrets.token_hex(2)}", "file:///etc/passwd", "public")
        before = len(world.api("GET", "requests", "provider").json()["requests"])
        r = submit(world, doc)
        assert r.status_code == 400 and "file" in r.json()["description"], r.text
        assert len(world.api("GET", "requests", "provider").json()["requests"]) == before
        assert dict(origin.server.counts) == {}, origin.server.counts
    finally:
        origin.stop()

"""The registry's pages (services/registry/pages.py) through the real service app: the request
limits, hub auth (anonymous paths, cookies, XSRF value), FastAPI and the templates, against a
real SQLite store holding integrated entries of every visibility.

The one fake is the hub's token check (``FakeHubAuth`` in conftest.py: a table of token ->
user model where JupyterHub would answer); the lake's STAC service is a real HTTP server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import httpx
import jinja2
import pytest

from twinhub.hubconf.face import TEMPLATES_DIR
from twinhub.services.hubauth import xsrf_token
from twinhub.services.registry import pages, store
from twinhub.services.registry.app import create_app
from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.context import RegistryContext

PREFIX = "/services/registry/"
ACCESS = "access:services!service=registry"
SERVICE_TOKEN = "registry-service-token"
COOKIE = "twinhub-services-registry-token"


@pytest.fixture
def ctx(registry_ctx, registry_entries) -> RegistryContext:
    """The shared registry context (conftest.py) holding entries of every visibility."""
    _entry, _publish = registry_entries
    url, settings = registry_ctx.db_url, registry_ctx.settings
    _publish(url, _entry(settings, "pub-svc", "Public Waves", "public"))
    _publish(
        url,
        _entry(settings, "users-data", "Users Currents", "users", kind="dataset",
               thematic_areas=["ocean", "water"]),
    )  # fmt: skip
    _publish(url, _entry(settings, "ocean-proj", "Lab Tides", "project:ocean-lab"))
    _publish(url, _entry(settings, "other-proj", "Secret Reefs", "project:other-lab"))
    _publish(url, _entry(settings, "pending-svc", "Pending Swell", "public"), state="approved")
    _publish(
        url,
        _entry(
            settings,
            "evil-svc",
            "<script>alert('name')</script>",
            "public",
            description="<img src=x onerror=alert(1)> and <b>bold</b>",
            thematic_areas=["health"],
        ),
    )
    store.record_health(url, "pub-svc", status="up", latency_ms=12.4, http_status=200, detail="")
    store.record_health(url, "ocean-proj", status="down", latency_ms=None, http_status=None,
                        detail="refused")  # fmt: skip
    return registry_ctx


class Client:
    """Requests to the app in process (httpx over ASGI; no redirect followed)."""

    def __init__(self, app) -> None:
        self.app = app
        self.cookies: dict[str, str] = {}

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://testserver", cookies=self.cookies
            ) as c:
                return await c.get(path, headers=headers or {})

        return asyncio.run(go())


@pytest.fixture
def client(ctx, hub_auth) -> Client:
    return Client(create_app(ctx=ctx, hub_auth=hub_auth, background=False))


def _cards(html: str) -> set[str]:
    return set(re.findall(r'class="th-card" data-slug="([^"]+)"', html))


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


# -- the landing page ----------------------------------------------------------------------
def test_visitor_sees_public_integrated_entries_only(client, ctx) -> None:
    pages._extras(ctx)["lake"] = [
        {"id": "era5", "title": "ERA5 <sample>", "description": "Reanalysis"}
    ]
    r = client.get(PREFIX + "welcome")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    # images from the registry's static files only (a path-restricted source), framed only
    # by the platform's own pages
    assert "img-src http://testserver/services/registry/static/ data:;" in csp
    assert "frame-ancestors 'self'" in csp and "script-src 'self'" in csp
    assert "x-frame-options" not in r.headers
    assert r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    assert _cards(html) == {"pub-svc", "evil-svc"}
    for hidden in ("Users Currents", "Lab Tides", "Secret Reefs", "Pending Swell"):
        assert hidden not in html
    assert "<title>Blue Twin: digital twin platform</title>" in html
    assert f'href="{PREFIX}login"' in html and "My server" not in html
    # Status from the health table, latency rounded; the link goes through the gateway.
    card = html[html.index('data-slug="pub-svc"') :]
    assert 'data-status="up"' in card[:800] and "12 ms" in card[:800]
    assert 'href="/services/pub-svc/"' in card[:800]
    assert "About bold" not in card[:800] and "About Public Waves, see docs." in card[:800]
    # Grouped under the vocabulary's label; the lake's collections (escaped).
    assert '<div class="th-area" data-area="ocean">' in html and "<h3>Ocean</h3>" in html
    assert "ERA5 &lt;sample&gt;" in html and "Reanalysis" in html
    # No asset from elsewhere, no inline script or style.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script>" not in html and "style=" not in html and "<style" not in html


def test_names_and_descriptions_are_text_never_markup(client) -> None:
    html = client.get(PREFIX + "welcome").text
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_logged_in_user_sees_users_and_own_project_entries(client) -> None:
    r = client.get(PREFIX + "welcome", headers=_as("bob-token"))
    assert r.status_code == 200, r.text
    html = r.text
    assert _cards(html) == {"pub-svc", "evil-svc", "users-data", "ocean-proj"}
    assert "Secret Reefs" not in html and "Pending Swell" not in html
    assert "for project ocean-lab" in html and "for logged-in users" in html
    assert 'data-project="ocean-lab"' in html  # their projects
    assert 'href="/hub/home"' in html and f'href="{PREFIX}onboarding"' in html
    assert "Log out" in html and f'href="{PREFIX}login"' not in html
    # A dataset links to its record's page, not to the gateway; a down service says so.
    assert f'href="{PREFIX}collections/services/items/users-data?f=html"' in html
    card = html[html.index('data-slug="ocean-proj"') :][:800]
    assert 'data-status="down"' in card
    # Under each of its areas.
    assert html.count('data-slug="users-data"') == 2
    assert r.headers["cache-control"] == "private, no-store"


def test_user_outside_projects_and_admin(client) -> None:
    alice = client.get(PREFIX + "welcome", headers=_as("alice-token")).text
    assert _cards(alice) == {"pub-svc", "evil-svc", "users-data"}
    assert "You are in no project yet" in alice
    root = client.get(PREFIX + "welcome", headers=_as("root-token")).text
    assert _cards(root) == {"pub-svc", "evil-svc", "users-data", "ocean-proj", "other-proj"}
    assert "Pending Swell" not in root  # approved, not integrated: in no catalogue


def test_stale_cookie_reads_as_a_visitor_and_desk_link_when_it_runs(client, ctx) -> None:
    client.cookies[COOKIE] = "expired-token"
    html = client.get(PREFIX + "welcome").text
    assert _cards(html) == {"pub-svc", "evil-svc"}
    client.cookies.clear()
    assert "Service desk" not in client.get(PREFIX + "welcome", headers=_as("bob-token")).text
    ctx.rt.ports["desk"] = 1
    html = client.get(PREFIX + "welcome", headers=_as("bob-token")).text
    assert 'href="/services/desk/"' in html


def test_health_is_read_again_after_a_second(client, ctx, monkeypatch) -> None:
    assert 'data-status="up"' in client.get(PREFIX + "welcome").text
    store.record_health(ctx.db_url, "pub-svc", status="down", latency_ms=None,
                        http_status=None, detail="stopped")  # fmt: skip
    clock = [pages.time.monotonic() + 5]
    monkeypatch.setattr(pages.time, "monotonic", lambda: clock[0])
    card = client.get(PREFIX + "welcome").text
    card = card[card.index('data-slug="pub-svc"') :][:800]
    assert 'data-status="down"' in card


class _Hub(BaseHTTPRequestHandler):
    """A fake of the hub's REST API (no hub runs in unit tests): ``GET /hub/api/users/<n>``
    with the groups and admin flag the hub keeps."""

    models = {
        "bob": {"name": "bob", "admin": False, "groups": ["ocean-lab"]},
        "carol": {"name": "carol", "admin": False, "groups": ["registry-reviewers"]},
    }

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.rsplit("/", 1)[-1]
        model = self.models.get(name)
        body = json.dumps(model or {"status": 404}).encode()
        self.send_response(200 if model else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_groups_come_from_the_hub_not_the_token(ctx, hub_auth, hub_users) -> None:
    """Tokens issued to services carry no groups: the page asks the hub (the service's own
    token) what the caller's groups are, as the API does."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctx.hub_api = f"http://127.0.0.1:{server.server_address[1]}/hub/api"
    for who in ("bob", "carol", "gone"):  # service tokens: no groups
        hub_users[f"{who}-token"] = {"name": who, "admin": False, "kind": "user",
                                     "scopes": [ACCESS]}  # fmt: skip
    app = create_app(ctx=ctx, hub_auth=hub_auth, background=False)

    async def go() -> dict[str, str]:
        out = {}
        async with httpx.AsyncClient(headers={"Authorization": f"token {SERVICE_TOKEN}"}) as hub:
            ctx.hub = hub
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                for who in ("bob", "carol", "gone"):
                    r = await c.get(PREFIX + "welcome", headers=_as(f"{who}-token"))
                    assert r.status_code == 200, r.text
                    out[who] = r.text
                r = await c.get(PREFIX + "onboarding", headers=_as("carol-token"))
                out["carol-onboarding"] = r.text
        return out

    try:
        html = asyncio.run(go())
    finally:
        server.shutdown()
    assert _cards(html["bob"]) == {"pub-svc", "evil-svc", "users-data", "ocean-proj"}
    assert 'data-project="ocean-lab"' in html["bob"]
    assert _cards(html["carol"]) == {"pub-svc", "evil-svc", "users-data"}
    assert 'id="th-review"' in html["carol-onboarding"]
    # A user the hub no longer knows sees what a visitor sees.
    assert _cards(html["gone"]) == {"pub-svc", "evil-svc"}


def test_landing_page_shows_at_most_max_cards(client, monkeypatch) -> None:
    monkeypatch.setattr(pages, "MAX_CARDS", 1)
    html = client.get(PREFIX + "welcome").text
    assert len(_cards(html)) == 1
    assert re.search(r'<p id="th-more">1 more in <a href="/services/registry/collections/', html)


# -- login, onboarding ---------------------------------------------------------------------
def test_login_needs_a_login_then_goes_to_welcome(client) -> None:
    r = client.get(PREFIX + "login", headers={"Accept": "text/html"})
    assert r.status_code == 302
    assert r.headers["location"].startswith("/hub/api/oauth2/authorize?")
    r = client.get(PREFIX + "login", headers=_as("alice-token"))
    assert r.status_code == 302 and r.headers["location"] == PREFIX + "welcome"


def test_onboarding_needs_a_login(client) -> None:
    r = client.get(PREFIX + "onboarding")
    assert r.status_code == 401
    assert r.json()["code"] == 401
    r = client.get(PREFIX + "onboarding", headers={"Accept": "text/html"})
    assert r.status_code == 302 and "oauth2/authorize" in r.headers["location"]


def test_onboarding_page_carries_the_xsrf_value_and_the_form(client) -> None:
    client.cookies[COOKIE] = "bob-token"
    r = client.get(PREFIX + "onboarding")
    assert r.status_code == 200, r.text
    html = r.text
    want = xsrf_token(SERVICE_TOKEN, "bob-token")
    assert f'<meta name="twinhub-xsrf" content="{want}">' in html
    # the admin's page: never framed, not even by the platform's own pages
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "frame-ancestors 'self'" not in csp
    assert "img-src http://testserver/services/registry/static/ data:;" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert 'data-api="/services/registry/api/v1/"' in html and 'data-user="bob"' in html
    assert 'data-reviewer="false"' in html and 'data-admin="false"' in html
    assert 'id="th-review"' not in html and 'id="th-operate"' not in html
    for area in TwinhubRegistry().thematic_areas:
        assert f'name="thematic_areas" value="{area}"' in html
    assert '<option value="project:ocean-lab">' in html and '<option value="ocean-lab">' in html
    assert f'<script src="{PREFIX}static/onboarding.js"></script>' in html


@pytest.mark.parametrize("page", ["welcome", "onboarding", "collections?f=html"])
def test_pages_with_the_xsrf_value_are_never_stored(client, page) -> None:
    """``no-cache`` lets a browser store the page, and fetch(..., {cache: "force-cache"}) by
    a same-origin script reads the stored navigation back, XSRF value included."""
    client.cookies[COOKIE] = "bob-token"
    r = client.get(PREFIX + page, headers={"Accept": "text/html"})
    assert r.status_code == 200, r.text
    assert xsrf_token(SERVICE_TOKEN, "bob-token") in r.text
    assert r.headers["cache-control"] == "private, no-store"
    vary = {v.strip().lower() for v in r.headers["vary"].split(",")}
    assert {"cookie", "sec-fetch-dest", "sec-fetch-mode"} <= vary
    # a visitor's page holds no value: it may be revalidated from the cache
    client.cookies.clear()
    r = client.get(PREFIX + "welcome")
    assert r.headers["cache-control"] == "no-cache"
    assert '<meta name="twinhub-xsrf" content="">' in r.text or "twinhub-xsrf" not in r.text


def test_onboarding_shows_reviewer_and_admin_sections(client, hub_users) -> None:
    hub_users["alice-token"]["groups"] = ["registry-reviewers"]
    html = client.get(PREFIX + "onboarding", headers=_as("alice-token")).text
    assert 'id="th-review"' in html and 'id="th-operate"' not in html
    html = client.get(PREFIX + "onboarding", headers=_as("root-token")).text
    assert 'id="th-operate"' in html and 'id="th-admin-narrowed"' not in html


# -- static files --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "media"),
    [
        ("registry.css", "text/css"),
        ("onboarding.js", "text/javascript"),
        ("logo.svg", "image/svg+xml"),
    ],
)
def test_static_files_for_anyone(client, name, media) -> None:
    r = client.get(PREFIX + "static/" + name)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media)
    assert r.headers["cache-control"] == "public, max-age=3600"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.content == (pages.STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize(
    ("path", "anonymous"),
    [
        # dot segments leave static/ (the client or the auth layer resolves them): the
        # registry's root needs a login there, and a logged-in caller finds nothing
        ("static/../pages.py", 401),
        ("static/%2e%2e/pages.py", 401),
        ("static/..%2fpages.py", 401),
        # inside static/ (anonymous): only the fixed table of files is served
        ("static/templates/base.html", 404),
        ("static/", 404),
        ("static/nope.js", 404),
        ("static/registry.css/", 404),
        ("static//etc/passwd", 404),
    ],
)
def test_static_traversal_finds_nothing(client, path, anonymous) -> None:
    for headers, want in (({}, anonymous), (_as("alice-token"), 404)):
        r = client.get(PREFIX + path, headers=headers)
        assert r.status_code == want, (path, headers, r.status_code)
        assert r.json()["code"] == r.status_code
        assert "import" not in r.text and "root:" not in r.text


# -- the lake's collections ----------------------------------------------------------------
class _Stac(BaseHTTPRequestHandler):
    """A real HTTP server standing in for the STAC service's /collections."""

    answer: tuple[int, dict] = (200, {})
    seen: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
        status, doc = type(self).answer
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_refresh_lake_keeps_the_platform_collections_only(ctx) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stac)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ctx.rt.ports["stac"] = server.server_address[1]
    _Stac.seen = []
    _Stac.answer = (
        200,
        {
            "collections": [
                {"id": "era5", "title": "ERA5 sample", "description": "Hourly **reanalysis**"},
                {"id": "mine", "title": "Bob's", "description": "x", "twinhub:owner": "bob"},
                {"id": "plain"},
                "not a collection",
            ]
        },
    )

    async def go() -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"token {SERVICE_TOKEN}"}) as hub:
            ctx.hub = hub
            await pages.refresh_lake(ctx)
            first = pages.lake_collections(ctx)
            _Stac.answer = (500, {"code": 500, "description": "down"})
            await pages.refresh_lake(ctx)
            assert pages.lake_collections(ctx) == first  # a failure keeps the old list
            _Stac.answer = (200, {"no": "collections"})
            await pages.refresh_lake(ctx)
            assert pages.lake_collections(ctx) == first

    try:
        asyncio.run(go())
    finally:
        server.shutdown()
    assert pages.lake_collections(ctx) == [
        {"id": "era5", "title": "ERA5 sample", "description": "Hourly reanalysis"},
        {"id": "plain", "title": "plain", "description": ""},
    ]
    assert _Stac.seen[0]["path"] == "/services/stac/collections?limit=200"
    assert _Stac.seen[0]["auth"] == f"token {SERVICE_TOKEN}"


# -- pure helpers --------------------------------------------------------------------------
def test_summary_strips_markdown_and_cuts_at_a_word() -> None:
    assert pages.summary("# Title\n\n* one [link](http://x) `code`") == "Title one link code"
    long = "word " * 100
    out = pages.summary(long, 20)
    assert out.endswith("…") and len(out) <= 21 and "  " not in out


def test_group_by_area_keeps_vocabulary_order_and_unknown_areas() -> None:
    cards = [
        {"name": "B", "slug": "b", "areas": ["water", "ocean"]},
        {"name": "a", "slug": "a", "areas": ["ocean"]},
        {"name": "c", "slug": "c", "areas": ["gone"]},
    ]
    groups = pages.group_by_area(cards, {"ocean": "Ocean", "water": "Water", "energy": "E"})
    assert [(g["id"], [c["slug"] for c in g["cards"]]) for g in groups] == [
        ("ocean", ["a", "b"]),
        ("water", ["b"]),
        ("other", ["c"]),
    ]


# -- the hub's navigation ------------------------------------------------------------------
def _hub_page(**variables) -> str:
    """The hub's page.html as JupyterHub loads it (twinhub's templates first, its own
    under ``templates/``)."""
    upstream = Path(sys.prefix) / "share" / "jupyterhub" / "templates"
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader({"templates": jinja2.FileSystemLoader([str(upstream)])}, "/"),
                jinja2.FileSystemLoader([str(TEMPLATES_DIR), str(upstream)]),
            ]
        ),
        autoescape=True,
    )
    return env.get_template("page.html").render(
        base_url="/hub/",
        static_url=lambda path, **kw: "/hub/static/" + path,
        parsed_scopes={"self"},
        user=SimpleNamespace(name="bob", spawner=SimpleNamespace(options_form=None)),
        services=[{"name": "stac", "href": "/services/stac/"}],
        **variables,
    )


def test_hub_nav_links_to_the_catalogue_and_the_desk() -> None:
    html = _hub_page(registry_url="/services/registry/welcome", support_url="/services/desk/")
    assert 'id="twinhub-nav-services" href="/services/registry/welcome">Services</a>' in html
    assert 'id="twinhub-nav-desk" href="/services/desk/">Service desk</a>' in html
    assert ">APIs</a>" in html and 'href="/services/stac/"' in html  # the hub's services
    assert 'id="twinhub-nav-help"' in html
    plain = _hub_page()
    assert "twinhub-nav-services" not in plain and "twinhub-nav-desk" not in plain
    assert ">Services</a>" in plain and ">APIs</a>" not in plain


def test_markdown_renders_no_images() -> None:
    """An image loads by itself with the visitor's cookies: it becomes its alt text."""
    for md in ("![](/hub/logout)", "![x](/hub/logout 't')", "[![alt](/services/x/do)](/ok)",
               "![ref][r]\n\n[r]: /hub/logout", '<img src="/hub/logout">'):  # fmt: skip
        html = pages.render_markdown(md)
        assert "<img" not in html and 'src="' not in html, (md, html)
    assert (
        pages.render_markdown("a ![the **map** <b>](/m.png) b") == "<p>a the map &lt;b&gt; b</p>\n"
    )
    assert pages.render_markdown("[![alt](/i.png)](/ok)") == '<p><a href="/ok">alt</a></p>\n'
    assert pages.render_markdown("**bold** [l](https://w.org/)") == (
        '<p><strong>bold</strong> <a href="https://w.org/">l</a></p>\n'
    )


def test_csp_static_source_refuses_odd_hosts() -> None:
    class R:
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers
            self.url = type("U", (), {"scheme": "http"})()

    assert pages.static_url(R({"host": "hub.example:8000"}), PREFIX) == (
        "http://hub.example:8000/services/registry/static/"
    )
    assert pages.static_url(R({"host": "h", "x-forwarded-proto": "https"}), PREFIX) == (
        "https://h/services/registry/static/"
    )
    for host in ("a; script-src *", "a b", ""):  # never written into the header
        assert pages.static_url(R({"host": host}), PREFIX) == "'self'"

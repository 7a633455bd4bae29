"""The registry's pages in headless Chromium on the real multi-user platform.

A provider submits a request through the onboarding form, the platform evaluates it, a
reviewer approves it and an admin integrates it (a real web service on loopback), each step
seen on the page. Then a visitor who is not logged in opens the platform's ``/``: the
welcome page shows the public entry with its status and the lake's collections, never the
project-only entry; the Log in button goes through the hub's login and back, where the
project member sees their project's entry too.

Screenshots go to ``$TWINHUB_SCREENSHOTS`` (tests/e2e/conftest.py): look at them.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.helpers.browser import log_in
from tests.helpers.platform import wait_for_seed
from tests.helpers.registry import wait_routed

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

TIMEOUT_MS = 90_000
PROVIDER, REVIEWER, MEMBER = "h5prov", "h5rev", "h5member"
PROJECT = "h5-ocean"
SLUG, HIDDEN, TIDES = "h5-waves", "h5-hidden", "h5-tides"
REG = "services/registry/"


class _Waves(BaseHTTPRequestHandler):
    """The provider's web service: a small page naming who the platform says is calling."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        who = self.headers.get("X-Twinhub-User", "")
        body = f"<!DOCTYPE html><title>Waves</title><h1>Waves for {who}</h1>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Waves)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def people(multiuser_platform) -> dict[str, str]:
    p = multiuser_platform
    for name in (PROVIDER, REVIEWER, MEMBER):
        if p.api("GET", f"/users/{name}", user="admin").status_code != 404:
            pytest.skip(f"{name} existed before this module: its password is unknown")
    # A project of the platform (a hub group with an allocation) the member belongs to.
    r = requests.put(
        p.url + f"services/projects/api/projects/{PROJECT}",
        json={"profiles": ["small-cpu"], "max_servers_per_user": 1},
        headers={"Authorization": f"token {p.token('admin')}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return {
        PROVIDER: p.add_user(PROVIDER),
        REVIEWER: p.add_user(REVIEWER, groups=("registry-reviewers",)),
        MEMBER: p.add_user(MEMBER, groups=(PROJECT,)),
        "admin": p.admin_password,
    }


@pytest.fixture(scope="module")
def page(browser_context):
    pg = browser_context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.js_errors = errors  # type: ignore[attr-defined]
    return pg


def _api(p, method: str, path: str, user: str, **kw) -> requests.Response:
    return requests.request(
        method,
        p.url + REG + "api/v1/" + path,
        headers={"Authorization": f"token {p.token(user)}"},
        timeout=30,
        **kw,
    )


def _request_of(p, slug: str) -> dict:
    """The live request of ``slug``, in full (events included), as an admin sees it."""
    rows = _api(p, "GET", "requests", "admin").json()["requests"]
    row = next(r for r in rows if r["slug"] == slug and r["state"] not in ("retired", "rejected"))
    return _api(p, "GET", f"requests/{row['id']}", "admin").json()


def _wait_state(p, slug: str, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = _request_of(p, slug)
        if r["state"] == state:
            return r
        assert time.monotonic() < deadline, f"{slug} still {r['state']}, not {state}"
        time.sleep(0.5)


def _switch(page, p, user: str, password: str) -> None:
    page.context.clear_cookies()
    log_in(page, p.url, user, password)
    page.goto(p.url + REG + "onboarding")
    page.wait_for_selector("#th-onboarding")


def test_provider_submits_through_the_form(multiuser_platform, people, upstream, page, shots):
    p = multiuser_platform
    _switch(page, p, PROVIDER, people[PROVIDER])
    assert page.locator("#th-review").count() == 0 and page.locator("#th-operate").count() == 0
    page.fill('[name="name"]', "Wave forecasts")
    page.fill('[name="slug"]', SLUG)
    page.fill('[name="provider"]', "Blue Sea Institute")
    page.fill('[name="description"]', "Seven-day **wave** forecasts for European coasts.")
    page.check('[name="thematic_areas"][value="ocean"]')
    page.check('[name="thematic_areas"][value="extremes"]')
    page.select_option('[name="kind"]', "web-application")
    page.fill('[name="endpoint_url"]', upstream)
    page.fill('[name="contact"]', "waves@example.org")
    page.select_option('[name="visibility"]', "public")
    page.fill('[name="cpu"]', "2")
    page.fill('[name="activity"]', "Daily forecasts for coastal services.")
    # A bad entry first: the API's refusal is shown inline, nothing is stored.
    page.fill('[name="bbox"]', "1, 2, 3")
    page.click("#th-submit")
    error = page.locator("#th-form-error")
    error.wait_for(state="visible")
    assert "bbox" in error.inner_text()
    assert not [
        r for r in _api(p, "GET", "requests", PROVIDER).json()["requests"] if r["slug"] == SLUG
    ]
    page.fill('[name="bbox"]', "-10, 35, 30, 70")
    page.click("#th-submit")
    card = page.locator(f'#th-mine .th-request[data-slug="{SLUG}"]')
    card.wait_for()
    assert error.is_hidden()
    # The platform evaluates it within seconds; the page follows by itself.
    page.wait_for_selector(
        f'#th-mine .th-request[data-slug="{SLUG}"][data-state="evaluated"]', timeout=60_000
    )
    assert card.locator(".th-findings li").first.is_visible()  # open while evaluated
    assert card.locator('[data-action="retire"]').is_visible()  # the provider may withdraw
    assert card.locator('[data-action="approve"]').count() == 0
    page.screenshot(path=str(shots / "onboarding-provider.png"), full_page=True)
    r = _request_of(p, SLUG)
    assert r["provider"] == PROVIDER and r["entry"]["bbox"] == [-10.0, 35.0, 30.0, 70.0]
    assert r["resources"].get("cpu") == 2
    assert not page.js_errors, page.js_errors


def test_reviewer_approves(multiuser_platform, people, page, shots):
    p = multiuser_platform
    _wait_state(p, SLUG, "evaluated")
    _switch(page, p, REVIEWER, people[REVIEWER])
    card = page.locator(f'#th-review .th-request[data-slug="{SLUG}"]')
    card.wait_for()
    card.locator("textarea").fill("Looks good: approved for the ocean area.")
    page.screenshot(path=str(shots / "onboarding-reviewer.png"), full_page=True)
    card.locator('[data-action="approve"]').click()
    page.wait_for_selector(f'#th-review .th-request[data-slug="{SLUG}"]', state="detached")
    r = _request_of(p, SLUG)
    assert r["state"] == "approved"
    assert any(e.get("comment") == "Looks good: approved for the ocean area." for e in r["events"])
    assert not page.js_errors, page.js_errors


def test_admin_integrates(multiuser_platform, people, upstream, page, shots):
    p = multiuser_platform
    _switch(page, p, "admin", people["admin"])
    page.screenshot(path=str(shots / "onboarding-admin-start.png"), full_page=True)
    # The page warns when the browser's session does not carry the admin's rights (the
    # registry's sign-on token lacks admin:users): then nothing here could be integrated.
    assert page.locator("#th-admin-narrowed").count() == 0, (
        "the admin's browser session for the registry lacks admin:users"
    )
    card = page.locator(f'#th-operate .th-request[data-slug="{SLUG}"][data-state="approved"]')
    card.wait_for()
    assert card.locator(".th-upstream").input_value() == upstream  # the endpoint, offered
    assert card.locator(".th-sandbox").is_checked()  # sandboxed unless said otherwise
    card.locator(".th-allow-private").check()
    assert card.locator(".th-warning").is_visible()  # what a private address means
    page.screenshot(path=str(shots / "onboarding-admin.png"), full_page=True)
    card.locator('[data-action="integrate"]').click()
    # a private address is not for a browser session (any page of the origin could drive
    # it): the API refuses, and the page shows the command to run with a token instead
    curl = card.locator(".th-curl-command")
    curl.wait_for()
    assert "needs an Authorization: token header" in card.locator(".th-error").inner_text()
    command = curl.inner_text()
    assert command.startswith('curl -X POST -H "Authorization: token $TOKEN"'), command
    r = _request_of(p, SLUG)
    assert r["state"] == "approved"  # nothing changed
    assert f"{p.url.rstrip('/')}/{REG}api/v1/requests/{r['id']}/transitions" in command
    page.screenshot(path=str(shots / "onboarding-admin-curl.png"), full_page=True)
    # what the admin then runs: the body the command holds, with the admin's API token
    body = json.loads(re.search(r"-d '(.*)' \\", command).group(1).replace("'\\''", "'"))
    assert body["allow_private"] is True and body["sandbox"] is True
    assert body["upstream"] == upstream and body["to"] == "integrated"
    resp = _api(p, "POST", f"requests/{r['id']}/transitions", "admin", json=body)
    assert resp.status_code == 200, resp.text
    page.reload()
    page.wait_for_selector(f'#th-operate .th-request[data-slug="{SLUG}"][data-state="integrated"]')
    done = page.locator(f'#th-operate .th-request[data-slug="{SLUG}"]')
    assert done.locator('[data-action="suspend"]').is_visible()
    assert done.locator(f'a[href="/services/{SLUG}/"]').is_visible()
    page.screenshot(path=str(shots / "onboarding-admin-integrated.png"), full_page=True)
    r = _request_of(p, SLUG)
    assert r["state"] == "integrated" and r["upstream"] == upstream and r["allow_private"]
    assert not page.js_errors, page.js_errors


def _integrate_hidden(p, upstream: str) -> None:
    """A project-only entry, onboarded through REST (the pages were tested above)."""
    entry = {
        "name": "Hidden reef monitor",
        "slug": HIDDEN,
        "provider": "Reef Lab",
        "description": "Only for the h5-ocean project.",
        "thematic_areas": ["ocean"],
        "kind": "web-application",
        "endpoints": [{"url": upstream, "type": "other"}],
        "visibility": f"project:{PROJECT}",
    }
    r = _api(p, "POST", "requests", MEMBER, json={"entry": entry})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    _wait_state(p, HIDDEN, "evaluated")
    r = _api(p, "POST", f"requests/{rid}/reviews", REVIEWER,
             json={"decision": "approved", "comment": "ok"})  # fmt: skip
    assert r.status_code == 200, r.text
    r = _api(p, "POST", f"requests/{rid}/transitions", "admin",
             json={"to": "integrated", "upstream": upstream, "allow_private": True})  # fmt: skip
    assert r.status_code == 200, r.text


def _lake_titles(p) -> list[str]:
    wait_for_seed(p)
    r = requests.get(
        p.url + "services/stac/collections",
        headers={"Authorization": f"token {p.token('admin')}"},
        timeout=30,
    )
    r.raise_for_status()
    return [
        c.get("title") or c["id"] for c in r.json()["collections"] if not c.get("twinhub:owner")
    ]


def _ensure_integrated(p, upstream: str) -> None:
    """The public entry integrated: by the admin's page above, else (that test failed)
    through REST, so that the landing page is tested on its own."""
    r = _request_of(p, SLUG)
    if r["state"] == "evaluated":
        _api(p, "POST", f"requests/{r['id']}/reviews", REVIEWER,
             json={"decision": "approved", "comment": "ok"})  # fmt: skip
    if _request_of(p, SLUG)["state"] == "approved":
        r = _api(p, "POST", f"requests/{r['id']}/transitions", "admin",
                 json={"to": "integrated", "upstream": upstream, "allow_private": True})  # fmt: skip
        assert r.status_code == 200, r.text
    _wait_state(p, SLUG, "integrated", timeout=5)
    wait_routed(p.url, SLUG)


def test_visitor_lands_on_welcome(multiuser_platform, people, upstream, page, shots):
    p = multiuser_platform
    _ensure_integrated(p, upstream)
    _integrate_hidden(p, upstream)
    titles = _lake_titles(p)
    assert titles, "the sample data has collections"
    page.context.clear_cookies()
    page.goto(p.url)
    page.wait_for_url(f"**/{REG}welcome")
    card = page.locator(f'.th-card[data-slug="{SLUG}"]')
    # Health checks run every 2 s here; the lake's list is refreshed in the background.
    deadline = time.monotonic() + 90
    while True:
        status = card.first.locator(".th-status").get_attribute("data-status")
        shown = page.locator("#th-lake li").all_inner_texts()
        if status == "up" and all(any(t in s for s in shown) for t in titles):
            break
        assert time.monotonic() < deadline, (status, shown, titles)
        time.sleep(2)
        page.reload()
    assert "ms" in card.first.locator(".th-status").inner_text()
    assert card.first.locator(".th-card-title").inner_text() == "Wave forecasts"
    assert card.count() == 2  # filed under ocean and extremes
    assert page.locator(f'[data-slug="{HIDDEN}"]').count() == 0
    assert "Hidden reef monitor" not in page.content()
    assert page.locator("#th-login-main").is_visible()
    page.screenshot(path=str(shots / "welcome-visitor.png"), full_page=True)
    # The entry's link goes through the platform's sign-on: a visitor is asked to log in.
    page.click(f'.th-card[data-slug="{SLUG}"] .th-card-title >> nth=0')
    try:
        page.wait_for_url("**/hub/login**", timeout=30_000)
    except Exception:
        raise AssertionError(f"the entry's link ended at {page.url}, not the hub's login") from None
    # The catalogue, from the welcome page's navigation.
    page.goto(p.url + REG + "welcome")
    page.click("#th-nav-records")
    page.wait_for_selector(f'.th-card[data-slug="{SLUG}"]')
    page.screenshot(path=str(shots / "catalogue-visitor.png"), full_page=True)
    assert not page.js_errors, page.js_errors


def test_login_button_goes_through_the_hub_and_back(multiuser_platform, people, page, shots):
    p = multiuser_platform
    page.context.clear_cookies()
    page.goto(p.url + REG + "welcome")
    page.click("#th-login-main")
    page.wait_for_url("**/hub/login**")
    page.fill("input[name=username]", MEMBER)
    page.fill("input[name=password]", people[MEMBER])
    page.click("[type=submit]")
    page.wait_for_url(f"**/{REG}welcome")
    assert page.locator("#th-user").inner_text() == MEMBER
    hidden = page.locator(f'.th-card[data-slug="{HIDDEN}"]')
    assert hidden.count() == 1
    assert hidden.locator(".th-note").inner_text() == f"for project {PROJECT}"
    assert page.locator(f'#th-projects [data-project="{PROJECT}"]').is_visible()
    assert page.locator('a[href="/hub/home"]').first.is_visible()
    page.screenshot(path=str(shots / "welcome-member.png"), full_page=True)
    # The hub's own pages link to the catalogue.
    page.goto(p.url + "hub/home")
    page.click("#twinhub-nav-services")
    page.wait_for_url(f"**/{REG}welcome")
    assert not page.js_errors, page.js_errors


def test_changes_requested_update_resubmit_and_retire(multiuser_platform, people, page, shots):
    """A reviewer asks for changes on the page; the provider sees the comment, updates the
    entry through the form and resubmits; later withdraws it (retire, before approval)."""
    p = multiuser_platform
    entry = {
        "name": "Tide tables",
        "slug": TIDES,
        "provider": "Blue Sea Institute",
        "description": "Tide tables.",
        "thematic_areas": ["ocean"],
        "kind": "dataset",
        "visibility": "users",
    }
    r = _api(p, "POST", "requests", PROVIDER, json={"entry": entry, "activity": "monthly"})
    assert r.status_code == 201, r.text
    _wait_state(p, TIDES, "evaluated")

    _switch(page, p, REVIEWER, people[REVIEWER])
    card = page.locator(f'#th-review .th-request[data-slug="{TIDES}"]')
    card.locator("textarea").fill("Please say which ports the tables cover.")
    card.locator('[data-action="changes"]').click()
    page.wait_for_selector(f'#th-review .th-request[data-slug="{TIDES}"]', state="detached")
    assert _request_of(p, TIDES)["state"] == "changes-requested"

    _switch(page, p, PROVIDER, people[PROVIDER])
    mine = page.locator(
        f'#th-mine .th-request[data-slug="{TIDES}"][data-state="changes-requested"]'
    )
    mine.wait_for()
    assert mine.locator(".th-thread .th-comment", has_text="which ports").is_visible()
    mine.locator('[data-action="edit"]').click()
    assert page.locator('[name="slug"]').input_value() == TIDES
    assert page.locator('[name="slug"]').get_attribute("readonly") is not None
    assert page.locator('[name="visibility"]').input_value() == "users"
    page.fill('[name="description"]', "Tide tables for Brest, Cadiz and Bergen.")
    page.screenshot(path=str(shots / "onboarding-provider-update.png"), full_page=True)
    page.click("#th-submit")
    page.wait_for_selector(
        f'#th-mine .th-request[data-slug="{TIDES}"][data-state="evaluated"]', timeout=60_000
    )
    assert page.locator("#th-submit").inner_text() == "Submit request"  # the form is new again
    r = _request_of(p, TIDES)
    assert r["version"] == 2 and r["entry"]["description"].startswith("Tide tables for Brest")

    card = page.locator(f'#th-mine .th-request[data-slug="{TIDES}"]')
    card.locator('[data-action="retire"]').click()
    page.wait_for_selector(f'#th-mine .th-request[data-slug="{TIDES}"][data-state="retired"]')
    retired = page.locator(f'#th-mine .th-request[data-slug="{TIDES}"]')
    assert retired.locator('[data-action="retire"]').count() == 0
    page.screenshot(path=str(shots / "onboarding-provider-retired.png"), full_page=True)
    assert not page.js_errors, page.js_errors

"""The service desk on the real multi-user platform: its real hub, proxy and desk process.

Two users, a member of the support group and an admin: each user sees only their own
tickets; staff see every ticket and answer; notifications land in ``<state>/mail/new`` (the
embedded Maildir); an attachment over the cap is refused with 413 and nothing is stored;
the tickets-per-hour cap answers 429; the page may not be framed; a browser session (the
hub's sign-on cookie) writes only with the page's XSRF value; the hub's support link points
at the desk.
"""

from __future__ import annotations

import mailbox
import re
import time

import pytest
import requests

from tests.helpers.platform import Platform

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

ALICE, BOB, SAM, CARL = "desk-alice", "desk-bob", "desk-sam", "desk-carl"
#: The platform's first admin (the CLI cannot make admins).
ROOT = "admin"
#: TwinhubDesk.max_attachment_bytes's default.
CAP = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def desk(multiuser_platform: Platform) -> dict:
    p = multiuser_platform
    passwords = {}
    for name, groups in ((ALICE, ()), (BOB, ()), (SAM, ("support",))):
        if p.api("GET", f"/users/{name}", user="admin").status_code == 404:
            passwords[name] = p.add_user(name, groups=groups)
    return {"p": p, "url": p.url + "services/desk/", "passwords": passwords}


def call(desk: dict, method: str, path: str, user: str | None, **kw) -> requests.Response:
    headers = kw.pop("headers", {})
    if user:
        headers["Authorization"] = f"token {desk['p'].token(user)}"
    return requests.request(method, desk["url"] + path, headers=headers, timeout=60, **kw)


def _recipients(m) -> list[str]:
    """A mail's To addresses (one notice goes to every support member at once)."""
    return [a.strip() for a in (m["To"] or "").split(",")]


def mails_to(p: Platform, address: str, subject_part: str, timeout: float = 20) -> list:
    """Mails in the platform's Maildir to ``address`` whose subject has ``subject_part``
    (delivery runs after the answer: waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        box = mailbox.Maildir(str(p.state / "mail"), create=False)
        try:
            found = [
                m for m in box if address in _recipients(m) and subject_part in (m["Subject"] or "")
            ]
        except FileNotFoundError:  # no mail yet: the sub-folders come with the first
            found = []
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_users_see_their_own_staff_see_all_and_answer(desk):
    p = desk["p"]
    r = call(desk, "POST", "api/v1/tickets", ALICE,
             json={"subject": "Kernel dies", "body": "Every time I load the cube."})  # fmt: skip
    assert r.status_code == 201, r.text
    mine = r.json()
    assert mine["state"] == "open" and mine["owner"] == ALICE
    r = call(desk, "POST", "api/v1/tickets", BOB, json={"subject": "Quota", "body": "More?"})
    assert r.status_code == 201
    bobs = r.json()

    def ids(user: str) -> set[int]:
        return {t["id"] for t in call(desk, "GET", "api/v1/tickets", user).json()["tickets"]}

    assert mine["id"] in ids(ALICE) and bobs["id"] not in ids(ALICE)
    assert bobs["id"] in ids(BOB) and mine["id"] not in ids(BOB)
    assert {mine["id"], bobs["id"]} <= ids(SAM) and {mine["id"], bobs["id"]} <= ids(ROOT)
    r = call(desk, "GET", f"api/v1/tickets/{mine['id']}", BOB)
    assert r.status_code == 404 and r.json() == {
        "code": 404,
        "description": f"no ticket {mine['id']}",
    }
    r = call(desk, "POST", f"api/v1/tickets/{mine['id']}/messages", BOB, json={"body": "hi"})
    assert r.status_code == 404

    # The support group hears of the new ticket.
    assert mails_to(p, f"{SAM}@localhost", f"[desk #{mine['id']}] New ticket")

    r = call(desk, "POST", f"api/v1/tickets/{mine['id']}/messages", SAM,
             json={"body": "Use a smaller chunk size."})  # fmt: skip
    assert r.status_code == 201 and r.json()["ticket"]["state"] == "answered"
    assert r.json()["message"]["staff"] is True
    (answer,) = mails_to(p, f"{ALICE}@localhost", f"[desk #{mine['id']}] Answered")
    assert f"services/desk/?ticket={mine['id']}" in answer.get_payload()

    # The owner writes again after the answer: open again, and the support group hears of it.
    r = call(desk, "POST", f"api/v1/tickets/{mine['id']}/messages", ALICE,
             json={"body": "Smaller chunks fail too."})  # fmt: skip
    assert r.status_code == 201 and r.json()["ticket"]["state"] == "open"
    (reply,) = mails_to(p, f"{SAM}@localhost", f"[desk #{mine['id']}] Owner replied")
    assert "> Smaller chunks fail too." in reply.get_payload()

    r = call(desk, "POST", f"api/v1/tickets/{mine['id']}/transitions", SAM, json={"to": "closed"})
    assert r.status_code == 200 and r.json()["state"] == "closed"
    assert mails_to(p, f"{ALICE}@localhost", f"[desk #{mine['id']}] Now closed")
    r = call(desk, "POST", f"api/v1/tickets/{mine['id']}/messages", ALICE, json={"body": "x"})
    assert r.status_code == 409 and "closed" in r.json()["description"]
    r = call(desk, "POST", f"api/v1/tickets/{mine['id']}/transitions", ALICE, json={"to": "open"})
    assert r.status_code == 200 and r.json()["state"] == "open"
    got = call(desk, "GET", f"api/v1/tickets/{mine['id']}", ALICE).json()
    assert [(m["author"], m["staff"]) for m in got["messages"]] == [
        (ALICE, False),
        (SAM, True),
        (ALICE, False),
    ]
    # Every timestamp with its UTC offset (the embedded SQLite hands them back naive).
    assert all(m["at"].endswith("+00:00") for m in got["messages"]), got["messages"]
    assert got["created"].endswith("+00:00") and got["updated"].endswith("+00:00")


def test_attachment_cap_and_download(desk):
    r = call(desk, "POST", "api/v1/tickets", ALICE, json={"subject": "Files", "body": "see"})
    tid = r.json()["id"]
    base = f"api/v1/tickets/{tid}/attachments"
    r = call(desk, "POST", f"{base}?filename=huge.bin", ALICE, data=b"\0" * (CAP + 1),
             headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert r.status_code == 413 and "5 MiB" in r.json()["description"], r.text
    assert call(desk, "GET", f"api/v1/tickets/{tid}", ALICE).json()["attachments"] == []

    r = call(desk, "POST", f"{base}?filename=log.txt", ALICE, data=b"Traceback...",
             headers={"Content-Type": "text/plain"})  # fmt: skip
    assert r.status_code == 201, r.text
    aid = r.json()["id"]
    r = call(desk, "GET", f"{base}/{aid}", SAM)
    assert r.status_code == 200 and r.content == b"Traceback..."
    assert r.headers["content-disposition"].startswith("attachment;")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "sandbox"
    assert call(desk, "GET", f"{base}/{aid}", BOB).status_code == 404


def test_authentication_and_metrics(desk):
    r = requests.get(desk["url"] + "api/v1/tickets", timeout=30)
    assert r.status_code == 401
    assert requests.get(desk["url"] + "health", timeout=30).status_code == 200
    r = call(desk, "GET", "", ALICE)  # JSON by default
    assert r.status_code == 200 and "tickets" in r.json() and r.json()["staff"] is False
    assert call(desk, "GET", "", SAM).json()["staff"] is True
    r = call(desk, "GET", "metrics", ALICE)
    assert r.status_code == 403 and "read:metrics" in r.json()["description"]
    r = call(desk, "GET", "metrics", ROOT)
    assert r.status_code == 200
    assert "# HELP twinhub_desk_tickets " in r.text and "# HELP twinhub_desk_mails_total " in r.text
    assert re.search(r'twinhub_desk_tickets\{state="open"\} [1-9]', r.text)
    assert 'twinhub_desk_mails_total{outcome="sent"}' in r.text
    assert 'twinhub_desk_mails_total{outcome="failed"}' not in r.text


def test_tickets_per_hour_cap_and_unframed_page(desk):
    """TwinhubDesk.max_tickets_per_hour's default (10) on the real platform: the 11th ticket
    within the hour is refused with 429 and Retry-After, and nothing is stored."""
    p = desk["p"]
    if p.api("GET", f"/users/{CARL}", user="admin").status_code != 404:
        pytest.skip(f"{CARL} existed before this module: its tickets are unknown")
    p.add_user(CARL)
    for i in range(10):
        r = call(desk, "POST", "api/v1/tickets", CARL, json={"subject": f"n{i}", "body": "b"})
        assert r.status_code == 201, r.text  # 10 open: within the open cap (20)
    r = call(desk, "POST", "api/v1/tickets", CARL, json={"subject": "n10", "body": "b"})
    assert r.status_code == 429, r.text
    assert "at most 10 per user and hour" in r.json()["description"]
    assert 0 < int(r.headers["Retry-After"]) <= 3600
    assert len(call(desk, "GET", "api/v1/tickets", CARL).json()["tickets"]) == 10

    page = call(desk, "GET", "?f=html", CARL)
    assert page.status_code == 200 and 'id="new-ticket"' in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"


def test_browser_session_writes_need_the_xsrf_value(desk):
    p = desk["p"]
    if BOB not in desk["passwords"]:
        pytest.skip(f"{BOB} existed before this module: its password is unknown")
    s = p.login_session(BOB, desk["passwords"][BOB])
    # The hub's sign-on: the desk's OAuth round trip sets its cookie.
    page = s.get(desk["url"], headers={"Accept": "text/html"}, timeout=60)
    assert page.status_code == 200 and 'id="new-ticket"' in page.text
    xsrf = re.search(r'<meta name="twinhub-xsrf" content="([^"]+)">', page.text).group(1)
    before = len(call(desk, "GET", "api/v1/tickets", BOB).json()["tickets"])
    doc = {"subject": "From the page", "body": "cookie write"}
    r = s.post(desk["url"] + "api/v1/tickets", json=doc, timeout=60)
    assert r.status_code == 403, r.text
    r = s.post(desk["url"] + "api/v1/tickets", json=doc, timeout=60,
               headers={"X-Twinhub-XSRF": "0" * len(xsrf)})  # fmt: skip
    assert r.status_code == 403
    assert len(call(desk, "GET", "api/v1/tickets", BOB).json()["tickets"]) == before
    r = s.post(desk["url"] + "api/v1/tickets", json=doc, timeout=60,
               headers={"X-Twinhub-XSRF": xsrf})  # fmt: skip
    assert r.status_code == 201, r.text


def test_admins_are_staff_by_token_on_the_page_only_in_the_group(desk):
    """A hub admin is staff through the API with an admin token; on the page (the sign-on
    cookie's token has no admin scope) only as a member of the support group."""
    p = desk["p"]
    ada, max_ = "desk-ada", "desk-max"
    for name in (ada, max_):
        if p.api("GET", f"/users/{name}", user="admin").status_code != 404:
            pytest.skip(f"{name} existed before this module: its password is unknown")
    passwords = {
        ada: p.add_user(ada, admin=True),
        max_: p.add_user(max_, admin=True, groups=("support",)),
    }
    r = call(desk, "POST", "api/v1/tickets", ALICE, json={"subject": "Admins?", "body": "b"})
    tid = r.json()["id"]

    assert call(desk, "GET", "", ada).json()["staff"] is True  # the admin's own API token

    def page_json(name: str) -> tuple[dict, requests.Session]:
        s = p.login_session(name, passwords[name])
        # The page in a browser: the hub's sign-on (OAuth round trip) sets the desk's cookie.
        page = s.get(desk["url"], headers={"Accept": "text/html"}, timeout=60)
        assert page.status_code == 200, page.text[:300]
        r = s.get(desk["url"], headers={"Accept": "application/json"}, timeout=60)
        assert r.status_code == 200, r.text[:300]
        return r.json(), s

    doc, s = page_json(ada)
    assert doc["user"] == ada and doc["staff"] is False and doc["tickets"] == []
    assert s.get(desk["url"] + f"api/v1/tickets/{tid}", timeout=60).status_code == 404
    doc, _ = page_json(max_)
    assert doc["user"] == max_ and doc["staff"] is True and tid in {t["id"] for t in doc["tickets"]}


def test_hub_support_link_points_at_the_desk(desk):
    p = desk["p"]
    if ALICE not in desk["passwords"]:
        pytest.skip(f"{ALICE} existed before this module: its password is unknown")
    s = p.login_session(ALICE, desk["passwords"][ALICE])
    r = s.get(p.url + "hub/help/support", timeout=60)
    assert r.status_code == 200 and 'href="/services/desk/"' in r.text
    services = p.api("GET", "/services", user="admin").json()
    assert "desk" in services

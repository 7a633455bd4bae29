"""The service desk on the real multi-user platform: its real hub, proxy and desk process.

Two users, a member of the support group and an admin: each user sees only their own
tickets; staff see every ticket and answer; notifications land in ``<state>/mail/new`` (the
embedded Maildir); an attachment over the cap is refused with 413 and nothing is stored; a
browser session (the hub's sign-on cookie) writes only with the page's XSRF value; the hub's
support link points at the desk.
"""

from __future__ import annotations

import mailbox
import re
import time

import pytest
import requests

from tests.helpers.platform import Platform

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

ALICE, BOB, SAM = "desk-alice", "desk-bob", "desk-sam"
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


def mails_to(p: Platform, address: str, subject_part: str, timeout: float = 20) -> list:
    """Mails in the platform's Maildir to ``address`` whose subject has ``subject_part``
    (delivery runs after the answer: waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        box = mailbox.Maildir(str(p.state / "mail"), create=False)
        try:
            found = [m for m in box if m["To"] == address and subject_part in (m["Subject"] or "")]
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

    r = call(desk, "POST", f"api/v1/tickets/{mine['id']}/transitions", SAM, json={"to": "closed"})
    assert r.status_code == 200 and r.json()["state"] == "closed"
    assert mails_to(p, f"{ALICE}@localhost", f"[desk #{mine['id']}] Now closed")
    r = call(desk, "POST", f"api/v1/tickets/{mine['id']}/messages", ALICE, json={"body": "x"})
    assert r.status_code == 409 and "closed" in r.json()["description"]
    r = call(desk, "POST", f"api/v1/tickets/{mine['id']}/transitions", ALICE, json={"to": "open"})
    assert r.status_code == 200 and r.json()["state"] == "open"
    got = call(desk, "GET", f"api/v1/tickets/{mine['id']}", ALICE).json()
    assert [(m["author"], m["staff"]) for m in got["messages"]] == [(ALICE, False), (SAM, True)]


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


def test_hub_support_link_points_at_the_desk(desk):
    p = desk["p"]
    if ALICE not in desk["passwords"]:
        pytest.skip(f"{ALICE} existed before this module: its password is unknown")
    s = p.login_session(ALICE, desk["passwords"][ALICE])
    r = s.get(p.url + "hub/help/support", timeout=60)
    assert r.status_code == 200 and 'href="/services/desk/"' in r.text
    services = p.api("GET", "/services", user="admin").json()
    assert "desk" in services

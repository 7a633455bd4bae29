"""The desk's REST API and page, in process on a real database (SQLite and PostgreSQL),
the hub faked (see conftest.py): who sees what, the state machine over HTTP, caps, the
attachment download's headers, mails in the Maildir, metrics, the page's escaping."""

from __future__ import annotations

import mailbox

import pytest

from twinhub import db
from twinhub.db.models import DeskAttachment, DeskTicket, RegistryRequest

pytestmark = pytest.mark.anyio


async def open_ticket(desk, user="alice", **kw) -> dict:
    r = await desk.call("POST", "api/v1/tickets", user, json={"subject": "Help", "body": "b", **kw})
    assert r.status_code == 201, r.text
    return r.json()


def mails(desk) -> list:
    d = desk.desk.rt.path("mail")
    return list(mailbox.Maildir(str(d), create=False)) if d.exists() else []


def count(url: str, model) -> int:
    with db.session(url) as s:
        return s.query(model).count()


async def test_users_see_their_own_staff_see_all(desk):
    a = await open_ticket(desk, "alice")
    b = await open_ticket(desk, "bob")
    mine = (await desk.call("GET", "api/v1/tickets", "alice")).json()["tickets"]
    assert [t["id"] for t in mine] == [a["id"]]
    r = await desk.call("GET", f"api/v1/tickets/{b['id']}", "alice")
    assert r.status_code == 404 and r.json()["code"] == 404
    for staff in ("sam", "root"):
        every = (await desk.call("GET", "api/v1/tickets", staff)).json()["tickets"]
        assert {t["id"] for t in every} == {a["id"], b["id"]}
        assert (await desk.call("GET", f"api/v1/tickets/{b['id']}", staff)).status_code == 200
    r = await desk.call("GET", "api/v1/tickets?state=bogus", "sam")
    assert r.status_code == 400 and "unknown state" in r.json()["description"]
    r = await desk.call("GET", "api/v1/tickets?owner=bob", "sam")
    assert [t["id"] for t in r.json()["tickets"]] == [b["id"]]
    r = await desk.call("GET", "api/v1/tickets?owner=bob", "alice")
    assert r.status_code == 403 and "only support staff" in r.json()["description"]


async def test_answer_close_reopen_with_notifications(desk):
    t = await open_ticket(desk, "alice", email="alice@example.org")
    await desk.desk.mailer.drain()
    (notice,) = mails(desk)  # the new ticket, to the support group's member
    assert notice["To"] == "sam@localhost" and f"#{t['id']}" in notice["Subject"]
    assert "> b\n" in notice.get_payload()  # the ticket's body, quoted

    r = await desk.call("POST", f"api/v1/tickets/{t['id']}/messages", "sam", json={"body": "Try X"})
    assert r.status_code == 201 and r.json()["ticket"]["state"] == "answered"
    r = await desk.call("POST", f"api/v1/tickets/{t['id']}/messages", "bob", json={"body": "me?"})
    assert r.status_code == 404
    r = await desk.call(
        "POST", f"api/v1/tickets/{t['id']}/transitions", "sam", json={"to": "closed"}
    )
    assert r.status_code == 200 and r.json()["state"] == "closed"
    r = await desk.call("POST", f"api/v1/tickets/{t['id']}/messages", "alice", json={"body": "x"})
    assert r.status_code == 409 and "closed" in r.json()["description"]
    r = await desk.call(
        "POST", f"api/v1/tickets/{t['id']}/transitions", "alice", json={"to": "closed"}
    )
    assert r.status_code == 409 and "'closed'" in r.json()["description"]
    for bad in ({"to": "answered"}, {"to": "nope"}, {}):
        r = await desk.call("POST", f"api/v1/tickets/{t['id']}/transitions", "alice", json=bad)
        assert r.status_code == 400, bad
    r = await desk.call(
        "POST", f"api/v1/tickets/{t['id']}/transitions", "alice", json={"to": "open"}
    )
    assert r.status_code == 200 and r.json()["state"] == "open"
    await desk.desk.mailer.drain()
    to_owner = [m for m in mails(desk) if m["To"] == "alice@example.org"]
    assert any("> Try X" in m.get_payload() for m in to_owner)  # the answer, quoted
    # The answer and the staff's closing; not the owner's own reopening.
    assert sorted(m["Subject"].split("]")[1].split(":")[0].strip() for m in to_owner) == [
        "Answered",
        "Now closed",
    ]


async def test_bad_input_stores_nothing(desk):
    n = count(desk.desk.db_url, DeskTicket)
    cases = [
        ({"body": "b"}, 400, "'subject' is required"),
        ({"subject": "a\nb", "body": "b"}, 400, "one line"),
        ({"subject": "s", "body": "x" * 501}, 400, "at most 500"),
        ({"subject": "s", "body": "b", "email": "not-mail"}, 400, "not a mail address"),
        ({"subject": "s", "body": "b", "service": "nope"}, 400, "no service 'nope'"),
        ({"subject": "s", "body": "b", "project": "other"}, 400, "not one of your projects"),
        ({"subject": 3, "body": "b"}, 400, "must be a string"),
    ]
    for doc, status, words in cases:
        r = await desk.call("POST", "api/v1/tickets", "alice", json=doc)
        assert r.status_code == status and words in r.json()["description"], (doc, r.text)
    r = await desk.call("POST", "api/v1/tickets", "alice", content=b"[1]")
    assert r.status_code == 400 and "JSON object" in r.json()["description"]
    assert count(desk.desk.db_url, DeskTicket) == n


async def test_service_and_project_links(desk):
    with db.session(desk.desk.db_url) as s:
        s.add(RegistryRequest(id="r1", slug="ocean", provider="p", state="integrated",
                              entry={"name": "Ocean", "visibility": "users"}))  # fmt: skip
        s.add(RegistryRequest(id="r2", slug="secret", provider="p", state="integrated",
                              entry={"name": "Secret", "visibility": "project:other"}))  # fmt: skip
    t = await open_ticket(desk, "alice", service="ocean", project="lab")
    assert (t["service"], t["project"]) == ("ocean", "lab")
    r = await desk.call("POST", "api/v1/tickets", "alice",
                        json={"subject": "s", "body": "b", "service": "secret"})  # fmt: skip
    assert r.status_code == 400  # not visible to alice: as if it did not exist
    r = await desk.call("GET", "", "alice")  # the landing's JSON: what the form offers
    doc = r.json()
    assert r.headers["content-type"].startswith("application/json")
    assert [e["slug"] for e in doc["services"]] == ["ocean"] and doc["projects"] == ["lab"]
    assert doc["staff"] is False and [x["id"] for x in doc["tickets"]] == [t["id"]]


async def test_attachments_caps_and_download_headers(desk):
    t = await open_ticket(desk, "alice")
    base = f"api/v1/tickets/{t['id']}/attachments"
    body = b"[" * 100 + b"<html><script>alert(1)</script>"  # not JSON, not rendered
    r = await desk.call("POST", f"{base}?filename=../../etc/x%22.html", "alice", content=body,
                        headers={"Content-Type": "text/html; charset=utf-8"})  # fmt: skip
    assert r.status_code == 201, r.text
    a = r.json()
    assert (a["filename"], a["content_type"], a["size"]) == ("x.html", "text/html", len(body))
    r = await desk.call("POST", f"{base}?filename=big.bin", "alice", content=b"x" * 1025)
    assert r.status_code == 413 and "1024 bytes" in r.json()["description"]
    r = await desk.call("POST", f"{base}?filename=weird", "alice", content=b"1",
                        headers={"Content-Type": "evil\r/x"})  # fmt: skip
    assert r.status_code == 201 and r.json()["content_type"] == "application/octet-stream"
    r = await desk.call("POST", f"{base}?filename=third", "alice", content=b"1")
    assert r.status_code == 409 and "at most 2" in r.json()["description"]
    r = await desk.call("POST", f"{base}?filename=", "alice", content=b"1")
    assert r.status_code == 400
    assert count(desk.desk.db_url, DeskAttachment) == 2

    r = await desk.call("GET", f"{base}/{a['id']}", "alice")
    assert r.status_code == 200 and r.content == body
    assert r.headers["content-disposition"].startswith('attachment; filename="x.html"')
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "sandbox"
    assert (await desk.call("GET", f"{base}/{a['id']}", "bob")).status_code == 404
    assert (await desk.call("GET", f"{base}/{a['id']}", "sam")).status_code == 200
    r = await desk.call("POST", f"{base}?filename=y", "bob", content=b"1")
    assert r.status_code == 404
    listed = (await desk.call("GET", f"api/v1/tickets/{t['id']}", "alice")).json()
    assert [x["filename"] for x in listed["attachments"]] == ["x.html", "weird"]


async def test_metrics_need_read_metrics(desk):
    await open_ticket(desk, "alice")
    r = await desk.call("GET", "metrics", "alice")
    assert r.status_code == 403 and "read:metrics" in r.json()["description"]
    r = await desk.call("GET", "metrics", "root")
    assert r.status_code == 200
    assert "# HELP twinhub_desk_tickets Support tickets by state" in r.text
    assert 'twinhub_desk_tickets{state="open"} 1.0' in r.text
    assert "# HELP twinhub_desk_mails" in r.text


async def test_page_renders_escaped_with_xsrf_and_csp(desk):
    t = await open_ticket(desk, "alice", subject="<script>alert(1)</script>")
    r = await desk.call("GET", "?f=html", "alice")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text and "<script>alert" not in r.text
    assert '<meta name="twinhub-xsrf" content="xsrf-of-alice">' in r.text
    assert 'id="new-ticket"' in r.text and '<option value="lab">lab</option>' in r.text
    r = await desk.call("GET", f"?ticket={t['id']}", "alice", headers={"Accept": "text/html"})
    assert r.status_code == 200 and 'id="reply"' in r.text
    r = await desk.call("GET", f"?ticket={t['id']}", "bob", headers={"Accept": "text/html"})
    assert r.status_code == 404 and "no ticket" in r.text
    r = await desk.call("GET", "?f=html&state=open", "sam")
    assert "All tickets" in r.text and 'class="filters"' in r.text and "alice" in r.text


async def test_pages_are_never_framed(desk):
    """Not even by a page of the platform's own origin (users' servers live there)."""
    for path in ("?f=html", "?f=html&ticket=999"):
        r = await desk.call("GET", path, "alice")
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
        assert r.headers["x-frame-options"] == "DENY", path


CAPPED = {"max_attachment_bytes": 1024, "max_attachments": 5, "max_body_chars": 500,
          "max_open_tickets": 2, "max_tickets_per_hour": 3,
          "max_user_attachment_bytes": 1500}  # fmt: skip


@pytest.mark.parametrize("desk_settings", [CAPPED])
async def test_per_user_ticket_caps_spare_staff(desk):
    a = await open_ticket(desk, "alice")
    await open_ticket(desk, "alice")
    r = await desk.call("POST", "api/v1/tickets", "alice", json={"subject": "s", "body": "b"})
    assert r.status_code == 429 and r.json() == {
        "code": 429,
        "description": "'alice' has 2 open or answered tickets (at most 2 per user): close "
        "one that is settled first",
    }
    r = await desk.call("POST", f"api/v1/tickets/{a['id']}/transitions", "alice",
                        json={"to": "closed"})  # fmt: skip
    assert r.status_code == 200
    b = await open_ticket(desk, "alice")  # room again; the third within the hour
    r = await desk.call("POST", f"api/v1/tickets/{b['id']}/transitions", "alice",
                        json={"to": "closed"})  # fmt: skip
    r = await desk.call("POST", f"api/v1/tickets/{a['id']}/transitions", "alice",
                        json={"to": "open"})  # fmt: skip
    assert r.status_code == 200  # reopening within the cap
    r = await desk.call("POST", "api/v1/tickets", "alice", json={"subject": "s", "body": "b"})
    assert r.status_code == 429 and "at most 2 per user" in r.json()["description"]
    r = await desk.call("POST", f"api/v1/tickets/{b['id']}/transitions", "alice",
                        json={"to": "open"})  # fmt: skip
    assert r.status_code == 429 and "at most 2 per user" in r.json()["description"]
    r = await desk.call("POST", f"api/v1/tickets/{a['id']}/transitions", "alice",
                        json={"to": "closed"})  # fmt: skip
    r = await desk.call("POST", "api/v1/tickets", "alice", json={"subject": "s", "body": "b"})
    assert r.status_code == 429 and "at most 3 per user and hour" in r.json()["description"]
    assert 3500 <= int(r.headers["retry-after"]) <= 3600
    assert len((await desk.call("GET", "api/v1/tickets", "alice")).json()["tickets"]) == 3
    # Staff (the support group, admins) are exempt; other users have their own counts.
    for who in ("sam", "root"):
        for _ in range(4):
            await open_ticket(desk, who)
    await open_ticket(desk, "bob")


@pytest.mark.parametrize("desk_settings", [{"max_messages": 3, "max_messages_per_hour": 4}])
async def test_message_caps_per_ticket_and_per_user_hour(desk):
    t = await open_ticket(desk, "alice")  # message 1 (its body)
    url = f"api/v1/tickets/{t['id']}/messages"
    for who in ("sam", "alice"):
        r = await desk.call("POST", url, who, json={"body": "more"})
        assert r.status_code == 201, r.text
    r = await desk.call("POST", url, "sam", json={"body": "one too many"})  # staff too
    assert r.status_code == 429 and r.json() == {
        "code": 429,
        "description": f"ticket {t['id']} holds 3 messages (at most 3 per ticket): open a new "
        "ticket that refers to this one",
    }
    t2 = await open_ticket(desk, "alice")  # alice's 3rd message within the hour
    url2 = f"api/v1/tickets/{t2['id']}/messages"
    r = await desk.call("POST", url2, "alice", json={"body": "4th"})
    assert r.status_code == 201, r.text
    r = await desk.call("POST", url2, "alice", json={"body": "5th"})
    assert r.status_code == 429 and "at most 4 per user and hour" in r.json()["description"]
    assert 3500 <= int(r.headers["retry-after"]) <= 3600
    r = await desk.call("POST", url2, "sam", json={"body": "staff: exempt from the rate"})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("desk_settings", [CAPPED])
async def test_per_user_attachment_bytes(desk):
    t1, t2 = await open_ticket(desk, "alice"), await open_ticket(desk, "alice")
    r = await desk.call("POST", f"api/v1/tickets/{t1['id']}/attachments?filename=a", "alice",
                        content=b"x" * 1000)  # fmt: skip
    assert r.status_code == 201
    r = await desk.call("POST", f"api/v1/tickets/{t2['id']}/attachments?filename=b", "alice",
                        content=b"x" * 501)  # fmt: skip
    assert r.status_code == 413 and r.json()["description"] == (
        "'alice' already stores 1000 bytes of attachments: 501 bytes more would pass "
        "1500 bytes (the limit per user)"
    )
    assert count(desk.desk.db_url, DeskAttachment) == 1
    r = await desk.call("POST", f"api/v1/tickets/{t2['id']}/attachments?filename=b", "alice",
                        content=b"x" * 500)  # fmt: skip
    assert r.status_code == 201  # exactly the limit
    r = await desk.call("POST", f"api/v1/tickets/{t2['id']}/attachments?filename=c", "sam",
                        content=b"x" * 1000)  # fmt: skip
    assert r.status_code == 201  # staff's files (e.g. to answer): not capped


async def test_static_files_fixed_table(desk):
    r = await desk.call("GET", "static/desk.js", "alice")
    assert r.status_code == 200 and "X-Twinhub-XSRF" in r.text
    assert r.headers["x-content-type-options"] == "nosniff"
    for bad in ("static/../app.py", "static/%2e%2e/app.py", "static/templates/base.html"):
        assert (await desk.call("GET", bad, "alice")).status_code == 404, bad


async def test_services_are_refused(desk):
    r = await desk.call("GET", "api/v1/tickets", "ghost")  # the hub has no such user
    assert r.status_code == 403 and "no longer exists" in r.json()["description"]


async def test_owner_writing_to_an_answered_ticket_mails_the_staff(desk):
    t = await open_ticket(desk, "alice")
    path = f"api/v1/tickets/{t['id']}/messages"
    r = await desk.call("POST", path, "alice", json={"body": "more detail while open"})
    assert r.status_code == 201 and r.json()["ticket"]["state"] == "open"
    r = await desk.call("POST", path, "sam", json={"body": "Try X"})
    assert r.json()["ticket"]["state"] == "answered"
    r = await desk.call("POST", path, "alice", json={"body": "X fails with Y"})
    assert r.status_code == 201 and r.json()["ticket"]["state"] == "open"
    await desk.desk.mailer.drain()
    to_staff = sorted(m["Subject"] for m in mails(desk) if m["To"] == "sam@localhost")
    # The new ticket and the reply after the answer; not the follow-up while still open.
    assert to_staff == [
        f"[desk #{t['id']}] New ticket: Help",
        f"[desk #{t['id']}] Owner replied: Help",
    ]
    (reply,) = [m for m in mails(desk) if "Owner replied" in m["Subject"]]
    assert "> X fails with Y" in reply.get_payload()
    assert f"services/desk/?ticket={t['id']}" in reply.get_payload()


async def test_timestamps_always_carry_the_utc_offset(desk):
    t = await open_ticket(desk, "alice")
    tid = t["id"]
    await desk.call("POST", f"api/v1/tickets/{tid}/messages", "sam", json={"body": "ok"})
    r = await desk.call("POST", f"api/v1/tickets/{tid}/attachments?filename=a.txt", "alice",
                        content=b"x", headers={"Content-Type": "text/plain"})  # fmt: skip
    assert r.status_code == 201
    got = (await desk.call("GET", f"api/v1/tickets/{tid}", "alice")).json()
    listed = (await desk.call("GET", "api/v1/tickets", "alice")).json()["tickets"]
    stamps = [t["created"], got["created"], got["updated"], listed[0]["updated"]]
    stamps += [m["at"] for m in got["messages"]] + [a["at"] for a in got["attachments"]]
    assert len(stamps) == 7 and all(s.endswith("+00:00") for s in stamps), stamps


async def test_admin_without_an_admin_token_is_no_staff(desk):
    """A hub admin whose token has no admin scope (a browser's sign-on token) sees and
    answers only their own tickets; with an admin token (root) they are staff."""
    t = await open_ticket(desk, "alice")
    assert (await desk.call("GET", "", "ada")).json()["staff"] is False
    assert (await desk.call("GET", "api/v1/tickets", "ada")).json()["tickets"] == []
    r = await desk.call("POST", f"api/v1/tickets/{t['id']}/messages", "ada", json={"body": "x"})
    assert r.status_code == 404
    assert (await desk.call("GET", "", "root")).json()["staff"] is True

"""The desk's store on a real database (SQLite and PostgreSQL): tickets, the state machine,
attachments' count cap, the per-user caps, who sees what. A refused call stores nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select

from twinhub import db
from twinhub.db.models import DeskAttachment, DeskMessage, DeskTicket, RegistryRequest
from twinhub.services.desk import store
from twinhub.services.desk.store import DeskError


def new(url: str, owner: str = "alice", **kw) -> dict:
    args = {"subject": "Cannot start a server", "body": "It fails.", "service": None,
            "project": None, "email": ""}  # fmt: skip
    return store.create_ticket(url, owner=owner, **{**args, **kw})


def rows(url: str, model) -> int:
    with db.session(url) as s:
        return s.query(model).count()


def test_new_ticket_is_open_with_its_body_as_first_message(twinhub_db):
    t = new(twinhub_db, service="ocean-viewer", project="lab", email="a@example.org")
    assert t["state"] == "open" and t["owner"] == "alice"
    got = store.get_ticket(twinhub_db, t["id"], viewer="alice")
    assert [(m["author"], m["staff"], m["body"]) for m in got["messages"]] == [
        ("alice", False, "It fails.")
    ]
    assert (got["service"], got["project"], got["email"]) == (
        "ocean-viewer",
        "lab",
        "a@example.org",
    )
    assert got["attachments"] == []


def test_owners_see_their_own_staff_see_all(twinhub_db):
    a = new(twinhub_db, "alice")
    b = new(twinhub_db, "bob", subject="Quota")
    assert [t["id"] for t in store.list_tickets(twinhub_db, owner="alice")] == [a["id"]]
    assert {t["id"] for t in store.list_tickets(twinhub_db, owner=None)} == {a["id"], b["id"]}
    with pytest.raises(DeskError) as e:
        store.get_ticket(twinhub_db, b["id"], viewer="alice")
    assert e.value.status == 404 and "no ticket" in e.value.message
    assert store.get_ticket(twinhub_db, b["id"], viewer=None)["owner"] == "bob"


def test_state_machine(twinhub_db):
    t = new(twinhub_db)
    tid = t["id"]
    m, after, before = store.add_message(twinhub_db, tid, author="sam", staff=True, body="Try X")
    assert (m["staff"], after["state"], before) == (True, "answered", "open")
    m, after, _ = store.add_message(twinhub_db, tid, author="alice", staff=False, body="No luck")
    assert (m["staff"], after["state"]) == (False, "open")
    # Staff writing on their own ticket is the owner writing: it stays open.
    own = new(twinhub_db, "sam")
    m, after, _ = store.add_message(twinhub_db, own["id"], author="sam", staff=True, body="more")
    assert (m["staff"], after["state"]) == (False, "open")

    closed, before = store.transition(twinhub_db, tid, to="closed", actor="alice", staff=False)
    assert (closed["state"], before) == ("closed", "open")
    n = rows(twinhub_db, DeskMessage)
    with pytest.raises(DeskError) as e:
        store.add_message(twinhub_db, tid, author="alice", staff=False, body="again")
    assert e.value.status == 409 and "closed" in e.value.message
    assert rows(twinhub_db, DeskMessage) == n
    with pytest.raises(DeskError) as e:
        store.transition(twinhub_db, tid, to="closed", actor="sam", staff=True)
    assert e.value.status == 409 and "'closed'" in e.value.message
    reopened, _ = store.transition(twinhub_db, tid, to="open", actor="sam", staff=True)
    assert reopened["state"] == "open"
    with pytest.raises(DeskError) as e:
        store.transition(twinhub_db, tid, to="open", actor="alice", staff=False)
    assert e.value.status == 409 and "is 'open'" in e.value.message
    for bad in ("answered", "pending"):
        with pytest.raises(DeskError) as e:
            store.transition(twinhub_db, tid, to=bad, actor="sam", staff=True)
        assert e.value.status == 400
    assert store.get_ticket(twinhub_db, tid, viewer=None)["state"] == "open"


def test_others_cannot_write_to_a_ticket(twinhub_db):
    t = new(twinhub_db, "alice")
    for call in (
        lambda: store.add_message(twinhub_db, t["id"], author="bob", staff=False, body="hi"),
        lambda: store.transition(twinhub_db, t["id"], to="closed", actor="bob", staff=False),
        lambda: store.add_attachment(
            twinhub_db,
            t["id"],
            uploader="bob",
            staff=False,
            filename="x",
            content_type="text/plain",
            data=b"x",
            max_attachments=5,
        ),  # fmt: skip
    ):
        with pytest.raises(DeskError) as e:
            call()
        assert e.value.status == 404
    got = store.get_ticket(twinhub_db, t["id"], viewer="alice")
    assert got["state"] == "open" and len(got["messages"]) == 1 and got["attachments"] == []


def test_attachment_count_cap_and_closed_ticket(twinhub_db):
    t = new(twinhub_db)
    for i in range(2):
        a = store.add_attachment(twinhub_db, t["id"], uploader="alice", staff=False,
                                 filename=f"f{i}.txt", content_type="text/plain",
                                 data=b"x" * (i + 1), max_attachments=2)  # fmt: skip
        assert a["size"] == i + 1 and a["message_id"] is not None
    with pytest.raises(DeskError) as e:
        store.add_attachment(twinhub_db, t["id"], uploader="alice", staff=False, filename="f",
                             content_type="text/plain", data=b"x", max_attachments=2)  # fmt: skip
    assert e.value.status == 409 and "at most 2" in e.value.message
    assert rows(twinhub_db, DeskAttachment) == 2
    got = store.get_attachment(twinhub_db, t["id"], a["id"], viewer="alice")
    assert got["data"] == b"xx" and got["filename"] == "f1.txt"
    with pytest.raises(DeskError):
        store.get_attachment(twinhub_db, t["id"], a["id"], viewer="bob")
    other = new(twinhub_db, "bob")
    with pytest.raises(DeskError) as e:  # an attachment id of another ticket
        store.get_attachment(twinhub_db, other["id"], a["id"], viewer=None)
    assert e.value.status == 404
    store.transition(twinhub_db, t["id"], to="closed", actor="alice", staff=False)
    with pytest.raises(DeskError) as e:
        store.add_attachment(twinhub_db, t["id"], uploader="alice", staff=False, filename="g",
                             content_type="text/plain", data=b"x", max_attachments=9)  # fmt: skip
    assert e.value.status == 409


def test_counts_and_filters(twinhub_db):
    a = new(twinhub_db, "alice", service="svc")
    new(twinhub_db, "bob", project="lab")
    store.add_message(twinhub_db, a["id"], author="sam", staff=True, body="done")
    assert store.counts_by_state(twinhub_db) == {"open": 1, "answered": 1, "closed": 0}
    assert [t["owner"] for t in store.list_tickets(twinhub_db, owner=None, state="answered")] == [
        "alice"
    ]
    assert [t["owner"] for t in store.list_tickets(twinhub_db, owner=None, project="lab")] == [
        "bob"
    ]
    assert [t["owner"] for t in store.list_tickets(twinhub_db, owner=None, service="svc")] == [
        "alice"
    ]
    assert rows(twinhub_db, DeskTicket) == 2


def test_integrated_services_only(twinhub_db):
    with db.session(twinhub_db) as s:
        for i, (slug, state, vis) in enumerate(
            [
                ("ocean", "integrated", "public"),
                ("draft", "submitted", "public"),
                ("lab-tool", "integrated", "project:lab"),
            ]  # fmt: skip
        ):
            s.add(RegistryRequest(id=f"r{i}", slug=slug, provider="p", state=state,
                                  entry={"name": slug.title(), "visibility": vis}))  # fmt: skip
    assert store.integrated_services(twinhub_db) == [
        {"slug": "lab-tool", "name": "Lab-Tool", "visibility": "project:lab"},
        {"slug": "ocean", "name": "Ocean", "visibility": "public"},
    ]


CAPS = store.Caps(open_tickets=3, tickets_per_hour=4, attachment_bytes=10)


def age(url: str, ticket_id: int, hours: float) -> None:
    """Move a ticket's creation back in time (the per-hour window slides past it)."""
    with db.session(url) as s:
        t = s.get(DeskTicket, ticket_id)
        t.created_at = t.created_at - timedelta(hours=hours)


def test_open_tickets_cap_counts_open_and_answered_and_guards_reopening(twinhub_db):
    caps = store.Caps(open_tickets=3, tickets_per_hour=100, attachment_bytes=10)
    a, b, c = (new(twinhub_db, caps=caps) for _ in range(3))
    store.add_message(twinhub_db, b["id"], author="sam", staff=True, body="answer")  # answered
    n = rows(twinhub_db, DeskTicket)
    with pytest.raises(DeskError) as e:
        new(twinhub_db, caps=caps)
    assert e.value.status == 429 and "at most 3" in e.value.message
    assert rows(twinhub_db, DeskTicket) == n and rows(twinhub_db, DeskMessage) == n + 1
    new(twinhub_db, "bob", caps=caps)  # another user's count is their own
    new(twinhub_db, caps=None)  # no caps (staff): passes, 4 live now

    # Closing makes room (2 live); reopening past the cap is refused like a new ticket.
    store.transition(twinhub_db, a["id"], to="closed", actor="alice", staff=False, caps=caps)
    store.transition(twinhub_db, c["id"], to="closed", actor="alice", staff=False, caps=caps)
    store.transition(twinhub_db, a["id"], to="open", actor="alice", staff=False, caps=caps)
    with pytest.raises(DeskError) as e:
        store.transition(twinhub_db, c["id"], to="open", actor="alice", staff=False, caps=caps)
    assert e.value.status == 429 and "at most 3" in e.value.message
    assert store.get_ticket(twinhub_db, c["id"], viewer=None)["state"] == "closed"
    # staff reopen regardless (no caps for them)
    store.transition(twinhub_db, c["id"], to="open", actor="sam", staff=True)
    assert store.get_ticket(twinhub_db, c["id"], viewer=None)["state"] == "open"


def test_tickets_per_hour_cap_with_retry_after(twinhub_db):
    first = new(twinhub_db, caps=CAPS)
    for _ in range(3):
        t = new(twinhub_db, caps=CAPS)
        store.transition(twinhub_db, t["id"], to="closed", actor="alice", staff=False)
    n = rows(twinhub_db, DeskTicket)
    with pytest.raises(DeskError) as e:
        new(twinhub_db, caps=CAPS)  # 2 open, but 4 opened within the hour
    assert e.value.status == 429 and "at most 4 per user and hour" in e.value.message
    assert 3500 <= e.value.retry_after <= 3600
    assert rows(twinhub_db, DeskTicket) == n
    age(twinhub_db, first["id"], 0.75)  # its slot frees in about 15 minutes
    with pytest.raises(DeskError) as e:
        new(twinhub_db, caps=CAPS)
    assert 800 <= e.value.retry_after <= 901
    age(twinhub_db, first["id"], 0.3)  # now over an hour old: out of the window
    assert new(twinhub_db, caps=CAPS)["state"] == "open"


def test_attachment_bytes_cap_per_uploader_over_all_tickets(twinhub_db):
    def attach(ticket_id: int, size: int, uploader: str = "alice", caps=CAPS) -> dict:
        return store.add_attachment(twinhub_db, ticket_id, uploader=uploader,
                                    staff=caps is None, filename="f", content_type="text/plain",
                                    data=b"x" * size, max_attachments=9, caps=caps)  # fmt: skip

    t1, t2 = new(twinhub_db), new(twinhub_db)
    attach(t1["id"], 6)
    attach(t2["id"], 4)  # 10 in all: at the cap, allowed
    with pytest.raises(DeskError) as e:
        attach(t2["id"], 1)  # on another ticket too: the cap is the user's
    assert e.value.status == 413 and "10 bytes (the limit per user)" in e.value.message
    assert rows(twinhub_db, DeskAttachment) == 2
    attach(t1["id"], 5, uploader="sam", caps=None)  # staff: no cap
    bob = new(twinhub_db, "bob")
    attach(bob["id"], 10, uploader="bob")  # bob's bytes are his own


def test_capped_writes_in_parallel_do_not_pass_the_cap(twinhub_db):
    """Eight threads open tickets at once: the count and the write are one step."""
    caps = store.Caps(open_tickets=3, tickets_per_hour=100, attachment_bytes=1)

    def attempt(_i: int) -> int:
        try:
            new(twinhub_db, "carol", caps=caps)
            return 201
        except DeskError as e:
            return e.status

    with ThreadPoolExecutor(8) as pool:
        got = sorted(pool.map(attempt, range(8)))
    assert got == [201] * 3 + [429] * 5
    assert len(store.list_tickets(twinhub_db, owner="carol")) == 3


def test_messages_per_ticket_cap_holds_for_everyone(twinhub_db):
    t = new(twinhub_db)  # its body is message 1
    store.add_message(twinhub_db, t["id"], author="sam", staff=True, body="2", max_messages=3)
    store.add_message(twinhub_db, t["id"], author="alice", staff=False, body="3", max_messages=3)
    n = rows(twinhub_db, DeskMessage)
    for author, staff in (("alice", False), ("sam", True)):
        with pytest.raises(DeskError) as e:
            store.add_message(
                twinhub_db, t["id"], author=author, staff=staff, body="4", max_messages=3
            )
        assert e.value.status == 429 and "at most 3 per ticket" in e.value.message
    assert rows(twinhub_db, DeskMessage) == n
    # another ticket has its own count
    other = new(twinhub_db)
    store.add_message(twinhub_db, other["id"], author="alice", staff=False, body="2",
                      max_messages=3)  # fmt: skip


def test_messages_per_hour_cap_per_user_with_retry_after(twinhub_db):
    caps = store.Caps(open_tickets=9, tickets_per_hour=9, attachment_bytes=1, messages_per_hour=3)
    t = new(twinhub_db)  # its body: alice's first message within the hour
    for body in ("2", "3"):
        store.add_message(twinhub_db, t["id"], author="alice", staff=False, body=body, caps=caps)
    n = rows(twinhub_db, DeskMessage)
    with pytest.raises(DeskError) as e:
        store.add_message(twinhub_db, t["id"], author="alice", staff=False, body="4", caps=caps)
    assert e.value.status == 429 and "at most 3 per user and hour" in e.value.message
    assert 3500 <= e.value.retry_after <= 3600
    assert rows(twinhub_db, DeskMessage) == n
    store.add_message(twinhub_db, t["id"], author="sam", staff=True, body="staff: no cap")
    with db.session(twinhub_db) as s:  # alice's messages age out of the window
        for m in s.scalars(select(DeskMessage).where(DeskMessage.author == "alice")):
            m.at = m.at - timedelta(hours=1, minutes=1)
    store.add_message(twinhub_db, t["id"], author="alice", staff=False, body="5", caps=caps)


def test_parallel_messages_do_not_pass_the_hourly_cap(twinhub_db):
    caps = store.Caps(open_tickets=9, tickets_per_hour=9, attachment_bytes=1, messages_per_hour=4)
    t = new(twinhub_db, "carol")  # message 1

    def attempt(_i: int) -> int:
        try:
            store.add_message(twinhub_db, t["id"], author="carol", staff=False, body="x",
                              caps=caps)  # fmt: skip
            return 201
        except DeskError as e:
            return e.status

    with ThreadPoolExecutor(8) as pool:
        got = sorted(pool.map(attempt, range(8)))
    assert got == [201] * 3 + [429] * 5

"""The desk's tables (``desk_tickets``, ``desk_messages``, ``desk_attachments``): every read
and write, and the ticket state machine.

Synchronous (SQLAlchemy sessions): the app calls these with ``asyncio.to_thread``. Each
write is one transaction, so a refused call (:class:`DeskError`) stores nothing.

States: ``open`` (waiting for staff) -> ``answered`` (waiting for the owner) -> ``closed``.
A message by the owner (re)opens a ticket, one by staff answers it; either may close it,
and either may reopen a closed one. Nobody writes to a closed ticket before reopening it.

Per-user caps (:class:`Caps`: open tickets, tickets per hour, attachment bytes) are checked
in the same transaction as the write they guard, one such write per user at a time, so
parallel requests cannot slip past them together. Staff pass no caps.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import defer

from ... import db
from ...db.models import DeskAttachment, DeskMessage, DeskTicket, utcnow
from ..registry import store as registry_store

STATES = ("open", "answered", "closed")
#: Moves the transitions endpoint makes (``answered`` comes only from a staff message).
TRANSITIONS = {"closed": ("open", "answered"), "open": ("closed",)}
#: States that count towards a user's open tickets (waiting for someone).
LIVE = ("open", "answered")
#: The window of the tickets-per-hour cap.
HOUR = timedelta(hours=1)
MIB = 1024 * 1024

# In-process half of the per-user serialisation (SQLite has no row or advisory locks; the
# desk is one process). PostgreSQL adds a transaction-scoped advisory lock per user.
_capped_writes = threading.Lock()


class DeskError(Exception):
    """A refused call: ``status`` (400, 404, 409, 413, 429...) and a message naming why;
    ``retry_after``: seconds after which the same call may pass (429), else None."""

    def __init__(self, message: str, status: int = 400, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Caps:
    """One user's caps (``TwinhubDesk.max_open_tickets``, ``max_tickets_per_hour``,
    ``max_user_attachment_bytes``)."""

    open_tickets: int
    tickets_per_hour: int
    attachment_bytes: int
    messages_per_hour: int = 120


def _size(n: int) -> str:
    return f"{n} bytes ({n / MIB:.1f} MiB)" if n >= MIB else f"{n} bytes"


def _aware(t: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; they are stored in UTC.
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _lock_key(user: str) -> int:
    digest = hashlib.blake2b(f"twinhub-desk-user:{user}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def _capped(db_url: str, user: str) -> Iterator[Any]:
    """A session in which ``user``'s capped writes take turns (the count and the write it
    guards in one transaction, no other capped write of the user in between)."""
    with _capped_writes, db.session(db_url) as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(user)})
        yield s


def _check_open(s: Any, owner: str, caps: Caps) -> None:
    n = s.scalar(select(func.count()).where(DeskTicket.owner == owner, DeskTicket.state.in_(LIVE)))
    if (n or 0) >= caps.open_tickets:
        raise DeskError(
            f"{owner!r} has {n} open or answered tickets (at most {caps.open_tickets} per "
            "user): close one that is settled first",
            429,
        )


def _hourly(s: Any, who: Any, at: Any, name: str, now: datetime) -> tuple[int, int]:
    """How many rows ``name`` (column ``who``) made within the hour before ``now``
    (column ``at``), and the seconds until the oldest of them leaves that hour."""
    n, oldest = s.execute(
        select(func.count(), func.min(at)).where(who == name, at > now - HOUR)
    ).one()
    if not n:
        return 0, 0
    return n, max(1, math.ceil((_aware(oldest) + HOUR - now).total_seconds()))


def _check_rate(s: Any, owner: str, caps: Caps, now: datetime) -> None:
    n, wait = _hourly(s, DeskTicket.owner, DeskTicket.created_at, owner, now)
    if n >= caps.tickets_per_hour:
        raise DeskError(
            f"{owner!r} opened {n} tickets within the last hour (at most "
            f"{caps.tickets_per_hour} per user and hour): try again in {wait} s, or add to "
            "an open ticket",
            429,
            retry_after=wait,
        )


def _check_messages(s: Any, ticket_id: int, limit: int) -> None:
    # (the ticket row is locked: two writers to one ticket cannot both pass the count)
    n = s.scalar(select(func.count()).where(DeskMessage.ticket_id == ticket_id)) or 0
    if n >= limit:
        raise DeskError(
            f"ticket {ticket_id} holds {n} messages (at most {limit} per ticket): open a new "
            "ticket that refers to this one",
            429,
        )


def _check_message_rate(s: Any, author: str, caps: Caps, now: datetime) -> None:
    n, wait = _hourly(s, DeskMessage.author, DeskMessage.at, author, now)
    if n >= caps.messages_per_hour:
        raise DeskError(
            f"{author!r} wrote {n} messages within the last hour (at most "
            f"{caps.messages_per_hour} per user and hour): try again in {wait} s",
            429,
            retry_after=wait,
        )


def _check_bytes(s: Any, uploader: str, caps: Caps, adding: int) -> None:
    held = s.scalar(
        select(func.coalesce(func.sum(DeskAttachment.size), 0)).where(
            DeskAttachment.uploader == uploader
        )
    )
    if int(held or 0) + adding > caps.attachment_bytes:
        raise DeskError(
            f"{uploader!r} already stores {_size(int(held or 0))} of attachments: "
            f"{_size(adding)} more would pass {_size(caps.attachment_bytes)} (the limit per "
            "user)",
            413,
        )


def _ticket_doc(t: DeskTicket) -> dict[str, Any]:
    return {
        "id": t.id,
        "owner": t.owner,
        "subject": t.subject,
        "state": t.state,
        "service": t.service,
        "project": t.project,
        "email": t.email,
        "created": db.iso(t.created_at),
        "updated": db.iso(t.updated_at),
    }


def _message_doc(m: DeskMessage) -> dict[str, Any]:
    return {"id": m.id, "author": m.author, "staff": m.staff, "body": m.body, "at": db.iso(m.at)}


def _attachment_doc(a: DeskAttachment) -> dict[str, Any]:
    return {
        "id": a.id,
        "filename": a.filename,
        "content_type": a.content_type,
        "size": a.size,
        "uploader": a.uploader,
        "message_id": a.message_id,
        "at": db.iso(a.at),
    }


def _visible(s: Any, ticket_id: int, viewer: str | None) -> DeskTicket:
    """The ticket, if ``viewer`` (None: staff) may see it; else 404 (never saying it exists)."""
    t = s.get(DeskTicket, ticket_id)
    if t is None or (viewer is not None and t.owner != viewer):
        raise DeskError(f"no ticket {ticket_id}", 404)
    return t


# -- reads -----------------------------------------------------------------------------------
def list_tickets(
    db_url: str,
    *,
    owner: str | None,
    state: str | None = None,
    service: str | None = None,
    project: str | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Tickets, newest change first: ``owner``'s (None: everybody's, for staff)."""
    q = select(DeskTicket)
    if owner is not None:
        q = q.where(DeskTicket.owner == owner)
    if state:
        q = q.where(DeskTicket.state == state)
    if service:
        q = q.where(DeskTicket.service == service)
    if project:
        q = q.where(DeskTicket.project == project)
    q = q.order_by(DeskTicket.updated_at.desc(), DeskTicket.id.desc()).limit(limit)
    with db.session(db_url) as s:
        return [_ticket_doc(t) for t in s.scalars(q)]


def get_ticket(db_url: str, ticket_id: int, *, viewer: str | None) -> dict[str, Any]:
    """One ticket with its messages and its attachments' metadata (not their bytes)."""
    with db.session(db_url) as s:
        t = _visible(s, ticket_id, viewer)
        doc = _ticket_doc(t)
        doc["messages"] = [
            _message_doc(m)
            for m in s.scalars(
                select(DeskMessage).where(DeskMessage.ticket_id == t.id).order_by(DeskMessage.id)
            )
        ]
        # Only the metadata columns: the bytes stay in the database.
        rows = s.execute(
            select(DeskAttachment)
            .where(DeskAttachment.ticket_id == t.id)
            .order_by(DeskAttachment.id)
            .options(defer(DeskAttachment.data))
        ).scalars()
        doc["attachments"] = [_attachment_doc(a) for a in rows]
        return doc


def get_attachment(
    db_url: str, ticket_id: int, attachment_id: int, *, viewer: str | None
) -> dict[str, Any]:
    """An attachment's metadata and ``data`` (its bytes)."""
    with db.session(db_url) as s:
        _visible(s, ticket_id, viewer)
        a = s.get(DeskAttachment, attachment_id)
        if a is None or a.ticket_id != ticket_id:
            raise DeskError(f"ticket {ticket_id} has no attachment {attachment_id}", 404)
        return {**_attachment_doc(a), "data": a.data}


def counts_by_state(db_url: str) -> dict[str, int]:
    """Tickets in each state (every state named, 0 included): the metrics' gauge."""
    with db.session(db_url) as s:
        rows = s.execute(select(DeskTicket.state, func.count()).group_by(DeskTicket.state))
        found = {state: n for state, n in rows}
    return {state: int(found.get(state, 0)) for state in STATES}


def integrated_services(db_url: str) -> list[dict[str, Any]]:
    """Registry entries that are integrated: ``{"slug", "name", "visibility"}``, by name
    (the caller keeps those the user may see). Through the registry's store module (its
    tables are its own): the desk runs without the registry process."""
    out = []
    for row in registry_store.published(db_url):
        entry = row["entry"] if isinstance(row["entry"], dict) else {}
        out.append(
            {
                "slug": row["slug"],
                "name": str(entry.get("name") or row["slug"]),
                "visibility": str(entry.get("visibility") or "public"),
            }
        )
    return sorted(out, key=lambda e: (e["name"].lower(), e["slug"]))


# -- writes ----------------------------------------------------------------------------------
def create_ticket(
    db_url: str,
    *,
    owner: str,
    subject: str,
    body: str,
    service: str | None,
    project: str | None,
    email: str,
    caps: Caps | None = None,
) -> dict[str, Any]:
    """A new ``open`` ticket whose first message is ``body`` (checked by the caller);
    ``caps``: the owner's open-ticket and per-hour caps (429), None: none (staff)."""
    now = utcnow()
    with _capped(db_url, owner) as s:
        if caps is not None:
            _check_open(s, owner, caps)
            _check_rate(s, owner, caps, now)
        t = DeskTicket(
            owner=owner,
            subject=subject,
            state="open",
            service=service,
            project=project,
            email=email,
            created_at=now,
            updated_at=now,
        )
        s.add(t)
        s.flush()
        s.add(DeskMessage(ticket_id=t.id, author=owner, staff=False, body=body, at=now))
        s.flush()
        return _ticket_doc(t)


def add_message(
    db_url: str,
    ticket_id: int,
    *,
    author: str,
    staff: bool,
    body: str,
    caps: Caps | None = None,
    max_messages: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Add a message; returns (the message, the ticket, its state before).

    ``staff``: the author is support staff, not the owner. The owner's message puts the
    ticket in ``open``; staff's in ``answered``. A closed ticket: 409 naming its state.
    ``max_messages``: messages one ticket may hold (anyone's; more: 429); ``caps`` (users,
    None for staff): the author's messages per hour (more: 429 with ``retry_after``).
    """
    with _capped(db_url, author) if caps is not None else db.session(db_url) as s:
        t = _locked(s, ticket_id, None if staff else author)
        if t.state == "closed":
            raise DeskError(
                f"ticket {ticket_id} is closed: reopen it (transition to 'open') to write", 409
            )
        before = t.state
        now = utcnow()
        if max_messages is not None:
            _check_messages(s, t.id, max_messages)
        if caps is not None:
            _check_message_rate(s, author, caps, now)
        # The owner writing waits for staff again, even when the owner is staff too.
        answer = staff and author != t.owner
        m = DeskMessage(ticket_id=t.id, author=author, staff=answer, body=body, at=now)
        s.add(m)
        t.state = "answered" if answer else "open"
        t.updated_at = now
        s.flush()
        return _message_doc(m), _ticket_doc(t), before


def transition(
    db_url: str, ticket_id: int, *, to: str, actor: str, staff: bool, caps: Caps | None = None
) -> tuple[dict[str, Any], str]:
    """Move a ticket to ``to`` (``closed`` or ``open``); returns (the ticket, its state
    before). Unknown or not-by-hand states: 400; not from the current state: 409; reopening
    past the owner's open-ticket cap (``caps``, None for staff): 429."""
    if to not in STATES:
        raise DeskError(f"unknown state {to!r}: one of {', '.join(STATES)}", 400)
    if to not in TRANSITIONS:
        raise DeskError(f"a ticket becomes {to!r} when staff answer it, not by a transition", 400)
    # Only a non-staff owner's reopening is capped (the ticket is theirs, else 404 below).
    capped = caps is not None and to == "open"
    with _capped(db_url, actor) if capped else db.session(db_url) as s:
        t = _locked(s, ticket_id, None if staff else actor)
        if t.state not in TRANSITIONS[to]:
            raise DeskError(f"ticket {ticket_id} is {t.state!r}: it cannot become {to!r}", 409)
        if capped:
            assert caps is not None
            _check_open(s, t.owner, caps)
        before = t.state
        t.state = to
        t.updated_at = utcnow()
        s.flush()
        return _ticket_doc(t), before


def add_attachment(
    db_url: str,
    ticket_id: int,
    *,
    uploader: str,
    staff: bool,
    filename: str,
    content_type: str,
    data: bytes,
    max_attachments: int,
    caps: Caps | None = None,
) -> dict[str, Any]:
    """Store an attachment (its own size checked by the caller); at most ``max_attachments``
    per ticket (409), none on a closed ticket (409), the uploader's bytes in all within
    ``caps`` (413; None: staff, no cap). Linked to the uploader's last message."""
    with _capped(db_url, uploader) if caps is not None else db.session(db_url) as s:
        t = _locked(s, ticket_id, None if staff else uploader)
        if t.state == "closed":
            raise DeskError(f"ticket {ticket_id} is closed: reopen it to attach files", 409)
        n = s.scalar(select(func.count()).where(DeskAttachment.ticket_id == t.id)) or 0
        if n >= max_attachments:
            raise DeskError(
                f"ticket {ticket_id} already has {n} attachments (at most {max_attachments})", 409
            )
        if caps is not None:
            _check_bytes(s, uploader, caps, len(data))
        last = s.scalar(
            select(func.max(DeskMessage.id)).where(
                DeskMessage.ticket_id == t.id, DeskMessage.author == uploader
            )
        )
        a = DeskAttachment(
            ticket_id=t.id,
            message_id=last,
            uploader=uploader,
            filename=filename,
            content_type=content_type,
            size=len(data),
            data=data,
            at=utcnow(),
        )
        s.add(a)
        t.updated_at = a.at
        s.flush()
        return _attachment_doc(a)


def _locked(s: Any, ticket_id: int, viewer: str | None) -> DeskTicket:
    """:func:`_visible`, the row locked for the transaction (PostgreSQL: two writers to one
    ticket take turns, so the attachment count and the state cannot race; SQLite writes are
    serialised anyway)."""
    t = s.scalars(select(DeskTicket).where(DeskTicket.id == ticket_id).with_for_update()).first()
    if t is None or (viewer is not None and t.owner != viewer):
        raise DeskError(f"no ticket {ticket_id}", 404)
    return t

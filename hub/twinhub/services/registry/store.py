"""The registry's tables (twinhub's database): requests, their audit trail, entry versions,
health checks. Synchronous (SQLAlchemy): async callers use ``asyncio.to_thread``.

Each function is one transaction. A transition is a compare-and-set on the request's state
(``UPDATE ... WHERE id = ? AND state = ?``): of two racing callers (reviewers, replicas of
the evaluation loop) only one moves the request, the other gets :class:`Conflict` naming
the state it found. Datetimes leave as ISO 8601 strings (UTC).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ... import db
from ...db import iso
from ...db.models import RegistryEntryVersion, RegistryEvent, RegistryHealth, RegistryRequest
from .workflow import EARLY_STATES, LIVE_STATES

#: A provider's requests that wait for a review (counted against ``max_open_requests``).
OPEN_STATES = EARLY_STATES


class StoreError(Exception):
    """A refused change: ``status`` (404, 409, 429) and a message naming why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Conflict(StoreError):
    """The request is no longer in the state the change expected; ``state``: what it is."""

    def __init__(self, state: str | None, message: str) -> None:
        super().__init__(409, message)
        self.state = state


def _now() -> datetime:
    return datetime.now(UTC)


def _event(e: RegistryEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "kind": e.kind,
        "from": e.from_state,
        "to": e.to_state,
        "comment": e.comment,
    }


def _request(r: RegistryRequest, events: list[RegistryEvent] | None = None) -> dict[str, Any]:
    out = {
        "id": r.id,
        "slug": r.slug,
        "state": r.state,
        "provider": r.provider,
        "entry": r.entry,
        "version": r.version,
        "resources": r.resources or {},
        "activity": r.activity or "",
        "findings": r.findings,
        "upstream": r.upstream,
        "allow_private": bool(r.allow_private),
        "sandbox": bool(r.sandbox),
        "created": iso(r.created_at),
        "updated": iso(r.updated_at),
    }
    if events is not None:
        out["events"] = [_event(e) for e in events]
    return out


def _events(s: Session, request_id: str) -> list[RegistryEvent]:
    q = select(RegistryEvent).where(RegistryEvent.request_id == request_id)
    return list(s.scalars(q.order_by(RegistryEvent.id)))


def _live_with_slug(s: Session, slug: str) -> list[RegistryRequest]:
    q = select(RegistryRequest).where(
        RegistryRequest.slug == slug, RegistryRequest.state.in_(LIVE_STATES)
    )
    return list(s.scalars(q.order_by(RegistryRequest.created_at, RegistryRequest.id)))


def _taken(slug: str) -> StoreError:
    return StoreError(409, f"slug {slug!r} is taken by another request; choose another")


@contextmanager
def _slug_guard(
    db_url: str, *, slug: str | None = None, request_id: str | None = None
) -> Iterator[None]:
    """Turn the live-slug index's refusal (raised at flush or commit, after the session
    rolled back) into the 409 :func:`_taken`: when another request than ``request_id`` holds
    the slug (``slug``, or request_id's) live now. Any other integrity error stays itself."""
    try:
        yield
    except IntegrityError:
        with db.session(db_url) as s:
            if slug is None and request_id is not None:
                slug = s.scalar(
                    select(RegistryRequest.slug).where(RegistryRequest.id == request_id)
                )
            rivals = [r for r in _live_with_slug(s, slug) if r.id != request_id] if slug else []
        if not rivals:
            raise
        raise _taken(slug) from None


# -- requests --------------------------------------------------------------------------------
#: Striped locks: one provider's creations take turns in this process (count, then insert),
#: other providers' mostly do not wait on them.
_PROVIDER_LOCKS = tuple(threading.Lock() for _ in range(64))


def _provider_key(provider: str) -> int:
    digest = hashlib.blake2b(f"twinhub-registry-provider:{provider}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


@contextmanager
def _provider_turn(db_url: str, provider: str) -> Iterator[Session]:
    """A session in which ``provider``'s request creations take turns, so that the
    ``max_open`` count and the insert it guards cannot be raced past: a process lock, and
    on PostgreSQL (several replicas) a transaction-scoped advisory lock taken first."""
    key = _provider_key(provider)
    with _PROVIDER_LOCKS[key % len(_PROVIDER_LOCKS)], db.session(db_url) as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        yield s


def create_request(
    db_url: str,
    *,
    provider: str,
    entry: dict[str, Any],
    resources: dict[str, Any],
    activity: str,
    max_open: int | None = None,
) -> dict[str, Any]:
    """A new request in state ``submitted`` (version 1 of its entry, an event); a slug held
    by a live request (not rejected or retired) is a 409 StoreError; a provider with
    ``max_open`` requests in :data:`OPEN_STATES` already, a 429."""
    slug = entry["slug"]
    rid = uuid.uuid4().hex
    now = _now()
    # The partial unique index uq_registry_requests_live_slug settles a race for one slug:
    # of two inserts that both passed the check below, the database refuses the second.
    with _slug_guard(db_url, slug=slug), _provider_turn(db_url, provider) as s:
        if _live_with_slug(s, slug):
            raise _taken(slug)
        if max_open is not None:
            n = s.scalar(
                select(func.count())
                .select_from(RegistryRequest)
                .where(RegistryRequest.provider == provider, RegistryRequest.state.in_(OPEN_STATES))
            )
            if n >= max_open:
                raise StoreError(
                    429,
                    f"{provider!r} has {n} requests waiting for review; at most {max_open} at "
                    "once (withdraw one, or wait for a decision)",
                )
        s.add(
            RegistryRequest(
                id=rid,
                slug=slug,
                provider=provider,
                state="submitted",
                entry=entry,
                version=1,
                resources=resources,
                activity=activity,
                findings=None,
                created_at=now,
                updated_at=now,
            )
        )
        s.add(RegistryEntryVersion(request_id=rid, version=1, entry=entry, actor=provider, at=now))
        s.add(
            RegistryEvent(
                request_id=rid, at=now, actor=provider, kind="transition",
                from_state=None, to_state="submitted", comment="request submitted",
            )
        )  # fmt: skip
    return get_request(db_url, rid)  # type: ignore[return-value]


def get_request(db_url: str, request_id: str) -> dict[str, Any] | None:
    """The request with its events; None if there is none."""
    with db.session(db_url) as s:
        r = s.get(RegistryRequest, request_id)
        return None if r is None else _request(r, _events(s, request_id))


def list_requests(
    db_url: str,
    *,
    provider: str | None = None,
    state: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Requests (newest change first), of ``provider`` only unless None, in ``state`` only
    unless None, ``limit`` of them from ``offset``; without their events."""
    q = _requests_query(select(RegistryRequest), provider, state)
    q = q.order_by(RegistryRequest.updated_at.desc(), RegistryRequest.id).offset(offset)
    if limit is not None:
        q = q.limit(limit)
    with db.session(db_url) as s:
        return [_request(r) for r in s.scalars(q)]


def count_requests(db_url: str, *, provider: str | None = None, state: str | None = None) -> int:
    """How many requests :func:`list_requests` would list without a limit."""
    q = _requests_query(select(func.count()).select_from(RegistryRequest), provider, state)
    with db.session(db_url) as s:
        return int(s.scalar(q) or 0)


def _requests_query(q, provider: str | None, state: str | None):
    if provider is not None:
        q = q.where(RegistryRequest.provider == provider)
    if state is not None:
        q = q.where(RegistryRequest.state == state)
    return q


def ids_in_state(db_url: str, state: str, limit: int = 100) -> list[str]:
    """Ids of requests in ``state``, oldest change first (the evaluation's queue)."""
    return [rid for rid, _ in queue(db_url, state, limit)]


def queue(db_url: str, state: str, limit: int = 100) -> list[tuple[str, str]]:
    """(id, provider) of requests in ``state``, oldest change first."""
    q = select(RegistryRequest.id, RegistryRequest.provider).where(RegistryRequest.state == state)
    with db.session(db_url) as s:
        rows = s.execute(q.order_by(RegistryRequest.updated_at).limit(limit))
        return [(rid, provider) for rid, provider in rows]


def _current_state(s: Session, request_id: str) -> str | None:
    return s.scalar(select(RegistryRequest.state).where(RegistryRequest.id == request_id))


def _compare_and_set(s: Session, request_id: str, expect: str, values: dict[str, Any]) -> None:
    """Apply ``values`` to the request if it is still in state ``expect``; else Conflict."""
    done = s.execute(
        update(RegistryRequest)
        .where(RegistryRequest.id == request_id, RegistryRequest.state == expect)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:
        state = _current_state(s, request_id)
        if state is None:
            raise StoreError(404, f"no request {request_id!r}")
        raise Conflict(state, f"the request is {state!r} now (it was {expect!r}): reload it")


def _new_version(s: Session, request_id: str, entry: dict[str, Any], actor: str, now) -> int:
    r = s.get(RegistryRequest, request_id)
    assert r is not None
    if entry["slug"] != r.slug:
        raise StoreError(409, f"the slug cannot change (it is {r.slug!r})")
    version = r.version + 1
    s.add(RegistryEntryVersion(request_id=request_id, version=version, entry=entry, actor=actor, at=now))  # fmt: skip
    return version


def transition(
    db_url: str,
    request_id: str,
    *,
    expect: str,
    to: str,
    actor: str,
    comment: str = "",
    entry: dict[str, Any] | None = None,
    findings: list[dict[str, Any]] | None = None,
    integration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Move the request from ``expect`` to ``to`` (compare-and-set), with an event; a new
    entry makes a new version, ``findings`` are the evaluation's (with an "evaluation"
    event), ``integration`` sets upstream / allow_private / sandbox. Returns the request."""
    now = _now()
    # No move in the workflow brings a request back to a live state today, but should one
    # (or a hand-edited row) collide with a live slug, the caller gets the 409, not a 500.
    with _slug_guard(db_url, request_id=request_id), db.session(db_url) as s:
        values: dict[str, Any] = {"state": to, "updated_at": now}
        if entry is not None:
            values["entry"] = entry
            values["version"] = _new_version(s, request_id, entry, actor, now)
        if findings is not None:
            values["findings"] = findings
        if integration is not None:
            values.update(integration)
        _compare_and_set(s, request_id, expect, values)
        if to == "retired" or (to == "integrated" and expect == "approved"):
            # The slug's last health check was of an earlier request (or ends with this
            # one): a new service shows "unknown" until its own first check.
            slug = s.scalar(select(RegistryRequest.slug).where(RegistryRequest.id == request_id))
            s.query(RegistryHealth).filter(RegistryHealth.slug == slug).delete()
        if findings is not None:
            s.add(RegistryEvent(request_id=request_id, at=now, actor=actor, kind="evaluation", comment=_summary(findings)))  # fmt: skip
        s.add(RegistryEvent(request_id=request_id, at=now, actor=actor, kind="transition", from_state=expect, to_state=to, comment=comment))  # fmt: skip
    return get_request(db_url, request_id)  # type: ignore[return-value]


def _summary(findings: list[dict[str, Any]]) -> str:
    bad = [f for f in findings if not f.get("ok")]
    if not bad:
        return f"{len(findings)} check(s), all passed"
    return f"{len(bad)} of {len(findings)} check(s) flagged: " + "; ".join(
        str(f.get("message", "")) for f in bad
    )


def update_entry(
    db_url: str, request_id: str, *, expect: str, entry: dict[str, Any], actor: str
) -> dict[str, Any]:
    """A new version of the entry (the state stays ``expect``, checked as a compare-and-set)."""
    now = _now()
    with db.session(db_url) as s:
        version = _new_version(s, request_id, entry, actor, now)
        _compare_and_set(s, request_id, expect, {"entry": entry, "version": version, "updated_at": now})  # fmt: skip
        s.add(RegistryEvent(request_id=request_id, at=now, actor=actor, kind="update", comment=f"entry version {version}"))  # fmt: skip
    return get_request(db_url, request_id)  # type: ignore[return-value]


def add_comment(
    db_url: str, request_id: str, *, actor: str, comment: str, max_comments: int | None = None
) -> dict[str, Any]:
    """A comment on the request (an event); returns the event. A request holding
    ``max_comments`` comments already: a 429 StoreError."""
    with db.session(db_url) as s:
        if s.get(RegistryRequest, request_id) is None:
            raise StoreError(404, f"no request {request_id!r}")
        if max_comments is not None:
            n = s.scalar(
                select(func.count())
                .select_from(RegistryEvent)
                .where(RegistryEvent.request_id == request_id, RegistryEvent.kind == "comment")
            )
            if n >= max_comments:
                raise StoreError(429, f"the request has {n} comments; at most {max_comments}")
        e = RegistryEvent(request_id=request_id, at=_now(), actor=actor, kind="comment", comment=comment)  # fmt: skip
        s.add(e)
        s.flush()
        return _event(e)


def counts_by_state(db_url: str) -> dict[str, int]:
    q = select(RegistryRequest.state, func.count()).group_by(RegistryRequest.state)
    with db.session(db_url) as s:
        return {state: n for state, n in s.execute(q)}


# -- published entries -----------------------------------------------------------------------
def _published(r: RegistryRequest) -> dict[str, Any]:
    return {
        "id": r.id,
        "slug": r.slug,
        "provider": r.provider,
        "entry": r.entry,
        "version": r.version,
        "upstream": r.upstream,
        "allow_private": bool(r.allow_private),
        "created": iso(r.created_at),
        "updated": iso(r.updated_at),
    }


def published(db_url: str) -> list[dict[str, Any]]:
    """Every integrated request (the catalogue), by slug."""
    q = select(RegistryRequest).where(RegistryRequest.state == "integrated")
    with db.session(db_url) as s:
        return [_published(r) for r in s.scalars(q.order_by(RegistryRequest.slug))]


def published_one(db_url: str, slug: str) -> dict[str, Any] | None:
    """The integrated request of ``slug``; None if there is none."""
    q = select(RegistryRequest).where(
        RegistryRequest.slug == slug, RegistryRequest.state == "integrated"
    )
    with db.session(db_url) as s:
        r = s.scalars(q).first()
        return None if r is None else _published(r)


def versions(db_url: str, request_id: str) -> list[dict[str, Any]]:
    """Every version of the request's entry, newest first."""
    q = select(RegistryEntryVersion).where(RegistryEntryVersion.request_id == request_id)
    with db.session(db_url) as s:
        rows = s.scalars(q.order_by(RegistryEntryVersion.version.desc()))
        return [
            {"version": v.version, "entry": v.entry, "actor": v.actor, "at": iso(v.at)}
            for v in rows
        ]


def generation(db_url: str) -> str:
    """Changes whenever the catalogue (:func:`published`) may have: one aggregate over the
    integrated rows only, so submissions, reviews and comments do not force the search
    index to rebuild. A row entering or changing while integrated sets a newer
    ``updated_at`` (the max moves); a row leaving lowers the count (and if another entered
    meanwhile, the max moved)."""
    q = select(
        func.count(), func.max(RegistryRequest.updated_at), func.sum(RegistryRequest.version)
    ).where(RegistryRequest.state == "integrated")
    with db.session(db_url) as s:
        n, last, vsum = s.execute(q).one()
    return f"{n}:{iso(last) if isinstance(last, datetime) else last}:{vsum or 0}"


def route(db_url: str, slug: str) -> dict[str, Any] | None:
    """What the gateway needs of ``slug``'s request while integrated or suspended (the
    provider, a hub user name, is let through whatever the visibility)."""
    q = select(RegistryRequest).where(
        RegistryRequest.slug == slug, RegistryRequest.state.in_(("integrated", "suspended"))
    )
    with db.session(db_url) as s:
        r = s.scalars(q).first()
        if r is None:
            return None
        return {
            "slug": r.slug,
            "state": r.state,
            "provider": r.provider,
            "upstream": r.upstream,
            "allow_private": bool(r.allow_private),
            "entry": r.entry,
            "sandbox": bool(r.sandbox),
        }


def routed_slugs(db_url: str) -> list[str]:
    """Slugs whose request is integrated or suspended (their /services/<slug>/ route)."""
    q = select(RegistryRequest.slug).where(RegistryRequest.state.in_(("integrated", "suspended")))
    with db.session(db_url) as s:
        return sorted(set(s.scalars(q)))


# -- health ----------------------------------------------------------------------------------
def health_all(db_url: str) -> dict[str, dict[str, Any]]:
    """slug -> the last health check."""
    with db.session(db_url) as s:
        return {
            h.slug: {
                "status": h.status,
                "latency_ms": h.latency_ms,
                "http_status": h.http_status,
                "detail": h.detail,
                "checked_at": iso(h.checked_at),
            }
            for h in s.scalars(select(RegistryHealth))
        }


def record_health(
    db_url: str,
    slug: str,
    *,
    status: str,
    latency_ms: float | None,
    http_status: int | None,
    detail: str,
) -> None:
    """Keep ``slug``'s latest health check (one row per slug)."""
    with db.session(db_url) as s:
        h = s.get(RegistryHealth, slug)
        if h is None:
            h = RegistryHealth(slug=slug, status=status, checked_at=_now())
            s.add(h)
        h.status, h.latency_ms, h.http_status = status, latency_ms, http_status
        h.detail, h.checked_at = detail[:2000], _now()

"""The registry's tables (twinhub's database): requests, their audit trail, entry versions,
health checks. Synchronous (SQLAlchemy): async callers use ``asyncio.to_thread``.

Each function is one transaction. A transition is a compare-and-set on the request's state
(``UPDATE ... WHERE id = ? AND state = ?``): of two racing callers (reviewers, replicas of
the evaluation loop) only one moves the request, the other gets :class:`Conflict` naming
the state it found. Datetimes leave as ISO 8601 strings (UTC).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ... import db
from ...db.models import RegistryEntryVersion, RegistryEvent, RegistryHealth, RegistryRequest
from .workflow import LIVE_STATES


class StoreError(Exception):
    """A refused change: ``status`` (404, 409) and a message naming why."""

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


def iso(d: datetime | None) -> str | None:
    """UTC ISO 8601 (SQLite hands back naive datetimes: they were stored as UTC)."""
    if d is None:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


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


# -- requests --------------------------------------------------------------------------------
def create_request(
    db_url: str,
    *,
    provider: str,
    entry: dict[str, Any],
    resources: dict[str, Any],
    activity: str,
) -> dict[str, Any]:
    """A new request in state ``submitted`` (version 1 of its entry, an event); a slug held
    by a live request (not rejected or retired) is a 409 StoreError."""
    slug = entry["slug"]
    rid = uuid.uuid4().hex
    now = _now()
    with db.session(db_url) as s:
        if _live_with_slug(s, slug):
            raise _taken(slug)
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
    # Two providers racing for one slug (PostgreSQL: neither saw the other's insert): once
    # both are committed, each sees both, and the later one withdraws itself.
    with db.session(db_url) as s:
        live = _live_with_slug(s, slug)
        lost = bool(live) and live[0].id != rid
        if lost:
            for model in (RegistryEvent, RegistryEntryVersion):
                s.query(model).filter(model.request_id == rid).delete()
            s.query(RegistryRequest).filter(RegistryRequest.id == rid).delete()
    if lost:  # raised once the withdrawal is committed (raising inside would roll it back)
        raise _taken(slug)
    return get_request(db_url, rid)  # type: ignore[return-value]


def get_request(db_url: str, request_id: str) -> dict[str, Any] | None:
    """The request with its events; None if there is none."""
    with db.session(db_url) as s:
        r = s.get(RegistryRequest, request_id)
        return None if r is None else _request(r, _events(s, request_id))


def list_requests(
    db_url: str, *, provider: str | None = None, state: str | None = None
) -> list[dict[str, Any]]:
    """Requests (newest change first), of ``provider`` only unless None, in ``state`` only
    unless None; without their events."""
    q = select(RegistryRequest)
    if provider is not None:
        q = q.where(RegistryRequest.provider == provider)
    if state is not None:
        q = q.where(RegistryRequest.state == state)
    with db.session(db_url) as s:
        rows = s.scalars(q.order_by(RegistryRequest.updated_at.desc(), RegistryRequest.id))
        return [_request(r) for r in rows]


def ids_in_state(db_url: str, state: str, limit: int = 100) -> list[str]:
    """Ids of requests in ``state``, oldest change first (the evaluation's queue)."""
    q = select(RegistryRequest.id).where(RegistryRequest.state == state)
    with db.session(db_url) as s:
        return list(s.scalars(q.order_by(RegistryRequest.updated_at).limit(limit)))


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
    with db.session(db_url) as s:
        values: dict[str, Any] = {"state": to, "updated_at": now}
        if entry is not None:
            values["entry"] = entry
            values["version"] = _new_version(s, request_id, entry, actor, now)
        if findings is not None:
            values["findings"] = findings
        if integration is not None:
            values.update(integration)
        _compare_and_set(s, request_id, expect, values)
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


def add_comment(db_url: str, request_id: str, *, actor: str, comment: str) -> dict[str, Any]:
    """A comment on the request (an event); returns the event."""
    with db.session(db_url) as s:
        if s.get(RegistryRequest, request_id) is None:
            raise StoreError(404, f"no request {request_id!r}")
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
    """Changes whenever a request's state or entry changes (every change sets updated_at;
    a withdrawn racing insert changes the count): one aggregate query."""
    q = select(
        func.count(), func.max(RegistryRequest.updated_at), func.sum(RegistryRequest.version)
    )
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

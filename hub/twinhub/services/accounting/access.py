"""Who may read which usage, and the usage API's parameters: pure functions, no I/O.

The rules (docs/accounting.md, "Who sees what"):

- anyone: their own usage (the default), and their own usage within a project they are in;
- a project's member: the project's totals (``project=``);
- admins (an admin whose token carries ``admin:users``, or a service token with it): anyone's
  usage, and a project's per-member breakdown (``by=member``, or ``user=`` someone else with
  ``project=``).

Anything else is refused with a message naming the scope that would allow it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..asgi import BadRequest
from ..hubauth import ADMIN_SCOPE
from .rollup import EARLIEST, LATEST

#: Query parameters of ``GET api/v1/usage``; any other is refused (a typo must not silently
#: widen or narrow what is read).
PARAMS = ("user", "project", "start", "end", "step", "format", "by")
FORMATS = ("json", "csv")
#: Longest accepted value of any parameter (names, ISO times and steps are far shorter).
MAX_PARAM = 256


class Refused(BadRequest):
    """A request the caller may not make: ``status`` (400 or 403, by default 403) and the
    message; answered like every service's refusal (:class:`~..asgi.BadRequest`)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message, status)


@dataclass(frozen=True)
class UsageRequest:
    """``GET api/v1/usage``'s parameters, checked (times timezone-aware, UTC)."""

    user: str | None = None
    project: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    step: str | None = None
    format: str = "json"
    by_member: bool = False


def parse_time(name: str, value: str) -> datetime:
    """An ISO 8601 date or date-time from 1970 to before 2200 (:data:`.rollup.EARLIEST`,
    :data:`.rollup.LATEST`); naive means UTC."""
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise Refused(
            f"{name}={value!r} is not an ISO 8601 date or time (e.g. 2026-01-31 or "
            "2026-01-31T12:00:00Z)",
            400,
        ) from None
    utc: datetime | None
    try:
        utc = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except OverflowError:  # an offset next to year 1 or 9999
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise Refused(
            f"{name}={value!r} is out of range: from {EARLIEST.date()} to before {LATEST.date()}",
            400,
        )
    return utc


def parse_request(items: Sequence[tuple[str, str]]) -> UsageRequest:
    """The query string's (name, value) pairs -> :class:`UsageRequest`; :class:`Refused`
    (400) naming the parameter for anything unknown, repeated, empty-by-mistake or malformed."""
    seen: dict[str, str] = {}
    for name, value in items:
        if name not in PARAMS:
            raise Refused(f"unknown parameter {name!r}; known: {', '.join(PARAMS)}", 400)
        if name in seen:
            raise Refused(f"parameter {name!r} given more than once", 400)
        if len(value) > MAX_PARAM:
            raise Refused(f"parameter {name!r} is longer than {MAX_PARAM} characters", 400)
        seen[name] = value
    fmt = seen.get("format") or "json"
    if fmt not in FORMATS:
        raise Refused(f"format={fmt!r}: use one of {', '.join(FORMATS)}", 400)
    by = seen.get("by", "")
    if by not in ("", "member"):
        raise Refused(f"by={by!r}: the only breakdown is by=member (with project=)", 400)
    if by and not seen.get("project"):
        raise Refused("by=member needs project=: a breakdown is of one project", 400)
    start = parse_time("start", seen["start"]) if seen.get("start") else None
    end = parse_time("end", seen["end"]) if seen.get("end") else None
    if start and end and start >= end:
        raise Refused(f"start ({start.isoformat()}) must be before end ({end.isoformat()})", 400)
    return UsageRequest(
        user=seen.get("user") or None,
        project=seen.get("project") or None,
        start=start,
        end=end,
        step=seen.get("step") or None,
        format=fmt,
        by_member=bool(by),
    )


@dataclass(frozen=True)
class Caller:
    """Who asks: a user (or a service) and what their token may do."""

    name: str
    kind: str  # "user" or "service"
    admin: bool  # acts as an admin: see :func:`caller_from`
    groups: frozenset[str]


def caller_from(token_model: Mapping[str, Any], hub_model: Mapping[str, Any] | None) -> Caller:
    """The caller from the hub's model of the token (its scopes) and of the user (admin
    flag and groups now, read with the service's own token; None for a service).

    Admin power comes from the token's scopes, as in JupyterHub's own API: an admin's token
    narrowed to the service's access scope reads like an ordinary user's."""
    scopes = token_model.get("scopes") or ()
    kind = token_model.get("kind", "user")
    if kind == "user":
        model = hub_model or {}
        admin = bool(model.get("admin")) and ADMIN_SCOPE in scopes
        groups = frozenset(model.get("groups") or ())
    else:
        admin, groups = ADMIN_SCOPE in scopes, frozenset()
    return Caller(name=str(token_model.get("name", "")), kind=kind, admin=admin, groups=groups)


def _needs_admin(caller: Caller, what: str) -> Refused:
    return Refused(
        f"{what} needs a token with the scope {ADMIN_SCOPE!r} (admins); the token of "
        f"{caller.name!r} lacks it"
    )


def authorize(caller: Caller, req: UsageRequest) -> UsageRequest:
    """The request as it will be run (``user`` filled in with the caller's name when neither
    user nor project is given), or :class:`Refused` (403) naming the missing scope."""
    if caller.admin:
        if req.user is None and req.project is None:
            if caller.kind != "user":
                raise Refused("a service must name user= or project=", 400)
            return _with(req, user=caller.name)
        return req
    if caller.kind != "user":
        raise _needs_admin(caller, "reading usage as a service")
    if req.by_member:
        raise _needs_admin(caller, f"a per-member breakdown of project {req.project!r}")
    if req.user is not None and req.user != caller.name:
        what = f"reading the usage of {req.user!r}"
        if req.project is not None:
            what += f" in project {req.project!r}"
        raise _needs_admin(caller, what)
    if req.project is not None and req.project not in caller.groups:
        raise Refused(
            f"reading project {req.project!r}'s usage needs its membership or a token with "
            f"the scope {ADMIN_SCOPE!r} (admins); {caller.name!r} has neither"
        )
    if req.user is None and req.project is None:
        return _with(req, user=caller.name)
    return req


def _with(req: UsageRequest, **change: Any) -> UsageRequest:
    return dataclasses.replace(req, **change)


def budget_projects(
    req: UsageRequest, groups: frozenset[str], projects: Mapping[str, object]
) -> list[str]:
    """The projects whose budgets an answer carries: the one asked for, else the user's
    projects (their hub groups that are projects)."""
    if req.project is not None:
        return [req.project] if req.project in projects else []
    return sorted(g for g in groups if g in projects)

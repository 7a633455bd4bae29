"""The onboarding workflow: states, the transition table, and who may do what (pure logic).

====================  ===============================================  =========================
to                    from                                             who
====================  ===============================================  =========================
evaluated             submitted                                        the platform (automatic)
changes-requested     evaluated                                        reviewers
approved              evaluated                                        reviewers
rejected              evaluated                                        reviewers
submitted             changes-requested                                the provider (new entry)
integrated            approved, suspended                              admins
suspended             integrated                                       admins
retired               any but retired                                  admins
retired               submitted, evaluated, changes-requested          the provider
====================  ===============================================  =========================

Reviewers are members of ``TwinhubRegistry.reviewers_group`` (admins are not, unless they
are members), never on their own requests; admins are hub admins whose token carries the
admin scope or, from the registry's browser sign-on, ``admin-ui``
(:func:`~.entry.registry_admin`). A refusal is checked in this order: an
unknown target state (400), the caller's role (403: nobody in the caller's roles may ever
make that move, or only another role may make it from the current state), the move's
legality from the current state (409 naming it). The API and the provider/reviewer page
both read :func:`allowed_targets`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...outbound import OutboundRefused, check_url
from .entry import WEB_KINDS, registry_admin

STATES = (
    "submitted",
    "evaluated",
    "changes-requested",
    "approved",
    "rejected",
    "integrated",
    "suspended",
    "retired",
)
#: States whose request holds its slug (no other request may take it).
LIVE_STATES = tuple(s for s in STATES if s not in ("rejected", "retired"))
#: Before approval: the provider may still withdraw (retire) the request.
EARLY_STATES = ("submitted", "evaluated", "changes-requested")

PLATFORM, PROVIDER, REVIEWER, ADMIN = "platform", "provider", "reviewer", "admin"
ROLE_NAMES = {
    PLATFORM: "the platform (automatic evaluation)",
    PROVIDER: "the request's provider",
    REVIEWER: "a reviewer (member of the reviewers group {group!r})",
    ADMIN: "an admin",
}


@dataclass(frozen=True)
class Rule:
    to: str
    sources: tuple[str, ...]
    role: str


RULES: tuple[Rule, ...] = (
    Rule("evaluated", ("submitted",), PLATFORM),
    Rule("changes-requested", ("evaluated",), REVIEWER),
    Rule("approved", ("evaluated",), REVIEWER),
    Rule("rejected", ("evaluated",), REVIEWER),
    Rule("submitted", ("changes-requested",), PROVIDER),
    Rule("integrated", ("approved", "suspended"), ADMIN),
    Rule("suspended", ("integrated",), ADMIN),
    Rule("retired", tuple(s for s in STATES if s != "retired"), ADMIN),
    Rule("retired", EARLY_STATES, PROVIDER),
)


class TransitionError(Exception):
    """A refused transition: ``status`` (400, 403, 409) and a message naming why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def roles(request: Mapping[str, Any], user: Mapping[str, Any] | None, settings: Any) -> set[str]:
    """The roles ``user`` (the hub's model; None: the platform itself) holds on ``request``."""
    if user is None:
        return {PLATFORM}
    out = set()
    if user.get("kind", "user") == "user" and user.get("name") == request.get("provider"):
        out.add(PROVIDER)
    # No self-review: a reviewer's own request goes to the other reviewers.
    if settings.reviewers_group in (user.get("groups") or ()) and PROVIDER not in out:
        out.add(REVIEWER)
    if registry_admin(user):
        out.add(ADMIN)
    return out


def _who(role: str, settings: Any) -> str:
    return ROLE_NAMES[role].format(group=settings.reviewers_group)


def check(
    request: Mapping[str, Any], to: Any, user: Mapping[str, Any] | None, settings: Any
) -> None:
    """Raise :class:`TransitionError` unless ``user`` may move ``request`` to ``to`` now."""
    if to not in STATES:
        raise TransitionError(400, f"unknown state {to!r}; states: {', '.join(STATES)}")
    mine = roles(request, user, settings)
    state = request["state"]
    rules = [r for r in RULES if r.to == to]
    if not any(r.role in mine for r in rules):
        needed = " or ".join(_who(r.role, settings) for r in rules)
        raise TransitionError(403, f"moving a request to {to!r} needs {needed}")
    if any(r.role in mine and state in r.sources for r in rules):
        return
    # Someone else could make this move from here (a provider retiring after approval).
    others = [r for r in rules if state in r.sources]
    if others:
        needed = " or ".join(_who(r.role, settings) for r in others)
        raise TransitionError(403, f"moving a request from {state!r} to {to!r} needs {needed}")
    sources = sorted({s for r in rules for s in r.sources}, key=STATES.index)
    raise TransitionError(
        409,
        f"the request is {state!r}: it cannot move to {to!r} (only from "
        f"{', '.join(repr(s) for s in sources)})",
    )


def allowed_targets(
    request: Mapping[str, Any], user: Mapping[str, Any] | None, settings: Any
) -> list[str]:
    """The states ``user`` may move ``request`` to now, in workflow order."""
    mine = roles(request, user, settings)
    state = request["state"]
    return [
        s for s in STATES if any(r.to == s and r.role in mine and state in r.sources for r in RULES)
    ]


def integration(entry: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """What integration sets (``upstream``, ``allow_private``, ``sandbox``) from a
    transition's body; web kinds need an http(s) upstream. Raises TransitionError(400)."""
    upstream = body.get("upstream")
    allow_private = body.get("allow_private", False)
    # Sandboxed unless the admin says otherwise: without it a registered service's pages
    # share the platform's origin, and their scripts could call the hub with the visitor's
    # cookies (docs/registry.md).
    sandbox = body.get("sandbox", True)
    for name, v in (("allow_private", allow_private), ("sandbox", sandbox)):
        if not isinstance(v, bool):
            raise TransitionError(400, f"{name} must be true or false, not {v!r}")
    if upstream in (None, ""):
        if entry.get("kind") in WEB_KINDS:
            raise TransitionError(
                400,
                f"integrating a {entry.get('kind')} entry needs 'upstream': the http(s) URL "
                f"/services/{entry.get('slug')}/ forwards to",
            )
        return {"upstream": None, "allow_private": allow_private, "sandbox": sandbox}
    if not isinstance(upstream, str) or len(upstream) > 2048:
        raise TransitionError(400, "upstream must be an http(s) URL (at most 2048 characters)")
    try:
        check_url(upstream)
    except OutboundRefused as e:
        raise TransitionError(400, f"upstream: {e}") from None
    return {"upstream": upstream, "allow_private": allow_private, "sandbox": sandbox}

"""The onboarding workflow's table: every (from, to, role) combination against the issue's
contract, written out here independently of the module's own table."""

from __future__ import annotations

import itertools

import pytest

from tests.helpers.registry import LEGAL
from twinhub.services.registry.config import TwinhubRegistry
from twinhub.services.registry.workflow import (
    STATES,
    TransitionError,
    allowed_targets,
    check,
    integration,
    roles,
)

SETTINGS = TwinhubRegistry()

USERS = {
    "platform": None,
    "provider": {"name": "pat", "kind": "user", "admin": False, "groups": ["climate"], "scopes": []},
    "reviewer": {"name": "rita", "kind": "user", "admin": False, "groups": ["registry-reviewers"], "scopes": []},
    "admin": {"name": "root", "kind": "user", "admin": True, "groups": [], "scopes": ["admin:users"]},
    # Not reviewers, not admins, not the provider: may do nothing.
    "other": {"name": "olga", "kind": "user", "admin": False, "groups": ["climate"], "scopes": []},
    "narrowed-admin": {"name": "root", "kind": "user", "admin": True, "groups": [], "scopes": ["access:services!service=registry"]},
}  # fmt: skip
#: What each test user counts as (a narrowed admin token carries no admin power).
ACTS_AS = {"narrowed-admin": "other"}


def expected(state: str, to: str, role: str) -> int:
    role = ACTS_AS.get(role, role)
    if role in LEGAL.get((state, to), set()):
        return 200
    ever = set().union(*(roles for (_, t), roles in LEGAL.items() if t == to))
    if role not in ever:
        return 403
    if (state, to) in LEGAL:  # another role could, from here
        return 403
    return 409


@pytest.mark.parametrize("state, to, role", list(itertools.product(STATES, STATES, list(USERS))))
def test_every_combination(state, to, role):
    request = {"state": state, "provider": "pat"}
    want = expected(state, to, role)
    if want == 200:
        check(request, to, USERS[role], SETTINGS)
        assert to in allowed_targets(request, USERS[role], SETTINGS)
        return
    with pytest.raises(TransitionError) as e:
        check(request, to, USERS[role], SETTINGS)
    assert e.value.status == want, e.value.message
    assert to not in allowed_targets(request, USERS[role], SETTINGS)
    if want == 409:
        assert f"the request is {state!r}" in e.value.message
    else:
        assert "needs" in e.value.message


@pytest.mark.parametrize("role", list(USERS))
@pytest.mark.parametrize("state", STATES)
def test_allowed_targets_are_exactly_the_legal_moves(state, role):
    request = {"state": state, "provider": "pat"}
    acting = ACTS_AS.get(role, role)
    want = [to for to in STATES if acting in LEGAL.get((state, to), set())]
    assert allowed_targets(request, USERS[role], SETTINGS) == want


@pytest.mark.parametrize("to", ["published", "", None, 3, "Approved"])
def test_an_unknown_state_is_400_before_anything_else(to):
    with pytest.raises(TransitionError) as e:
        check({"state": "retired", "provider": "pat"}, to, USERS["other"], SETTINGS)
    assert e.value.status == 400
    assert "unknown state" in e.value.message


def test_403_names_the_role_needed():
    with pytest.raises(TransitionError) as e:
        check({"state": "evaluated", "provider": "pat"}, "approved", USERS["admin"], SETTINGS)
    assert "reviewers group 'registry-reviewers'" in e.value.message
    with pytest.raises(TransitionError) as e:
        check({"state": "approved", "provider": "pat"}, "retired", USERS["provider"], SETTINGS)
    assert e.value.status == 403 and "an admin" in e.value.message


def test_an_admin_in_the_reviewers_group_reviews():
    both = {**USERS["admin"], "groups": ["registry-reviewers"]}
    check({"state": "evaluated", "provider": "pat"}, "approved", both, SETTINGS)
    other_group = TwinhubRegistry(reviewers_group="board")
    with pytest.raises(TransitionError):
        check({"state": "evaluated", "provider": "pat"}, "approved", USERS["reviewer"], other_group)


def test_no_self_review():
    """A reviewer's own request: provider only (the other reviewers review it)."""
    own = {"state": "evaluated", "provider": "rita"}
    assert roles(own, USERS["reviewer"], SETTINGS) == {"provider"}
    assert allowed_targets(own, USERS["reviewer"], SETTINGS) == ["retired"]
    for to in ("approved", "changes-requested", "rejected"):
        with pytest.raises(TransitionError) as e:
            check(own, to, USERS["reviewer"], SETTINGS)
        assert e.value.status == 403 and "reviewers group" in e.value.message
    # Someone else's request: a reviewer still.
    check({"state": "evaluated", "provider": "pat"}, "approved", USERS["reviewer"], SETTINGS)


def test_browser_admins_hold_admin_ui():
    """The registry's sign-on gives admins ``admin-ui``, not ``admin:users``: still admins
    here; a non-admin with admin-ui (cannot happen through the hub) is none."""
    browser = {**USERS["admin"], "scopes": ["access:services!service=registry", "admin-ui"]}
    assert roles({"state": "approved", "provider": "pat"}, browser, SETTINGS) == {"admin"}
    odd = {**USERS["other"], "scopes": ["admin-ui"]}
    assert roles({"state": "approved", "provider": "pat"}, odd, SETTINGS) == set()


def test_integration_needs_an_upstream_for_web_kinds():
    web = {"kind": "web-application", "slug": "maps"}
    with pytest.raises(TransitionError, match="needs 'upstream'"):
        integration(web, {})
    with pytest.raises(TransitionError, match="upstream: file scheme"):
        integration(web, {"upstream": "file:///etc/passwd"})
    with pytest.raises(TransitionError, match="allow_private must be true or false"):
        integration(web, {"upstream": "http://127.0.0.1:1/", "allow_private": "yes"})
    # Sandboxed unless the admin turns it off.
    assert integration(web, {"upstream": "http://127.0.0.1:1/", "allow_private": True}) == {
        "upstream": "http://127.0.0.1:1/",
        "allow_private": True,
        "sandbox": True,
    }
    assert integration(web, {"upstream": "https://x.org/", "sandbox": False})["sandbox"] is False
    assert integration({"kind": "dataset"}, {})["upstream"] is None

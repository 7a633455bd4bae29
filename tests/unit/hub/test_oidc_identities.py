"""Identity bindings (oidc_identities) on a real SQLite database, and group-name mapping."""

from __future__ import annotations

import pytest

from twinhub.auth import identities
from twinhub.auth.groups import hub_group, role_group
from twinhub.auth.local_accounts import create_account
from twinhub.db import upgrade

ISS = "https://kc.example.org/realms/twinhub"


@pytest.fixture
def db_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    upgrade(url)
    return url


def test_first_login_binds_and_later_logins_follow_the_sub(db_url):
    r = identities.resolve(db_url, ISS, "sub-1", "alice")
    assert r == identities.Resolution("alice", False)
    identities.bind(db_url, ISS, "sub-1", "alice", "alice")
    # Renamed in Keycloak: same account.
    assert identities.resolve(db_url, ISS, "sub-1", "alice-renamed").username == "alice"
    assert identities.bound_username(db_url, ISS, "sub-1") == "alice"
    # Someone else now called alice: refused.
    with pytest.raises(identities.IdentityConflict, match="belongs to another identity"):
        identities.resolve(db_url, ISS, "sub-2", "alice")
    # The same sub from another realm is another person.
    with pytest.raises(identities.IdentityConflict):
        identities.resolve(db_url, ISS + "2", "sub-1", "alice")


def test_existing_accounts_are_not_adopted_unless_allowed(db_url):
    create_account(db_url, "bob", password="a-long-password")
    with pytest.raises(identities.IdentityConflict, match="adopt_existing_users"):
        identities.resolve(db_url, ISS, "sub-b", "bob")
    with pytest.raises(identities.IdentityConflict):
        identities.resolve(db_url, ISS, "sub-c", "carol", hub_user_exists=True)
    assert identities.resolve(db_url, ISS, "sub-b", "bob", adopt_existing=True).username == "bob"


def test_bind_race_is_a_conflict(db_url):
    identities.bind(db_url, ISS, "sub-1", "alice", "alice")
    with pytest.raises(identities.IdentityConflict, match="just bound"):
        identities.bind(db_url, ISS, "sub-2", "alice", "alice")


def test_group_names():
    assert hub_group("/projects/climate-adaptation") == "projects:climate-adaptation"
    assert hub_group("/platform-admins") == "platform-admins"
    assert role_group("gpu-user") == "realm-role:gpu-user"


def test_only_keycloaks_authenticator_exchanges_access_tokens():
    """The token-exchange handlers find Keycloak's authenticator by its mixin, without
    importing it (token_exchange <-> keycloak was an import loop)."""
    from twinhub.auth.access_token import ExchangesAccessTokens
    from twinhub.auth.authenticator import TwinhubLocalAuth
    from twinhub.auth.keycloak import TwinhubKeycloakAuthenticator

    assert issubclass(TwinhubKeycloakAuthenticator, ExchangesAccessTokens)
    assert not issubclass(TwinhubLocalAuth, ExchangesAccessTokens)
    on = {
        "cli_client_id": "twinhub-cli",
        "device_authorization_url": "https://kc/device",
        "introspection_url": "https://kc/introspect",
    }
    assert TwinhubKeycloakAuthenticator(**on).device_login_configured
    for off in on:
        assert not TwinhubKeycloakAuthenticator(**{**on, off: ""}).device_login_configured

"""Keycloak login mode against the real platform and a real OpenID Connect provider.

One platform for the module (`twinhub up --keycloak-url ...`, personal mode) and one
Keycloak-shaped realm (tests/oidc/provider.mjs) loaded from the shipped realm export.
Logins are driven by a requests session through the provider's real login form.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import pytest
import requests

from tests.helpers.keycloak import keycloak_platform
from tests.helpers.platform import TWINHUB, free_port_pair
from twinhub.client.hubapi import hub_request

CONFIG = """
c.TwinhubKeycloak.allowed_groups = ["/projects/climate-adaptation", "/platform-admins"]
c.TwinhubKeycloak.admin_groups = ["/platform-admins"]
c.TwinhubKeycloak.role_scopes = {"gpu-user": ["list:users"]}
c.TwinhubKeycloak.idp_hint = "institution-idp"
c.Authenticator.auth_refresh_age = 1
"""


@pytest.fixture(scope="module")
def kc(tmp_path_factory, oidc_realm_factory):
    base = tmp_path_factory.mktemp("keycloak")
    with keycloak_platform(base, CONFIG, oidc_realm_factory, post_logout=True, ttl=5) as p:
        yield p


def follow(s: requests.Session, url: str, method: str = "GET", data=None) -> requests.Response:
    """Follow redirects by hand; stop at the hub's callback answer (login done or refused)."""
    r = s.request(method, url, data=data, allow_redirects=False, timeout=30)
    while r.status_code in (301, 302, 303, 307) and "/hub/oauth_callback" not in r.url:
        r = s.get(urljoin(r.url, r.headers["location"]), allow_redirects=False, timeout=30)
    return r


def submit_form(s: requests.Session, page: requests.Response, form_id: str, fields: dict):
    m = re.search(rf'<form[^>]*id="{form_id}"[^>]*action="([^"]+)"', page.text)
    assert m, page.text[:2000]
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    return follow(s, urljoin(page.url, m.group(1).replace("&amp;", "&")), "POST", hidden | fields)


def login(kc, username: str, password: str, s: requests.Session | None = None):
    """Code flow through the provider's login form; returns (session, last response)."""
    s = s or requests.Session()
    r = follow(s, kc.url + "hub/oauth_login")
    if "kc-form-login" in r.text:
        r = submit_form(s, r, "kc-form-login", {"username": username, "password": password})
    return s, r


def logged_in(r: requests.Response) -> bool:
    return "/hub/oauth_callback" in r.url and r.status_code == 302


def hub_user(kc, name: str) -> dict | None:
    try:
        return hub_request(kc.rt, "GET", f"/users/{name}")
    except Exception as e:
        if getattr(e, "status", None) == 404:
            return None
        raise


def identities(kc) -> dict[str, str]:
    with sqlite3.connect(kc.state / "twinhub.sqlite") as db:
        return dict(db.execute("SELECT username, subject FROM oidc_identities"))


def test_code_flow_with_pkce_maps_groups_and_roles(kc):
    s = requests.Session()
    r = s.get(kc.url + "hub/oauth_login", allow_redirects=False)
    q = parse_qs(urlparse(r.headers["location"]).query)
    assert r.headers["location"].startswith(kc.realm.url + "/protocol/openid-connect/auth")
    assert q["code_challenge_method"] == ["S256"] and q["code_challenge"]
    assert q["kc_idp_hint"] == ["institution-idp"]
    assert q["redirect_uri"] == [kc.url + "hub/oauth_callback"]
    s, r = login(kc, "alice", kc.realm.password("alice"), s)
    assert logged_in(r), (r.status_code, r.text[:500])
    alice = hub_user(kc, "alice")
    assert alice and alice["admin"] is False
    assert "projects:climate-adaptation" in alice["groups"]
    assert "realm-role:gpu-user" in alice["groups"]
    assert identities(kc)["alice"] == kc.realm.sub("alice")
    # The realm role grants its JupyterHub scopes (list:users) through the role group.
    tok = kc.cli("user", "token", "alice").stdout.strip()
    assert kc.api("GET", "/users", token=tok).status_code == 200
    # Auth state (tokens) is stored encrypted in the hub database.
    with sqlite3.connect(kc.state / "hub" / "jupyterhub.sqlite") as db:
        (blob,) = db.execute("SELECT encrypted_auth_state FROM users WHERE name='alice'").fetchone()
    assert blob and b"access_token" not in blob and b"refresh_token" not in blob


def test_admin_group_makes_admin(kc):
    _, r = login(kc, "carol", kc.realm.password("carol"))
    assert logged_in(r)
    carol = hub_user(kc, "carol")
    assert carol["admin"] is True
    assert {"platform-admins", "projects:extremes", "realm-role:platform-operator"} <= set(
        carol["groups"]
    )


def test_user_outside_allowed_groups_gets_403_and_no_account(kc):
    _, r = login(kc, "dave", kc.realm.password("dave"))
    assert r.status_code == 403
    assert "not in a group allowed" in r.text
    assert hub_user(kc, "dave") is None
    assert "dave" not in identities(kc)


def test_wrong_password_creates_nothing(kc):
    s, r = login(kc, "erin", "not-her-password")
    assert r.status_code == 200 and "Invalid username or password." in r.text
    assert hub_user(kc, "erin") is None


def test_local_account_of_same_name_is_not_taken_over(kc):
    _, r = login(kc, "bob", kc.realm.password("bob"))
    assert r.status_code == 403
    assert "already exists on this platform" in r.text and "adopt_existing_users" in r.text
    assert hub_user(kc, "bob") is None and "bob" not in identities(kc)


@pytest.mark.parametrize(
    "quirk, message",
    [
        ("wrong-issuer", "issued by"),
        ("wrong-audience", "not client"),
        ("expired", "expired"),
        ("bad-signature", "signature does not verify"),
        ("no-username", "no preferred_username"),
        ("no-groups", "no groups claim"),
    ],
)
def test_bad_tokens_and_claims_are_refused(kc, quirk, message):
    kc.realm.set_user("erin", quirk=quirk)
    try:
        _, r = login(kc, "erin", kc.realm.password("erin"))
    finally:
        kc.realm.reset_user("erin")
    assert r.status_code == 403, (r.status_code, r.text[:300])
    assert message in r.text
    assert hub_user(kc, "erin") is None and "erin" not in identities(kc)


def test_renamed_keeps_account_and_reused_name_is_refused(kc):
    _, r = login(kc, "alice", kc.realm.password("alice"))
    assert logged_in(r)
    kc.realm.set_user("alice", username="alice2")
    kc.realm.set_user("erin", username="alice")
    try:
        # Alice, renamed in Keycloak, still gets her own account.
        _, r = login(kc, "alice2", kc.realm.password("alice"))
        assert logged_in(r)
        assert hub_user(kc, "alice2") is None
        # Erin, now called alice in Keycloak, must not get alice's account.
        _, r = login(kc, "alice", kc.realm.password("erin"))
        assert r.status_code == 403 and "belongs to another identity" in r.text
        assert identities(kc)["alice"] == kc.realm.sub("alice")
    finally:
        kc.realm.reset_user("alice")
        kc.realm.reset_user("erin")


def refresh(kc, s: requests.Session) -> requests.Response:
    time.sleep(1.2)  # Authenticator.auth_refresh_age = 1
    return s.get(kc.url + "hub/home", allow_redirects=False, timeout=30)


def test_group_changes_at_provider_apply_at_refresh(kc):
    s, r = login(kc, "alice", kc.realm.password("alice"))
    assert logged_in(r)
    try:
        kc.realm.set_user("alice", groups=["/projects/climate-adaptation", "/projects/extremes"])
        assert refresh(kc, s).status_code == 200
        assert "projects:extremes" in hub_user(kc, "alice")["groups"]
        kc.realm.set_user(
            "alice", groups=["/projects/climate-adaptation"], realmRoles=["default-roles-twinhub"]
        )
        # Past the access token's lifetime (5 s): the refresh token is used.
        time.sleep(5)
        assert refresh(kc, s).status_code == 200
        groups = hub_user(kc, "alice")["groups"]
        assert "projects:extremes" not in groups and "realm-role:gpu-user" not in groups
        assert "projects:climate-adaptation" in groups
        tok = kc.cli("user", "token", "alice").stdout.strip()
        assert kc.api("GET", "/users", token=tok).status_code == 403
        # Out of every allowed group: the session ends, and a new login is refused.
        kc.realm.set_user("alice", groups=[])
        r = refresh(kc, s)
        assert r.status_code == 302 and "/hub/login" in r.headers["location"]
        _, r = login(kc, "alice", kc.realm.password("alice"))
        assert r.status_code == 403
    finally:
        kc.realm.reset_user("alice")


def test_logout_ends_provider_session(kc):
    s, r = login(kc, "carol", kc.realm.password("carol"))
    assert logged_in(r)
    # The provider session exists: a second login needs no password.
    r = follow(s, kc.url + "hub/oauth_login")
    assert logged_in(r)
    r = follow(s, kc.url + "hub/logout")
    assert r.url.startswith(kc.realm.url + "/protocol/openid-connect/logout")
    q = parse_qs(urlparse(r.url).query)
    assert q["id_token_hint"] and q["client_id"] == ["twinhub"]
    assert q["post_logout_redirect_uri"] == [kc.url + "hub/"]
    r = submit_form(s, r, "op.logoutForm", {"logout": "yes"})
    # Back at the hub (post_logout_redirect_uri), which asks for a login.
    assert r.url.startswith(kc.url + "hub/login"), r.url
    # Signed out at the provider: its login form is back.
    r = follow(s, kc.url + "hub/oauth_login")
    assert "kc-form-login" in r.text


def test_cli_in_keycloak_mode(kc):
    r = kc.cli("user", "add", "zoe", check=False)
    assert r.returncode == 2 and "managed in Keycloak" in r.stderr
    tok = kc.cli("user", "token", "carol").stdout.strip()
    assert kc.api("GET", "/user", token=tok).json()["name"] == "carol"


def test_client_secret_only_in_a_0600_file(kc):
    secret = kc.realm.client_secret
    f = kc.state / "secrets" / "keycloak-client-secret"
    assert f.read_text() == secret and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert secret not in (kc.state / "run" / "runtime.json").read_text()
    assert json.loads((kc.state / "run" / "runtime.json").read_text())["config"]["TwinhubKeycloak"]
    hub_pid = int((kc.state / "run" / "hub.pid").read_text().split()[0])
    cmdline = Path(f"/proc/{hub_pid}/cmdline").read_bytes().decode()
    assert "jupyterhub" in cmdline and secret not in cmdline
    # No local first admin in Keycloak mode.
    assert not kc.admin_password and hub_user(kc, "admin") is None


def _up(state: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    (port,) = free_port_pair(1)
    argv = [TWINHUB, "up", "--state", str(state), "--port", str(port), "--mode", "personal"]
    return subprocess.run(
        argv + list(args),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_start_refused_with_a_clear_error(kc, tmp_path):
    realm = kc.realm
    base = ["--keycloak-url", realm.url, "--keycloak-client-id", "twinhub"]
    env_secret = {"TWINHUB_KEYCLOAK_CLIENT_SECRET": ""}
    r = _up(tmp_path / "a", *base, env=env_secret)
    assert r.returncode == 2 and "needs the client secret" in r.stderr
    # The secret from the environment; a URL whose issuer differs (localhost vs 127.0.0.1).
    other = realm.url.replace("127.0.0.1", "localhost")
    r = _up(
        tmp_path / "b",
        "--keycloak-url",
        other,
        env={"TWINHUB_KEYCLOAK_CLIENT_SECRET": "from-env"},
    )
    assert r.returncode == 2 and f"declares issuer {realm.url}" in r.stderr
    assert (tmp_path / "b" / "secrets" / "keycloak-client-secret").read_text() == "from-env"
    secret = ["--keycloak-client-secret", "x"]
    r = _up(tmp_path / "c", "--keycloak-url", realm.url + "-typo", *secret, env=env_secret)
    assert r.returncode == 2 and "answered 404" in r.stderr
    r = _up(tmp_path / "d", "--keycloak-url", "http://127.0.0.1:1/realms/x", *secret)
    assert r.returncode == 2 and "cannot read Keycloak discovery document" in r.stderr
    # Nothing was left running.
    assert not (tmp_path / "b" / "run" / "supervisor.pid").exists()


# Last in the module: it makes "erin", whom the tests above expect not to exist.
def test_user_made_on_the_admin_page_logs_in_through_keycloak(kc):
    # What the admin page does, in a hub admin's browser (carol: /platform-admins), here
    # making erin an admin.
    admin, r = login(kc, "carol", kc.realm.password("carol"))
    assert logged_in(r), (r.status_code, r.text[:500])
    admin.get(kc.url + "hub/home", timeout=30)  # the _xsrf cookie, as the admin page has it
    r = admin.post(
        kc.url + "hub/api/users/erin",
        json={"admin": True},
        headers={"X-XSRFToken": admin.cookies.get("_xsrf", path="/hub/")},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert hub_user(kc, "erin")["admin"] is True
    # No local-password pages in Keycloak mode: nothing to set, nothing to approve.
    for path in ("hub/authorize", "hub/set-password?token=x", "hub/signup"):
        assert requests.get(kc.url + path, timeout=30).status_code == 404, path
    s, r = login(kc, "erin", kc.realm.password("erin"))
    assert logged_in(r), (r.status_code, r.text[:500])
    erin = hub_user(kc, "erin")
    assert "projects:climate-adaptation" in erin["groups"]
    # Whoever logs in with the name takes the user, not the admin flag: erin is not in
    # /platform-admins (the realm's admin group). Without admin_groups: the unit test
    # test_keycloak_takeover_of_an_admin_made_user_never_keeps_its_admin_flag.
    assert erin["admin"] is False
    with sqlite3.connect(kc.state / "twinhub.sqlite") as db:
        bound = dict(db.execute("SELECT username, subject FROM oidc_identities"))
    assert bound["erin"] == kc.realm.sub("erin")
    # The home page is the same face; no Accounts link (no local accounts here).
    home = s.get(kc.url + "hub/home", timeout=30)
    assert home.status_code == 200 and "Welcome to twinhub, erin" in home.text
    assert "twinhub-nav-accounts" not in home.text
    # The local account "bob" (from before Keycloak) is still not taken over: the admin-made
    # exception is only for users made while Keycloak login is on.
    _, r = login(kc, "bob", kc.realm.password("bob"))
    assert r.status_code == 403 and "already exists on this platform" in r.text

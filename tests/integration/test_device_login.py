"""`twinhub login`: OAuth 2.0 device flow against a Keycloak-shaped realm, token exchange at
the real hub, token stored 0600 and usable with the hub API, Dask Gateway and the STAC API.

One platform in Keycloak mode for the module and one realm (tests/oidc/provider.mjs, loaded
from the shipped realm export, device polling interval 1 s). The user's side of every device
login is driven for real with an HTTP session: open the verification URI, enter the code,
grant (or deny) access, log in at the provider's login form.
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import pytest
import requests
from tornado import web

from tests.helpers.keycloak import keycloak_platform
from tests.helpers.platform import TWINHUB
from twinhub.auth.access_token import access_token_auth_model
from twinhub.auth.keycloak import TwinhubKeycloakAuthenticator
from twinhub.client import login as cli_login
from twinhub.client.hubapi import hub_request

CONFIG = """
c.TwinhubKeycloak.allowed_groups = ["/projects/climate-adaptation", "/platform-admins"]
c.TwinhubKeycloak.admin_groups = ["/platform-admins"]
c.TwinhubKeycloak.cli_token_expires_in = 3600
c.TwinhubKeycloak.identity_providers = {"uni-x": "University X", "egi": "EGI <Check-in>"}
"""
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')
CODE_LINE = re.compile(r"open (\S+) and enter the code (\S+)")


@pytest.fixture(scope="module")
def kc(tmp_path_factory, oidc_realm_factory):
    base = tmp_path_factory.mktemp("device-login")
    with keycloak_platform(base, CONFIG, oidc_realm_factory, device_interval=1) as p:
        yield p


# -- the user's side, in a "browser" -----------------------------------------------------------
def _post_form(s: requests.Session, page: requests.Response, form_id: str, extra: dict):
    m = re.search(rf'<form[^>]*id="{re.escape(form_id)}"[^>]*action="([^"]+)"', page.text)
    assert m, page.text[:1500]
    fields = dict(HIDDEN.findall(page.text)) | extra
    return s.post(urljoin(page.url, m.group(1).replace("&amp;", "&")), data=fields, timeout=30)


def browser_confirms(
    verification_uri: str, user_code: str, username: str, password: str, deny: bool = False
) -> requests.Response:
    """Open the verification URI, enter the code, grant (or deny), log in."""
    s = requests.Session()
    page = s.get(verification_uri, timeout=30)
    assert page.status_code == 200 and "op.deviceInputForm" in page.text, page.text[:500]
    page = _post_form(s, page, "op.deviceInputForm", {"user_code": user_code})
    assert "Grant Access" in page.text and user_code in page.text, page.text[:500]
    page = _post_form(s, page, "op.deviceConfirmForm", {"abort": "yes"} if deny else {})
    if deny:
        return page
    assert "kc-form-login" in page.text, page.text[:500]
    page = _post_form(s, page, "kc-form-login", {"username": username, "password": password})
    assert "Device Login Successful" in page.text, page.text[:500]
    return page


# -- the CLI ------------------------------------------------------------------------------------
class LoginProcess:
    """`twinhub login --hub URL --no-browser` as a real process; reads the code it prints."""

    def __init__(self, hub: str, token_file: Path):
        self.proc = subprocess.Popen(
            [TWINHUB, "login", "--hub", hub, "--no-browser"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TWINHUB_TOKEN_FILE": str(token_file), "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = CODE_LINE.search(line)
            if m:
                self.verification_uri, self.user_code = m.groups()
                break
        else:
            raise AssertionError(f"no code printed: {self.lines} {self.proc.stderr.read()}")

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + out, err


def hub_user(kc, name: str) -> dict | None:
    try:
        return hub_request(kc.rt, "GET", f"/users/{name}")
    except Exception as e:
        if getattr(e, "status", None) == 404:
            return None
        raise


def bound_identities(kc) -> dict[str, str]:
    with sqlite3.connect(kc.state / "twinhub.sqlite") as db:
        return dict(db.execute("SELECT username, subject FROM oidc_identities"))


# -- tests ----------------------------------------------------------------------------------
def test_login_config_is_public_and_names_the_realm_endpoints(kc):
    r = requests.get(kc.url + "hub/api/twinhub/login-config", timeout=30)
    assert r.status_code == 200
    cfg = r.json()
    assert cfg["mode"] == "keycloak" and cfg["client_id"] == kc.realm.cli_client_id
    realm = kc.realm.url + "/protocol/openid-connect/"
    assert cfg["device_authorization_endpoint"] == realm + "auth/device"
    assert cfg["token_endpoint"] == realm + "token"
    assert cfg["token_expires_in"] == 3600
    assert "secret" not in r.text and kc.realm.client_secret not in r.text


def test_device_login_token_works_with_hub_gateway_and_stac(kc, tmp_path):
    token_file = tmp_path / "cfg" / "token.json"
    cli = LoginProcess(kc.url + "hub", token_file)  # "/hub" at the end is accepted too
    assert cli.verification_uri == kc.realm.url + "/device"
    browser_confirms(cli.verification_uri, cli.user_code, "alice", kc.realm.password("alice"))
    code, out, err = cli.finish()
    assert code == 0, (out, err)
    assert "waiting for you to confirm" in err
    # Stored 0600 in a 0700 directory, with what the CLI needs.
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    record = cli_login.load_token(token_file)
    assert record["user"] == "alice" and record["hub"] == kc.url
    tok = record["token"]
    # The hub API knows the token as alice's, noted "twinhub login", expiring in an hour.
    me = kc.api("GET", "/user", token=tok)
    assert me.status_code == 200 and me.json()["name"] == "alice"
    assert "projects:climate-adaptation" in me.json()["groups"]
    tokens = kc.api("GET", "/users/alice/tokens", token=tok).json()["api_tokens"]
    mine = next(t for t in tokens if t["id"] == me.json()["token_id"])
    assert mine["note"] == "twinhub login"
    expires = datetime.fromisoformat(mine["expires_at"].replace("Z", "+00:00"))
    assert 3500 < (expires - datetime.now(UTC)).total_seconds() <= 3600
    assert bound_identities(kc)["alice"] == kc.realm.sub("alice")
    # The printed instructions work as printed: hub API, Dask Gateway, STAC API.
    usage = [ln.strip() for ln in out.splitlines() if ln.startswith("  ") and "#" not in ln]
    load, hub_api, gateway, stac = usage[-4:]
    assert load.startswith("TOKEN=$(") and str(token_file) in load
    assert f"{kc.url}hub/api/user" in hub_api and "services/stac/" in stac
    env = {**os.environ, "PATH": f"{Path(TWINHUB).parent}:{os.environ['PATH']}"}
    for cmd, expect in [
        (hub_api, '"name":"alice"'),
        (gateway, "[]"),  # list_clusters(): none yet
        (stac, '"collections"'),
    ]:
        r = subprocess.run(
            ["bash", "-c", f"set -e; {load}; {cmd}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode == 0 and expect in r.stdout.replace(" ", ""), (cmd, r)
    # twinhub logout revokes it at the hub and removes the file.
    r = subprocess.run(
        [TWINHUB, "logout"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TWINHUB_TOKEN_FILE": str(token_file)},
    )
    assert r.returncode == 0 and "revoked" in r.stdout, r
    assert not token_file.exists()
    assert kc.api("GET", "/user", token=tok).status_code == 403


def test_admin_group_and_groups_sync_apply_to_device_login(kc, tmp_path):
    cli = LoginProcess(kc.url, tmp_path / "t.json")
    browser_confirms(cli.verification_uri, cli.user_code, "carol", kc.realm.password("carol"))
    assert cli.finish()[0] == 0
    carol = hub_user(kc, "carol")
    assert carol["admin"] is True
    assert {"platform-admins", "projects:extremes", "realm-role:platform-operator"} <= set(
        carol["groups"]
    )


@pytest.mark.parametrize(
    "who, message",
    [
        ("dave", "not in a group allowed"),  # allowed_groups, as at browser login
        ("bob", "already exists on this platform"),  # sub binding vs an older local account
    ],
)
def test_exchange_applies_the_browser_login_rules(kc, tmp_path, who, message):
    token_file = tmp_path / "t.json"
    cli = LoginProcess(kc.url, token_file)
    browser_confirms(cli.verification_uri, cli.user_code, who, kc.realm.password(who))
    code, out, err = cli.finish()
    assert code == 2 and "the hub refused the login (403)" in err and message in err, err
    assert not token_file.exists()
    assert hub_user(kc, who) is None and who not in bound_identities(kc)


def test_denied_in_the_browser_is_a_clear_error(kc, tmp_path):
    token_file = tmp_path / "t.json"
    cli = LoginProcess(kc.url, token_file)
    page = browser_confirms(cli.verification_uri, cli.user_code, "erin", "", deny=True)
    assert page.status_code in (200, 400)
    code, out, err = cli.finish()
    assert code == 2 and f"the login with code {cli.user_code} was denied" in err, err
    assert not token_file.exists() and hub_user(kc, "erin") is None


def test_unwritable_token_file_is_a_clear_error(kc, tmp_path):
    (tmp_path / "a-file").write_text("")
    token_file = tmp_path / "a-file" / "token.json"  # its "directory" is a file
    cli = LoginProcess(kc.url, token_file)
    browser_confirms(cli.verification_uri, cli.user_code, "erin", kc.realm.password("erin"))
    code, out, err = cli.finish()
    assert code == 2 and f"cannot store the token in {token_file}" in err, err
    assert "TWINHUB_TOKEN_FILE" in err and "Traceback" not in err


def test_expired_code_is_a_clear_error(kc, tmp_path):
    kc.realm.set_device(ttl=2)
    try:
        token_file = tmp_path / "t.json"
        cli = LoginProcess(kc.url, token_file)
        code, out, err = cli.finish()
        assert code == 2 and f"the code {cli.user_code} expired" in err, err
        assert "valid for 2 s" in err and not token_file.exists()
        # Confirming it afterwards is refused by the provider too.
        s = requests.Session()
        page = s.get(cli.verification_uri, timeout=30)
        page = _post_form(s, page, "op.deviceInputForm", {"user_code": cli.user_code})
        assert "Grant Access" not in page.text
    finally:
        kc.realm.set_device(ttl=600)


def test_polling_honours_slow_down(kc, tmp_path):
    """The realm asks for 1 s but enforces 2 s: the client must slow down, then succeed."""
    kc.realm.set_device(minInterval=2)
    polls: list[float] = []
    printed: list[str] = []
    result: dict = {}

    def run() -> None:
        try:
            result["record"] = cli_login.login(
                kc.url,
                open_browser=False,
                out=printed.append,
                progress=lambda left: polls.append(time.monotonic()),
                path=tmp_path / "t.json",
                slow_down_step=1,
            )
        except Exception as e:  # reported below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not printed and time.monotonic() < deadline:
            time.sleep(0.05)
        uri, code = CODE_LINE.search(printed[0]).groups()
        while len(polls) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        browser_confirms(uri, code, "erin", kc.realm.password("erin"))
        t.join(60)
    finally:
        kc.realm.set_device(minInterval=0)
    assert "error" not in result, result
    assert result["record"]["user"] == "erin"
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    # 1 s (as asked), then slow_down: 1 s more (RFC 8628: the client adds to its interval).
    assert gaps[0] < 1.9 and all(g >= 1.9 for g in gaps[2:]), gaps


async def _exchange_with(kc, cli_client_id: str, access_token: str) -> dict:
    """The hub's token check, in-process, with the CLI client id set to ``cli_client_id``."""
    meta = requests.get(kc.realm.url + "/.well-known/openid-configuration", timeout=30).json()
    a = TwinhubKeycloakAuthenticator(
        client_id=kc.realm.client_id,
        client_secret=kc.realm.client_secret,
        userdata_url=meta["userinfo_endpoint"],
        introspection_url=meta["introspection_endpoint"],
        cli_client_id=cli_client_id,
        username_claim="preferred_username",
    )
    model, sub = await access_token_auth_model(a, access_token)
    return {"model": model, "sub": sub}


def _device_access_token(kc, username: str) -> str:
    s = requests.Session()
    cfg = cli_login.get_login_config(kc.url, s)
    device = cli_login.start_device_flow(cfg, s)
    browser_confirms(
        device["verification_uri"], device["user_code"], username, kc.realm.password(username)
    )
    return cli_login.poll_for_token(cfg, device, s)["access_token"]


def test_token_of_another_client_or_no_token_is_refused(kc):
    import asyncio

    token = _device_access_token(kc, "erin")
    got = asyncio.run(_exchange_with(kc, kc.realm.cli_client_id, token))
    assert got["sub"] == kc.realm.sub("erin") and got["model"]["name"] == "erin"
    with pytest.raises(web.HTTPError) as e:
        asyncio.run(_exchange_with(kc, "some-other-cli", token))
    assert e.value.status_code == 403 and "issued to client 'twinhub-cli'" in e.value.log_message
    # At the hub: no bearer token, or one Keycloak does not know.
    before = {u["name"] for u in hub_request(kc.rt, "GET", "/users")}
    url = kc.url + "hub/api/twinhub/token-exchange"
    r = requests.post(url, timeout=30)
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["message"]
    r = requests.post(url, headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert r.status_code == 401 and "not valid" in r.json()["message"]
    assert {u["name"] for u in hub_request(kc.rt, "GET", "/users")} == before


def test_clear_errors_for_local_hubs_and_unreachable_hubs(personal_platform, tmp_path):
    env = {**os.environ, "TWINHUB_TOKEN_FILE": str(tmp_path / "t.json")}
    run = lambda hub: subprocess.run(  # noqa: E731
        [TWINHUB, "login", "--hub", hub, "--no-browser"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    r = run(personal_platform.url)
    assert r.returncode == 2 and "uses local accounts" in r.stderr
    assert f"{personal_platform.url}hub/token" in r.stderr
    r = requests.post(personal_platform.url + "hub/api/twinhub/token-exchange", timeout=30)
    assert r.status_code == 404 and "does not log in through Keycloak" in r.json()["message"]
    r = run("http://127.0.0.1:1/")
    assert r.returncode == 2 and "cannot reach the hub at http://127.0.0.1:1/" in r.stderr
    r = run("not-a-url")
    assert r.returncode == 2 and "--hub must be the platform's URL" in r.stderr
    assert not (tmp_path / "t.json").exists()


def test_token_file_is_never_readable_by_others(tmp_path):
    old = os.umask(0)
    try:
        f = tmp_path / "d" / "token.json"
        f.parent.mkdir(mode=0o755)
        f.write_text("old")
        f.chmod(0o644)
        cli_login.save_token({"hub": "h", "user": "u", "token": "secret"}, f)
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert cli_login.load_token(f)["token"] == "secret"
    assert [p.name for p in f.parent.iterdir()] == ["token.json"]  # no temporary left behind


# -- OpenID nonce of the browser login (code flow) -------------------------------------------
def _browser_login(kc, username: str) -> tuple[str, requests.Response]:
    """Code flow through the provider's login form; stops at the hub's callback answer.
    Returns (the authorize URL the hub sent the browser to, the callback's response)."""
    s = requests.Session()
    r = s.get(kc.url + "hub/oauth_login", allow_redirects=False, timeout=30)
    authorize = r.headers["location"]
    page = s.get(authorize, timeout=30)
    m = re.search(r'<form[^>]*id="kc-form-login"[^>]*action="([^"]+)"', page.text)
    assert m, page.text[:500]
    data = {"username": username, "password": kc.realm.password(username)}
    r = s.post(urljoin(page.url, m.group(1)), data=data, allow_redirects=False, timeout=30)
    while r.status_code in (302, 303) and "/hub/oauth_callback" not in r.url:
        r = s.get(urljoin(r.url, r.headers["location"]), allow_redirects=False, timeout=30)
    return authorize, r


def test_browser_login_sends_a_nonce_and_refuses_an_id_token_with_another(kc):
    first, r = _browser_login(kc, "erin")
    assert r.status_code == 302, r.text[:300]  # logged in: the ID token carried our nonce
    second, _ = _browser_login(kc, "erin")
    nonces = [parse_qs(urlparse(u).query)["nonce"][0] for u in (first, second)]
    assert len(nonces[0]) == 64 and nonces[0] != nonces[1]
    kc.realm.set_user("erin", quirk="bad-nonce")
    try:
        _, r = _browser_login(kc, "erin")
    finally:
        kc.realm.reset_user("erin")
    assert r.status_code == 403 and "nonce does not match this login" in r.text


# -- IdP federation: the login page lists the realm's federated identity providers ----------
def test_login_page_lists_federated_idps_and_each_sends_its_hint(kc):
    s = requests.Session()
    page = s.get(kc.url + "hub/login", timeout=30)
    assert page.status_code == 200
    assert "Sign in with Keycloak" in page.text and "University X" in page.text
    assert "EGI &lt;Check-in&gt;" in page.text  # names are escaped
    links = dict(re.findall(r'id="twinhub-idp-([^"]+)" href="([^"]+)"', page.text))
    assert set(links) == {"uni-x", "egi"}
    for alias, href in links.items():
        r = s.get(urljoin(page.url, href.replace("&amp;", "&")), allow_redirects=False)
        q = parse_qs(urlparse(r.headers["location"]).query)
        assert r.headers["location"].startswith(kc.realm.url + "/protocol/openid-connect/auth")
        assert q["kc_idp_hint"] == [alias] and q["nonce"]
    # The plain button sends no hint; an alias that is not configured is refused.
    r = s.get(kc.url + "hub/oauth_login", allow_redirects=False)
    assert "kc_idp_hint" not in r.headers["location"]
    r = s.get(kc.url + "hub/oauth_login?idp=evil", allow_redirects=False)
    assert r.status_code == 400 and "Unknown identity provider &#39;evil&#39;" in r.text

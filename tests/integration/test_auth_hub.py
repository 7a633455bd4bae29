"""The local-accounts authenticator in a real JupyterHub, driven over real HTTP.

``AuthHub`` starts ``jupyterhub`` (which starts configurable-http-proxy itself) with a
throwaway config that calls :func:`twinhub.auth.configure_hub`; nothing is spawned.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from traitlets.config import Config

from tests.helpers.platform import free_port
from twinhub import db
from twinhub.auth import local_accounts, part
from twinhub.hubconf.core import find_proxy
from twinhub.process.runtime import Runtime

pytestmark = pytest.mark.integration

CHP = find_proxy()

HUB_CONFIG = """\
from twinhub.auth.part import AuthPart
from twinhub.process.runtime import Runtime

rt = Runtime.load({state!r})
AuthPart().configure_hub(c, rt)
c.JupyterHub.bind_url = "http://127.0.0.1:{public}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub}"
c.JupyterHub.db_url = {hub_db!r}
c.JupyterHub.cookie_secret_file = {cookie!r}
c.JupyterHub.pid_file = {pid!r}
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api}"
c.ConfigurableHTTPProxy.pid_file = {proxy_pid!r}
# Nothing is spawned in these tests: land on the home page, never on /hub/spawn.
c.JupyterHub.redirect_to_server = False
c.JupyterHub.default_url = "/hub/home"
# Refresh auth info every second so a withdrawn approval is seen at once.
c.Authenticator.auth_refresh_age = 1
"""


class AuthHub:
    """A JupyterHub using TwinhubLocalAuth on a fresh state directory."""

    def __init__(self, state: Path, admin: str = "boss", db_url: str = "") -> None:
        self.state = state
        self.ports = {k: free_port() for k in ("public", "hub", "proxy_api")}
        self.rt = Runtime(
            state_dir=state,
            config=Config({"Twinhub": {"admin_user": admin, "db_url": db_url}}),
            ports=self.ports,
            instance_id=Runtime.make_instance_id(state),
        )
        self.admin = admin
        self.url = f"http://127.0.0.1:{self.ports['public']}/hub/"
        self.hub_db = state / "hub" / "jupyterhub.sqlite"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> str:
        """Start the hub; returns the first admin's password."""
        for d in ("hub", "run", "logs", "secrets"):
            (self.state / d).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.rt.save()
        for line in db.backup_and_upgrade(self.rt):
            print("db:", line)
        admin_password = part.ensure_first_admin(self.rt)
        cfg = self.state / "jupyterhub_config.py"
        cfg.write_text(
            HUB_CONFIG.format(
                state=str(self.state),
                hub_db=f"sqlite:///{self.hub_db}",
                cookie=str(self.state / "secrets" / "cookie-secret"),
                pid=str(self.state / "run" / "jupyterhub.pid"),
                proxy_pid=str(self.state / "run" / "proxy.pid"),
                chp=str(CHP),
                **self.ports,
            )
        )
        self.log = open(self.state / "logs" / "hub.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyterhub"), "-f", str(cfg)],
            cwd=self.state,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited: {self.log_text()[-3000:]}")
            try:
                if requests.get(self.url + "api/", timeout=2).status_code == 200:
                    return admin_password
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"jupyterhub not up in {timeout}s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return (self.state / "logs" / "hub.log").read_text()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        proxy_pid = self.state / "run" / "proxy.pid"
        if proxy_pid.exists():  # the hub stops the proxy it started; make sure of it
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(proxy_pid.read_text()), 15)
        if getattr(self, "log", None):
            self.log.close()

    def hub_users(self) -> set[str]:
        with sqlite3.connect(self.hub_db) as c:
            return {r[0] for r in c.execute("SELECT name FROM users")}


def form_xsrf(html: str) -> str:
    m = re.search(r'name="_xsrf" value="([^"]+)"', html)
    assert m, "no _xsrf field in the form"
    return m.group(1)


def login(hub: AuthHub, name: str, password: str) -> tuple[requests.Session, requests.Response]:
    s = requests.Session()
    page = s.get(hub.url + "login", timeout=10)
    assert page.status_code == 200
    r = s.post(
        hub.url + "login",
        data={"username": name, "password": password, "_xsrf": form_xsrf(page.text)},
        allow_redirects=False,
        timeout=30,
    )
    return s, r


def post_form(s: requests.Session, url: str, data: dict) -> requests.Response:
    """GET the page for its xsrf token, then POST the form like a browser."""
    token = form_xsrf(s.get(url, timeout=10).text)
    return s.post(url, data={**data, "_xsrf": token}, allow_redirects=False, timeout=30)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = AuthHub(tmp_path_factory.mktemp("authhub"))
    try:
        h.admin_password = h.start()
        yield h
    finally:
        h.stop()
    assert h.proc.returncode is not None


def test_admin_logs_in_with_generated_password(hub):
    assert hub.admin_password
    s, r = login(hub, hub.admin, hub.admin_password)
    assert r.status_code == 302, r.text[-500:]
    assert hub.admin in hub.hub_users()
    me = s.get(hub.url + "api/user", timeout=10, headers={"Referer": hub.url})
    assert me.status_code == 200 and me.json()["admin"] is True


def test_wrong_password_fails_and_creates_no_user(hub):
    local_accounts.create_account(hub.rt.db_url, "walter", password="walter-password")
    _, r = login(hub, "walter", "not-the-password")
    assert r.status_code == 403 and "Invalid username or password" in r.text
    _, r = login(hub, "nobody-here", "whatever-password")
    assert r.status_code == 403
    assert not {"walter", "nobody-here"} & hub.hub_users()


def test_signup_then_admin_approval_then_login(hub):
    s = requests.Session()
    login_page = s.get(hub.url + "login", timeout=10).text
    assert 'href="/hub/signup"' in login_page  # our login.html extends JupyterHub's
    r = post_form(
        s,
        hub.url + "signup",
        {"username": "sam", "password": "sam-password-1", "password_confirm": "sam-password-1"},
    )
    assert r.status_code == 200 and "must approve it" in r.text
    # Bad input is refused with the reason, not stored.
    r = post_form(
        s, hub.url + "signup", {"username": "tim", "password": "x", "password_confirm": "x"}
    )
    assert r.status_code == 400 and "at least 10 characters" in r.text
    assert local_accounts.get_account(hub.rt.db_url, "tim") is None

    # Not approved: right password, clear message, no hub user.
    _, r = login(hub, "sam", "sam-password-1")
    assert r.status_code == 403 and "waiting for approval" in r.text
    assert "sam" not in hub.hub_users()

    admin, r = login(hub, hub.admin, hub.admin_password)
    assert r.status_code == 302
    page = admin.get(hub.url + "authorize", timeout=10)
    assert page.status_code == 200 and 'data-user="sam"' in page.text
    # CSRF: the same POST without the form's token is refused and changes nothing.
    r = admin.post(hub.url + "authorize", data={"action": "approve", "username": "sam"},
                   allow_redirects=False, timeout=10)  # fmt: skip
    assert r.status_code == 403
    assert local_accounts.get_account(hub.rt.db_url, "sam").approved is False
    r = post_form(admin, hub.url + "authorize", {"action": "approve", "username": "sam"})
    assert r.status_code == 200 and "sam approved" in r.text
    assert local_accounts.get_account(hub.rt.db_url, "sam").approved is True

    sam, r = login(hub, "sam", "sam-password-1")
    assert r.status_code == 302
    assert "sam" in hub.hub_users()
    assert sam.get(hub.url + "home", timeout=10, allow_redirects=False).status_code == 200

    # Withdrawn approval ends the existing session (auth_refresh_age = 1 s here).
    r = post_form(admin, hub.url + "authorize", {"action": "revoke", "username": "sam"})
    assert r.status_code == 200
    time.sleep(1.5)
    r = sam.get(hub.url + "home", timeout=10, allow_redirects=False)
    assert r.status_code == 302 and "/hub/login" in r.headers["Location"]


def test_non_admin_cannot_reach_approval_page(hub):
    local_accounts.create_account(hub.rt.db_url, "nora", password="nora-password")
    local_accounts.request_account(hub.rt.db_url, "pending1", "pending1-password")
    anon = requests.Session()
    r = anon.get(hub.url + "authorize", allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "/hub/login" in r.headers["Location"]
    nora, r = login(hub, "nora", "nora-password")
    assert r.status_code == 302
    assert nora.get(hub.url + "authorize", timeout=10).status_code == 403
    token = form_xsrf(nora.get(hub.url + "change-password", timeout=10).text)
    r = nora.post(hub.url + "authorize",
                  data={"action": "approve", "username": "pending1", "_xsrf": token},
                  allow_redirects=False, timeout=10)  # fmt: skip
    assert r.status_code == 403
    assert local_accounts.get_account(hub.rt.db_url, "pending1").approved is False


def test_user_changes_password(hub):
    local_accounts.create_account(hub.rt.db_url, "pat", password="pat-password-1")
    pat, r = login(hub, "pat", "pat-password-1")
    assert r.status_code == 302
    url = hub.url + "change-password"
    r = post_form(pat, url, {"current_password": "wrong-one", "new_password": "pat-password-2",
                             "new_password_confirm": "pat-password-2"})  # fmt: skip
    assert r.status_code == 400 and "current password is wrong" in r.text
    r = post_form(pat, url, {"current_password": "pat-password-1", "new_password": "short",
                             "new_password_confirm": "short"})  # fmt: skip
    assert r.status_code == 400 and "at least 10" in r.text
    r = post_form(pat, url, {"current_password": "pat-password-1",
                             "new_password": "pat-password-2",
                             "new_password_confirm": "pat-password-2"})  # fmt: skip
    assert r.status_code == 200 and "Password changed" in r.text
    assert login(hub, "pat", "pat-password-1")[1].status_code == 403
    assert login(hub, "pat", "pat-password-2")[1].status_code == 302


def test_repeated_failures_lock_the_name(hub):
    local_accounts.create_account(hub.rt.db_url, "lou", password="lou-password-1")
    for _ in range(5):
        assert login(hub, "lou", "bad-password")[1].status_code == 403
    _, r = login(hub, "lou", "lou-password-1")
    assert r.status_code == 429 and "Too many failed logins" in r.text


def test_admin_cannot_lock_themself_out_and_hub_deletion_removes_account(hub):
    admin, r = login(hub, hub.admin, hub.admin_password)
    assert r.status_code == 302
    r = post_form(admin, hub.url + "authorize", {"action": "revoke", "username": hub.admin})
    assert r.status_code == 400 and "cannot lock yourself out" in r.text
    assert local_accounts.get_account(hub.rt.db_url, hub.admin).approved is True

    local_accounts.create_account(hub.rt.db_url, "gone", password="gone-password")
    assert login(hub, "gone", "gone-password")[1].status_code == 302
    # Deleting the user through the hub's own REST API (as its admin panel does) runs the
    # authenticator's delete_user hook.
    xsrf = admin.cookies.get("_xsrf", path="/hub/")
    r = admin.delete(hub.url + "api/users/gone", headers={"X-XSRFToken": xsrf}, timeout=10)
    assert r.status_code == 204, r.text
    assert local_accounts.get_account(hub.rt.db_url, "gone") is None
    assert "gone" not in hub.hub_users()
    assert login(hub, "gone", "gone-password")[1].status_code == 403


def test_accounts_in_postgresql(tmp_path, postgres_db):
    """The same hub with twinhub's tables in PostgreSQL (URL with a passfile, no password)."""
    h = AuthHub(tmp_path / "state", db_url=postgres_db)
    try:
        admin_password = h.start()
        assert h.rt.db_url == postgres_db
        s = requests.Session()
        r = post_form(s, h.url + "signup", {"username": "pia", "password": "pia-password-1",
                                            "password_confirm": "pia-password-1"})  # fmt: skip
        assert r.status_code == 200
        admin, r = login(h, h.admin, admin_password)
        assert r.status_code == 302
        post_form(admin, h.url + "authorize", {"action": "approve", "username": "pia"})
        assert login(h, "pia", "pia-password-1")[1].status_code == 302
        with db.session(postgres_db) as dbs:
            names = {a.username for a in dbs.query(db.LocalAccount)}
        assert names == {h.admin, "pia"}
    finally:
        h.stop()

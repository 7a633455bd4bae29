"""A real JupyterHub (+ configurable-http-proxy) using twinhub's spawner, for tests.

Independent of ``twinhub up``: the hub config builds a :class:`twinhub.process.runtime.Runtime` by
hand and calls :func:`twinhub.spawn.modes.configure_hub`, the way ``twinhub/jupyterhub_config.py``
does.  Authentication is JupyterHub's DummyAuthenticator (test-only) plus a service token
with admin scopes; tests act as users through per-user API tokens.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.helpers.platform import free_port
from twinhub.hubconf.core import find_proxy
from twinhub.spawn.os_accounts import RUNTIME_ROOT, remove_runtime_dirs

REPO = Path(__file__).resolve().parents[2]
CHP = find_proxy()

_CONFIG = """
import json, os
from pathlib import Path
from traitlets.config import Config
from twinhub.process.runtime import Runtime
from twinhub.spawn import modes

spec = json.loads(Path(os.environ["LOCALHUB_SPEC"]).read_text())
state = Path(spec["state"])
cfg = Config(spec["config"])
rt = Runtime(state_dir=state, config=cfg, ports=spec["ports"], mode=spec["mode"],
             instance_id=spec["instance_id"])
c = get_config()
modes.SpawnPart().configure_hub(c, rt)
c.JupyterHub.bind_url = rt.local_url
c.JupyterHub.hub_port = rt.ports["hub"]
c.JupyterHub.db_url = "sqlite:///" + str(state / "hub" / "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = str(state / "hub" / "cookie_secret")
c.JupyterHub.pid_file = str(state / "run" / "hub.pid")
c.ConfigurableHTTPProxy.command = [spec["chp"]]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d" % rt.ports["proxy_api"]
c.ConfigurableHTTPProxy.pid_file = str(state / "run" / "proxy.pid")
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{"name": "tester", "api_token": os.environ["LOCALHUB_TOKEN"]}]
c.JupyterHub.load_roles = [{"name": "tester", "services": ["tester"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens", "read:users"]}]
exec(spec.get("extra", ""))
"""


class LocalHub:
    """Start with :meth:`start`, stop with :meth:`stop` (stops servers and the proxy too).

    ``base`` must be world-traversable in multi-user mode (servers run as other accounts);
    the state dir inside it is laid out like the platform's (0711, private subdirs).
    """

    def __init__(
        self, base: Path, mode: str, config: dict, extra: str = "", run_as: str | None = None
    ):
        """``run_as``: an OS account to run the hub as (default: this process's user)."""
        self.run_as = run_as
        self.base = Path(base)
        self.state = self.base / "state"
        self.mode = mode
        self.config = config
        self.extra = extra
        self.token = secrets.token_hex(16)
        self.ports = {"public": free_port(), "proxy_api": free_port(), "hub": free_port()}
        self.url = f"http://127.0.0.1:{self.ports['public']}/"
        self.proc: subprocess.Popen | None = None
        self._user_tokens: dict[str, str] = {}
        self.instance_id = "t" + secrets.token_hex(4)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self, timeout: float = 60) -> LocalHub:
        self.state.mkdir(parents=True, mode=0o711)
        self.state.chmod(0o711)
        for sub in ("hub", "run", "logs", "secrets"):
            (self.state / sub).mkdir(mode=0o700)
        spec = self.base / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "state": str(self.state),
                    "config": self.config,
                    "ports": self.ports,
                    "mode": self.mode,
                    "instance_id": self.instance_id,
                    "chp": str(CHP),
                    "extra": self.extra,
                }
            )
        )
        spec.chmod(0o600)
        (self.base / "jupyterhub_config.py").write_text(_CONFIG)
        env = {**os.environ, "LOCALHUB_SPEC": str(spec), "LOCALHUB_TOKEN": self.token}
        env.pop("TWINHUB_STATE", None)
        run_as = {}
        if self.run_as:
            import pwd

            pw = pwd.getpwnam(self.run_as)
            for path in [self.base, spec, *self.base.joinpath("state").rglob("*"), self.state]:
                os.chown(path, pw.pw_uid, pw.pw_gid)
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
            run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.log = open(self.base / "hub.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.prefix + "/bin/jupyterhub", "-f", str(self.base / "jupyterhub_config.py")],
            cwd=self.base,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **run_as,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited at start:\n{self.log_text()[-3000:]}")
            try:
                if requests.get(self.url + "hub/api/", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"hub not up in {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM the hub (it stops every server and its proxy), kill leftovers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        pidfile = self.state / "run" / "proxy.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
        # as `twinhub down` does: servers of accounts a test removed leave their dirs
        remove_runtime_dirs(RUNTIME_ROOT, self.instance_id)
        self.log.close()

    def log_text(self) -> str:
        return (self.base / "hub.log").read_text(errors="replace")

    # -- REST API ----------------------------------------------------------------------
    def api(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"token {token or self.token}", **kw.pop("headers", {})}
        return requests.request(
            method, self.url + "hub/api" + path, headers=headers, timeout=120, **kw
        )

    def user_token(self, name: str) -> str:
        """An API token of ``name`` (creating the user on first use)."""
        if name not in self._user_tokens:
            self.api("POST", f"/users/{name}")
            r = self.api("POST", f"/users/{name}/tokens", json={"note": "test"})
            r.raise_for_status()
            self._user_tokens[name] = r.json()["token"]
        return self._user_tokens[name]

    def spawn(self, name: str, profile: str | None = None) -> requests.Response:
        """POST the server start as ``name`` itself (user_options ``{"profile": ...}``)."""
        body = {"profile": profile} if profile else {}
        return self.api("POST", f"/users/{name}/server", token=self.user_token(name), json=body)

    def wait_ready(self, name: str, timeout: float = 120) -> str:
        """Wait for ``name``'s server; returns its URL through the proxy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{name}").json()
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return self.url.rstrip("/") + server["url"]
            if not server:
                raise RuntimeError(f"{name}'s server is gone:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"{name}'s server not ready in {timeout} s")

    def start_server(self, name: str, profile: str | None = None) -> str:
        r = self.spawn(name, profile)
        if r.status_code not in (201, 202):
            raise RuntimeError(f"spawn of {name} failed: {r.status_code} {r.text}")
        return self.wait_ready(name)

    def stop_server(self, name: str, timeout: float = 60) -> None:
        self.api("DELETE", f"/users/{name}/server")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.api("GET", f"/users/{name}").json().get("servers"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{name}'s server did not stop in {timeout} s")

    def login_session(self, name: str) -> requests.Session:
        """A browser-like session of ``name``, logged in through the real login form
        (DummyAuthenticator: any password)."""
        s = requests.Session()
        s.get(self.url + "hub/login", timeout=30).raise_for_status()
        r = s.post(
            self.url + "hub/login",
            data={"username": name, "password": "x", "_xsrf": s.cookies.get("_xsrf", "")},
            allow_redirects=False,
            timeout=30,
        )
        if r.status_code != 302:
            raise RuntimeError(f"login of {name} failed: {r.status_code}")
        return s

"""Dask Gateway as a platform service, against real processes.

A real JupyterHub (with its configurable-http-proxy) runs with ``twinhub.gateway.GatewayPart.configure_hub``
applied and the real ``dask-gateway`` component from ``twinhub.gateway.components``.  Users'
real Jupyter servers run code in real kernels; ``Gateway()`` there takes no arguments.

The fixture (``GatewayPlatform``) is a stand-in for ``twinhub up`` until the supervisor starts
the gateway: the test bodies only use ``.url``, ``.hub_api``, ``.token(name)``, ``.spawn(name)``,
``.stop_server(name)``, so they can run against the real platform fixture unchanged.
DummyAuthenticator is used ONLY in this throwaway hub config.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import websocket

from tests.helpers.platform import free_port
from twinhub.gateway import SERVICE_PREFIX, GatewayPart
from twinhub.hubconf.core import find_proxy
from twinhub.process.runtime import Runtime
from twinhub.spawn import resource_limits
from twinhub.spawn.os_accounts import ensure_account

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VENV_BIN = Path(sys.prefix) / "bin"
CHP = find_proxy()
MU_USERS = ("gwtest1", "gwtest2")
PREFIX = "twin-"


def wait_http(url: str, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def instance_processes(instance_id: str) -> list[int]:
    """Pids whose environment carries TWINHUB_INSTANCE=<instance_id> (as the supervisor scans)."""
    needle = f"TWINHUB_INSTANCE={instance_id}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:
            continue
    return found


def cluster_processes(name: str) -> list[int]:
    """Pids of the scheduler/workers of one gateway cluster (tagged by dask-gateway's env)."""
    needle = f"DASK_GATEWAY_CLUSTER_NAME={name}".encode()
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and needle in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:
            continue
    return found


HUB_CONFIG = """
# Throwaway hub config of tests/integration/test_gateway.py (DummyAuthenticator: tests only).
import os, pwd
from jupyterhub.spawner import LocalProcessSpawner
from twinhub.spawn.os_accounts import os_account_name
from twinhub.gateway import GatewayPart
from twinhub.process.runtime import Runtime

rt = Runtime.load({state!r})
c.JupyterHub.bind_url = rt.local_url
c.JupyterHub.hub_bind_url = "http://127.0.0.1:%d" % rt.ports["hub"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d" % rt.ports["proxy_api"]
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.db_url = "sqlite:///" + str(rt.path("hub", "jupyterhub.sqlite"))
c.JupyterHub.cookie_secret_file = str(rt.path("hub", "cookie_secret"))
c.JupyterHub.pid_file = str(rt.path("run", "hub.pid"))
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "tester", "api_token": {tester_token!r}}}]
c.JupyterHub.load_roles = [{{
    "name": "tester",
    "scopes": ["admin:users", "admin:servers", "tokens", "access:servers", "list:users"],
    "services": ["tester"],
}}]
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
c.Spawner.default_url = "/lab"

class MappedSpawner(LocalProcessSpawner):
    # platform user 'alice' runs as OS account 'twin-alice', as twinhub's spawner does
    def _pw(self):
        return pwd.getpwnam(os_account_name(self.user.name, {prefix!r}))
    def make_preexec_fn(self, name):
        return super().make_preexec_fn(self._pw().pw_name)
    def user_env(self, env):
        pw = self._pw()
        env.update(USER=pw.pw_name, HOME=pw.pw_dir, SHELL=pw.pw_shell)
        return env
    def get_env(self):
        env = super().get_env()
        env["HOME"] = self._pw().pw_dir
        return env

if rt.mode == "multi-user":
    c.JupyterHub.spawner_class = MappedSpawner
    c.Spawner.notebook_dir = "~"
else:
    c.JupyterHub.spawner_class = "simple"
    c.Spawner.args = ["--ServerApp.allow_root=True"]
    c.SimpleLocalProcessSpawner.home_dir_template = str(rt.path("homes", "{{username}}"))

GatewayPart().configure_hub(c, rt)
"""


@dataclass
class GatewayPlatform:
    """A real hub + proxy + dask-gateway under a tmp state dir (stand-in for `twinhub up`)."""

    rt: Runtime
    tester_token: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.rt.local_url

    @property
    def hub_api(self) -> str:
        return self.url + "hub/api"

    @property
    def gateway(self) -> str:
        return self.url.rstrip("/") + SERVICE_PREFIX

    @classmethod
    def start(cls, state: Path, mode: str, shared: Path | None = None) -> GatewayPlatform:
        state.mkdir(parents=True, mode=0o700)
        config = {"TwinhubGateway": {"max_workers_per_cluster": 2, "max_clusters_per_user": 1}}
        if shared is not None:
            config["Twinhub"] = {"shared_dir": str(shared), "user_prefix": PREFIX}
        rt = Runtime(
            state_dir=state,
            ports={k: free_port() for k in ("public", "proxy_api", "hub", "dask-gateway")},
            mode=mode,
            instance_id="gwtest-" + uuid.uuid4().hex[:8],
        )
        rt.config.merge(config)
        for d in ("hub", "run", "logs", "homes"):
            rt.path(d).mkdir(mode=0o700, exist_ok=True)
        rt.save()
        GatewayPart().prepare(rt, print)
        p = cls(rt=rt, tester_token=uuid.uuid4().hex)
        hub_cfg = rt.path("hub", "jupyterhub_config.py")
        hub_cfg.write_text(
            HUB_CONFIG.format(
                state=str(state),
                chp=CHP,
                tester_token=p.tester_token,
                singleuser=str(VENV_BIN / "jupyterhub-singleuser"),
                prefix=PREFIX,
            )
        )
        env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "LANG": "C.UTF-8", "TWINHUB_STATE": str(state)}
        try:
            (gw,) = GatewayPart().components(rt)
            p._launch(gw.name, gw.argv, {**env, **gw.env}, state)
            deadline = time.monotonic() + 60
            while not gw.ready():
                assert p.procs[gw.name].poll() is None, p.log(gw.name)
                assert time.monotonic() < deadline, "gateway not ready: " + p.log(gw.name)
                time.sleep(0.3)
            p._launch(
                "hub", [str(VENV_BIN / "jupyterhub"), "-f", str(hub_cfg)], env, rt.path("hub")
            )
            wait_http(p.hub_api + "/", 90, p.procs["hub"])
        except Exception:
            p.stop()
            raise
        return p

    def _launch(self, name: str, argv: list[str], env: dict, cwd: Path) -> None:
        log = open(self.rt.path("logs", f"{name}.log"), "ab")  # noqa: SIM115 (lives with proc)
        self.procs[name] = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self, name: str) -> str:
        return self.rt.path("logs", f"{name}.log").read_text(errors="replace")

    def stop_process(self, name: str, timeout: float = 60) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def stop(self) -> None:
        # The hub first (it stops user servers, whose hook stops their clusters), then the rest.
        self.stop_process("hub")
        self.stop_process("dask-gateway")
        # As `twinhub down` leaves none: the servers' and clusters' cgroups go with the platform.
        resource_limits.remove_stale(f"twinhub-{self.rt.instance_id}")
        # Its state dir goes too, so no meter will read the accounting cgroups again (as
        # `twinhub down --purge-users`).
        resource_limits.remove_accounting_group(f"twinhub-{self.rt.instance_id}-acct")

    # -- hub API (as the admin 'tester' service) -----------------------------------------------
    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"token {self.tester_token}"}
        return requests.request(method, self.hub_api + path, headers=headers, timeout=60, **kw)

    def token(self, name: str) -> str:
        if name not in self._tokens:
            self.api("POST", f"/users/{name}")  # 201 or 409 (exists)
            r = self.api("POST", f"/users/{name}/tokens", json={"note": "test"})
            r.raise_for_status()
            self._tokens[name] = r.json()["token"]
        return self._tokens[name]

    def spawn(self, name: str, timeout: float = 120) -> str:
        self.token(name)
        r = self.api("POST", f"/users/{name}/server")
        assert r.status_code in (201, 202, 400), r.text  # 400: already running
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.api("GET", f"/users/{name}").json()["servers"].get("", {})
            if server.get("ready"):
                return self.url.rstrip("/") + server["url"]
            time.sleep(0.5)
        raise TimeoutError(f"server of {name} not ready after {timeout} s")

    def login_session(self, name: str, password: str = "any") -> requests.Session:
        """A browser-like session logged in to the hub (DummyAuthenticator accepts any password)."""
        s = requests.Session()
        s.get(self.url + "hub/login", timeout=30)
        r = s.post(
            self.url + "hub/login",
            data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf", "")},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 302, r.text
        s.headers["Accept"] = "text/html,application/xhtml+xml,*/*;q=0.8"
        return s

    def stop_server(self, name: str, timeout: float = 90) -> None:
        self.api("DELETE", f"/users/{name}/server")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "" not in self.api("GET", f"/users/{name}").json()["servers"]:
                return
            time.sleep(0.5)
        raise TimeoutError(f"server of {name} did not stop in {timeout} s")


# -- a minimal Jupyter kernel client (kernel REST API + websocket) -----------------------------
def run_code(server_url: str, token: str, code: str, timeout: float = 180) -> str:
    """Run ``code`` in a fresh kernel of a real Jupyter server; return its stdout.

    Raises AssertionError with the traceback when the code fails.  (Kept here, self-contained,
    rather than depending on the return shape of another helper's client.)
    """
    base = server_url.rstrip("/")
    h = {"Authorization": f"token {token}"}
    kernel = requests.post(f"{base}/api/kernels", headers=h, json={}, timeout=60)
    kernel.raise_for_status()
    kid = kernel.json()["id"]
    ws_url = base.replace("http", "ws", 1) + f"/api/kernels/{kid}/channels"
    ws = websocket.create_connection(
        ws_url, header=[f"Authorization: token {token}"], timeout=timeout
    )
    try:
        msg_id = uuid.uuid4().hex
        ws.send(
            json.dumps(
                {
                    "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                               "msg_type": "execute_request", "version": "5.3"},
                    "parent_header": {}, "metadata": {}, "channel": "shell",
                    "content": {"code": code, "silent": False, "store_history": False,
                                "user_expressions": {}, "allow_stdin": False},
                }
            )
        )  # fmt: skip
        out, error = [], None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                out.append(content["text"])
            elif kind == "error":
                error = "\n".join(content["traceback"])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        assert error is None, re.sub(r"\x1b\[[0-9;]*m", "", error)
        return "".join(out)
    finally:
        ws.close()
        requests.delete(f"{base}/api/kernels/{kid}", headers=h, timeout=30)


# The user's notebook code: no arguments anywhere.
CREATE_AND_COMPUTE = """
import time
from dask_gateway import Gateway
import dask.array as da
g = Gateway()
t0 = time.monotonic()
# Outlive this kernel (closed after the code runs): the hub's hook must stop it.
cluster = g.new_cluster(shutdown_on_close=False)
t1 = time.monotonic()
cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=120)
t2 = time.monotonic()
x = da.arange(1_000_000, chunks=100_000).astype("float64")
print("MEAN", x.mean().compute())
print("WORKERS", len(client.scheduler_info()["workers"]))
print("NAME", cluster.name)
print("LINK", cluster.dashboard_link)
print("TIMES", round(t1 - t0, 2), round(t2 - t1, 2))
client.close()
"""


def parse(out: str) -> dict[str, str]:
    return dict(
        line.split(" ", 1) for line in out.strip().splitlines() if re.match(r"^[A-Z]+ ", line)
    )


# ---------------------------------------------------------------------------------------------
# personal mode
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gw_platform(tmp_path_factory):
    p = GatewayPlatform.start(tmp_path_factory.mktemp("gw-personal") / "state", "personal")
    yield p
    p.stop()
    leftovers = instance_processes(p.rt.instance_id)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes left behind: {leftovers}"


def test_anonymous_gateway_api_refused(gw_platform):
    for path in ("/api/v1/clusters/", "/api/v1/options"):
        r = requests.get(gw_platform.gateway + path, timeout=30)
        assert r.status_code == 401, (path, r.status_code, r.text)
    r = requests.post(gw_platform.gateway + "/api/v1/clusters/", json={}, timeout=30)
    assert r.status_code == 401
    # Through the hub's public proxy as well as on loopback.
    r = requests.get(gw_platform.url + "services/dask-gateway/api/v1/clusters/", timeout=30)
    assert r.status_code == 401
    bad = {"Authorization": "jupyterhub not-a-token"}
    assert requests.get(gw_platform.gateway + "/api/v1/clusters/", headers=bad).status_code == 401


def test_user_cluster_lifecycle_and_isolation(gw_platform):
    p = gw_platform
    url_a = p.spawn("alice")
    out = parse(run_code(url_a, p.token("alice"), CREATE_AND_COMPUTE))
    assert float(out["MEAN"]) == pytest.approx(499999.5)
    assert out["WORKERS"] == "2"
    name = out["NAME"]
    assert out["LINK"] == f"{p.url.rstrip('/')}{SERVICE_PREFIX}/clusters/{name}/status"
    print("cluster start / scale-to-2 seconds:", out["TIMES"])

    ha = {"Authorization": f"jupyterhub {p.token('alice')}"}
    hb = {"Authorization": f"jupyterhub {p.token('bob')}"}
    # -- dashboard: anonymous refused, owner served (HTML + Bokeh websocket), others 404 -----
    status = f"{p.gateway}/clusters/{name}/status"
    r = requests.get(status, timeout=30, allow_redirects=False)
    assert r.status_code == 401
    r = requests.get(status, headers={"Accept": "text/html"}, allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["Location"]
    r = requests.get(status, headers=ha, timeout=60)
    assert r.status_code == 200 and "bokeh" in r.text.lower(), r.text[:500]
    # ...and its live updates: Bokeh's websocket, proxied over the cluster's TLS.
    bokeh_token = re.search(r'"token":\s*"([^"]+)"', r.text).group(1)
    ws = websocket.create_connection(
        status.replace("http", "ws", 1) + "/ws",
        header=[f"Authorization: {ha['Authorization']}"],
        subprotocols=["bokeh", bokeh_token],
        timeout=60,
    )
    try:
        assert '"msgtype":"ACK"' in ws.recv().replace(" ", "")
    finally:
        ws.close()
    r = requests.get(status, headers=hb, timeout=30)
    assert r.status_code == 404
    # Browsers: hub login, then OAuth through the hub, then the dashboard (owner only).
    browser_a = p.login_session("alice")
    r = browser_a.get(status.replace(p.gateway, p.url.rstrip("/") + SERVICE_PREFIX), timeout=60)
    assert r.status_code == 200 and "bokeh" in r.text.lower(), (r.url, r.text[:300])
    browser_b = p.login_session("bob")
    r = browser_b.get(status, timeout=60)
    assert r.status_code == 404 and "oauth_callback" in r.history[-1].url, [
        h.url for h in r.history
    ]
    # alice's dashboard session cookie is worth nothing on the API (tokens only there)
    r = requests.get(f"{p.gateway}/api/v1/clusters/", cookies=browser_a.cookies, timeout=30)
    assert r.status_code == 401
    r = requests.get(f"{p.gateway}/clusters/{name}/info/main/workers.html", headers=hb, timeout=30)
    assert r.status_code == 404
    # -- API: bob cannot see, scale or stop alice's cluster --------------------------------------
    assert name not in requests.get(f"{p.gateway}/api/v1/clusters/", headers=hb).json()
    assert requests.get(f"{p.gateway}/api/v1/clusters/{name}", headers=hb).status_code in (403, 404)
    r = requests.post(f"{p.gateway}/api/v1/clusters/{name}/scale", headers=hb, json={"count": 0})
    assert r.status_code in (403, 404)
    assert requests.delete(f"{p.gateway}/api/v1/clusters/{name}", headers=hb).status_code in (
        403,
        404,
    )
    # alice's own view: her cluster, still running with its TLS credentials only for her
    mine = requests.get(f"{p.gateway}/api/v1/clusters/{name}", headers=ha).json()
    assert mine["status"] == "RUNNING" and mine["tls_cert"]

    # -- limit: one cluster per user here -----------------------------------------------------
    r = requests.post(f"{p.gateway}/api/v1/clusters/", headers=ha, json={"cluster_options": {}})
    assert r.status_code == 422 and "the most allowed is 1" in r.text, r.text

    # -- stopping alice's server stops her cluster (post_stop_hook) ------------------------------
    p.stop_server("alice")
    r = requests.get(
        f"{p.gateway}/api/v1/clusters/", headers=ha, params={"status": "PENDING,RUNNING"}
    )
    assert r.json() == {}, r.text
    r = requests.get(f"{p.gateway}/api/v1/clusters/{name}", headers=ha).json()
    assert r["status"] in ("STOPPED", "FAILED"), r


def test_scheduler_http_port_needs_cluster_certificate(gw_platform):
    """A local process without the cluster's key cannot read the dashboard port directly."""
    p = gw_platform
    ha = {"Authorization": f"jupyterhub {p.token('alice')}"}
    r = requests.post(f"{p.gateway}/api/v1/clusters/", headers=ha, json={"cluster_options": {}})
    assert r.status_code == 201, r.text
    name = r.json()["name"]
    try:
        info = requests.get(
            f"{p.gateway}/api/v1/clusters/{name}?wait", headers=ha, timeout=90
        ).json()
        assert info["status"] == "RUNNING", info
        log = (p.rt.path("run", "dask-clusters", name, "logs", "scheduler.log")).read_text()
        m = re.search(r"dashboard at:\s+https?://[\d.]+:(\d+)", log) or re.search(
            r"Dashboard at:\s+\S+?:(\d+)", log
        )
        assert m, log
        port = int(m.group(1))
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"https://127.0.0.1:{port}/status", verify=False, timeout=10)
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{port}/status", timeout=10)
        # ...while the holder of the cluster's key (its owner, the gateway) gets in.
        certs = p.rt.path("run", "dask-clusters", name, ".certs")
        r = requests.get(
            f"https://127.0.0.1:{port}/status",
            cert=(str(certs / "dask.crt"), str(certs / "dask.pem")),
            verify=False,
            timeout=30,
        )
        assert r.status_code == 200
    finally:
        requests.delete(f"{p.gateway}/api/v1/clusters/{name}", headers=ha)


def test_no_process_outlives_the_gateway(gw_platform):
    """Even a SIGKILLed gateway leaves no scheduler or worker behind (parent-death signal)."""
    p = gw_platform
    hb = {"Authorization": f"jupyterhub {p.token('bob')}"}
    r = requests.post(f"{p.gateway}/api/v1/clusters/", headers=hb, json={"cluster_options": {}})
    assert r.status_code == 201, r.text
    name = r.json()["name"]
    info = requests.get(f"{p.gateway}/api/v1/clusters/{name}?wait", headers=hb, timeout=90).json()
    assert info["status"] == "RUNNING", info
    r = requests.post(f"{p.gateway}/api/v1/clusters/{name}/scale", headers=hb, json={"count": 1})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(cluster_processes(name)) < 2:
        time.sleep(0.5)
    assert len(cluster_processes(name)) == 2  # scheduler + worker
    assert set(cluster_processes(name)) <= set(instance_processes(p.rt.instance_id))
    p.procs["dask-gateway"].kill()
    p.procs.pop("dask-gateway").wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and instance_processes(p.rt.instance_id):
        time.sleep(0.5)
    assert instance_processes(p.rt.instance_id) == []


# ---------------------------------------------------------------------------------------------
# multi-user mode: the gateway runs as root, clusters as the users' OS accounts
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gw_multiuser(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("multi-user mode creates OS accounts: needs root")
    made, leftovers, shared_left = [], [], None
    shared = Path(f"/tmp/twinhub-gwtest-{uuid.uuid4().hex[:8]}")  # world-traversable parent
    shared.mkdir(mode=0o755)
    p = None
    try:
        p = GatewayPlatform.start(
            tmp_path_factory.mktemp("gw-multi") / "state", "multi-user", shared=shared
        )
        # Made as the spawner makes them (recorded in this state dir): the gateway runs
        # clusters only as accounts its own platform made.
        for u in MU_USERS:
            made.append(ensure_account(u, p.rt.state_dir, PREFIX).name)
        yield p
    finally:
        if p is not None:
            p.stop()
            # the gateway removed its clusters directory and the (now empty) shared dir
            shared_left = list(shared.rglob("*")) if shared.exists() else None
            leftovers = instance_processes(p.rt.instance_id)
            for pid in leftovers:
                os.kill(pid, signal.SIGKILL)
        for name in made:
            # processes still running as the throwaway account (by pid: /proc owner)
            uid = pwd.getpwnam(name).pw_uid
            for d in Path("/proc").iterdir():
                try:
                    if d.name.isdigit() and d.stat().st_uid == uid:
                        os.kill(int(d.name), signal.SIGKILL)
                except OSError:
                    continue
            subprocess.run(["userdel", "--remove", name], capture_output=True)
        shutil.rmtree(shared, ignore_errors=True)
    assert not leftovers, f"processes left behind: {leftovers}"
    assert shared_left is None, f"shared dir left behind, holding {shared_left}"


@pytest.mark.multiuser
def test_multiuser_clusters_run_as_the_users_account(gw_multiuser):
    p = gw_multiuser
    a, b = MU_USERS
    url_a = p.spawn(a)
    out = parse(run_code(url_a, p.token(a), CREATE_AND_COMPUTE))
    assert float(out["MEAN"]) == pytest.approx(499999.5)
    name = out["NAME"]
    account = pwd.getpwnam(PREFIX + a)

    # Scheduler and both workers run as the user's account, not root.
    pids = cluster_processes(name)
    assert len(pids) == 3, pids
    for pid in pids:
        assert os.stat(f"/proc/{pid}").st_uid == account.pw_uid
        status = Path(f"/proc/{pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        assert set(uids) == {str(account.pw_uid)}, status
    # Its directory: under the shared dir, the user's own, closed to everyone else.
    workdir = p.rt.shared_dir / "dask-clusters" / name
    st = workdir.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (account.pw_uid, 0o700)

    # User B, from a kernel of B's own server: cannot read A's dir, see, use or stop A's
    # cluster, nor reach its dashboard through the gateway or directly.
    url_b = p.spawn(b)
    log = (workdir / "logs" / "scheduler.log").read_text()
    port = int(re.search(r"dashboard at:\s+\S+?:(\d+)", log, re.I).group(1))
    probe = f"""
import os, requests, warnings
warnings.simplefilter("ignore")
from dask_gateway import Gateway
g = Gateway()
try:
    os.listdir({str(workdir)!r}); print("LISTDIR ok")
except PermissionError:
    print("LISTDIR denied")
print("SEES", {name!r} in [c.name for c in g.list_clusters()])
for what, call in [("CONNECT", lambda: g.connect({name!r})), ("STOP", lambda: g.stop_cluster({name!r}))]:
    try:
        call(); print(what, "ok")
    except Exception as e:
        print(what, "refused", type(e).__name__)
h = {{"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]}}
r = requests.get(os.environ["DASK_GATEWAY__ADDRESS"] + "/clusters/{name}/status", headers=h)
print("DASHBOARD", r.status_code)
try:
    requests.get("https://127.0.0.1:{port}/status", verify=False, timeout=10)
    print("DIRECT ok")
except requests.exceptions.SSLError:
    print("DIRECT refused")
"""
    seen = parse(run_code(url_b, p.token(b), probe))
    assert seen == {
        "LISTDIR": "denied", "SEES": "False", "CONNECT": seen["CONNECT"], "STOP": seen["STOP"],
        "DASHBOARD": "404", "DIRECT": "refused",
    }, seen  # fmt: skip
    assert seen["CONNECT"].startswith("refused") and seen["STOP"].startswith("refused"), seen
    ha = {"Authorization": f"jupyterhub {p.token(a)}"}
    assert (
        requests.get(f"{p.gateway}/api/v1/clusters/{name}", headers=ha).json()["status"]
        == "RUNNING"
    )
    # ...while A's dashboard is served to A (the root gateway reads A's private certificate).
    r = requests.get(f"{p.gateway}/clusters/{name}/status", headers=ha, timeout=60)
    assert r.status_code == 200 and "bokeh" in r.text.lower()

    # A swaps the cluster's logs dir (A's own) for a link to a dir only root may write, then
    # scales: the root gateway must not create the new worker's log there (it would hand A a
    # root-owned file anywhere, e.g. in /etc/logrotate.d); the worker's start fails instead.
    target = Path(tempfile.mkdtemp(prefix="twinhub-gw-target-"))  # root's, 0700
    try:
        # (clusters here have at most 2 workers: one goes, then a new one is asked for)
        scale = 'from dask_gateway import Gateway\nGateway().connect({!r}).scale({})\nprint("SCALED ok")'
        assert parse(run_code(url_a, p.token(a), scale.format(name, 1))) == {"SCALED": "ok"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not re.search(
            r"Worker \w+ stopped", p.log("dask-gateway")
        ):
            time.sleep(0.5)
        swap = f"""
import os
w = {str(workdir)!r}
os.rename(w + "/logs", w + "/logs-moved")
os.symlink({str(target)!r}, w + "/logs")
"""
        run_code(url_a, p.token(a), swap)
        assert parse(run_code(url_a, p.token(a), scale.format(name, 2))) == {"SCALED": "ok"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Failed to submit worker" not in p.log(
            "dask-gateway"
        ):
            assert list(target.iterdir()) == []
            time.sleep(0.5)
        assert "Failed to submit worker" in p.log("dask-gateway")
        assert list(target.iterdir()) == []
    finally:
        shutil.rmtree(target, ignore_errors=True)

    # A's server stops: A's cluster and its processes are gone.
    p.stop_server(a)
    assert requests.get(f"{p.gateway}/api/v1/clusters/{name}", headers=ha).json()["status"] in (
        "STOPPED", "FAILED",
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and cluster_processes(name):
        time.sleep(0.5)
    assert cluster_processes(name) == []
    assert not workdir.exists()
    p.stop_server(b)

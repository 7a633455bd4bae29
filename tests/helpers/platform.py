"""Drive a real embedded platform (`twinhub up`) from tests and benchmarks.

``Platform.start(...)`` runs the real CLI in a subprocess, waits for the line that says the
hub answers, and offers small helpers over the real HTTP APIs.  Nothing here is a fake.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from twinhub.process.ports import UNPRIVILEGED_PORTS, pick_port

VENV_BIN = Path(sys.prefix) / "bin"
TWINHUB = str(VENV_BIN / "twinhub")


def twinhub_cli(
    *args: str, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TWINHUB, *args], capture_output=True, text=True, timeout=timeout, check=check
    )


@dataclass
class Platform:
    state: Path
    mode: str
    proc: subprocess.Popen
    url: str = ""
    admin_password: str = ""
    output: list[str] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)

    # -- lifecycle ---------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        state: Path,
        mode: str = "personal",
        port: int = 0,
        extra: list[str] | None = None,
        timeout: float = 180,
        seed: str = "",
    ) -> Platform:
        """``seed``: the sample data to load (default none: most tests need no data)."""
        if port == 0:
            port = free_port()
        argv = [TWINHUB, "up", "--state", str(state), "--port", str(port), "--mode", mode]
        if not any(a.startswith("--TwinhubDataLake.seed=") for a in extra or []):
            argv.append(f"--TwinhubDataLake.seed={seed}")
        # Two test sessions on one machine (parallel work) would share OS accounts named
        # twin-<user>: each may give its own prefix.
        if os.environ.get("TWINHUB_TEST_USER_PREFIX"):
            argv.append(f"--Twinhub.user_prefix={os.environ['TWINHUB_TEST_USER_PREFIX']}")
        proc = subprocess.Popen(
            argv + (extra or []),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        p = cls(state=Path(state), mode=mode, proc=proc)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                p.output.append(line.rstrip("\n"))
                m = re.search(r"twinhub is up at (\S+)", line)
                if m:
                    p.url = m.group(1)
                m = re.search(r"first admin account: \S+\s+password: (\S+)", line)
                if m:
                    p.admin_password = m.group(1)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not p.url and proc.poll() is None:
            time.sleep(0.1)
        # Let the lines after the URL (first admin password) arrive.
        time.sleep(0.5)
        if not p.url:
            p.stop()
            raise RuntimeError("twinhub up did not come up:\n" + "\n".join(p.output[-40:]))
        return p

    def stop(self, timeout: float = 90) -> str:
        """SIGTERM the supervisor (as Ctrl-C would) and return everything it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.2)
        return "\n".join(self.output)

    # -- CLI ---------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = twinhub_cli(*args, "--state", str(self.state))
        if check and r.returncode != 0:
            raise RuntimeError(f"twinhub {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def add_user(self, name: str, *, admin: bool = False, groups: tuple[str, ...] = ()) -> str:
        args = ["user", "add", name] + (["--admin"] if admin else [])
        for g in groups:
            args += ["--group", g]
        out = self.cli(*args).stdout
        return re.search(r"password: (\S+)", out).group(1)

    def token(self, name: str) -> str:
        if name not in self._tokens:
            self._tokens[name] = self.cli("user", "token", name).stdout.strip()
        return self._tokens[name]

    # -- HTTP --------------------------------------------------------------------------
    @property
    def hub_api(self) -> str:
        return self.url + "hub/api"

    def api(self, method: str, path: str, user: str | None = None, token: str | None = None, **kw):
        headers = kw.pop("headers", {})
        tok = token or (self.token(user) if user else None)
        if tok:
            headers["Authorization"] = f"token {tok}"
        return requests.request(method, self.hub_api + path, headers=headers, timeout=60, **kw)

    def spawn(self, name: str, profile: str | None = None, timeout: float = 120) -> str:
        """Start ``name``'s server through the REST API and wait until it is ready; returns its URL."""
        body = {"profile": profile} if profile else None
        r = self.api("POST", f"/users/{name}/server", user=name, json=body)
        if r.status_code == 400 and "already running" in r.text:
            server = self.api("GET", f"/users/{name}", user=name).json()["servers"][""]
            return self.url.rstrip("/") + server["url"]
        if r.status_code not in (201, 202):
            raise RuntimeError(f"spawn of {name} failed: {r.status_code} {r.text}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.api("GET", f"/users/{name}", user=name).json()
            server = info.get("servers", {}).get("")
            if server and server.get("ready"):
                return self.url.rstrip("/") + server["url"]
            if not server:
                raise RuntimeError(f"server of {name} stopped while starting")
            time.sleep(0.2)
        raise TimeoutError(f"server of {name} not ready after {timeout} s")

    def stop_server(self, name: str, timeout: float = 60) -> None:
        self.api("DELETE", f"/users/{name}/server", user=name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.api("GET", f"/users/{name}", user=name).json()
            if not info.get("servers"):
                return
            time.sleep(0.2)
        raise TimeoutError(f"server of {name} did not stop in {timeout} s")

    def login_session(self, name: str, password: str) -> requests.Session:
        """A browser-like session logged in through the real login form."""
        s = requests.Session()
        r = s.get(self.url + "hub/login", timeout=30)
        r.raise_for_status()
        xsrf = s.cookies.get("_xsrf", "")
        r = s.post(
            self.url + "hub/login",
            data={"username": name, "password": password, "_xsrf": xsrf},
            timeout=30,
            allow_redirects=False,
        )
        if r.status_code != 302:
            raise RuntimeError(f"login of {name} failed: {r.status_code}")
        return s


def wait_for_seed(p: Platform | Path, timeout: float = 600) -> dict:
    """Wait until the sample data of platform ``p`` (or of state dir ``p``) is loaded;
    returns its seed state."""
    import json

    f = Path(getattr(p, "state", p)) / "run" / "seed.json"
    deadline = time.monotonic() + timeout
    st: dict = {}
    while time.monotonic() < deadline:
        try:
            st = json.loads(f.read_text())
        except (OSError, ValueError):
            st = {}
        if st.get("status") == "ready":
            return st
        if st.get("status") == "failed":
            raise RuntimeError(f"the sample data failed to load: {st.get('error')}")
        time.sleep(0.5)
    raise TimeoutError(f"sample data not loaded after {timeout:.0f} s (last state: {st})")


def remove_state(state: Path) -> None:
    purge_shared_dir(state)
    shutil.rmtree(state, ignore_errors=True)


def purge_shared_dir(state: Path) -> None:
    """Remove what a stopped platform keeps outside its state dir (/var/lib/twinhub/<id>:
    the STAC database and cluster dirs, when the state dir is not world-traversable)."""
    import json

    try:
        rt = json.loads((Path(state) / "run" / "runtime.json").read_text())
    except (OSError, ValueError):
        return
    instance = rt.get("instance_id", "")
    if instance and "/" not in instance and instance not in (".", ".."):
        shutil.rmtree(Path("/var/lib/twinhub") / instance, ignore_errors=True)


def free_port() -> int:
    """A free loopback port, chosen as the platform chooses its own (see twinhub.process.ports)."""
    return pick_port(UNPRIVILEGED_PORTS)


def free_port_pair(n: int = 2) -> list[int]:
    """``n`` distinct free loopback ports."""
    return [free_port() for _ in range(n)]

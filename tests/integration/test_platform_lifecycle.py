"""`twinhub up/status/down` against the real platform: start, health, bad input, clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.helpers.platform import TWINHUB, Platform, twinhub_cli
from twinhub.process.runtime import Runtime
from twinhub.process.supervisor import pid_alive, processes_of_instance

pytestmark = pytest.mark.integration


def instance_processes(state: Path) -> list[tuple[int, str]]:
    return processes_of_instance(Runtime.make_instance_id(Path(state).resolve()))


@pytest.fixture
def fresh_state(tmp_path) -> Path:
    return tmp_path / "state"


def test_up_status_down_leaves_no_process(fresh_state):
    p = Platform.start(fresh_state, mode="personal")
    try:
        assert p.url.startswith("http://127.0.0.1:")
        assert requests.get(p.url + "hub/api/", timeout=10).status_code == 200
        # Progress was printed while starting, component by component.
        out = "\n".join(p.output)
        for comp in ("proxy", "hub", "idle-culler", "dask-gateway"):
            assert f"{comp}" in out and "ready in" in out
        st = twinhub_cli("status", "--state", str(fresh_state))
        assert st.returncode == 0, st.stdout + st.stderr
        for comp in ("proxy", "hub", "idle-culler"):
            assert comp in st.stdout
        assert "health ok" in st.stdout
        assert instance_processes(fresh_state), "platform processes carry the instance marker"
        down = twinhub_cli("down", "--state", str(fresh_state))
        assert down.returncode == 0, down.stderr
        assert "twinhub is down" in down.stdout
        p.proc.wait(60)
    finally:
        p.stop()
    assert instance_processes(fresh_state) == []
    st = twinhub_cli("status", "--state", str(fresh_state))
    assert st.returncode == 1
    assert "not running" in st.stdout


def test_state_files_are_private_and_secrets_stay_off_command_lines(personal_platform):
    state = personal_platform.state
    rt = Runtime.load(state)
    for sub in ("secrets", "logs", "run", "hub"):
        assert stat.S_IMODE((state / sub).stat().st_mode) == 0o700, sub
    secrets = {}
    for f in (state / "secrets").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        secrets[f.name] = f.read_text().strip()
    assert {"cookie-secret", "proxy-auth-token", "crypt-key"} <= set(secrets)
    for pid, _cmd in processes_of_instance(rt.instance_id):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        for name, value in secrets.items():
            assert value not in cmdline, f"secret {name} on the command line of pid {pid}"
    # One log per component, and the generated, commented config file.
    logs = {f.stem for f in (state / "logs").iterdir()}
    assert {"proxy", "hub", "idle-culler"} <= logs
    config = (state / "twinhub_config.py").read_text()
    assert "# c.Twinhub.port" in config and "Port the public proxy listens on" in config
    ports = json.loads((state / "run" / "runtime.json").read_text())["ports"]
    assert {"public", "proxy_api", "hub"} <= set(ports)


def test_port_in_use_is_refused_and_nothing_is_left(fresh_state):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [TWINHUB, "up", "--state", str(fresh_state), "--port", str(port), "--mode", "personal"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2
    assert f"port {port}" in r.stderr and "already in use" in r.stderr
    assert instance_processes(fresh_state) == []


def test_state_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = twinhub_cli("up", "--state", str(blocker / "state"), "--mode", "personal")
    assert r.returncode == 2
    assert "is not writable" in r.stderr and str(blocker / "state") in r.stderr


def test_bad_flags_are_named():
    r = twinhub_cli("up", "--port", "70000")
    assert r.returncode == 2 and "--port 70000" in r.stderr
    r = twinhub_cli("up", "--mode", "cluster")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = twinhub_cli("status", "--bogus")
    assert r.returncode == 2 and "--bogus" in r.stderr


def test_second_up_on_running_state_is_refused(personal_platform):
    r = twinhub_cli("up", "--state", str(personal_platform.state), "--mode", "personal")
    assert r.returncode == 2
    assert "already running" in r.stderr


def test_up_help_documents_options():
    r = twinhub_cli("up", "--help")
    assert r.returncode == 0
    for opt in ("--state", "--ip", "--port", "--mode", "Twinhub.idle_timeout", "Twinhub.profiles"):
        assert opt in r.stdout, opt


def test_dead_component_is_restarted_and_a_dead_supervisor_is_replaced(fresh_state):
    p = Platform.start(fresh_state, mode="personal")
    q = None
    try:
        records = json.loads((fresh_state / "run" / "components.json").read_text())
        old = records["idle-culler"]["pid"]
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rec = json.loads((fresh_state / "run" / "components.json").read_text())
            if rec["idle-culler"]["pid"] != old and rec["idle-culler"]["state"] == "running":
                break
            time.sleep(0.2)
        assert rec["idle-culler"]["restarts"] == 1, rec["idle-culler"]
        assert p.proc.poll() is None, "one component's death must not stop the platform"
        st = twinhub_cli("status", "--state", str(fresh_state))
        assert re.search(r"idle-culler\s+running .* restarts 1 \(last exit: signal 9", st.stdout)
        assert "idle-culler exited unexpectedly (killed by signal 9)" in "\n".join(p.output)

        # kill -9 of the supervisor: its components stay, status says so, up replaces them.
        p.proc.kill()
        p.proc.wait(10)
        st = twinhub_cli("status", "--state", str(fresh_state))
        assert st.returncode == 1 and "supervisor is gone" in st.stdout, st.stdout
        port = json.loads((fresh_state / "run" / "runtime.json").read_text())["ports"]["public"]
        q = Platform.start(fresh_state, mode="personal", port=port)
        assert "replacing its components" in "\n".join(q.output)
        assert not any(pid_alive(r["pid"]) for r in rec.values())
        assert requests.get(q.url + "hub/api/", timeout=10).status_code == 200
    finally:
        for x in (q, p):
            if x is not None:
                x.stop()
    time.sleep(0.5)
    assert instance_processes(fresh_state) == []


def test_stop_on_failure_brings_back_one_death_stops_all(fresh_state):
    p = Platform.start(
        fresh_state,
        mode="personal",
        extra=[
            "--TwinhubSupervisor.component_restart={'idle-culler': False}",
            "--TwinhubSupervisor.stop_on_failure=True",
        ],
    )
    try:
        records = json.loads((fresh_state / "run" / "components.json").read_text())
        os.kill(records["idle-culler"]["pid"], signal.SIGKILL)
        p.proc.wait(60)
        out = "\n".join(p.output)
        assert "idle-culler exited unexpectedly (killed by signal 9); restart is off" in out
        assert "stopping the platform: idle-culler is down" in out
        assert p.proc.returncode == 1
    finally:
        p.stop()
    time.sleep(0.5)
    assert instance_processes(fresh_state) == []

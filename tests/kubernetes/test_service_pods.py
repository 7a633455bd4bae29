"""The registry's, the desk's and processing's pods as the chart renders them, run for real
outside a pod:
the Deployment's command (`twinhub service run <name>`), its environment, runtime.json from
the ConfigMap and exactly the secret files its projected volume lists. Each migrates
twinhub's tables, serves its probe path without credentials and refuses its API without
them. What a cluster adds is absent: the hub (``hub:8081`` does not resolve here, so the
registry's route reconciliation keeps retrying, as in a pod whose hub is not up yet), and the
port: runtime.json's 8000 is replaced by a free one, the only change to the rendered files."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import helm
from twinhub.db.schema import head_revision

pytestmark = pytest.mark.usefixtures("helm_binaries")

STATE = "/srv/twinhub/state"
SMTP_SECRET = "site-smtp"
SMTP_PASSWORD = "smtp-pass-for-the-test"
VALUES = {
    "twinhub": {
        "services": {
            "desk": {"smtp": {"host": "smtp.example.org", "existingSecret": SMTP_SECRET}},
        }
    }
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pod_files(objects: list[dict], name: str, state: Path, db_url: str) -> dict[str, str]:
    """The pod's $TWINHUB_STATE: runtime.json (its port changed to a free one) and the files
    of the Deployment's projected Secrets volume, each from the Secret it names (CNPG's
    twinhub-db-app: a SQLite URL here; the operator's SMTP Secret: a test password)."""
    secret = helm.find(objects, "Secret", "twinhub-secrets")
    generated = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    others = {"twinhub-db-app": {"uri": db_url}, SMTP_SECRET: {"password": SMTP_PASSWORD}}
    dep = helm.find(objects, "Deployment", f"twinhub-{name}")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    files: dict[str, str] = {}
    for source in volumes["twinhub-secrets"]["projected"]["sources"]:
        ref = source["secret"]
        if ref.get("optional") and ref["name"] not in others:
            continue  # an optional Secret that is not there (no SeaweedFS): no files
        data = generated if ref["name"] == "twinhub-secrets" else others[ref["name"]]
        for item in ref["items"]:
            files[item["path"]] = data[item["key"]]
    (state / "secrets").mkdir(parents=True)
    for path, value in files.items():
        (state / "secrets" / path).write_text(value)
    runtime = json.loads(helm.find(objects, "ConfigMap", "twinhub-runtime")["data"]["runtime.json"])
    runtime["ports"][name] = _free_port()
    (state / "run").mkdir()
    (state / "run" / "runtime.json").write_text(json.dumps(runtime))
    return files


@contextlib.contextmanager
def _pod(
    objects: list[dict], name: str, tmp: Path, db_url: str
) -> Iterator[tuple[str, dict, subprocess.Popen]]:
    """The pod's container started as a process; yields its base URL, secret files, process."""
    state = tmp / name / "state"
    files = _pod_files(objects, name, state, db_url)
    dep = helm.find(objects, "Deployment", f"twinhub-{name}")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TWINHUB_STATE"] == STATE
    env.update(TWINHUB_STATE=str(state), HOME=str(tmp / name))  # the pod's mounts, here
    # The image's PATH has the twinhub script; here it is beside this interpreter.
    command = [
        str(Path(sys.executable).parent / container["command"][0]),
        *container["command"][1:],
    ]
    port = json.loads((state / "run" / "runtime.json").read_text())["ports"][name]
    log = (tmp / f"{name}.log").open("w")
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    proc = subprocess.Popen(command, env={"PATH": path, **env}, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}", files, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _probe(dep: dict) -> str:
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe")}
    (path,) = paths | {container["livenessProbe"]["httpGet"]["path"]}
    return path


def _wait_ready(
    url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.3)
    why = f"exited {proc.returncode}" if proc.poll() is not None else f"no answer in {timeout:g} s"
    pytest.fail(f"{url}: {why}:\n{log.read_text()[-3000:]}")


#: An API route of each service that needs credentials.
API = {"registry": "api/v1/requests", "desk": "api/v1/tickets", "processing": "jobs"}


@pytest.mark.parametrize("name", ["registry", "desk", "processing"])
def test_pod_command_serves_its_probe(name, tmp_path):
    objects = helm.render(extra=VALUES)
    dep = helm.find(objects, "Deployment", f"twinhub-{name}")
    probe = _probe(dep)
    db_url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    with _pod(objects, name, tmp_path, db_url) as (base, files, proc):
        # only its own token, the database, and (the desk) the SMTP password
        want = {f"service-{name}", "db-url"} | ({"smtp-password"} if name == "desk" else set())
        assert set(files) == want
        ready = _wait_ready(base + probe, proc, tmp_path / f"{name}.log")
        assert ready.status_code == 200, ready.text
        refused = httpx.get(f"{base}/services/{name}/{API[name]}", timeout=5)
        assert refused.status_code == 401, refused.text
        assert refused.json()["code"] == 401
    log = (tmp_path / f"{name}.log").read_text()
    assert head_revision() in log  # twinhub's migrations ran at the pod's start
    assert f"{name}: serving /services/{name}/ on 0.0.0.0:" in log
    for path, value in files.items():
        if path != "db-url":  # a SQLite URL here holds no password (the log names the URL)
            assert value not in log, path  # no token or password in the pod's log


def test_desk_pod_reads_the_mounted_smtp_password(tmp_path):
    """The file runtime.json names as TwinhubDesk.smtp_password_file is the one the projected
    volume mounts under the pod's state dir, holding the Secret's key."""
    objects = helm.render(extra=VALUES)
    state = tmp_path / "state"
    _pod_files(objects, "desk", state, "sqlite://")
    runtime = json.loads((state / "run" / "runtime.json").read_text())
    path = runtime["config"]["TwinhubDesk"]["smtp_password_file"]
    assert path.startswith(STATE + "/secrets/")
    here = state / Path(path).relative_to(STATE)
    assert here.read_text() == SMTP_PASSWORD

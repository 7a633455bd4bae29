"""twinlab.services() and the info endpoint's ``registry`` key against a fake registry.

The fake registry is a real HTTP server on loopback standing in for the platform's registry
service (its ``api/v1/entries`` answer): the client's requests, token, deadline and error
handling are exercised over real sockets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

import twinlab
from tests.helpers.platform import free_port
from twinlab import registry
from twinlab.contract import ENV_HUB_TOKEN, ENV_SERVICES
from twinlab.serverext import info, registry_info

TOKEN = "server-token-123"
ENTRIES = [
    {
        "slug": "flood-viewer",
        "name": "Flood viewer",
        "kind": "web-application",
        "thematic_areas": ["extremes", "water"],
        "description": "Maps of **flood** risk.",
        "visibility": "public",
        "url": "/services/flood-viewer/",
        "status": "up",
        "latency_ms": 12.5,
        "version": 2,
        "provider": "Hydro Org",
    },
    {
        "slug": "crop-data",
        "name": "Crop yields",
        "kind": "dataset",
        "thematic_areas": ["agriculture"],
        "description": "",
        "visibility": "project:farm",
        "url": None,
        "status": None,
    },
]


class FakeRegistry(ThreadingHTTPServer):
    """What the registry answers is ``mode``: "ok", "refuse", "not-json", "no-list",
    "slow" (the body dripped a byte at a time, past any deadline) or "hang" (no answer)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "ok"
        self.seen: list[tuple[str, str | None]] = []
        self.stop = threading.Event()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/services/registry/"


class _Handler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def log_message(self, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv = self.server
        srv.seen.append((self.path, self.headers.get("Authorization")))
        if srv.mode == "ok":
            self._send(200, json.dumps({"entries": ENTRIES}).encode())
        elif srv.mode == "refuse":
            self._send(403, b'{"code": 403, "description": "token lacks access:services"}')
        elif srv.mode == "not-json":
            self._send(200, b"<html>proxy error</html>")
        elif srv.mode == "no-list":
            self._send(200, b'{"entries": {"a": 1}}')
        elif srv.mode == "slow":
            body = json.dumps({"entries": ENTRIES}).encode()
            self._send(200, b"", length=len(body))
            for byte in body:
                if srv.stop.wait(0.2):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        elif srv.mode == "hang":
            srv.stop.wait(30)


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    srv = FakeRegistry()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, fake: FakeRegistry) -> FakeRegistry:
    services = {"stac": "http://127.0.0.1:1/services/stac/", "registry": fake.root}
    monkeypatch.setenv(ENV_SERVICES, json.dumps(services))
    monkeypatch.setenv(ENV_HUB_TOKEN, TOKEN)
    registry_info._last.clear()  # the info key reuses an answer for a few seconds
    return fake


def test_services_lists_the_registrys_entries_with_the_servers_token(env: FakeRegistry) -> None:
    found = registry.services()
    assert env.seen == [("/services/registry/api/v1/entries", f"token {TOKEN}")]
    assert [s.slug for s in found] == ["flood-viewer", "crop-data"]
    flood, crop = found
    assert flood == registry.Service(
        slug="flood-viewer",
        name="Flood viewer",
        kind="web-application",
        url="/services/flood-viewer/",
        status="up",
        thematic_areas=("extremes", "water"),
        description="Maps of **flood** risk.",
        visibility="public",
    )
    assert crop.url is None and crop.status is None and crop.visibility == "project:farm"


def test_twinlab_services_is_the_function(env: FakeRegistry) -> None:
    assert twinlab.services is registry.services
    assert [s.name for s in twinlab.services()] == ["Flood viewer", "Crop yields"]
    # loading the module does not hide the function behind a module attribute
    assert callable(twinlab.services)


def test_no_registry_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SERVICES, json.dumps({"stac": "http://127.0.0.1:1/services/stac/"}))
    with pytest.raises(registry.RegistryError, match=r"no registry service: \$TWINHUB_SERVICES"):
        registry.services()
    monkeypatch.delenv(ENV_SERVICES)
    with pytest.raises(registry.RegistryError, match="not a twinhub server"):
        registry.services()


def test_a_refusal_carries_the_registrys_message(env: FakeRegistry) -> None:
    env.mode = "refuse"
    with pytest.raises(registry.RegistryError) as e:
        registry.services()
    assert e.value.status == 403
    assert str(e.value) == "the registry refused (403): token lacks access:services"


@pytest.mark.parametrize(
    ("mode", "words"),
    [("not-json", "answered no JSON"), ("no-list", "no 'entries' list")],
)
def test_an_odd_answer_is_an_error(env: FakeRegistry, mode: str, words: str) -> None:
    env.mode = mode
    with pytest.raises(registry.RegistryError, match=words):
        registry.services()


def test_a_registry_not_listening_is_not_reachable(
    env: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = env.root
    env.shutdown()
    env.server_close()  # nothing listens on that port now
    monkeypatch.setenv(ENV_SERVICES, json.dumps({"registry": root}))
    with pytest.raises(registry.RegistryError, match="the registry is not reachable at "):
        registry.services(timeout=2)


@pytest.mark.parametrize("mode", ["slow", "hang"])
def test_the_deadline_bounds_the_whole_answer(env: FakeRegistry, mode: str) -> None:
    """A registry dripping its body (each byte well within a per-read timeout) or never
    answering cannot hold the caller past the deadline."""
    env.mode = mode
    t0 = time.monotonic()
    with pytest.raises(registry.RegistryError, match="not reachable.*timed out"):
        registry.services(timeout=1.0)
    assert time.monotonic() - t0 < 1.8


def test_info_key_lists_the_shared_services_not_project_ones(env: FakeRegistry) -> None:
    """The info document is read by whoever the owner shares the server with: it leaves out
    the owner's project entries; twinlab.services() (the owner's own code) keeps them."""
    users_only = {**ENTRIES[0], "slug": "members-map", "visibility": "users"}
    ENTRIES.append(users_only)
    try:
        doc = info.collect()
        everything = registry.services()
    finally:
        ENTRIES.remove(users_only)
    assert [s.slug for s in everything] == ["flood-viewer", "crop-data", "members-map"]
    assert doc["registry"] == {
        "url": env.root,
        "services": [s.as_dict() for s in everything if s.slug != "crop-data"],
    }
    assert doc["registry"]["services"][0]["thematic_areas"] == ["extremes", "water"]
    assert "project:farm" not in json.dumps(doc) and "Crop yields" not in json.dumps(doc)
    # the platform's own services stay under "services", as the hub passed them
    assert doc["services"]["registry"] == env.root
    json.dumps(doc)


def test_info_key_reuses_an_answer_for_a_few_seconds(env: FakeRegistry) -> None:
    first = info.collect()["registry"]
    env.mode = "refuse"
    assert info.collect()["registry"] == first
    assert len(env.seen) == 1


def test_info_key_never_breaks_info(env: FakeRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    env.mode = "slow"
    t0 = time.monotonic()
    doc = info.collect()
    # bounded by the key's own 2 s, whatever the registry does
    assert time.monotonic() - t0 < registry_info.TIMEOUT + 1.0
    assert doc["registry"]["services"] == []
    assert "timed out" in doc["registry"]["error"]
    assert doc["user"] is None or isinstance(doc["user"], str)  # the other keys are there

    registry_info._last.clear()
    monkeypatch.setenv(ENV_SERVICES, "{}")
    doc = info.collect()
    assert doc["registry"]["services"] == [] and doc["registry"]["url"] == ""
    assert doc["registry"]["error"].startswith("no registry service")


def test_an_entry_without_a_slug_is_an_error() -> None:
    with pytest.raises(registry.RegistryError, match="without a slug"):
        registry.Service.from_entry({"name": "x"})


def test_importing_loads_only_the_standard_library() -> None:
    code = "import json, sys; {}; print(json.dumps(sorted(sys.modules)))"

    def modules(stmt: str) -> set[str]:
        out = subprocess.run(
            [sys.executable, "-c", code.format(stmt)], capture_output=True, text=True, check=True
        )
        return set(json.loads(out.stdout))

    added = modules("import twinlab.registry") - modules("pass")
    foreign = {m for m in added if m.split(".")[0] not in (*sys.stdlib_module_names, "twinlab")}
    assert not foreign, foreign


def test_a_hanging_registry_neither_breaks_nor_blocks_a_real_server(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    """A bare Jupyter server with the twinlab extension, its registry the fake one never
    answering: ``info`` comes back within the key's bound with ``error``, and the server
    answers other requests meanwhile (the keys are collected off its event loop)."""
    fake.mode = "hang"
    port = free_port()
    env = {
        **os.environ,
        ENV_SERVICES: json.dumps({"registry": fake.root}),
        ENV_HUB_TOKEN: TOKEN,
    }
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [f"{sys.prefix}/bin/jupyter-server", "--no-browser", f"--port={port}",
         "--ServerApp.token=t0k", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
         "--TwinlabDeferredExtensions.delay=600", "--TwinlabTutorials.enabled=False"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/"
        h = {"Authorization": "token t0k"}
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "api/status", headers=h, timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            pending = pool.submit(requests.get, base + "twinlab/api/info", headers=h, timeout=30)
            time.sleep(0.3)  # the info request is waiting on the registry now
            assert not pending.done()
            status = requests.get(base + "api/status", headers=h, timeout=30)
            assert status.ok and time.monotonic() - t0 < 1.5  # not queued behind info
            r = pending.result()
            assert time.monotonic() - t0 < registry_info.TIMEOUT + 1.5
        assert r.status_code == 200
        doc = r.json()
        assert doc["registry"]["services"] == [] and "timed out" in doc["registry"]["error"]
        assert doc["services"] == {"registry": fake.root}
        assert [path for path, _ in fake.seen] == ["/services/registry/api/v1/entries"]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()

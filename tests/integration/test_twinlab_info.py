"""The twinlab server extension in a real hub-spawned server: /twinlab/api/info, auth,
and jupyter-server-proxy being loaded too."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata

import pytest
import requests

from tests.helpers.kernel import run_code
from tests.helpers.localhub import LocalHub, free_port
from twinlab.serverext import info

pytestmark = pytest.mark.integration

PROFILES = [{"slug": "std", "default": True, "limits": {"cpu": 1, "memory": "1G"}}]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[LocalHub, str]]:
    from tests.integration.test_spawner import _base

    base = _base("info")
    hub = LocalHub(base, "personal", {"Twinhub": {"profiles": PROFILES}}).start()
    try:
        yield hub, hub.start_server("tia", "std")
    finally:
        hub.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_info_with_token(server: tuple[LocalHub, str]) -> None:
    hub, url = server
    r = requests.get(
        url + "twinlab/api/info",
        headers={"Authorization": f"token {hub.user_token('tia')}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc["user"] == "tia" and doc["profile"] == "std"
    v = doc["versions"]
    assert v["python"] == platform.python_version()
    assert v["jupyter_server"] == metadata.version("jupyter_server")
    assert v["dask"] == metadata.version("dask")
    assert v["dask_gateway"] == metadata.version("dask-gateway")
    assert v["twinlab"] == __import__("twinlab").__version__
    # No service runs beside this hub (only the spawner part configures it): none is listed.
    assert doc["services"] == {}
    assert doc["limits"]["memory"] == 2**30 and doc["limits"]["cpu"] == 1.0


def test_info_needs_authentication(server: tuple[LocalHub, str]) -> None:
    hub, url = server
    assert requests.get(url + "twinlab/api/info", timeout=30).status_code == 403
    bad = {"Authorization": "token not-a-token"}
    assert requests.get(url + "twinlab/api/info", headers=bad, timeout=30).status_code == 403


def test_info_with_hub_login_cookie(server: tuple[LocalHub, str]) -> None:
    hub, url = server
    browser = hub.login_session("tia")
    # Opening the server follows its OAuth round trip through the hub, as a browser does;
    # API calls then carry the server's cookie (an API does not redirect to log in).
    assert browser.get(url, timeout=30).status_code == 200
    r = browser.get(url + "twinlab/api/info", timeout=30)
    assert r.status_code == 200
    assert r.json()["user"] == "tia"


def test_jupyter_server_proxy_is_loaded(server: tuple[LocalHub, str]) -> None:
    hub, url = server
    token = hub.user_token("tia")
    port = free_port()
    start = f"""
import subprocess, sys, tempfile, time, urllib.request, os
d = tempfile.mkdtemp()
open(os.path.join(d, "hello.txt"), "w").write("hello from a proxied app")
p = subprocess.Popen([sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
                     cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)  # outlives this kernel (killed with its group)
for _ in range(100):
    try:
        urllib.request.urlopen("http://127.0.0.1:{port}/hello.txt"); break
    except OSError:
        time.sleep(0.05)
print(p.pid)
"""
    pid = int(run_code(url, token, start))
    try:
        r = requests.get(
            f"{url}proxy/{port}/hello.txt",
            headers={"Authorization": f"token {token}"},
            timeout=30,
        )
        assert r.status_code == 200 and r.text == "hello from a proxied app"
    finally:
        run_code(url, token, f"import os, signal; os.kill({pid}, signal.SIGTERM)")


def test_dask_sidebar_api_is_loaded_after_start(server: tuple[LocalHub, str]) -> None:
    """dask-labextension's server extension is off the start path (twinlab.serverext.deferred)
    but answers from the first request: the Dask sidebar lists this server's clusters."""
    hub, url = server
    h = {"Authorization": f"token {hub.user_token('tia')}"}
    r = requests.get(url + "dask/clusters", headers=h, timeout=30)
    assert r.status_code == 200 and r.json() == [], r.text
    assert requests.get(url + "dask/clusters", timeout=30).status_code == 403


def test_a_deferred_extension_loads_at_its_first_request(tmp_path) -> None:
    """Before the timer fires, a request to the Dask sidebar's API loads the extension and
    is redirected to itself (307): the sidebar never sees a 404. A bare Jupyter server."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [f"{sys.prefix}/bin/jupyter-server", "--no-browser", f"--port={port}",
         "--ServerApp.token=t0k", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
         "--TwinlabDeferredExtensions.delay=600", "--TwinlabTutorials.enabled=False"],
        stdout=log, stderr=subprocess.STDOUT,
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
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        first = requests.get(base + "dask/clusters", headers=h, allow_redirects=False, timeout=30)
        assert first.status_code == 307 and first.headers["Location"] == "/dask/clusters"
        r = requests.get(base + "dask/clusters", headers=h, allow_redirects=False, timeout=30)
        assert r.status_code == 200 and r.json() == []
        # once loaded, the early route no longer answers: the extension's own handlers do
        r = requests.put(base + "dask/clusters/not-a-uuid", headers=h, timeout=30)
        assert r.status_code != 307
        assert not (tmp_path / "tutorials").exists()  # TwinlabTutorials.enabled=False
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_adding_an_info_key_is_one_function() -> None:
    @info.info_provider("test-extra")
    def _extra() -> dict:
        return {"ok": True}

    @info.info_provider("test-broken")
    def _broken() -> dict:
        raise RuntimeError("backend down")

    try:
        doc = info.collect()
        assert doc["test-extra"] == {"ok": True}
        # One broken key does not hide the others.
        assert doc["test-broken"] == {"error": "RuntimeError: backend down"}
        assert {"user", "profile", "versions", "services"} <= set(doc)
        json.dumps(doc)
    finally:
        info.INFO_PROVIDERS.pop("test-extra")
        info.INFO_PROVIDERS.pop("test-broken")

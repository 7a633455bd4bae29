"""The proxy component as the supervisor starts it answers oversized or malformed requests
with a JSON status instead of resetting the connection (issue 17, item 8)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import requests

from twinhub.hubconf import core
from twinhub.process.runtime import Runtime
from twinhub.process.supervisor import free_port, port_in_use


@pytest.fixture
def proxy(tmp_path):
    try:
        core.find_proxy()
    except FileNotFoundError:
        pytest.skip("configurable-http-proxy is not installed (scripts/setup)")
    for sub in ("secrets", "run"):
        (tmp_path / sub).mkdir(mode=0o700)
    rt = Runtime(state_dir=tmp_path, instance_id="t")
    rt.ports.update(public=free_port(), proxy_api=free_port(), hub=free_port())
    comp = next(c for c in core.CorePart().components(rt) if c.name == "proxy")
    proc = subprocess.Popen(
        comp.argv,
        env={**os.environ, **comp.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not port_in_use("127.0.0.1", rt.ports["public"]):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("proxy did not start: " + proc.communicate()[0][-2000:])
        time.sleep(0.1)
    yield f"http://127.0.0.1:{rt.ports['public']}"
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("size", [20_000, 100_000, 2_000_000])
def test_oversized_headers_get_431_with_a_message(proxy, size: int) -> None:
    for kw in ({"headers": {"X-Big": "a" * size}}, {"cookies": {"big": "c" * size}}):
        r = requests.get(proxy + "/hub/", timeout=10, **kw)
        assert r.status_code == 431
        assert r.json() == {
            "code": 431,
            "description": "request headers too large: at most 16 KiB in all",
        }
    # Still serving: an ordinary request reaches routing (no hub behind it here: 503).
    assert requests.get(proxy + "/hub/", timeout=10).status_code == 503


def test_malformed_request_gets_400_with_a_message(proxy) -> None:
    host, port = proxy.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"NOT-HTTP\r\n\r\n")
        data = s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head
    assert body.startswith(b'{"code":400,"description":"malformed HTTP request')


@pytest.mark.parametrize("path", ["/services/stac/collections/%ff%fe", "/hub/%E0%A4%A", "/%"])
def test_paths_that_are_not_percent_encoded_utf8_get_a_json_400(proxy, path: str) -> None:
    """configurable-http-proxy decodes the path to route it; these made it throw, and the
    request ended as the hub's HTML 500 page."""
    with socket.create_connection(("127.0.0.1", int(proxy.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"percent-encoded" in body
    assert requests.get(proxy + "/hub/%C3%A9t%C3%A9", timeout=10).status_code == 503  # routed

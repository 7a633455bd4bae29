"""Health checks of integrated upstreams: one real check against a real service (no fakes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.helpers.echo_service import EchoService, free_loopback_port
from twinhub.services.registry.health import check, target


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoService]:
    e = EchoService.start()
    yield e
    e.stop()


def run(url: str, allow_private: bool = True, timeout: float = 2.0) -> dict:
    return asyncio.run(check(url, allow_private=allow_private, timeout=timeout))


def test_up_with_latency(echo: EchoService) -> None:
    r = run(echo.url + "/health")
    assert r["status"] == "up" and r["http_status"] == 200 and r["detail"] == ""
    assert isinstance(r["latency_ms"], float) and r["latency_ms"] > 0
    # It is the time the answer took: an upstream that answers after 0.3 s takes at least
    # that long (a lower bound the server sets; nothing here depends on this machine's speed).
    r = run(echo.url + "/slow?s=0.3", timeout=30)
    assert r["status"] == "up" and r["latency_ms"] >= 300
    r = run(echo.url + "/redirect")  # a redirect on its own origin is followed
    assert r["status"] == "up" and r["http_status"] == 200


def test_down_and_why(echo: EchoService) -> None:
    r = run(echo.url + "/fail")
    assert r == {**r, "status": "down", "http_status": 503, "detail": "answered 503"}
    r = run(f"http://127.0.0.1:{free_loopback_port()}/")  # nobody listens there
    assert r["status"] == "down" and r["latency_ms"] is None and r["detail"]
    r = run(echo.url + "/health", allow_private=False)  # loopback, not allowed
    assert r["status"] == "down" and "127.0.0.1" in r["detail"]
    r = run(echo.url + "/slow?s=3", timeout=0.5)
    assert r["status"] == "down" and r["detail"]


def test_target() -> None:
    row = {
        "upstream": "http://u/",
        "allow_private": True,
        "entry": {"endpoints": [{"url": "http://e/"}]},
    }
    assert target(row) == ("http://u/", True)  # the upstream under the admin's rule
    assert target({**row, "allow_private": False}) == ("http://u/", False)
    # no upstream: the provider's endpoint (editable by them) never reaches private
    # addresses, whatever the admin allowed for the upstream
    assert target({**row, "upstream": None}) == ("http://e/", False)
    assert target({**row, "upstream": None, "entry": {"endpoints": []}}) == ("", False)


def test_endpoint_target_refused_on_loopback(echo: EchoService) -> None:
    """An entry without upstream whose endpoint points at a private address is down (the
    guard refused it) even when the row allows private addresses."""
    url, allow_private = target(
        {
            "upstream": None,
            "allow_private": True,
            "entry": {"endpoints": [{"url": echo.url + "/health"}]},
        }
    )
    r = run(url, allow_private=allow_private)
    assert r["status"] == "down" and r["http_status"] is None

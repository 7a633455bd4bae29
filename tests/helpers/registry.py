"""What the registry's platform tests share."""

from __future__ import annotations

import time

import requests


def wait_routed(base_url: str, slug: str, timeout: float = 60) -> None:
    """Until the proxy sends ``/services/<slug>/`` to the registry's gateway (a browser
    without a sign-on is sent to ``/services/registry/sso``): the hub adds an integrated
    service's route at its next route check (every <= 30 s with the registry on)."""
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(
            base_url + f"services/{slug}/",
            headers={"Accept": "text/html"},
            allow_redirects=False,
            timeout=30,
        )
        if r.status_code == 302 and "/services/registry/sso" in r.headers.get("location", ""):
            return
        assert time.monotonic() < deadline, f"/services/{slug}/ not routed: {r.status_code}"
        time.sleep(1)

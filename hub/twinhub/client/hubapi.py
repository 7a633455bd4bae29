"""A small client of the JupyterHub REST API, used by the CLI with its own service token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..process.runtime import Runtime

#: The hub service whose token the CLI and the supervisor use (its role: hubconf.core).
CLI_SERVICE = "twinhub-cli"


class HubAPIError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"hub API error {status}: {message}")
        self.status = status


def hub_request(rt: Runtime, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
    """Call ``/hub/api<path>`` as the twinhub CLI service; returns decoded JSON (or None)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        rt.hub_api_url + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"token {rt.secret('service-' + CLI_SERVICE)}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("message", e.reason)
        except ValueError:
            msg = e.reason
        raise HubAPIError(e.code, msg) from e
    except OSError as e:
        raise HubAPIError(0, f"the hub does not answer at {rt.hub_api_url} ({e})") from e
    return json.loads(raw) if raw else None


def resync_proxy_routes(rt: Runtime) -> None:
    """Ask the hub to add every route the proxy lacks (``POST /hub/api/proxy``)."""
    hub_request(rt, "POST", "/proxy", timeout=30)

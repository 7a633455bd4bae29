"""A twinhub pod's state dir as the Helm chart makes it: runtime.json (the ConfigMap
``twinhub-runtime``, shaped as the chart renders it) and one file per Secret key (the
projected Secrets volume). For tests of the Kubernetes deployment's Python side."""

from __future__ import annotations

import json
from pathlib import Path

SERVICES = ("stac", "cache", "projects", "accounting")


def chart_runtime(
    state: Path,
    *,
    config: dict | None = None,
    ports: dict | None = None,
    secrets: dict[str, str] | None = None,
    **urls: str,
) -> Path:
    """A state dir shaped like a twinhub pod's: runtime.json as the chart renders it (pinned
    in the common brief) and one file per Secret key."""  # fmt: skip
    ports = ports if ports is not None else dict.fromkeys(SERVICES, 8000)
    service_urls = {
        "hub_api": "http://hub:8081/hub/api",
        "proxy": "http://proxy-public",
        **{name: f"http://twinhub-{name}:8000" for name in ports},
        "dask-gateway": "http://traefik-twinhub-dask-gateway",
        "dask-gateway-proxy": "gateway://traefik-twinhub-dask-gateway:80",
        **urls,
    }
    doc = {
        "deployment": "kubernetes",
        "state_dir": "/srv/twinhub/state",
        "mode": "multi-user",
        "public_url": "",
        "instance_id": "twinhub",
        "config": config or {},
        "ports": ports,
        "service_urls": service_urls,
    }
    (state / "run").mkdir(parents=True, exist_ok=True)
    (state / "run" / "runtime.json").write_text(json.dumps(doc))
    (state / "secrets").mkdir(exist_ok=True)
    for name, value in (secrets or {}).items():
        (state / "secrets" / name).write_text(value + "\n")
    return state

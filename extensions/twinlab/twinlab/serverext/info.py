"""What ``/twinlab/api/info`` reports: one small function per key.

A later concern adds a key with::

    @info_provider("registry")
    def _registry() -> dict: ...

Providers must be cheap (no heavy imports: this runs in the user's server on request).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Callable
from importlib import metadata
from typing import Any

INFO_PROVIDERS: dict[str, Callable[[], Any]] = {}

# Distributions whose versions are reported, when installed (metadata only, no import).
VERSIONED = ("jupyter_server", "jupyterlab", "jupyterhub", "dask", "distributed", "dask-gateway")


def info_provider(key: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """Register ``fn`` as the provider of ``key`` in the info document."""

    def register(fn: Callable[[], Any]) -> Callable[[], Any]:
        INFO_PROVIDERS[key] = fn
        return fn

    return register


@info_provider("user")
def _user() -> str | None:
    return os.environ.get("JUPYTERHUB_USER")


@info_provider("profile")
def _profile() -> str | None:
    return os.environ.get("TWINHUB_PROFILE")


@info_provider("versions")
def _versions() -> dict[str, str]:
    from twinlab import __version__

    out = {"twinlab": __version__, "python": platform.python_version()}
    for dist in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist.replace("-", "_")] = metadata.version(dist)
    return out


@info_provider("services")
def _services() -> dict[str, str]:
    """Service name -> URL, as the spawner passed them in ``TWINHUB_SERVICES`` (JSON)."""
    try:
        services = json.loads(os.environ.get("TWINHUB_SERVICES") or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in services.items()} if isinstance(services, dict) else {}


@info_provider("limits")
def _limits() -> dict[str, Any]:
    def num(name: str) -> float | None:
        try:
            return float(os.environ[name])
        except (KeyError, ValueError):
            return None

    mem = num("MEM_LIMIT")
    return {
        "enforced": os.environ.get("TWINHUB_LIMITS_ENFORCED") == "1",
        "memory": int(mem) if mem else None,
        "cpu": num("CPU_LIMIT"),
    }


def collect() -> dict[str, Any]:
    """The whole info document; a failing provider reports its error instead of failing all."""
    out: dict[str, Any] = {}
    for key, fn in INFO_PROVIDERS.items():
        try:
            out[key] = fn()
        except Exception as e:  # one broken key must not hide the others
            out[key] = {"error": f"{type(e).__name__}: {e}"}
    return out

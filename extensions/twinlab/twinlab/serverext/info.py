"""What ``/twinlab/api/info`` reports: one small function per key.

A later concern adds a key with::

    @info_provider("registry")
    def _registry() -> dict: ...

Providers must be cheap (no heavy imports: this runs in the user's server on request).
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from importlib import metadata
from typing import Any

import twinlab
from twinlab import environment

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
    return environment.hub_user()


@info_provider("profile")
def _profile() -> str | None:
    return environment.profile()


@info_provider("versions")
def _versions() -> dict[str, str]:
    out = {"twinlab": twinlab.__version__, "python": platform.python_version()}
    for dist in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist.replace("-", "_")] = metadata.version(dist)
    return out


@info_provider("services")
def _services() -> dict[str, str]:
    """Service name -> URL, as the spawner passed them in ``TWINHUB_SERVICES`` (JSON)."""
    return environment.services()


@info_provider("limits")
def _limits() -> dict[str, Any]:
    mem = environment.mem_limit()
    return {
        "enforced": environment.limits_enforced(),
        "memory": int(mem) if mem else None,
        "cpu": environment.cpu_limit(),
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

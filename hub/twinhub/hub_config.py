"""The hub's configuration in Kubernetes: what z2jh's hub runs after its own.

The chart's ``jupyterhub.hub.extraConfig`` is::

    from twinhub.hub_config import configure
    configure(c)

z2jh's jupyterhub_config.py has already set what is its own (bind URLs, the hub's database,
the proxy, the cookie secret, KubeSpawner's settings from ``singleuser.*``); :func:`configure`
then applies the same parts as the embedded hub (:func:`twinhub.parts.configure_jupyterhub`),
reading the runtime the chart mounts at ``$TWINHUB_STATE/run/runtime.json``. Each part
branches on ``rt.deployment`` only where Kubernetes really differs.
"""

from __future__ import annotations

import os
from typing import Any

from traitlets.config import LazyConfigValue

from .errors import PlatformError
from .parts import configure_jupyterhub
from .process.runtime import Runtime


def configure(c: Any, rt: Runtime | None = None) -> Runtime:
    """Every part's share of the JupyterHub configuration ``c`` (z2jh's, already loaded)."""
    if rt is None:
        if not os.environ.get("TWINHUB_STATE"):
            raise PlatformError(
                "$TWINHUB_STATE is not set in the hub pod: the chart sets it in "
                "jupyterhub.hub.extraEnv (the directory holding run/runtime.json)"
            )
        rt = Runtime.load()
    if not rt.kubernetes:
        # The embedded hub runs jupyterhub_config.py; this file is the chart's.
        raise PlatformError(
            f"{rt.state_dir}/run/runtime.json is not a Kubernetes runtime (deployment "
            f"{rt.deployment!r}): twinhub.hub_config is for the Helm chart's hub"
        )
    configure_jupyterhub(c, rt)
    _one_environment(c)
    return rt


def _one_environment(c: Any) -> None:
    """z2jh sets ``c.KubeSpawner.environment`` (``singleuser.extraEnv``); a subclass's section
    replaces, not merges, what the parts put in ``c.Spawner.environment`` (services' URLs,
    Dask Gateway, the instance): one dict in KubeSpawner's section, z2jh's values on top
    (what the operator wrote wins, as twinhub_config.py does embedded)."""
    if "environment" not in c.KubeSpawner or "environment" not in c.Spawner:
        return
    c.KubeSpawner.environment = {
        **_as_dict(c.Spawner.environment),
        **_as_dict(c.KubeSpawner.environment),
    }


def _as_dict(value: Any) -> dict:
    # c.X.environment.update(...) on a config makes a lazy value holding the updates.
    return dict(value.get_value({})) if isinstance(value, LazyConfigValue) else dict(value)

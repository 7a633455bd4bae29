"""Assemble the JupyterHub configuration from every twinhub module (see hub_config.py)."""

from __future__ import annotations

from typing import Any

from traitlets.config import Config

from ..config import config_classes
from ..process.runtime import Runtime


def own_sections() -> set[str]:
    return {cls.__name__ for cls in config_classes()}


def configure(c: Any, rt: Runtime | None = None) -> Runtime:
    """Apply the whole platform configuration to the JupyterHub config object ``c``."""
    rt = rt or Runtime.load()
    from .. import auth, gateway, objectstore
    from ..services import cache, datalake, projects
    from ..spawn import local as os_spawners
    from . import core

    core.configure_hub(c, rt)
    auth.configure_hub(c, rt)
    os_spawners.configure_hub(c, rt)
    gateway.configure_hub(c, rt)
    objectstore.configure_hub(c, rt)
    datalake.configure_hub(c, rt)
    projects.configure_hub(c, rt)
    cache.configure_hub(c, rt)

    passthrough = Config({k: v for k, v in rt.config.items() if k not in own_sections()})
    c.merge(passthrough)
    return rt

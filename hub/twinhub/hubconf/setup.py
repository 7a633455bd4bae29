"""Assemble the JupyterHub configuration from every part of the platform (see config_file.py)."""

from __future__ import annotations

from typing import Any

from traitlets.config import Config

from .. import parts
from ..process.runtime import Runtime


def own_sections() -> set[str]:
    return {cls.__name__ for cls in parts.config_classes()}


def configure(c: Any, rt: Runtime | None = None) -> Runtime:
    """Apply the whole platform configuration to the JupyterHub config object ``c``."""
    rt = rt or Runtime.load()
    for part in parts.load():
        part.configure_hub(c, rt)
    passthrough = Config({k: v for k, v in rt.config.items() if k not in own_sections()})
    c.merge(passthrough)
    return rt

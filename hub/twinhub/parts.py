"""The platform's parts, in order: the one list ``twinhub up``, ``twinhub status``, the
generated configuration file and the hub's configuration (:func:`configure_jupyterhub`,
what ``jupyterhub_config.py`` runs) loop over.

Adding a hub service: a package under ``services/`` whose ``Part`` subclass (usually of
:class:`twinhub.services.base.AsgiService`) says what it needs, and one line here. The
order is the order of the hub's configuration (later parts see what earlier ones set:
the spawner before the hooks that wrap it) and of ``prepare``; components start in
``start_rank`` order. See docs/ARCHITECTURE.md, "Adding a service".
"""

from __future__ import annotations

from typing import Any

from traitlets.config import Config, Configurable

from .auth.part import AuthPart
from .gateway import GatewayPart
from .hubconf.core import CorePart
from .objectstore import ObjectStorePart
from .plugin import Part
from .process.runtime import Runtime
from .services.accounting import AccountingPart
from .services.cache import CachePart
from .services.datalake import StacPart
from .services.desk import DeskPart
from .services.processing import ProcessingPart
from .services.projects import ProjectsPart
from .services.registry import RegistryPart
from .services.tiles import TilesPart
from .spawn.modes import SpawnPart

PARTS: tuple[type[Part], ...] = (
    CorePart,
    AuthPart,
    SpawnPart,
    GatewayPart,
    ObjectStorePart,
    StacPart,
    ProjectsPart,
    AccountingPart,
    RegistryPart,
    DeskPart,
    ProcessingPart,
    TilesPart,
    CachePart,
)


def load() -> list[Part]:
    """One instance of every part, for this process."""
    return [cls() for cls in PARTS]


def config_classes() -> list[type[Configurable]]:
    """Every configurable the platform reads, for --help and the generated config file."""
    return [cls for part in PARTS for cls in part.settings]


def start_order(parts: list[Part]) -> list[Part]:
    return sorted(parts, key=lambda p: p.start_rank)


def own_sections() -> set[str]:
    """The configuration sections that are the platform's own (the rest is JupyterHub's)."""
    return {cls.__name__ for cls in config_classes()}


def configure_jupyterhub(c: Any, rt: Runtime | None = None) -> Runtime:
    """The whole JupyterHub configuration, in the hub's process: every part's share, then
    the operator's options for JupyterHub's own classes (``c.JupyterHub.*``,
    ``c.Spawner.*``... in twinhub_config.py), applied last so they win."""
    rt = rt or Runtime.load()
    for part in load():
        part.configure_hub(c, rt)
    c.merge(Config({k: v for k, v in rt.config.items() if k not in own_sections()}))
    return rt

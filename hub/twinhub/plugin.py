"""The shape every platform part has.

A part is one concern of the platform: the hub's core (proxy, hub, culler), login, the
spawners, Dask Gateway, the object store, each hub service. :mod:`twinhub.parts` lists them
in order; ``twinhub up`` and ``twinhub status`` (:mod:`twinhub.platform`), the
generated configuration file and the hub's configuration (:func:`twinhub.parts.configure_jupyterhub`) all
loop over that list, calling the hooks below. A part overrides only the hooks it needs; each
hook decides for itself whether the part is on in this run (from ``rt``), as the hub's
process reads runtime.json, not the command line.

Order of the hooks in ``twinhub up``: :meth:`Part.plan` (then runtime.json is written),
:meth:`Part.prepare`, :meth:`Part.components` (started in ``start_rank`` order),
:meth:`Part.after_up` once the URL is printed. In the hub's process: :meth:`Part.configure_hub`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from traitlets.config import Configurable

if TYPE_CHECKING:
    from .process.components import Component
    from .process.runtime import Runtime

Say = Callable[[str], None]


class Part:
    """One concern of the platform (subclass it; see the module's docstring)."""

    #: Short name (logs, docs).
    name: ClassVar[str] = ""
    #: The configurables it reads (``c.<Class>.*``): shown by ``--help-all`` and written
    #: into the generated twinhub_config.py.
    settings: ClassVar[tuple[type[Configurable], ...]] = ()
    #: Components of parts start in this order (lowest first; ties keep the list's order).
    start_rank: ClassVar[int] = 50

    def plan(self, rt: Runtime) -> None:
        """Decide this run's facts before runtime.json is written: ports (``rt.ports``),
        secrets moved out of the configuration into 0600 files."""

    def prepare(self, rt: Runtime, say: Say) -> None:
        """Before any component starts: files, databases, checks. A problem the operator
        must fix is a :class:`twinhub.errors.StartError` naming it."""

    def components(self, rt: Runtime) -> list[Component]:
        """The processes the supervisor runs for this part."""
        return []

    def after_up(self, rt: Runtime, say: Say) -> threading.Thread | None:
        """Once the platform answers at its URL: background work (a thread, which ``twinhub
        up`` mentions if a stop interrupts it), or lines for the operator."""
        return None

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        """(In the hub's process) this part's share of the JupyterHub configuration."""

    def status_lines(self, rt: Runtime) -> list[str]:
        """Lines for ``twinhub status`` beyond the components' own."""
        return []

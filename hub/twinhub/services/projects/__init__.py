"""Projects and allocations: configuration, the ``projects`` service, hub enforcement.

- :class:`TwinhubProjects` (``c.TwinhubProjects.*``): the projects (hub group -> allocation,
  see :mod:`twinhub.services.projects.allocations`) as configured, the default allocation, on/off;
- :class:`ProjectCatalog`: configuration merged with admins' run-time changes (table
  ``project_allocations``), read at every use by the hub process and the service alike;
- the ``projects`` component (:mod:`.app`, uvicorn), a hub service at ``/services/projects/``
  with a REST API for admins and users;
- :mod:`.enforce`: the spawner hooks (profile filter, spawn checks, revocation).

See docs/projects.md.
"""

from __future__ import annotations

import functools
from typing import Any

from ...errors import StartError
from ...plugin import Say
from ...process.runtime import Runtime
from ...spawn.profiles import ProfileError
from ..base import AsgiService
from . import allocations
from .catalog import ProjectCatalog, TwinhubProjects, is_enabled
from .enforce import install

SERVICE_NAME = "projects"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"


class ProjectsPart(AsgiService):
    """Projects and allocations: the service at /services/projects/ and the spawn checks."""

    name = SERVICE_NAME
    settings = (TwinhubProjects,)
    start_rank = 30
    factory = "twinhub.services.projects.app:create_app"
    listed = True
    # What the service's own token may do: read users (admin flag, groups) and groups.
    scopes = ("read:users", "read:groups")

    def enabled(self, rt: Runtime) -> bool:
        return is_enabled(rt)

    def prepare(self, rt: Runtime, say: Say = print) -> None:
        """Before start: refuse a bad project configuration with a message naming it (also
        when the service does not run: the hub enforces allocations without it)."""
        if not is_enabled(rt):
            return
        try:
            ProjectCatalog.from_runtime(rt)
        except (allocations.AllocationError, ProfileError) as e:
            raise StartError(str(e)) from None

    def configure_service(self, c: Any, rt: Runtime) -> None:
        """Turn on named servers (what max_servers_per_user counts) and install the spawner
        hooks."""
        catalog = ProjectCatalog.from_runtime(rt)
        # Operators may still turn it off in twinhub_config.py (passed through after this).
        c.JupyterHub.allow_named_servers = True
        install(c, catalog)
        # The hub's home page (twinhub.hubconf.home) shows a user's projects and offers named
        # servers only when their allocation allows more than one server.
        c.TwinhubHomeHooks.allocation_reader = functools.partial(home_summary, catalog)


def home_summary(catalog: ProjectCatalog, groups: list[str]) -> dict[str, Any]:
    """What the home page shows of a member of ``groups``: the effective allocation and the
    allocation of each of their projects (read now: admins change them at run time)."""
    projects = catalog.allocations()
    eff = allocations.effective_allocation(groups, projects, catalog.default, catalog.profiles)
    return {"effective": eff.as_dict(), "projects": {n: projects[n] for n in eff.projects}}


__all__ = [
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "ProjectCatalog",
    "ProjectsPart",
    "TwinhubProjects",
    "is_enabled",
]

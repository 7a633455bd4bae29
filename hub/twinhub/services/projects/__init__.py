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
import logging
from dataclasses import dataclass
from typing import Any

from traitlets import Bool, Dict, Float
from traitlets.config import Configurable

from ...plugin import Part, Say
from ...process.components import Component
from ...process.runtime import Runtime
from ..registration import grant_access, register_service, service_environment, uvicorn_argv
from . import allocations

SERVICE_NAME = "projects"
SERVICE_PREFIX = f"/services/{SERVICE_NAME}/"
SECRET_NAME = "service-projects"
# What the service's own token may do: read users (admin flag, groups) and groups.
SERVICE_SCOPES = ["read:users", "read:groups"]

log = logging.getLogger("twinhub.projects")


class TwinhubProjects(Configurable):
    """Projects (hub groups) and their allocations: profiles, GPU, servers, budgets."""

    enabled = Bool(
        None,
        allow_none=True,
        help="Enforce allocations and run the projects service at /services/projects/. "
        "Unset: on in multi-user mode, off in personal mode (one person, their own machine).",
    ).tag(config=True)

    projects = Dict(
        help="Project (JupyterHub group, or Keycloak group path such as "
        "/projects/climate-adaptation) -> allocation: {profiles: [slugs] ([] = every non-GPU "
        "profile), gpu: bool, max_servers_per_user: int or None, cpu_hours, gpu_hours, "
        "storage_gb (budgets: stored and reported; metering comes with accounting)}. The "
        "initial state: admins' changes through the service win until reset.",
    ).tag(config=True)

    storage_sync_interval = Float(
        10.0,
        min=1.0,
        help="Seconds between two checks of project membership for project buckets: someone "
        "who left a project loses its bucket within this time (and at their next spawn).",
    ).tag(config=True)

    default_allocation = Dict(
        default_value={"profiles": [], "gpu": False, "max_servers_per_user": 1},
        help="Allocation of users who are in no project (same keys as a project's).",
    ).tag(config=True)


def is_enabled(rt: Runtime) -> bool:
    value = TwinhubProjects(config=rt.config).enabled
    return rt.mode == "multi-user" if value is None else bool(value)


@dataclass
class ProjectCatalog:
    """Configured projects merged with the run-time ones in twinhub's database."""

    profiles: list[dict]  # the platform's validated profiles
    configured: dict[str, dict]  # validated, keyed by hub group
    default: dict
    db_url: str

    @classmethod
    def from_runtime(cls, rt: Runtime) -> ProjectCatalog:
        """Validate the configuration; raises AllocationError / ProfileError naming the problem."""
        from ...config import Twinhub
        from ...spawn.profiles import validate_profiles

        profiles = validate_profiles(Twinhub(config=rt.config).profiles)
        cfg = TwinhubProjects(config=rt.config)
        return cls(
            profiles=profiles,
            configured=allocations.validate_projects(cfg.projects, profiles),
            default=allocations.validate_allocation(
                cfg.default_allocation, profiles, "TwinhubProjects.default_allocation"
            ),
            db_url=rt.db_url,
        )

    def entries(self) -> dict[str, dict[str, Any]]:
        """{project: {"allocation", "source", "configured", "updated_by", "updated_at"}}."""
        from .store import overrides

        out: dict[str, dict[str, Any]] = {
            name: {
                "allocation": alloc,
                "source": "config",
                "configured": alloc,
                "updated_by": None,
                "updated_at": None,
            }
            for name, alloc in self.configured.items()
        }
        for name, row in overrides(self.db_url).items():
            try:
                alloc = allocations.validate_allocation(
                    row["allocation"], self.profiles, f"stored allocation of {name!r}"
                )
            except allocations.AllocationError as e:
                # Profiles changed in the configuration since an admin stored this one.
                log.warning("%s: ignored until an admin replaces or resets it", e)
                continue
            out[name] = {
                "allocation": alloc,
                "source": "admin",
                "configured": self.configured.get(name),
                "updated_by": row["updated_by"],
                "updated_at": row["updated_at"],
            }
        return out

    def allocations(self) -> dict[str, dict]:
        return {n: e["allocation"] for n, e in self.entries().items()}

    def effective(self, groups: list[str]) -> allocations.Effective:
        return allocations.effective_allocation(
            groups, self.allocations(), self.default, self.profiles
        )


def port(rt: Runtime) -> int:
    return rt.ports[SERVICE_NAME]


def api_url(rt: Runtime) -> str:
    """The service on loopback, straight (the platform's own calls)."""
    return f"http://127.0.0.1:{port(rt)}{SERVICE_PREFIX}"


def active(rt: Runtime) -> bool:
    return is_enabled(rt) and SERVICE_NAME in rt.ports


def allocate_ports(rt: Runtime) -> None:
    from ...process.ports import PLATFORM_PORTS, pick_port

    if is_enabled(rt):
        rt.ports[SERVICE_NAME] = pick_port(PLATFORM_PORTS)


def prepare(rt: Runtime) -> None:
    """Before start: refuse a bad project configuration with a message naming it."""
    if not is_enabled(rt):
        return
    from ...errors import StartError
    from ...spawn.profiles import ProfileError

    try:
        ProjectCatalog.from_runtime(rt)
    except (allocations.AllocationError, ProfileError) as e:
        raise StartError(str(e)) from None


def components(rt: Runtime) -> list[Component]:
    from ...process.supervisor import http_ok

    if not active(rt):
        return []
    env = service_environment(rt, SERVICE_NAME, rt.secret(SECRET_NAME))
    return [
        Component(
            name=SERVICE_NAME,
            argv=uvicorn_argv("twinhub.services.projects.app:create_app", port(rt)),
            env=env,
            port=port(rt),
            ready=functools.partial(http_ok, api_url(rt) + "health"),
            # Needs nothing to start: its start-up overlaps the others'.
            background=True,
        )
    ]


def configure_hub(c: Any, rt: Runtime) -> None:
    """Register the service, give it read access to users and groups, turn on named
    servers (what max_servers_per_user counts) and install the spawner hooks."""
    if not active(rt):
        return
    from .enforce import install

    catalog = ProjectCatalog.from_runtime(rt)
    register_service(c, SERVICE_NAME, f"http://127.0.0.1:{port(rt)}", rt.secret(SECRET_NAME))
    grant_access(c, SERVICE_NAME)
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    roles.append({"name": "projects-service", "scopes": SERVICE_SCOPES, "services": ["projects"]})
    c.JupyterHub.load_roles = roles
    # Operators may still turn it off in twinhub_config.py (passed through after this).
    c.JupyterHub.allow_named_servers = True
    install(c, catalog)
    c.TwinhubSpawner.services.update({SERVICE_NAME: rt.url + SERVICE_PREFIX.lstrip("/")})


__all__ = [
    "SERVICE_NAME",
    "SERVICE_PREFIX",
    "ProjectCatalog",
    "TwinhubProjects",
    "active",
    "allocate_ports",
    "components",
    "configure_hub",
    "is_enabled",
    "prepare",
]


class ProjectsPart(Part):
    """Projects and allocations: the service at /services/projects/ and the spawn checks."""

    name = SERVICE_NAME
    settings = (TwinhubProjects,)
    start_rank = 30

    def plan(self, rt: Runtime) -> None:
        allocate_ports(rt)

    def prepare(self, rt: Runtime, say: Say) -> None:
        prepare(rt)

    def components(self, rt: Runtime) -> list[Component]:
        return components(rt)

    def configure_hub(self, c: Any, rt: Runtime) -> None:
        configure_hub(c, rt)

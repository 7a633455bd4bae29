"""Projects as configured (:class:`TwinhubProjects`) and as they are now
(:class:`ProjectCatalog`: configuration merged with admins' run-time changes, table
``project_allocations``), read at every use by the hub process and the service alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from traitlets import Bool, Dict, Float
from traitlets.config import Configurable

from ...config import Twinhub
from ...process.runtime import Runtime
from ...spawn.profiles import validate_profiles
from . import allocations
from .overrides import overrides

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
        "storage_gb (budgets held against the project's own metered use: CPU/GPU hours "
        "all-time, storage the latest size in GB; docs/projects.md)}. The initial state: "
        "admins' changes through the service win until reset.",
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

"""Allocations enforced in the hub process, through :class:`twinhub.spawn.spawner.TwinhubSpawner`'s
hooks.  Every check reads the allocation at that moment (groups from the hub's database,
run-time allocations from twinhub's): the service that changes them is another process.

- ``profile_filter``: the options form and the profile choice show only allowed profiles;
- ``spawn_check``: a (forged) request for a profile outside the allocation, or one server
  more than ``max_servers_per_user``, is refused with 403 and a message saying how to get more;
- ``running_check``: at each poll (``Spawner.poll_interval``), a running server whose profile
  its user may no longer start (a group lost, an allocation reduced) is stopped, and the
  reason logged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import allocations
from .catalog import ProjectCatalog


def _groups(user: Any) -> list[str]:
    return [g.name for g in user.groups]


class Enforcer:
    """The hooks, bound to one catalog (configuration + database)."""

    def __init__(self, catalog: ProjectCatalog) -> None:
        self.catalog = catalog

    async def _state(self, user: Any) -> tuple[allocations.Effective, dict[str, dict]]:
        groups = _groups(user)

        def read() -> tuple[allocations.Effective, dict[str, dict]]:
            projects = self.catalog.allocations()
            eff = allocations.effective_allocation(
                groups, projects, self.catalog.default, self.catalog.profiles
            )
            return eff, projects

        return await asyncio.to_thread(read)

    async def effective(self, user: Any) -> allocations.Effective:
        return (await self._state(user))[0]

    async def profile_filter(self, user: Any, offered: list[dict]) -> list[dict]:
        return allocations.filter_profiles(await self.effective(user), offered)

    async def spawn_check(self, spawner: Any, slug: str) -> str | None:
        eff, projects = await self._state(spawner.user)
        if slug:
            why = allocations.profile_refusal(eff, slug, self.catalog.profiles, projects)
            if why:
                return why
        running = [
            name for name, s in spawner.user.spawners.items() if s is not spawner and s.active
        ]
        return allocations.server_limit_refusal(eff, running)

    async def running_check(self, spawner: Any) -> str | None:
        slug = (spawner.profile or {}).get("slug") or (spawner.user_options or {}).get("profile")
        if not slug:
            return None  # started before the hub restarted with the default: nothing to judge
        eff = await self.effective(spawner.user)
        if slug in eff.profiles:
            return None
        return f"profile {slug!r} is no longer in " + (
            "the default allocation (its user is in no project)"
            if eff.from_default
            else f"the allocation of its user's projects ({', '.join(eff.projects)})"
        )


def install(c: Any, catalog: ProjectCatalog) -> Enforcer:
    """Set the spawner hooks in the JupyterHub config ``c``."""
    enforcer = Enforcer(catalog)
    c.TwinhubSpawner.profile_filter = enforcer.profile_filter
    c.TwinhubSpawner.spawn_check = enforcer.spawn_check
    c.TwinhubSpawner.running_check = enforcer.running_check
    return enforcer

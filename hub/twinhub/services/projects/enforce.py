"""Allocations enforced in the hub process, through :class:`twinhub.spawn.spawner.TwinhubSpawner`'s
hooks.  Every check reads the allocation at that moment (groups from the hub's database,
run-time allocations from twinhub's): the service that changes them is another process.

- ``profile_filter``: the options form and the profile choice show only allowed profiles;
- ``project_choices``: the projects a server may be charged to (the user's; the first is the
  default), offered in the options form and checked against ``user_options["project"]``;
- ``spawn_check``: a (forged) request for a profile outside the allocation, a profile the
  chosen project's own allocation does not allow (the union of the user's projects is not
  enough: a GPU server charged to a project without GPUs would escape every GPU budget), or
  one server more than ``max_servers_per_user``, is refused with 403 and a message saying
  how to get more;
- ``running_check``: at each poll (``Spawner.poll_interval``), a running server whose profile
  its user may no longer start (a group lost, an allocation reduced), or that the project it
  is charged to no longer allows, is stopped, and the reason logged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...spawn import charges
from . import allocations
from .catalog import ProjectCatalog


def _groups(user: Any) -> list[str]:
    return [g.name for g in user.groups]


def _open_charge(spawner: Any) -> charges.Charge | None:
    # The charge file of the running server (accounting on), written by its spawn.
    if not getattr(spawner, "accounting_dir", ""):
        return None
    found = charges.find_open(
        spawner.accounting_dir, user=spawner.user.name, name=spawner.name, kind="server"
    )
    return found[-1] if found else None


def charged_project(spawner: Any) -> str:
    """The project a server is charged to: chosen at its spawn; or (the hub restarted since:
    the spawner object is new) what its charge file says, else the choice JupyterHub kept in
    its user_options; "" when unknown (then the default choice applies)."""
    project = getattr(spawner, "project", "")
    if not project:
        charge = _open_charge(spawner)
        if charge is not None and charge.project:
            project = spawner.project = charge.project  # read once per hub start
    if not project:
        project = (spawner.user_options or {}).get("project")
    return project if isinstance(project, str) else ""


def running_profile(spawner: Any) -> dict | None:
    """The profile of a running server: chosen at its spawn; or (the hub restarted since:
    ``spawner.profile`` is empty) the slug JupyterHub kept in its user_options, else its
    charge file's profile and GPU count (a GPU count marks it a GPU profile, even one
    removed from the configuration since); None when unknown (started with the default, no
    accounting)."""
    if getattr(spawner, "profile", None):
        return spawner.profile
    known = getattr(spawner, "_twinhub_running_profile", None)
    if known:
        return known
    by_slug = {p["slug"]: p for p in getattr(spawner, "profiles", None) or []}
    found: dict | None = None
    asked = (spawner.user_options or {}).get("profile")
    if isinstance(asked, str) and asked in by_slug:
        found = by_slug[asked]
    else:
        charge = _open_charge(spawner)
        if charge is not None and (charge.profile or charge.gpus):
            found = by_slug.get(charge.profile) or {"slug": charge.profile}
            if charge.gpus and not allocations.is_gpu_profile(found):
                found = {**found, "gpu": True}
    if found:
        spawner._twinhub_running_profile = found  # read once per hub start
    return found


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

    async def project_choices(self, user: Any) -> list[str]:
        """The projects ``user`` may charge a server to (their groups that are projects, in
        name order: the first is the default); [] when in none."""
        return list((await self.effective(user)).projects)

    async def spawn_check(self, spawner: Any, slug: str) -> str | None:
        eff, projects = await self._state(spawner.user)
        if slug:
            why = allocations.profile_refusal(eff, slug, self.catalog.profiles, projects)
            if why:
                return why
            # _apply_profile set the chosen project before this check.
            why = allocations.project_profile_refusal(
                getattr(spawner, "project", ""), slug, self.catalog.profiles, projects, eff.projects
            )
            if why:
                return why
        running = [
            name for name, s in spawner.user.spawners.items() if s is not spawner and s.active
        ]
        return allocations.server_limit_refusal(eff, running)

    async def running_check(self, spawner: Any) -> str | None:
        eff, projects = await self._state(spawner.user)
        slug = (running_profile(spawner) or {}).get("slug")
        # No slug: started before the hub restarted, with the default: nothing to judge.
        if slug and slug not in eff.profiles:
            return f"profile {slug!r} is no longer in " + (
                "the default allocation (its user is in no project)"
                if eff.from_default
                else f"the allocation of its user's projects ({', '.join(eff.projects)})"
            )
        charged = charged_project(spawner)
        if charged in projects and charged not in eff.projects:
            return f"its user is no longer a member of project {charged!r}, which it is charged to"
        if slug:
            return allocations.project_profile_refusal(
                charged, slug, self.catalog.profiles, projects, running=True
            )
        return None


def install(c: Any, catalog: ProjectCatalog) -> Enforcer:
    """Set the spawner hooks in the JupyterHub config ``c``."""
    enforcer = Enforcer(catalog)
    c.TwinhubSpawner.profile_filter = enforcer.profile_filter
    c.TwinhubSpawner.spawn_check = enforcer.spawn_check
    c.TwinhubSpawner.running_check = enforcer.running_check
    c.TwinhubSpawner.project_choices = enforcer.project_choices
    return enforcer

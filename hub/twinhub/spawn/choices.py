"""What a user chooses at a spawn (a profile, the project charged) and the hooks that judge
it, shared by both spawners: :class:`twinhub.spawn.spawner.TwinhubSpawner` (local processes)
and :class:`twinhub.spawn.kube.TwinhubKubeSpawner` (KubeSpawner).

The parts install the hooks once, on ``c.TwinhubSpawner`` (the projects part: the profile
filter, the project choices, the spawn and running checks; accounting wraps the checks with
its budgets). :class:`SpawnerChoices` is a plain traits mixin, not a configurable, so it adds
no configuration section of its own: each spawner reads these options from its own sections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jupyterhub.utils import maybe_future
from tornado import web
from traitlets import Any as AnyTrait
from traitlets import Dict, HasTraits, List, Unicode, default

from . import profiles


def http_error(status: int, message: str) -> web.HTTPError:
    """An HTTPError whose message JupyterHub shows as is (API, progress stream, pages)."""
    e = web.HTTPError(status, "%s", message)
    e.jupyterhub_message = message  # type: ignore[attr-defined]
    return e


class SpawnerChoices(HasTraits):
    """Profiles and projects a user may choose, the options form, and the checks (mix in
    before the spawner class, so its defaults win)."""

    profiles = List(
        Dict(),
        help="Validated server profiles (Twinhub.profiles, set by SpawnPart.configure_hub).",
    ).tag(config=True)
    services = Dict(
        help="Service name -> public URL, given to servers as TWINHUB_SERVICES (JSON). Parts "
        "add theirs with c.TwinhubSpawner.services.update({...})."
    ).tag(config=True)
    profile_filter = AnyTrait(
        None,
        allow_none=True,
        help="Callable (user, profiles) -> profiles (may be async) choosing which profiles a "
        "user may start, e.g. by project (set by twinhub.services.projects). None: every "
        "profile offered.",
    ).tag(config=True)
    spawn_check = AnyTrait(
        None,
        allow_none=True,
        help="Callable (spawner, profile_slug) -> message or None (may be async), run before "
        "each spawn: a message refuses the spawn with 403 (a project allocation's server "
        "limit, a frozen budget; set by the projects and accounting parts). None: no check.",
    ).tag(config=True)
    running_check = AnyTrait(
        None,
        allow_none=True,
        help="Callable (spawner) -> message or None (may be async), run at each periodic poll "
        "of a running server: a message stops the server and is logged as the reason (e.g. "
        "its user lost the project that allowed its profile). None: no check.",
    ).tag(config=True)
    project_choices = AnyTrait(
        None,
        allow_none=True,
        help="Callable (user) -> list of project names (may be async): the projects a user "
        "may charge a server to, the first being the default (set by twinhub.services."
        "projects). None, or an empty list: everything goes to personal_project.",
    ).tag(config=True)
    personal_project = Unicode(
        "personal",
        help="The project a server is charged to when its user is in no project (and in "
        "personal mode); from TwinhubAccounting.personal_project.",
    ).tag(config=True)

    # Set per spawn from user_options (before spawn_check runs, which reads them).
    profile = Dict(help="The profile of the current/last spawn.")
    project = Unicode("", help="The project the current/last spawn is charged to.")

    # -- what a user may choose -----------------------------------------------------------
    def offered_profiles(self) -> list[dict]:
        """The profiles this deployment offers anyone (before the allocation's filter)."""
        return list(self.profiles)

    async def profiles_for_user(self, user: Any = None) -> list[dict]:
        """Profiles ``user`` (default: this spawner's user) may start."""
        offered = self.offered_profiles()
        if self.profile_filter is not None:
            offered = list(await maybe_future(self.profile_filter(user or self.user, offered)))
        return offered

    async def projects_for_user(self, user: Any = None) -> list[str]:
        """Projects ``user`` (default: this spawner's user) may charge a server to, the
        default first; [] when in none (then it is charged to ``personal_project``)."""
        if self.project_choices is None:
            return []
        return [str(p) for p in await maybe_future(self.project_choices(user or self.user))]

    async def spawn_refusal(self, offered: list[dict], options: dict | None) -> str | None:
        """What ``spawn_check`` says of this spawn (None: allowed). It judges the profile that
        will really start (the default when none is asked), against the project already set
        in ``self.project``."""
        if self.spawn_check is None:
            return None
        slug = profiles.slug_to_check(offered, options)
        return await maybe_future(self.spawn_check(self, slug))

    @default("options_form")
    def _default_options_form(self) -> Callable:
        async def form(spawner: SpawnerChoices) -> str:
            # The last choice stays selected (JupyterHub keeps the last user_options).
            last = (spawner.user_options or {}).get("project")
            return profiles.options_form(
                await spawner.profiles_for_user(),
                await spawner.projects_for_user(),
                last if isinstance(last, str) else "",
            )

        return form

    @default("options_from_form")
    def _default_options_from_form(self) -> Callable:
        return profiles.options_from_form

    # -- a running server -----------------------------------------------------------------
    async def poll_and_notify(self):  # type: ignore[no-untyped-def]
        # Only the periodic poll of a running server: stop what its user may no longer run.
        if self.running_check is not None and self.ready:
            try:
                why = await maybe_future(self.running_check(self))
            except Exception:
                # A check that cannot judge (its database away) stops nothing, and the poll
                # below still notices a server that died.
                self.log.exception("running_check of %s failed; not judged", self._log_name)
                why = None
            if why:
                self.log.warning("Stopping %s: %s", self._log_name, why)
                await self.stop(now=True)
        return await super().poll_and_notify()  # type: ignore[misc]

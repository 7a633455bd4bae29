"""The spawner of the Kubernetes deployment: KubeSpawner with twinhub's profiles and checks.

The embedded spawners (:class:`twinhub.spawn.spawner.TwinhubSpawner`) and this one offer the
same profiles (``Twinhub.profiles``), the same options form (a profile, then the project the
server is charged to) and run the same hooks. The parts install those hooks once, in the
``TwinhubSpawner`` configuration section (projects: ``profile_filter``, ``project_choices``,
``spawn_check``, ``running_check``; accounting wraps both checks with budgets); this class
reads the options of that section named in :data:`SHARED_OPTIONS` below its own sections,
so nothing is configured twice and the embedded spawner is unchanged.

A spawn: JupyterHub calls ``apply_user_options`` (:func:`apply_choice`: the project, the
checks, the profile; a refusal is a 400/403 naming what is allowed) before ``start``;
KubeSpawner's start then applies the chosen profile's ``kubespawner_override`` (limits, GPU
resources, image, env; :func:`twinhub.spawn.profiles.kubespawner_profile_list`). The pod is
labelled with its user and project (:data:`LABEL_USER`, :data:`LABEL_PROJECT`: label-safe
slugs, which select the pod) and annotated with the raw names under the same keys (what
accounting's Prometheus backend charges, read through kube-state-metrics); it gets
``TWINHUB_PROJECT`` and ``TWINHUB_SERVICES`` like an embedded server.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from kubespawner import KubeSpawner
from tornado import web
from traitlets import default
from traitlets.config import Config

from twinlab.contract import ENV_LIMITS_ENFORCED, ENV_PROJECT, ENV_SERVICES

from . import podmeta, profiles
from .choices import SpawnerChoices, http_error

__all__ = ["LABEL_PROJECT", "LABEL_USER", "SHARED_OPTIONS", "TwinhubKubeSpawner", "apply_choice"]

#: Pod labels (label-safe slugs like KubeSpawner's ``hub.jupyter.org/username``) and pod
#: annotations of the same keys holding the raw names (a label value cannot hold every name).
LABEL_USER = podmeta.USER_KEY
LABEL_PROJECT = podmeta.PROJECT_KEY

#: Options of the ``TwinhubSpawner`` section this spawner takes too (its own sections win).
SHARED_OPTIONS = (
    "profiles",
    "services",
    "profile_filter",
    "project_choices",
    "spawn_check",
    "running_check",
    "personal_project",
)
_SHARED_SECTION = "TwinhubSpawner"
# The state keys under which a server's choice survives a hub restart.
_STATE_PROFILE = "twinhub_profile"
_STATE_PROJECT = "twinhub_project"


class TwinhubKubeSpawner(SpawnerChoices, KubeSpawner):
    """KubeSpawner offering twinhub's profiles filtered by allocation, charging a project."""

    def _find_my_config(self, cfg: Config) -> Any:
        mine = super()._find_my_config(cfg)
        own = [k.__name__ for k in type(self).__mro__ if issubclass(k, TwinhubKubeSpawner)]
        if "profile_list" in mine and not any(
            cfg._has_section(s) and "profile_list" in cfg[s] for s in own
        ):
            # z2jh always sets KubeSpawner.profile_list (singleuser.profileList, [] by
            # default): the list here is Twinhub.profiles, filtered per user.
            if mine["profile_list"]:
                self.log.warning(
                    "Ignoring KubeSpawner.profile_list (singleuser.profileList): twinhub "
                    "offers Twinhub.profiles (twinhub.profiles in the chart's values)"
                )
            del mine["profile_list"]
        # The shared options of the embedded spawner's section, below every section of ours.
        if not cfg._has_section(_SHARED_SECTION):
            return mine
        shared = Config({k: v for k, v in cfg[_SHARED_SECTION].items() if k in SHARED_OPTIONS})
        shared.merge(mine)
        return shared

    # -- what a user may choose -----------------------------------------------------------
    # offered_profiles is every configured profile, GPU ones included: GPU nodes are the
    # cluster's, not the hub pod's (the allocation's filter still applies).
    @default("profile_list")
    def _default_profile_list(self) -> Callable:
        async def for_user(spawner: TwinhubKubeSpawner) -> list[dict]:
            offered = await spawner.profiles_for_user()
            return profiles.kubespawner_profile_list(offered) if offered else []

        return for_user

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Callable:
        return apply_choice

    async def load_user_options(self) -> None:
        """Apply the chosen profile's overrides (KubeSpawner's start calls this; the choice
        and its checks were made by apply_user_options before)."""
        if not self.profile:
            await apply_choice(self, self.user_options or {})
        entry = profiles.kubespawner_profile_list([{**self.profile, "default": False}])[0]
        self._apply_overrides(copy.deepcopy(entry["kubespawner_override"]))

    # -- the pod ----------------------------------------------------------------------------
    @property
    def charged_project(self) -> str:
        return self.project or self.personal_project

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env[ENV_SERVICES] = json.dumps(self.services, sort_keys=True)
        env[ENV_PROJECT] = self.charged_project
        # The kubelet enforces whatever limit the pod spec sets.
        env[ENV_LIMITS_ENFORCED] = "1" if self.cpu_limit or self.mem_limit else "0"
        return env

    def _build_pod_labels(self, extra_labels: dict) -> dict:
        labels = super()._build_pod_labels(extra_labels)
        # Set after the templates are expanded: a project name is never a format string.
        labels.update(podmeta.labels(self.user.name, self.charged_project))
        return labels

    def _build_common_annotations(self, extra_annotations: dict) -> dict:
        annotations = super()._build_common_annotations(extra_annotations)
        # Raw names: accounting charges these, not the label slugs.
        annotations.update(podmeta.annotations(self.user.name, self.charged_project))
        return annotations

    # -- state, polling ---------------------------------------------------------------------
    def get_state(self) -> dict:
        state = super().get_state()
        if self.profile:
            # The whole profile: one removed from the configuration since keeps what judges
            # it (gpu, limits) after a hub restart.
            state[_STATE_PROFILE] = dict(self.profile)
        if self.project:
            state[_STATE_PROJECT] = self.project
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        saved = state.get(_STATE_PROFILE)
        if isinstance(saved, dict) and isinstance(saved.get("slug"), str) and saved["slug"]:
            self.profile = saved
        elif isinstance(saved, str) and saved:
            # Only a slug (saved by an earlier version): what the configuration says now.
            by_slug = {p["slug"]: p for p in self.profiles}
            self.profile = by_slug.get(saved, {"slug": saved})
        project = state.get(_STATE_PROJECT)
        if isinstance(project, str):
            self.project = project

    def clear_state(self) -> None:
        super().clear_state()
        self.profile = {}
        self.project = ""


async def apply_choice(spawner: TwinhubKubeSpawner, user_options: dict | None) -> None:
    """``apply_user_options``: choose the project and the profile of this spawn, refusing a
    malformed or unknown choice with 400 and a forged one (a project not the user's, a
    profile outside their allocation, what ``spawn_check`` refuses) with 403."""
    try:
        await _choose(spawner, dict(user_options or {}))
    except web.HTTPError:
        # JupyterHub stored these options as the next spawn's defaults: forget them.
        if spawner.orm_spawner is not None:
            spawner.orm_spawner.user_options = {}
        raise


async def _choose(spawner: TwinhubKubeSpawner, opts: dict) -> None:
    unknown = set(opts) - set(profiles.OPTION_KEYS)
    if unknown:
        raise http_error(
            400,
            f"unknown server option(s) {sorted(unknown)}: only 'profile' and 'project' "
            "are accepted",
        )
    for key in profiles.OPTION_KEYS:
        if opts.get(key) not in (None, "") and not isinstance(opts[key], str):
            raise http_error(400, f"{key} must be a string, not {type(opts[key]).__name__}")
    offered = await spawner.profiles_for_user()
    available = ", ".join(p["slug"] for p in offered) or "none"
    asked = opts.get("profile") or ""
    if asked and asked not in {p["slug"] for p in spawner.profiles}:
        raise http_error(400, f"unknown profile {asked!r}; available: {available}")
    try:
        project = profiles.choose_project(
            await spawner.projects_for_user(), opts, spawner.personal_project
        )
    except profiles.ProfileError as e:
        raise http_error(403, str(e)) from None
    # Before the check: spawn_check reads the chosen project here.
    spawner.project = project
    why = await spawner.spawn_refusal(offered, opts)
    if why:
        raise http_error(403, why)
    if not offered:
        raise http_error(
            403,
            "no server profile is available to you; ask an administrator to add you to a project",
        )
    if asked and asked not in {p["slug"] for p in offered}:
        raise http_error(403, f"profile {asked!r} is not available to you; available: {available}")
    spawner.profile = profiles.choose(offered, opts)

"""Projects and their allocations: the pure logic (no hub, no HTTP, no database).

A *project* is a JupyterHub group (Keycloak group paths like ``/projects/climate-adaptation``
arrive as ``projects:climate-adaptation``, see :func:`twinhub.auth.realm.hub_group`) with an
*allocation*::

    {"profiles": ["small-cpu", "gpu"],   # slugs its members may start; [] = every non-GPU one
     "gpu": True,                        # GPU profiles allowed ([] above then means all)
     "max_servers_per_user": 2,          # concurrent default + named servers; None = no limit
     "cpu_hours": 1000, "gpu_hours": 50, "storage_gb": 500}   # budgets; None = not set

Budgets are held per project against that project's own metered use
(:mod:`twinhub.services.accounting.enforce`).  A user in several projects gets the union
(:func:`effective_allocation`; its budget sums are for display only); a user in none gets
the default allocation.  Used by the hub (profile filter, spawn checks: :mod:`twinhub.services.
projects.enforce`), by the ``projects`` service, and by KubeSpawner (:func:`kubespawner_
profile_list`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ...auth.groups import hub_group

BUDGETS = ("cpu_hours", "gpu_hours", "storage_gb")
ALLOCATION_KEYS = ("profiles", "gpu", "max_servers_per_user", *BUDGETS)
# What a project gets for keys it leaves out.
DEFAULTS: dict[str, Any] = {
    "profiles": [],
    "gpu": False,
    "max_servers_per_user": 1,
    "cpu_hours": None,
    "gpu_hours": None,
    "storage_gb": None,
}
_BAD_NAME = re.compile(r"[/\x00-\x1f\x7f]")


class AllocationError(ValueError):
    """An allocation or project name is invalid; the message names the field and the problem."""


# -- names, profiles -------------------------------------------------------------------------
def project_name(name: Any) -> str:
    """The hub group name of a project: Keycloak paths are turned into hub group names."""
    if not isinstance(name, str) or not name.strip():
        raise AllocationError(f"project name must be a non-empty string, not {name!r}")
    group = hub_group(name) if name.strip().startswith("/") else name.strip()
    if not group or len(group) > 255 or _BAD_NAME.search(group):
        raise AllocationError(
            f"project name {name!r} is not a valid group name (1-255 characters, no '/' "
            "inside, no control characters)"
        )
    return group


def is_gpu_profile(profile: Mapping[str, Any]) -> bool:
    """True for a profile that needs a GPU allocation: twinhub's shape (``gpu`` key or a
    ``limits.gpu``) or KubeSpawner's (an ``nvidia.com/gpu`` resource limit)."""
    if profile.get("gpu") or (profile.get("limits") or {}).get("gpu"):
        return True
    override = profile.get("kubespawner_override") or {}
    return bool((override.get("extra_resource_limits") or {}).get("nvidia.com/gpu"))


# -- validation ------------------------------------------------------------------------------
def validate_allocation(
    data: Any, profiles: list[Mapping[str, Any]], where: str = "allocation"
) -> dict[str, Any]:
    """Check ``data`` against the platform's ``profiles``; return it with every key filled.

    Raises :class:`AllocationError` naming ``where``, the field and what is allowed.
    """
    if not isinstance(data, Mapping):
        raise AllocationError(f"{where} must be an object, not {type(data).__name__}")
    unknown = sorted(set(data) - set(ALLOCATION_KEYS))
    if unknown:
        raise AllocationError(
            f"{where}: unknown key(s) {unknown}; allowed: {', '.join(ALLOCATION_KEYS)}"
        )
    out = {**DEFAULTS, **data}
    by_slug = {p["slug"]: p for p in profiles}

    slugs = out["profiles"]
    if not isinstance(slugs, list) or not all(isinstance(s, str) for s in slugs):
        raise AllocationError(f"{where}: profiles must be a list of profile slugs")
    for s in slugs:
        if s not in by_slug:
            raise AllocationError(
                f"{where}: unknown profile {s!r}; configured profiles: {', '.join(by_slug)}"
            )
    out["profiles"] = list(dict.fromkeys(slugs))

    if not isinstance(out["gpu"], bool):
        raise AllocationError(f"{where}: gpu must be true or false, not {out['gpu']!r}")
    gpu_listed = [s for s in out["profiles"] if is_gpu_profile(by_slug[s])]
    if gpu_listed and not out["gpu"]:
        raise AllocationError(
            f"{where}: profile(s) {gpu_listed} need a GPU allocation: set gpu to true"
        )

    m = out["max_servers_per_user"]
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
        raise AllocationError(
            f"{where}: max_servers_per_user must be an integer >= 1, or null for no limit; "
            f"got {m!r}"
        )
    for key in BUDGETS:
        v = out[key]
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise AllocationError(f"{where}: {key} must be a number >= 0, or null; got {v!r}")
    return out


def validate_projects(
    projects: Any, profiles: list[Mapping[str, Any]], where: str = "TwinhubProjects.projects"
) -> dict[str, dict[str, Any]]:
    """``{group or Keycloak path: allocation}`` -> ``{hub group: validated allocation}``."""
    if not isinstance(projects, Mapping):
        raise AllocationError(f"{where} must be a dict of group -> allocation")
    out: dict[str, dict[str, Any]] = {}
    for raw, alloc in projects.items():
        name = project_name(raw)
        if name in out:
            raise AllocationError(f"{where}: project {name!r} is defined twice ({raw!r})")
        out[name] = validate_allocation(alloc, profiles, f"{where}[{raw!r}]")
    return out


# -- effective allocation ----------------------------------------------------------------------
def allowed_profiles(alloc: Mapping[str, Any], profiles: list[Mapping[str, Any]]) -> list[str]:
    """Slugs one allocation lets its members start, in the platform's profile order."""
    if alloc["profiles"]:
        chosen = set(alloc["profiles"])
        return [p["slug"] for p in profiles if p["slug"] in chosen]
    return [p["slug"] for p in profiles if alloc["gpu"] or not is_gpu_profile(p)]


@dataclass(frozen=True)
class Effective:
    """What one user may do: the union of their projects' allocations, or the default."""

    projects: tuple[str, ...]
    profiles: tuple[str, ...]  # allowed slugs
    gpu: bool
    max_servers_per_user: int | None
    budgets: dict[str, float | None] = field(default_factory=dict)

    @property
    def from_default(self) -> bool:
        return not self.projects

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        budgets = d.pop("budgets")
        return {
            **d,
            "projects": list(self.projects),
            "profiles": list(self.profiles),
            **budgets,
            "source": "default" if self.from_default else "projects",
        }


def effective_allocation(
    groups: Iterable[str],
    projects: Mapping[str, Mapping[str, Any]],
    default: Mapping[str, Any],
    profiles: list[Mapping[str, Any]],
) -> Effective:
    """The allocation of a member of ``groups``: profiles and GPU are the union of their
    projects', the server limit the largest (no limit wins), budgets the sum of those set
    (shown only: each project's budget is held against its own use)."""
    mine = sorted(set(groups) & set(projects))
    allocs = [projects[n] for n in mine] or [default]
    allowed: set[str] = set()
    for a in allocs:
        allowed.update(allowed_profiles(a, profiles))
    limits = [a["max_servers_per_user"] for a in allocs]
    budgets: dict[str, float | None] = {}
    for key in BUDGETS:
        values = [a[key] for a in allocs if a.get(key) is not None]
        budgets[key] = sum(values) if values else None
    return Effective(
        projects=tuple(mine),
        profiles=tuple(p["slug"] for p in profiles if p["slug"] in allowed),
        gpu=any(a["gpu"] for a in allocs),
        max_servers_per_user=None if None in limits else max(limits),
        budgets=budgets,
    )


def filter_profiles(eff: Effective, profile_list: list[dict]) -> list[dict]:
    """The entries of ``profile_list`` (twinhub's or KubeSpawner's shape) ``eff`` allows."""
    allowed = set(eff.profiles)
    return [p for p in profile_list if p.get("slug") in allowed]


# -- refusals ---------------------------------------------------------------------------------
def _yours(eff: Effective) -> str:
    if eff.from_default:
        return "the default allocation (you are in no project)"
    return f"the allocation of your projects ({', '.join(eff.projects)})"


def profile_refusal(
    eff: Effective,
    slug: str,
    profiles: list[Mapping[str, Any]],
    projects: Mapping[str, Mapping[str, Any]] | None = None,
) -> str | None:
    """Why ``eff`` may not start profile ``slug`` (None: it may); says how to get more."""
    if slug in eff.profiles:
        return None
    profile = next((p for p in profiles if p["slug"] == slug), None)
    if profile is None:
        return None  # unknown slugs are profiles.choose's to refuse
    givers = sorted(n for n, a in (projects or {}).items() if slug in allowed_profiles(a, profiles))
    where = f" (projects with it: {', '.join(givers)})" if givers else ""
    if is_gpu_profile(profile) and not eff.gpu:
        how = f"ask an admin of a GPU project{where} to add you"
    else:
        how = f"ask an admin of a project that allows it{where} to add you, or to add it to yours"
    return f"profile {slug!r} is not in {_yours(eff)}; {how}"


def project_profile_refusal(
    project: str,
    slug: str,
    profiles: list[Mapping[str, Any]],
    projects: Mapping[str, Mapping[str, Any]],
    mine: Iterable[str] = (),
    *,
    running: bool = False,
) -> str | None:
    """Why a server of profile ``slug`` may not be charged to ``project`` (None: it may, or
    ``project`` is no project with an allocation, e.g. the personal one). The union of a
    user's projects is not enough: each project's budgets pay only for what its own
    allocation allows (a GPU server charged to a project without GPUs would draw on no GPU
    budget). ``mine``: the user's projects, named as the ones to charge it to instead."""
    alloc = projects.get(project)
    profile = next((p for p in profiles if p["slug"] == slug), None)
    if alloc is None or profile is None:
        return None
    gpu_refused = is_gpu_profile(profile) and not alloc["gpu"]
    if slug in allowed_profiles(alloc, profiles) and not gpu_refused:
        return None
    what = f"profile {slug!r} is not in project {project}'s allocation"
    if running:
        return what + " (the project it is charged to)"
    others = [
        n for n in sorted(mine) if n in projects and slug in allowed_profiles(projects[n], profiles)
    ]
    if others:
        return f"{what}; charge it to one of: {', '.join(others)}"
    return f"{what}; choose another profile, or ask an admin of {project} to add it"


def server_limit_refusal(eff: Effective, running: list[str]) -> str | None:
    """Why one more server is refused when ``running`` (server names, '' = default) are
    active (None: it is allowed)."""
    limit = eff.max_servers_per_user
    if limit is None or len(running) < limit:
        return None
    names = ", ".join(repr(n) if n else "the default server" for n in sorted(running))
    return (
        f"you already run {len(running)} server(s) ({names}) and max_servers_per_user of "
        f"{_yours(eff)} is {limit}; stop one first, or ask an admin to raise "
        "max_servers_per_user for your project"
    )


# -- Kubernetes -------------------------------------------------------------------------------
Resolver = Callable[[Any], Awaitable[Effective]]


def kubespawner_profile_list(
    profile_list: list[dict], resolve: Resolver
) -> Callable[[Any], Awaitable[list[dict]]]:
    """A callable for ``c.KubeSpawner.profile_list``: the same entries
    (:func:`twinhub.spawn.profiles.kubespawner_profile_list`) filtered by the spawning user's
    effective allocation (``resolve(user)``), so KubeSpawner offers and accepts only those."""

    async def profile_list_for(spawner: Any) -> list[dict]:
        return filter_profiles(await resolve(spawner.user), profile_list)

    return profile_list_for

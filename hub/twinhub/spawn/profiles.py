"""Server profiles: what a user may choose when starting a server.

One list (``Twinhub.profiles``, shaped like KubeSpawner's ``profile_list``) serves both the
embedded platform (local processes, limits via cgroups) and the Kubernetes deployment
(:func:`kubespawner_profile_list`).  A profile is::

    {"slug": "small-cpu", "display_name": "Small CPU", "description": "...",
     "default": True, "gpu": False,
     "limits": {"cpu": 1.0, "memory": "2G", "gpu": 0},
     "env": {"OMP_NUM_THREADS": "1"},
     "kubespawner_override": {...}}        # used only on Kubernetes
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from twinlab.contract import ENV_PROFILE

from .resource_limits import Limits

PROFILE_KEYS = frozenset(
    {
        "slug",
        "display_name",
        "description",
        "default",
        "gpu",
        "limits",
        "env",
        "kubespawner_override",
    }
)
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class ProfileError(ValueError):
    """A profile list or a profile choice is invalid; the message names the problem."""


def validate_profiles(profiles: list[dict]) -> list[dict]:
    """Check a profile list and return it normalised (display_name, default, gpu, env filled).

    Raises :class:`ProfileError` naming the bad profile and field.
    """
    if not profiles:
        raise ProfileError("Twinhub.profiles is empty: define at least one profile")
    out, seen = [], set()
    for i, p in enumerate(profiles):
        where = f"Twinhub.profiles[{i}]"
        if not isinstance(p, dict):
            raise ProfileError(f"{where} must be a dict, not {type(p).__name__}")
        slug = p.get("slug")
        if not isinstance(slug, str) or not _SLUG.match(slug):
            raise ProfileError(
                f"{where}: slug {slug!r} must be lowercase letters, digits and '-' (max 63)"
            )
        where = f"profile {slug!r}"
        unknown = set(p) - PROFILE_KEYS
        if unknown:
            raise ProfileError(f"{where}: unknown key(s) {sorted(unknown)}")
        if slug in seen:
            raise ProfileError(f"{where} is defined twice")
        seen.add(slug)
        env = p.get("env") or {}
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ProfileError(f"{where}: env must map names to strings")
        try:
            limits = Limits.from_profile(p.get("limits"))
        except ValueError as e:
            raise ProfileError(f"{where}: {e}") from None
        q = dict(p)
        q["display_name"] = p.get("display_name") or slug
        q["description"] = p.get("description", "")
        q["default"] = bool(p.get("default", False))
        q["gpu"] = bool(p.get("gpu", False) or limits.gpu)
        q["env"] = dict(env)
        q["limits"] = dict(p.get("limits") or {})
        out.append(q)
    defaults = [p["slug"] for p in out if p["default"]]
    if len(defaults) > 1:
        raise ProfileError(f"more than one default profile: {defaults}")
    return out


@lru_cache(maxsize=1)
def gpu_present() -> bool:
    """True when an NVIDIA GPU is visible: a /dev/nvidia<N> device or ``nvidia-smi -L``."""
    if any(re.fullmatch(r"nvidia\d+", d.name) for d in Path("/dev").glob("nvidia*")):
        return True
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def offered_profiles(profiles: list[dict], detect_gpu: bool = True) -> list[dict]:
    """Profiles this machine can run: GPU profiles only when a GPU is present
    (always when ``detect_gpu`` is off)."""
    if not detect_gpu or gpu_present():
        return list(profiles)
    return [p for p in profiles if not p.get("gpu")]


def default_profile(profiles: list[dict]) -> dict:
    for p in profiles:
        if p.get("default"):
            return p
    return profiles[0]


#: What ``user_options`` (REST body, form) may hold.
OPTION_KEYS = ("profile", "project")


def choose(profiles: list[dict], user_options: dict | None) -> dict:
    """The profile ``user_options`` (``{"profile": slug, "project": ...}``) asks for, or the
    default. The project is :func:`choose_project`'s.

    Raises :class:`ProfileError` for an unknown or unavailable slug or unexpected options.
    """
    if not profiles:
        raise ProfileError("no server profile is available to you; ask an administrator")
    opts = dict(user_options or {})
    unknown = set(opts) - set(OPTION_KEYS)
    if unknown:
        raise ProfileError(
            f"unknown server option(s) {sorted(unknown)}: only 'profile' and 'project' are accepted"
        )
    slug = opts.get("profile")
    if slug in (None, ""):
        return default_profile(profiles)
    if not isinstance(slug, str):
        raise ProfileError(f"profile must be a string slug, not {type(slug).__name__}")
    for p in profiles:
        if p["slug"] == slug:
            return p
    names = ", ".join(p["slug"] for p in profiles)
    raise ProfileError(f"unknown profile {slug!r}; available: {names}")


def slug_to_check(profiles: list[dict], user_options: dict | None) -> str:
    """The slug a spawn with ``user_options`` will start from ``profiles`` (the user's): the
    one asked for (checked, even if unknown or not offered: the checks say why), else the
    default; "" when nothing can start (:func:`choose` refuses it)."""
    asked = (user_options or {}).get("profile")
    if isinstance(asked, str) and asked:
        return asked
    if asked not in (None, "") or not profiles:
        return ""
    return str(default_profile(profiles)["slug"])


def choose_project(projects: list[str], user_options: dict | None, fallback: str) -> str:
    """The project a server is charged to: ``user_options["project"]`` if it is one of
    ``projects`` (the user's, in order), else the first of them; ``fallback`` (the personal
    project) when the user is in none.

    Raises :class:`ProfileError` naming the allowed projects for any other choice.
    """
    allowed = list(projects) or [fallback]
    asked = (user_options or {}).get("project")
    if asked in (None, ""):
        return allowed[0]
    if not isinstance(asked, str):
        raise ProfileError(f"project must be a string, not {type(asked).__name__}")
    if asked not in allowed:
        raise ProfileError(
            f"project {asked!r} is not one of your projects; allowed: {', '.join(allowed)}"
        )
    return asked


def options_form(
    profiles: list[dict], projects: list[str] | tuple[str, ...] = (), project: str = ""
) -> str:
    """HTML for /hub/spawn: a radio list of ``profiles``, or the one profile described; then
    the project the server is charged to (a select when ``projects`` has more than one,
    ``project`` chosen, else the first).

    Never empty: JupyterHub starts a server at once, unasked, on GET /hub/spawn when a
    spawner has no options form; with a form, only the user's click on Start does.
    """
    if not profiles:
        return (
            '<p class="twinhub-profile-none alert alert-warning">No server profile is '
            "available to you: ask an administrator to add you to a project.</p>"
        )
    chosen = default_profile(profiles)["slug"]
    rows = []
    for p in profiles:
        slug = html.escape(p["slug"], quote=True)
        label = (
            f"<strong>{html.escape(p['display_name'])}</strong> "
            f"<small>({html.escape(Limits.from_profile(p['limits']).describe())})</small><br>"
            f"<span>{html.escape(p['description'])}</span>"
        )
        if len(profiles) == 1:
            # Nothing to choose: say what will start, and send the slug with the click.
            rows.append(
                f'<input type="hidden" name="profile" value="{slug}">'
                f'<p class="twinhub-profile" id="profile-{slug}">{label}</p>'
            )
            break
        checked = " checked" if p["slug"] == chosen else ""
        rows.append(
            f'<label class="twinhub-profile" for="profile-{slug}" style="display:block">'
            f'<input type="radio" name="profile" id="profile-{slug}" value="{slug}"{checked}> '
            f"{label}</label>"
        )
    return "<h3>Server profile</h3>\n" + "\n".join(rows) + _project_field(list(projects), project)


def _project_field(projects: list[str], chosen: str) -> str:
    if not projects:
        return ""
    if len(projects) == 1:
        name = html.escape(projects[0])
        return f'\n<p class="twinhub-project">Charged to project <strong>{name}</strong>.</p>'
    chosen = chosen if chosen in projects else projects[0]
    opts = "".join(
        f'<option value="{html.escape(p, quote=True)}"{" selected" if p == chosen else ""}>'
        f"{html.escape(p)}</option>"
        for p in projects
    )
    return (
        '\n<h3>Project</h3>\n<label for="twinhub-project" class="twinhub-project">Charge this '
        "server (and the Dask clusters it makes) to "
        f'<select name="project" id="twinhub-project" class="form-control">{opts}</select>'
        "</label>"
    )


def options_from_form(formdata: dict) -> dict:
    """Form fields (lists of strings) -> ``{"profile": slug, "project": name}`` (those set)."""
    out = {}
    for key in OPTION_KEYS:
        values = formdata.get(key) or [""]
        if values[0]:
            out[key] = values[0]
    return out


def kubespawner_profile_list(profiles: list[dict]) -> list[dict]:
    """The same profiles as KubeSpawner's ``profile_list`` (limits, env, GPU resources).

    ``kubespawner_override`` entries in a profile win over the derived ones.
    """
    out = []
    for p in validate_profiles(profiles):
        lim = Limits.from_profile(p["limits"])
        override: dict = {}
        if lim.cpu:
            override["cpu_limit"] = lim.cpu
        if lim.memory:
            override["mem_limit"] = lim.memory
        if lim.gpu:
            override["extra_resource_limits"] = {"nvidia.com/gpu": str(lim.gpu)}
        env = {ENV_PROFILE: p["slug"], **p["env"]}
        override["environment"] = env
        override.update(p.get("kubespawner_override") or {})
        entry = {
            "display_name": p["display_name"],
            "slug": p["slug"],
            "description": p["description"],
            "kubespawner_override": override,
        }
        if p["default"]:
            entry["default"] = True
        out.append(entry)
    return out


def profile_env(profile: dict) -> dict[str, str]:
    """Environment a server of ``profile`` gets (TWINHUB_PROFILE first, the profile's env wins)."""
    return {ENV_PROFILE: profile["slug"], **profile.get("env", {})}

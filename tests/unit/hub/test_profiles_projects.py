"""Charging a server (and its Dask clusters) to a project: the choice at spawn (form, REST
user_options), the spawner's hook and environment, the gateway's ``project`` option and
twinlab's default for it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from tornado import web

from twinhub.spawn import profiles
from twinhub.spawn.modes import PersonalSpawner
from twinhub.spawn.spawner import _apply_profile
from twinlab.contract import ENV_PROJECT

P = profiles.validate_profiles(
    [
        {"slug": "small-cpu", "default": True, "limits": {"cpu": 1, "memory": "2G"}},
        {"slug": "large-cpu", "limits": {"cpu": 2, "memory": "4G"}},
    ]
)


def test_choose_accepts_a_project_and_nothing_else() -> None:
    assert profiles.choose(P, {"profile": "large-cpu", "project": "x"})["slug"] == "large-cpu"
    with pytest.raises(profiles.ProfileError, match="only 'profile' and 'project'"):
        profiles.choose(P, {"profile": "small-cpu", "image": "evil"})


def test_choose_project_default_allowed_and_refused() -> None:
    mine = ["climate", "ocean"]
    assert profiles.choose_project(mine, {}, "personal") == "climate"  # the first
    assert profiles.choose_project(mine, None, "personal") == "climate"
    assert profiles.choose_project(mine, {"project": ""}, "personal") == "climate"
    assert profiles.choose_project(mine, {"project": "ocean"}, "personal") == "ocean"
    with pytest.raises(profiles.ProfileError) as e:
        profiles.choose_project(mine, {"project": "secret"}, "personal")
    assert str(e.value) == ("project 'secret' is not one of your projects; allowed: climate, ocean")
    with pytest.raises(profiles.ProfileError, match="project must be a string, not list"):
        profiles.choose_project(mine, {"project": ["ocean"]}, "personal")
    # In no project (or personal mode): the personal project, and only it.
    assert profiles.choose_project([], {}, "personal") == "personal"
    assert profiles.choose_project([], {"project": "personal"}, "personal") == "personal"
    with pytest.raises(profiles.ProfileError, match="allowed: personal$"):
        profiles.choose_project([], {"project": "climate"}, "personal")


def test_options_form_offers_projects_only_when_there_is_a_choice() -> None:
    two = profiles.options_form(P, ["climate", "ocean"], "ocean")
    assert '<select name="project"' in two
    assert '<option value="climate">climate</option>' in two
    assert '<option value="ocean" selected>ocean</option>' in two
    # A last choice no longer allowed: the first is selected.
    gone = profiles.options_form(P, ["climate", "ocean"], "old")
    assert '<option value="climate" selected>' in gone
    one = profiles.options_form(P, ["climate"])
    assert "<select" not in one and "Charged to project <strong>climate</strong>" in one
    none = profiles.options_form(P, [])
    assert "project" not in none.lower()
    evil = profiles.options_form(P, ['a"><script>x', "b"])
    assert "<script>" not in evil and "&lt;script&gt;" in evil
    assert profiles.options_from_form({"profile": ["small-cpu"], "project": ["ocean"]}) == {
        "profile": "small-cpu",
        "project": "ocean",
    }
    assert profiles.options_from_form({"project": [""]}) == {}


def _spawner(choices, **kw) -> PersonalSpawner:
    s = PersonalSpawner(profiles=P, detect_gpu=False, project_choices=choices, **kw)
    s.user = SimpleNamespace(name="ada")
    return s


@pytest.mark.parametrize("is_async", [False, True])
def test_apply_profile_charges_the_chosen_project(is_async: bool) -> None:
    def sync_choices(user):
        return ["climate", "ocean"] if user.name == "ada" else []

    async def async_choices(user):
        return sync_choices(user)

    seen = []

    def check(spawner, slug):
        seen.append((slug, spawner.project))  # the hook reads the chosen project here
        return None

    s = _spawner(async_choices if is_async else sync_choices, spawn_check=check)
    asyncio.run(_apply_profile(s, {"profile": "large-cpu", "project": "ocean"}))
    assert s.project == "ocean" and seen == [("large-cpu", "ocean")]
    asyncio.run(_apply_profile(s, {}))
    assert s.project == "climate"
    form = asyncio.run(s.get_options_form())
    assert '<select name="project"' in form

    s.orm_spawner = SimpleNamespace(user_options={"project": "secret"}, server=None)
    with pytest.raises(web.HTTPError) as e:
        asyncio.run(_apply_profile(s, {"project": "secret"}))
    assert e.value.status_code == 400
    assert "project 'secret' is not one of your projects; allowed: climate, ocean" in str(e.value)
    assert s.orm_spawner.user_options == {}  # not the next spawn's default either
    assert len(seen) == 2  # refused before the spawn check


def test_no_projects_charges_the_personal_project() -> None:
    s = _spawner(None, personal_project="mine")
    asyncio.run(_apply_profile(s, {}))
    assert s.project == "mine"
    with pytest.raises(web.HTTPError, match="allowed: mine"):
        asyncio.run(_apply_profile(s, {"project": "climate"}))


# -- the gateway's project option -------------------------------------------------------------
def _gw() -> SimpleNamespace:
    return SimpleNamespace(
        worker_cores=1, worker_cores_max=2, worker_memory=1.0, worker_memory_max=2.0
    )


def test_gateway_project_option_per_user_and_budget_refusal() -> None:
    from twinhub.gateway.server_config import cluster_options, user_cluster_options

    # Without projects: the options as before (personal mode).
    plain = cluster_options(_gw())
    fields = [f["field"] for f in plain.get_specification()]
    assert fields == ["worker_cores", "worker_memory", "job"]  # job: the processing service's

    def user_projects(groups):
        return sorted(set(groups) & {"climate", "ocean"})

    def refusal(project):
        return (
            "project ocean used 2 of 1 CPU-hours; ask an admin to raise it"
            if project == "ocean"
            else None
        )

    per_user = user_cluster_options(_gw(), None, user_projects, "personal", refusal)
    ada = SimpleNamespace(name="ada", groups=["ocean", "climate", "staff"])
    opts = per_user(ada)
    spec = {f["field"]: f for f in opts.get_specification()}
    assert spec["project"]["spec"] == {"type": "select", "options": ["climate", "ocean"]}
    assert spec["project"]["spec"]["options"][0] == "climate"  # the default
    parsed = opts.parse_options({})
    assert parsed["project"] == "climate"
    assert opts.get_configuration(parsed, ada)["worker_cores"] == 1
    with pytest.raises(
        ValueError, match="project 'secret' is not one of your projects; allowed: climate, ocean"
    ):
        opts.parse_options({"project": "secret"})
    chosen = opts.parse_options({"project": "ocean"})
    with pytest.raises(ValueError, match="project ocean used 2 of 1 CPU-hours"):
        opts.get_configuration(chosen, ada)
    # In no project: the personal project only.
    nobody = per_user(SimpleNamespace(name="bob", groups=[]))
    assert nobody.parse_options({})["project"] == "personal"


def test_twinlab_defaults_the_cluster_project_to_the_servers(monkeypatch) -> None:
    from dask_gateway.options import Options

    from twinlab.clusters import client

    spec = [
        {
            "field": "worker_cores",
            "label": "c",
            "default": 1,
            "spec": {"type": "int", "min": 1, "max": 2},
        },
        {
            "field": "project",
            "label": "Project",
            "default": "climate",
            "spec": {"type": "select", "options": ["climate", "ocean"]},
        },
    ]
    monkeypatch.setenv(ENV_PROJECT, "ocean")
    opts = Options._from_spec(spec)
    client._default_project(opts)
    assert opts["project"] == "ocean"
    # Not one of the user's projects at the gateway: the gateway's default stays.
    monkeypatch.setenv(ENV_PROJECT, "gone")
    opts = Options._from_spec(spec)
    client._default_project(opts)
    assert opts["project"] == "climate"
    # A gateway without the option: nothing added.
    monkeypatch.setenv(ENV_PROJECT, "ocean")
    bare = Options._from_spec(spec[:1])
    client._default_project(bare)
    assert dict(bare) == {"worker_cores": 1}


# -- the (profile, project) pair (review finding 1) --------------------------------------------
PG = profiles.validate_profiles(
    [{"slug": "small", "default": True}, {"slug": "large"}, {"slug": "gpu", "gpu": True}]
)


def _enforcer(tmp_path):
    from twinhub import db
    from twinhub.services.projects import allocations
    from twinhub.services.projects.catalog import ProjectCatalog
    from twinhub.services.projects.enforce import Enforcer

    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    configured = {
        "gpu-proj": {"gpu": True, "gpu_hours": 1},
        "small-proj": {},  # every non-GPU profile, no GPU budget
        "tiny-proj": {"profiles": ["small"]},
    }
    return Enforcer(
        ProjectCatalog(
            profiles=PG,
            configured=allocations.validate_projects(configured, PG),
            default=allocations.validate_allocation(allocations.DEFAULTS, PG),
            db_url=url,
        )
    )


def _alice(project: str, *, profile: dict | None = None, user_options: dict | None = None):
    groups = [SimpleNamespace(name=g) for g in ("gpu-proj", "small-proj", "tiny-proj")]
    return SimpleNamespace(
        user=SimpleNamespace(name="alice", groups=groups, spawners={}),
        name="",
        project=project,
        profile=profile or {},
        profiles=PG,
        user_options=user_options or {},
        accounting_dir="",
    )


def test_a_profile_is_charged_only_to_a_project_whose_allocation_allows_it(tmp_path) -> None:
    enf = _enforcer(tmp_path)
    # The union of alice's projects allows the GPU profile; small-proj's allocation does not.
    why = asyncio.run(enf.spawn_check(_alice("small-proj"), "gpu"))
    assert (
        why
        == "profile 'gpu' is not in project small-proj's allocation; charge it to one of: gpu-proj"
    )
    assert asyncio.run(enf.spawn_check(_alice("gpu-proj"), "gpu")) is None
    assert asyncio.run(enf.spawn_check(_alice("small-proj"), "large")) is None
    assert asyncio.run(enf.spawn_check(_alice("tiny-proj"), "large")) == (
        "profile 'large' is not in project tiny-proj's allocation; charge it to one of: "
        "gpu-proj, small-proj"
    )
    assert asyncio.run(enf.spawn_check(_alice("tiny-proj"), "small")) is None
    # A project that is no allocation (the personal one): the union decides.
    assert asyncio.run(enf.spawn_check(_alice("personal"), "gpu")) is None

    # Running: such a pair is stopped, also after a hub restart (profile from user_options).
    running = _alice("small-proj", profile=PG[2])
    stop = "profile 'gpu' is not in project small-proj's allocation (the project it is charged to)"
    assert asyncio.run(enf.running_check(running)) == stop
    restarted = _alice("", user_options={"profile": "gpu", "project": "small-proj"})
    assert asyncio.run(enf.running_check(restarted)) == stop
    assert asyncio.run(enf.running_check(_alice("gpu-proj", profile=PG[2]))) is None


def test_project_profile_refusal_checks_the_gpu_flag() -> None:
    from twinhub.services.projects.allocations import project_profile_refusal

    # An allocation that lists a GPU profile without gpu (not valid, e.g. edited by hand).
    projects = {"odd": {"profiles": ["gpu"], "gpu": False}}
    assert project_profile_refusal("odd", "gpu", PG, projects) == (
        "profile 'gpu' is not in project odd's allocation; choose another profile, or ask an "
        "admin of odd to add it"
    )
    assert project_profile_refusal("odd", "nope", PG, projects) is None  # choose() refuses it


def test_spawn_check_sees_the_default_profile_when_none_is_asked() -> None:
    assert profiles.slug_to_check(P, {}) == "small-cpu"
    assert profiles.slug_to_check(P, {"profile": ""}) == "small-cpu"
    assert profiles.slug_to_check(P, {"profile": "large-cpu"}) == "large-cpu"
    assert profiles.slug_to_check(P, {"profile": "unknown"}) == "unknown"
    assert profiles.slug_to_check(P, {"profile": 3}) == ""  # choose() refuses it with a 400
    assert profiles.slug_to_check([], {}) == ""
    seen = []

    def check(spawner, slug):
        seen.append(slug)

    s = _spawner(lambda user: ["climate"], spawn_check=check)
    asyncio.run(_apply_profile(s, {}))
    assert seen == ["small-cpu"] and s.profile["slug"] == "small-cpu"

"""twinhub.services.projects.allocations (the pure logic) and the project catalog on a real SQLite database."""

from __future__ import annotations

import asyncio

import pytest
from traitlets.config import Config

from twinhub import db
from twinhub.config import DEFAULT_PROFILES
from twinhub.process.runtime import Runtime
from twinhub.services.projects import ProjectCatalog, is_enabled, overrides
from twinhub.services.projects import allocations as al
from twinhub.spawn.profiles import kubespawner_profile_list, validate_profiles

PROFILES = validate_profiles(DEFAULT_PROFILES)  # small-cpu, large-cpu, gpu


def alloc(**kw) -> dict:
    return al.validate_allocation(kw, PROFILES)


# -- validation -------------------------------------------------------------------------------
def test_defaults_are_filled_in() -> None:
    assert alloc() == {
        "profiles": [],
        "gpu": False,
        "max_servers_per_user": 1,
        "cpu_hours": None,
        "gpu_hours": None,
        "storage_gb": None,
    }
    a = alloc(profiles=["large-cpu", "large-cpu"], max_servers_per_user=None, cpu_hours=1.5)
    assert a["profiles"] == ["large-cpu"] and a["max_servers_per_user"] is None


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([], "allocation must be an object, not list"),
        ({"gpus": True}, "unknown key(s) ['gpus']; allowed: profiles, gpu"),
        ({"profiles": "small-cpu"}, "profiles must be a list of profile slugs"),
        ({"profiles": ["tiny"]}, "unknown profile 'tiny'; configured profiles: small-cpu"),
        ({"profiles": ["gpu"]}, "profile(s) ['gpu'] need a GPU allocation: set gpu to true"),
        ({"gpu": 1}, "gpu must be true or false, not 1"),
        ({"max_servers_per_user": 0}, "max_servers_per_user must be an integer >= 1"),
        ({"max_servers_per_user": True}, "max_servers_per_user must be an integer >= 1"),
        ({"max_servers_per_user": 1.5}, "max_servers_per_user must be an integer >= 1"),
        ({"storage_gb": "10"}, "storage_gb must be a number >= 0, or null; got '10'"),
        ({"gpu_hours": float("inf")}, "gpu_hours must be a number >= 0"),
        ({"cpu_hours": -1}, "cpu_hours must be a number >= 0"),
    ],
)
def test_bad_allocations_are_named(data, needle: str) -> None:
    with pytest.raises(al.AllocationError) as e:
        al.validate_allocation(data, PROFILES)
    assert needle in str(e.value)


def test_projects_keyed_by_hub_group_keycloak_paths_converted() -> None:
    out = al.validate_projects({"/projects/climate-adaptation": {}, "local": {}}, PROFILES)
    assert set(out) == {"projects:climate-adaptation", "local"}
    with pytest.raises(al.AllocationError, match="'projects:x' is defined twice"):
        al.validate_projects({"/projects/x": {}, "projects:x": {}}, PROFILES)
    with pytest.raises(al.AllocationError, match=r"TwinhubProjects.projects\['a'\]: gpu must"):
        al.validate_projects({"a": {"gpu": "no"}}, PROFILES)
    for bad in ("", "  ", "a/b", "tab\there", 7):
        with pytest.raises(al.AllocationError, match="project name"):
            al.project_name(bad)


# -- effective allocation -----------------------------------------------------------------------
PROJECTS = {
    "cpu": alloc(max_servers_per_user=1, cpu_hours=100),
    "big": alloc(profiles=["large-cpu"], max_servers_per_user=3, cpu_hours=50, storage_gb=10),
    "gpu-lab": alloc(gpu=True, max_servers_per_user=2, gpu_hours=5),
    "open": alloc(max_servers_per_user=None),
}
DEFAULT = alloc(profiles=["small-cpu"])


def eff(*groups: str) -> al.Effective:
    return al.effective_allocation(groups, PROJECTS, DEFAULT, PROFILES)


def test_empty_profiles_means_every_non_gpu_profile_and_gpu_flag_adds_gpu_ones() -> None:
    assert eff("cpu").profiles == ("small-cpu", "large-cpu")
    assert eff("gpu-lab").profiles == ("small-cpu", "large-cpu", "gpu")
    assert eff("big").profiles == ("large-cpu",)


def test_several_projects_give_the_union() -> None:
    e = eff("big", "gpu-lab", "not-a-project")
    assert e.projects == ("big", "gpu-lab")
    assert e.profiles == ("small-cpu", "large-cpu", "gpu") and e.gpu
    assert e.max_servers_per_user == 3
    assert e.budgets == {"cpu_hours": 50, "gpu_hours": 5, "storage_gb": 10}
    assert eff("cpu", "big").budgets["cpu_hours"] == 150
    assert eff("cpu", "open").max_servers_per_user is None  # no limit wins


def test_no_project_gets_the_default() -> None:
    e = eff("somewhere-else")
    assert e.from_default and e.projects == () and e.profiles == ("small-cpu",)
    assert e.as_dict()["source"] == "default" and e.as_dict()["cpu_hours"] is None


# -- refusals ----------------------------------------------------------------------------------
def test_gpu_refusal_names_projects_and_how_to_get_it() -> None:
    msg = al.profile_refusal(eff("cpu"), "gpu", PROFILES, PROJECTS)
    assert msg == (
        "profile 'gpu' is not in the allocation of your projects (cpu); "
        "ask an admin of a GPU project (projects with it: gpu-lab) to add you"
    )
    assert al.profile_refusal(eff("gpu-lab"), "gpu", PROFILES, PROJECTS) is None
    assert al.profile_refusal(eff("cpu"), "unknown", PROFILES, PROJECTS) is None


def test_non_gpu_refusal_and_default_allocation_wording() -> None:
    msg = al.profile_refusal(eff(), "large-cpu", PROFILES, PROJECTS)
    assert msg.startswith(
        "profile 'large-cpu' is not in the default allocation (you are in no project); "
        "ask an admin of a project that allows it (projects with it: big, cpu, gpu-lab, open)"
    )


def test_server_limit() -> None:
    assert al.server_limit_refusal(eff("gpu-lab"), [""]) is None
    msg = al.server_limit_refusal(eff("gpu-lab"), ["", "b"])
    assert msg.startswith("you already run 2 server(s) (the default server, 'b')")
    assert "max_servers_per_user of the allocation of your projects (gpu-lab) is 2" in msg
    assert al.server_limit_refusal(eff("open"), ["a"] * 50) is None


# -- Kubernetes: the same filter on KubeSpawner's profile_list --------------------------------
class FakeSpawner:
    """Fake: KubeSpawner needs a Kubernetes API to exist; the callable only reads .user."""

    def __init__(self, user: str) -> None:
        self.user = user


def test_kubespawner_profile_list_is_filtered_per_user() -> None:
    k8s = kubespawner_profile_list(DEFAULT_PROFILES)
    # KubeSpawner's shape has no 'gpu' key: the GPU resource limit marks the GPU profile.
    assert [al.is_gpu_profile(p) for p in k8s] == [False, False, True]
    groups = {"ann": ["cpu"], "bob": ["gpu-lab"], "cid": []}

    async def resolve(user: str) -> al.Effective:
        return eff(*groups[user])

    hook = al.kubespawner_profile_list(k8s, resolve)

    def slugs(user: str) -> list[str]:
        return [p["slug"] for p in asyncio.run(hook(FakeSpawner(user)))]

    assert slugs("ann") == ["small-cpu", "large-cpu"]
    assert slugs("bob") == ["small-cpu", "large-cpu", "gpu"]
    assert slugs("cid") == ["small-cpu"]
    # Entries come through unchanged (KubeSpawner applies their overrides).
    assert asyncio.run(hook(FakeSpawner("bob")))[2] == k8s[2]


# -- the catalog: configuration + the project_allocations table -------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request, tmp_path) -> ProjectCatalog:
    cfg = Config()
    cfg.TwinhubProjects.projects = {"/projects/a": {"gpu": True}, "b": {}}
    cfg.TwinhubProjects.default_allocation = {"profiles": ["small-cpu"]}
    if request.param == "sqlite":
        cfg.Twinhub.db_url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    else:  # the JSON column and the upsert on a real PostgreSQL
        cfg.Twinhub.db_url = request.getfixturevalue("postgres_db")
    rt = Runtime(state_dir=tmp_path, config=cfg, mode="multi-user")
    db.upgrade(rt.db_url)
    return ProjectCatalog.from_runtime(rt)


def test_admin_override_wins_until_reset(catalog: ProjectCatalog) -> None:
    assert catalog.entries()["projects:a"]["source"] == "config"
    overrides.set_override(catalog.db_url, "projects:a", alloc(gpu=False), "root")
    e = catalog.entries()["projects:a"]
    assert e["source"] == "admin" and e["updated_by"] == "root"
    assert e["updated_at"].endswith("+00:00")
    assert e["configured"]["gpu"] is True and e["allocation"]["gpu"] is False
    assert "gpu" not in catalog.effective(["projects:a"]).profiles
    assert overrides.delete_override(catalog.db_url, "projects:a") is True
    assert overrides.delete_override(catalog.db_url, "projects:a") is False
    assert "gpu" in catalog.effective(["projects:a"]).profiles
    assert catalog.effective([]).profiles == ("small-cpu",)


def test_stale_override_is_ignored(catalog: ProjectCatalog, caplog) -> None:
    # Stored when a profile existed that the configuration has since dropped.
    overrides.set_override(catalog.db_url, "b", {**alloc(), "profiles": ["gone"]}, "root")
    assert catalog.entries()["b"]["source"] == "config"
    assert "unknown profile 'gone'" in caplog.text


def test_enabled_by_mode_unless_set(tmp_path) -> None:
    rt = Runtime(state_dir=tmp_path, mode="personal")
    assert not is_enabled(rt)
    rt.mode = "multi-user"
    assert is_enabled(rt)
    rt.config.TwinhubProjects.enabled = False
    assert not is_enabled(rt)

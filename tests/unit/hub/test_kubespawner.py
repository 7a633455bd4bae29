"""TwinhubKubeSpawner (twinhub.spawn.kube): twinhub's profiles, projects and allocation checks
in KubeSpawner, configured the way the hub is in Kubernetes (SpawnPart's Kubernetes branch,
then the projects' and accounting's hooks, installed once on ``c.TwinhubSpawner``).

Real pieces: the spawner class, KubeSpawner's profile loading and pod manifest, JupyterHub's
users, groups and spawners on an in-memory hub database, twinhub's database (allocations
changed at run time, budget states) and hooks. There is no Kubernetes API server here:
KubeSpawner is constructed with a FAKE kube config naming an address that is never
contacted, and the one test that stops a server replaces the two methods that talk to the
API (delete a pod, read its status) with a named fake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jupyterhub import orm
from jupyterhub.app import JupyterHub
from jupyterhub.objects import Hub
from jupyterhub.user import User
from tornado import web
from traitlets.config import Config

from tests.helpers.fake_kube import use_fake_kube_config
from twinhub import db
from twinhub.db.models import BudgetState
from twinhub.gateway import GatewayPart
from twinhub.process.runtime import Runtime
from twinhub.services.accounting import AccountingPart, backend_prometheus
from twinhub.services.accounting.enforce import BudgetEnforcer
from twinhub.services.projects import ProjectsPart
from twinhub.services.projects.overrides import set_override
from twinhub.spawn import kube
from twinhub.spawn.kube import LABEL_PROJECT, LABEL_USER, TwinhubKubeSpawner
from twinhub.spawn.modes import PersonalSpawner, SpawnPart
from twinhub.spawn.profiles import validate_profiles

GPU_IMAGE = "ghcr.io/twinhub/gpu:test"
USER_IMAGE = "ghcr.io/twinhub/user:test"
PROFILES = [
    {"slug": "small", "default": True, "limits": {"cpu": 1, "memory": "2G"}},
    {"slug": "large", "limits": {"cpu": 4, "memory": "8G"}, "env": {"OMP_NUM_THREADS": "4"}},
    {
        "slug": "gpu",
        "gpu": True,
        "limits": {"cpu": 4, "memory": "16G", "gpu": 1},
        "kubespawner_override": {"image": GPU_IMAGE},
    },
]
# alice: A (small); bob: B (small + gpu, two servers); carol: none (the default allocation:
# every non-GPU profile); dana: a project whose name is no valid label value.
PROJECTS = {
    "A": {"profiles": ["small"]},
    "B": {"profiles": ["small", "gpu"], "gpu": True, "max_servers_per_user": 2},
    "Ocean Science": {"profiles": ["large"]},
}
MEMBERS = {"alice": ["A"], "bob": ["B"], "carol": [], "Dana@Example.org": ["Ocean Science"]}


@pytest.fixture(autouse=True)
def fake_kube_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_kube_config(tmp_path, monkeypatch)


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    """A Kubernetes runtime as the chart renders it (config, service URLs) on SQLite."""
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    config = Config(
        {
            "Twinhub": {"profiles": PROFILES, "detect_gpu": False, "db_url": url},
            "TwinhubProjects": {"enabled": True, "projects": PROJECTS},
            "TwinhubAccounting": {
                "backend": "prometheus",
                "prometheus_url": "http://prometheus.monitoring",
                "personal_project": "personal",
            },
        }
    )
    # The gateway's hub API token, as the chart's projected Secret volume mounts it.
    secrets = tmp_path / "state" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "service-dask-gateway").write_text("gateway-token")
    return Runtime(
        state_dir=tmp_path / "state",
        config=config,
        mode="multi-user",
        instance_id="twinhub",
        deployment="kubernetes",
        service_urls={
            "hub_api": "http://hub:8081/hub/api",
            "proxy": "http://proxy-public",
            "dask-gateway": "http://traefik-twinhub-dask-gateway",
            "dask-gateway-proxy": "gateway://traefik-twinhub-dask-gateway:80",
        },
    )


def hub_config(rt: Runtime) -> Config:
    """What the hub's configuration sets for spawning, in the order twinhub.parts runs it."""
    c = Config()
    SpawnPart().configure_hub(c, rt)
    GatewayPart().configure_hub(c, rt)
    ProjectsPart().configure_service(c, rt)
    AccountingPart().configure_service(c, rt)
    # As twinhub.services.base does for each service (registration itself is P1's test).
    c.TwinhubSpawner.services.update({"projects": rt.url + "services/projects/"})
    # z2jh's singleuser.image and singleuser.profileList (its default).
    c.KubeSpawner.image = USER_IMAGE
    c.KubeSpawner.profile_list = []
    return c


class Hubdb:
    """JupyterHub's users and groups on an in-memory hub database."""

    def __init__(self, c: Config, spawner_class: type = TwinhubKubeSpawner) -> None:
        self.session = orm.new_session_factory("sqlite://")()
        self.settings = {
            "spawner_class": spawner_class,
            "config": c,
            "hub": Hub(),
            "allow_named_servers": True,
        }
        groups = {g: orm.Group(name=g) for g in PROJECTS}
        for name, mine in MEMBERS.items():
            self.session.add(orm.User(name=name, groups=[groups[g] for g in mine]))
        self.session.commit()

    def user(self, name: str) -> User:
        return User(orm.User.find(self.session, name), self.settings)


def slugs(items: list[dict]) -> list[str]:
    return [p["slug"] for p in items]


async def spawn_options(sp: TwinhubKubeSpawner, options: dict) -> Any:
    """What a spawn runs before the pod is created: JupyterHub's apply_user_options runner,
    then KubeSpawner's profile loading; returns the pod manifest."""
    sp.user_options = options
    sp.orm_spawner.user_options = options
    await sp._run_apply_user_options(options)
    await sp.load_user_options()
    return await sp.get_pod_manifest()


async def refusal(sp: TwinhubKubeSpawner, options: dict) -> web.HTTPError:
    sp.orm_spawner.user_options = options
    with pytest.raises(web.HTTPError) as e:
        await sp._run_apply_user_options(options)
    assert sp.orm_spawner.user_options == {}  # not the next spawn's defaults either
    return e.value


def mark_running(sp: TwinhubKubeSpawner) -> None:
    # What JupyterHub records once a spawn succeeded: the server's address.
    sp.orm_spawner.server = orm.Server(ip="10.0.0.5", port=8888)
    sp.db.commit()
    assert sp.ready and sp.active


# -- configuration --------------------------------------------------------------------------
def test_configure_hub_in_kubernetes_sets_the_kube_spawner_only(rt: Runtime) -> None:
    c = hub_config(rt)
    # By name (the embedded hub never imports kubespawner); JupyterHub resolves it.
    assert JupyterHub(config=c).spawner_class is TwinhubKubeSpawner
    assert slugs(c.TwinhubKubeSpawner.profiles) == ["small", "large", "gpu"]
    assert c.TwinhubKubeSpawner.profiles[2]["gpu"] is True  # validated (normalised)
    # Nothing of the local process spawners: z2jh's command, timeouts and spawn limit stay.
    for section, key in [
        ("Spawner", "cmd"),
        ("Spawner", "start_timeout"),
        ("JupyterHub", "concurrent_spawn_limit"),
        ("MultiUserSpawner", "user_prefix"),
        ("TwinhubSpawner", "state_dir"),
        ("TwinhubSpawner", "enforce_limits"),
    ]:
        assert key not in c[section], (section, key)
    # The hooks, installed once on the embedded spawner's section: projects' wrapped by budgets.
    assert isinstance(c.TwinhubSpawner.spawn_check.__self__, BudgetEnforcer)
    assert c.TwinhubSpawner.spawn_check.__self__.gateway == (
        "http://traefik-twinhub-dask-gateway/services/dask-gateway"
    )
    # A bad profile list is refused before anything is set, as embedded.
    bad = Runtime(
        state_dir=rt.state_dir,
        config=Config({"Twinhub": {"profiles": [{"slug": "x", "image": "y"}]}}),
        deployment="kubernetes",
    )
    with pytest.raises(ValueError, match=r"profile 'x': unknown key\(s\) \['image'\]"):
        SpawnPart().configure_hub(Config(), bad)


class Collect(logging.Handler):
    """The warnings of traitlets' logger (the spawners' when no application runs); caplog's
    handler does not survive the hub database's set-up, which configures logging."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_embedded_sections_hooks_reach_the_kube_spawner_only_where_shared(
    rt: Runtime,
) -> None:
    c = hub_config(rt)
    c.TwinhubSpawner.personal_project = "shared"
    hub = Hubdb(c)
    logs = Collect()

    async def scenario() -> None:
        sp = hub.user("carol").spawner
        assert isinstance(sp, TwinhubKubeSpawner)
        assert sp.spawn_check is not None and sp.running_check is not None
        assert sp.profile_filter is not None and sp.project_choices is not None
        assert sp.personal_project == "shared"
        assert sp.services == {
            "dask-gateway": "http://proxy-public/services/dask-gateway/",
            "projects": "http://proxy-public/services/projects/",
        }
        # Its own section wins over the shared one.
        c.TwinhubKubeSpawner.personal_project = "own"
        assert hub.user("alice").spawner.personal_project == "own"
        # A profile list given to z2jh is not what twinhub offers (said in the log).
        c.KubeSpawner.profile_list = [{"display_name": "Other", "slug": "other"}]
        bob = hub.user("bob").spawner
        assert slugs(await bob.profile_list(bob)) == ["small", "gpu"]

    traitlets_log = logging.getLogger("traitlets")
    traitlets_log.addHandler(logs)
    try:
        asyncio.run(scenario())
    finally:
        traitlets_log.removeHandler(logs)
    # The embedded spawner's other options (accounting_dir...) are not offered to it at all.
    assert not [m for m in logs.messages if "not recognized" in m]
    (ignored,) = [m for m in logs.messages if "profile_list" in m]
    assert ignored.startswith("Ignoring KubeSpawner.profile_list (singleuser.profileList)")
    # And the embedded spawner still reads only its own sections.
    embedded = PersonalSpawner(config=c)
    assert embedded.personal_project == "shared" and embedded.accounting_dir


# -- what each user is offered --------------------------------------------------------------
def test_profile_list_and_form_per_user(rt: Runtime) -> None:
    hub = Hubdb(hub_config(rt))

    async def offered(name: str) -> tuple[list[dict], str]:
        sp = hub.user(name).spawner
        return await sp.profile_list(sp), await sp.get_options_form()

    async def scenario() -> None:
        alice, alice_form = await offered("alice")
        bob, bob_form = await offered("bob")
        carol, carol_form = await offered("carol")
        assert slugs(alice) == ["small"]
        assert slugs(bob) == ["small", "gpu"]
        assert slugs(carol) == ["small", "large"]  # the default allocation: no GPU
        # KubeSpawner's shape: limits, GPU resources and image as overrides.
        gpu = bob[1]["kubespawner_override"]
        assert gpu["extra_resource_limits"] == {"nvidia.com/gpu": "1"}
        assert gpu["image"] == GPU_IMAGE and gpu["cpu_limit"] == 4.0
        assert carol[1]["kubespawner_override"]["environment"] == {
            "TWINHUB_PROFILE": "large",
            "OMP_NUM_THREADS": "4",
        }
        # The form: twinhub's, with the profiles and the project charged.
        assert 'value="gpu"' in bob_form and "Charged to project <strong>B</strong>" in bob_form
        assert 'value="gpu"' not in alice_form and "<strong>A</strong>" in alice_form
        assert 'value="large"' in carol_form and "project" not in carol_form.lower()
        # The form's fields become user_options with the project kept (KubeSpawner's own
        # parser knows only the profile).
        bob_spawner = hub.user("bob").spawner
        assert bob_spawner.run_options_from_form({"profile": ["gpu"], "project": ["B"]}) == {
            "profile": "gpu",
            "project": "B",
        }

    asyncio.run(scenario())


# -- a spawn: profile, project, pod ---------------------------------------------------------
def test_the_pod_carries_profile_project_and_user(rt: Runtime) -> None:
    hub = Hubdb(hub_config(rt))

    async def scenario() -> None:
        bob = hub.user("bob").spawner
        pod = await spawn_options(bob, {"profile": "gpu", "project": "B"})
        (ctr,) = pod.spec.containers
        assert ctr.image == GPU_IMAGE
        assert ctr.resources.limits == {"cpu": 4.0, "memory": 16 * 2**30, "nvidia.com/gpu": "1"}
        labels = pod.metadata.labels
        assert labels[LABEL_PROJECT] == "B" and labels[LABEL_USER] == "bob"
        assert labels["hub.jupyter.org/username"] == "bob"
        annotations = pod.metadata.annotations
        assert annotations[LABEL_PROJECT] == "B" and annotations[LABEL_USER] == "bob"
        env = {e.name: e.value for e in ctr.env}
        assert env["TWINHUB_PROJECT"] == "B" and env["TWINHUB_PROFILE"] == "gpu"
        assert env["TWINHUB_LIMITS_ENFORCED"] == "1"
        assert json.loads(env["TWINHUB_SERVICES"])["projects"] == (
            "http://proxy-public/services/projects/"
        )
        assert "TWINHUB_STATE" not in env

        # The default profile and project; the user image.
        alice = hub.user("alice").spawner
        pod = await spawn_options(alice, {})
        assert alice.profile["slug"] == "small" and alice.project == "A"
        assert pod.spec.containers[0].image == USER_IMAGE
        assert pod.metadata.labels[LABEL_PROJECT] == "A"

        # In no project: the personal project.
        carol = hub.user("carol").spawner
        pod = await spawn_options(carol, {"profile": "large"})
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["TWINHUB_PROJECT"] == "personal" and env["OMP_NUM_THREADS"] == "4"
        assert pod.metadata.labels[LABEL_PROJECT] == "personal"

        # Names that are no valid label values: escaped like KubeSpawner's username label,
        # the raw names in the annotations of the same keys (what accounting charges).
        dana = hub.user("Dana@Example.org").spawner
        pod = await spawn_options(dana, {})
        labels = pod.metadata.labels
        assert labels[LABEL_USER] == labels["hub.jupyter.org/username"] != "Dana@Example.org"
        assert labels[LABEL_PROJECT] != "Ocean Science"
        for value in (labels[LABEL_USER], labels[LABEL_PROJECT]):
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value)
        annotations = pod.metadata.annotations
        assert annotations[LABEL_PROJECT] == "Ocean Science"
        assert annotations[LABEL_USER] == annotations["hub.jupyter.org/username"]
        assert annotations[LABEL_USER] == "Dana@Example.org"

    asyncio.run(scenario())


def test_label_names_are_the_ones_accountings_prometheus_backend_reads() -> None:
    def kube_state_metrics(prefix: str, key: str) -> str:  # non-alphanumerics -> _
        return f"{prefix}_" + re.sub(r"[^A-Za-z0-9_]", "_", key)

    assert kube_state_metrics("label", LABEL_PROJECT) == backend_prometheus.LABEL_PROJECT
    assert kube_state_metrics("label", LABEL_USER) == backend_prometheus.LABEL_USER
    assert kube_state_metrics("annotation", LABEL_USER) == backend_prometheus.ANNOTATION_USER
    assert kube_state_metrics("annotation", LABEL_PROJECT) == backend_prometheus.ANNOTATION_PROJECT
    # What docs/accounting.md tells operators to allowlist in kube-state-metrics.
    for key in (LABEL_USER, LABEL_PROJECT):
        assert key in backend_prometheus.POD_LABEL_KEYS
        assert key in backend_prometheus.POD_ANNOTATION_KEYS


# -- refusals -------------------------------------------------------------------------------
def test_forged_profile_project_and_options_are_refused(rt: Runtime) -> None:
    hub = Hubdb(hub_config(rt))

    async def scenario() -> None:
        alice = hub.user("alice").spawner
        e = await refusal(alice, {"profile": "gpu"})
        assert e.status_code == 403
        assert e.jupyterhub_message == (
            "profile 'gpu' is not in the allocation of your projects (A); ask an admin of a "
            "GPU project (projects with it: B) to add you"
        )
        e = await refusal(alice, {"project": "B"})
        assert e.status_code == 403
        assert e.jupyterhub_message == "project 'B' is not one of your projects; allowed: A"
        # bob may start gpu, but not charged to someone else's project.
        e = await refusal(hub.user("bob").spawner, {"profile": "gpu", "project": "A"})
        assert (e.status_code, e.jupyterhub_message) == (
            403,
            "project 'A' is not one of your projects; allowed: B",
        )
        e = await refusal(alice, {"profile": "huge"})
        assert (e.status_code, e.jupyterhub_message) == (
            400,
            "unknown profile 'huge'; available: small",
        )
        e = await refusal(alice, {"profile": "small", "image": "evil:latest"})
        assert e.status_code == 400 and "only 'profile' and 'project'" in e.jupyterhub_message
        e = await refusal(alice, {"profile": ["small"]})
        assert (e.status_code, e.jupyterhub_message) == (400, "profile must be a string, not list")
        # Nothing was applied by the refused spawns.
        assert alice.profile == {} and alice.image == USER_IMAGE

    asyncio.run(scenario())


def test_spawn_check_server_limit_and_frozen_budget(rt: Runtime) -> None:
    hub = Hubdb(hub_config(rt))

    async def scenario() -> None:
        alice = hub.user("alice")
        await spawn_options(alice.spawner, {})
        mark_running(alice.spawner)
        second = alice.get_or_create_spawner("two", "two")
        e = await refusal(second, {})
        assert e.status_code == 403
        assert e.jupyterhub_message.startswith(
            "you already run 1 server(s) (the default server) and max_servers_per_user of the "
            "allocation of your projects (A) is 1"
        )

        # B allows two servers, but its CPU budget is used up (the accounting service's row).
        with db.session(rt.db_url) as s:
            s.add(
                BudgetState(
                    project="B",
                    budget="cpu_hours",
                    used=12.0,
                    limit=10.0,
                    fraction=1.2,
                    level=100,
                    over_since=datetime.now(UTC),
                    updated_at=datetime.now(UTC),
                )
            )
        e = await refusal(hub.user("bob").spawner, {"profile": "small"})
        assert (e.status_code, e.jupyterhub_message) == (
            403,
            "project B used 12 of 10 CPU-hours; ask an admin to raise it",
        )

    asyncio.run(scenario())


def test_a_profile_filter_alone_still_refuses_what_it_hides() -> None:
    """Without the projects' checks (a custom filter only), hidden profiles are refused too."""
    c = Config()
    c.TwinhubKubeSpawner.profiles = validate_profiles(PROFILES)
    c.TwinhubSpawner.profile_filter = lambda user, offered: [
        p for p in offered if user.name == "alice" and p["slug"] == "small"
    ]
    hub = Hubdb(c)

    async def scenario() -> None:
        alice = hub.user("alice").spawner
        e = await refusal(alice, {"profile": "large"})
        assert (e.status_code, e.jupyterhub_message) == (
            403,
            "profile 'large' is not available to you; available: small",
        )
        await spawn_options(alice, {})
        assert alice.profile["slug"] == "small" and alice.project == "personal"
        e = await refusal(hub.user("carol").spawner, {})
        assert (e.status_code, e.jupyterhub_message) == (
            403,
            "no server profile is available to you; ask an administrator to add you to a project",
        )

    asyncio.run(scenario())


# -- a running server whose profile was taken away -------------------------------------------
class FakeApiKubeSpawner(TwinhubKubeSpawner):
    """A fake at the Kubernetes API edge only (no API server here): deleting the pod and
    reading its status; everything else is TwinhubKubeSpawner's."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.stops: list[bool] = []

    async def stop(self, now: bool = False) -> None:
        self.stops.append(now)

    async def poll(self) -> int | None:
        return 1 if self.stops else None  # the pod is gone once deleted


def test_running_check_stops_a_server_whose_profile_left_its_project(rt: Runtime) -> None:
    hub = Hubdb(hub_config(rt), spawner_class=FakeApiKubeSpawner)

    async def scenario() -> None:
        alice = hub.user("alice")
        sp = alice.spawner
        await spawn_options(sp, {"profile": "small"})
        mark_running(sp)
        notified: list[str] = []
        sp.add_poll_callback(lambda: notified.append("stopped"))
        assert await sp.poll_and_notify() is None and sp.stops == []

        # After a hub restart: a new spawner object, the choice from its saved state.
        sp.orm_spawner.state = sp.get_state()
        restarted = User(alice.orm_user, hub.settings).spawner
        assert restarted.profile["slug"] == "small" and restarted.project == "A"

        # An admin takes small out of A's allocation (the projects service's table).
        set_override(rt.db_url, "A", {"profiles": ["large"]}, "admin")
        assert await sp.poll_and_notify() == 1
        assert sp.stops == [True] and notified == ["stopped"]
        assert await restarted.running_check(restarted) == (
            "profile 'small' is no longer in the allocation of its user's projects (A)"
        )

    asyncio.run(scenario())


def test_module_names_what_it_shares() -> None:
    # Every shared option is a configurable trait of both spawners (a typo would share nothing).
    for name in kube.SHARED_OPTIONS:
        assert TwinhubKubeSpawner.class_traits(config=True).get(name) is not None, name
        assert PersonalSpawner.class_traits(config=True).get(name) is not None, name


def test_a_restarted_hub_keeps_a_removed_gpu_profile_and_a_failing_check_stops_nothing(
    rt: Runtime,
) -> None:
    hub = Hubdb(hub_config(rt), spawner_class=FakeApiKubeSpawner)

    async def scenario() -> None:
        bob = hub.user("bob")
        sp = bob.spawner
        await spawn_options(sp, {"profile": "gpu"})
        mark_running(sp)
        assert sp.profile.get("gpu") or sp.profile.get("limits", {}).get("gpu")
        saved = sp.get_state()
        # The GPU profile leaves the configuration, then the hub restarts.
        sp.orm_spawner.state = saved
        restarted = User(bob.orm_user, hub.settings).spawner
        restarted.profiles = [p for p in restarted.profiles if p["slug"] != "gpu"]
        restarted.load_state(saved)
        assert restarted.profile == sp.profile  # still judged as the GPU profile it runs

        # A check that cannot judge (its database away) stops nothing; the poll still runs.
        def broken(spawner: Any) -> str | None:
            raise RuntimeError("database away")

        sp.running_check = broken
        assert await sp.poll_and_notify() is None and sp.stops == []

    asyncio.run(scenario())

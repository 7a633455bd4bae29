"""The chart's hub configuration, executed: JupyterHub loads what z2jh's hub pod would load.

The chart is rendered with Helm (twinhub's templates; the subcharts cannot be downloaded
here). From it, a hub pod's view is built: the ``twinhub-runtime`` ConfigMap's runtime.json
and the ``twinhub-secrets`` Secret's keys as files under ``$TWINHUB_STATE`` (the mounts of
``jupyterhub.hub.extraVolumeMounts``), ``db-url`` a SQLite file (CNPG's URI cannot be
reached here). A config file then does what z2jh's jupyterhub_config.py does that matters
here (KubeSpawner, the hub's own database, the proxy's API address, the culler's service and
role, ``singleuser.extraEnv``, ``hub.config``) followed by the chart's
``jupyterhub.hub.extraConfig`` snippets in z2jh's order, and a real ``JupyterHub`` app is
initialized from it (``initialize`` starts no proxy and no server).

KubeSpawner needs a kube config when a spawner is made: a FAKE one names an address that is
never contacted (nothing here calls the Kubernetes API: no spawner is started or stopped).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from jupyterhub import orm
from jupyterhub.app import JupyterHub
from jupyterhub.crypto import CryptKeeper
from jupyterhub.utils import maybe_future
from tornado import web

from tests.helpers import helm
from tests.helpers.fake_kube import use_fake_kube_config

pytestmark = pytest.mark.usefixtures("helm_binaries")


GPU_PROFILE = {
    "slug": "gpu",
    "display_name": "GPU",
    "description": "1 GPU, 4 CPUs, 16 GiB memory.",
    "gpu": True,
    "limits": {"cpu": 4, "memory": "16G", "gpu": 1},
}
#: Two projects: A may run small-cpu; B small-cpu and the GPU. Users in none get the
#: default allocation (every non-GPU profile).
PROJECTS = {
    "A": {"profiles": ["small-cpu"]},
    "B": {"profiles": ["small-cpu", "gpu"], "gpu": True},
}
PROMETHEUS = "http://prometheus-server.monitoring.svc"


def chart_extra() -> dict:
    profiles = [*helm.chart_values()["twinhub"]["profiles"], GPU_PROFILE]
    return {
        "twinhub": {
            "profiles": profiles,
            # Accounting runs only with a Prometheus to read (runtime-config.md).
            "prometheus": {"url": PROMETHEUS},
            "config": {"TwinhubProjects": {"projects": PROJECTS}},
        },
        # What an operator gives every server through z2jh: kept beside twinhub's own.
        "jupyterhub": {"singleuser": {"extraEnv": {"SITE_NOTE": "from-values"}}},
    }


def pod_state(objects: list[dict], state: Path) -> dict[str, str]:
    """The hub pod's $TWINHUB_STATE from the rendered objects; returns the secret files."""
    runtime = helm.find(objects, "ConfigMap", "twinhub-runtime")["data"]["runtime.json"]
    (state / "run").mkdir(parents=True)
    (state / "run" / "runtime.json").write_text(runtime)
    secret = helm.find(objects, "Secret", "twinhub-secrets")
    files = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    files.update(secret.get("stringData") or {})
    # CNPG's twinhub-db-app `uri` in the cluster; a SQLite file here.
    files["db-url"] = f"sqlite:///{state / 'twinhub-own.sqlite'}"
    (state / "secrets").mkdir()
    for name, value in files.items():
        (state / "secrets" / name).write_text(value)
    return files


def z2jh_config_file(values: dict, tmp: Path) -> Path:
    """What z2jh's jupyterhub_config.py sets that matters here, then the chart's
    hub.extraConfig snippets (z2jh runs them sorted by key, after its own settings)."""
    hub = values["jupyterhub"]["hub"]
    single = values["jupyterhub"].get("singleuser", {})
    lines = [
        "c.JupyterHub.spawner_class = 'kubespawner.KubeSpawner'",
        "c.JupyterHub.authenticator_class = 'dummy'",  # z2jh's default hub.config
        f"c.JupyterHub.db_url = 'sqlite:///{tmp / 'jupyterhub.sqlite'}'",
        "c.JupyterHub.hub_bind_url = 'http://:8081'",
        "c.JupyterHub.hub_connect_url = 'http://hub:8081'",
        "c.JupyterHub.cookie_secret = bytes.fromhex('00' * 32)",
        # z2jh generates hub.config.CryptKeeper.keys into its hub Secret (auth state).
        "c.CryptKeeper.keys = [bytes.fromhex('11' * 32)]",
        "c.ConfigurableHTTPProxy.should_start = False",
        "c.ConfigurableHTTPProxy.api_url = 'http://proxy-api:8001'",
        "c.ConfigurableHTTPProxy.auth_token = 'z2jh-proxy-token'",
        "c.KubeSpawner.namespace = 'twinhub'",
        f"c.KubeSpawner.environment = {single.get('extraEnv') or {}!r}",
        # z2jh's culler (cull.enabled), a service with its role
        "c.JupyterHub.services = [{'name': 'jupyterhub-idle-culler', 'api_token': 'z2jh-cull'}]",
        "c.JupyterHub.load_roles = [{'name': 'jupyterhub-idle-culler', 'services': "
        "['jupyterhub-idle-culler'], 'scopes': ['list:users', 'read:users:activity', "
        "'read:servers', 'delete:servers']}]",
    ]
    for section, traits in (hub.get("config") or {}).items():
        lines += [f"c.{section}.{k} = {v!r}" for k, v in traits.items()]
    for key in sorted(hub.get("extraConfig") or {}):
        lines.append(hub["extraConfig"][key])
    f = tmp / "jupyterhub_config.py"
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.fixture(params=helm.HELM_VERSIONS, ids=lambda v: f"helm{v}")
def hub(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    use_fake_kube_config(tmp_path, monkeypatch)
    extra = chart_extra()
    objects = helm.render("default", helm=request.param, extra=extra)
    state = tmp_path / "state"
    files = pod_state(objects, state)
    values = helm.chart_values("default", extra)
    # The hub pod's environment (jupyterhub.hub.extraEnv), pointed at this pod's state.
    assert values["jupyterhub"]["hub"]["extraEnv"]["TWINHUB_STATE"] == "/srv/twinhub/state"
    monkeypatch.setenv("TWINHUB_STATE", str(state))
    config_file = z2jh_config_file(values, tmp_path)
    runtime = json.loads((state / "run/runtime.json").read_text())
    app = JupyterHub.instance()  # the singleton: CryptKeeper reads its config
    app.config_file = str(config_file)

    async def start() -> None:
        await app.initialize([])

    yield app, files, runtime, start
    JupyterHub.clear_instance()
    CryptKeeper.clear_instance()


async def _user(app: JupyterHub, name: str, groups: list[str]) -> Any:
    db = app.db
    u = orm.User(name=name)
    db.add(u)
    for g in groups:
        group = orm.Group.find(db, g) or orm.Group(name=g)
        db.add(group)
        group.users.append(u)
    db.commit()
    return app.users[u]


def test_the_rendered_hub_configuration_runs(
    hub, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "twinhub-ns")  # z2jh's hub container sets it
    asyncio.run(_registration(*hub))
    _first_admin(*hub, capsys.readouterr().out)


def _first_admin(app: JupyterHub, files: dict, runtime: dict, start: Any, log: str) -> None:
    """Local accounts: the first admin's password is the chart's Secret key admin-password
    (random, kept across upgrades); the hub's log says where it is, never what it is."""
    from twinhub.auth.local_accounts import verify_login
    from twinhub.config import Twinhub

    password = files["admin-password"]
    assert len(password) == 64
    db_url = app.config.TwinhubLocalAuth.db_url
    admin = Twinhub().admin_user
    account = verify_login(db_url, admin, password)
    assert account is not None and account.is_admin and account.approved
    assert password not in log
    assert f"first admin account: {admin}; its password is key 'admin-password'" in log
    assert (
        "kubectl -n twinhub-ns get secret twinhub-secrets -o jsonpath='{.data.admin-password}' "
        "| base64 -d"
    ) in log


async def _registration(app: JupyterHub, files: dict, runtime: dict, start: Any) -> None:
    await start()

    # Every twinhub service the chart enabled: its in-cluster URL, its token, its scopes.
    services = {s["name"]: s for s in app.services}
    enabled = sorted(runtime["ports"])
    assert enabled == [
        "accounting",
        "cache",
        "desk",
        "processing",
        "projects",
        "registry",
        "stac",
        "tiles",
    ]
    for name in enabled:
        s = services[name]
        assert s["url"] == f"http://twinhub-{name}:8000" == runtime["service_urls"][name]
        assert s["api_token"] == files[f"service-{name}"]
        orm_service = orm.Service.find(app.db, name)
        assert orm_service.server.base_url == f"/services/{name}/"
        server = orm_service.server
        assert (server.proto, server.ip, server.port) == ("http", f"twinhub-{name}", 8000)
    # The dask-gateway chart's service, with the token the chart gives it too.
    gw = services["dask-gateway"]
    assert gw["url"] == "http://traefik-twinhub-dask-gateway"
    assert gw["api_token"] == files["service-dask-gateway"]
    # z2jh's own service and role are kept.
    assert services["jupyterhub-idle-culler"]["api_token"] == "z2jh-cull"
    roles = {r.name: r for r in app.db.query(orm.Role)}
    assert "jupyterhub-idle-culler" in roles
    # Users (and their servers) may reach each service; services' own tokens have theirs.
    user_scopes = set(roles["user"].scopes)
    for name in [*enabled, "dask-gateway"]:
        assert f"access:services!service={name}" in user_scopes
    for name in ("projects", "accounting"):
        assert set(roles[f"{name}-service"].scopes) == {"read:users", "read:groups"}
        assert [s.name for s in roles[f"{name}-service"].services] == [name]
    # The registry's token registers /services/<slug>/ of integrated web services with the
    # hub (admin:services: the hub then routes them to the registry's Service) and reads the
    # lake's collections from stac for the landing page.
    assert set(roles["registry-service"].scopes) == {
        "read:users",
        "read:groups",
        "admin:services",
        "access:services!service=stac",
    }
    assert [s.name for s in roles["registry-service"].services] == ["registry"]
    # ...with the token the chart generated into twinhub-secrets (the registry pod's file).
    assert orm.APIToken.find(app.db, files["service-registry"]).service.name == "registry"
    assert set(roles["desk-service"].scopes) == {"read:users", "read:groups"}
    # Processing checks the lake items a job names (stac); it holds no `tokens` scope: the
    # hub mints each job's short token for its user through the hub-side handlers that
    # only the processing service may call.
    assert set(roles["processing-service"].scopes) == {
        "read:users",
        "read:groups",
        "access:services!service=stac",
    }
    assert [s.name for s in roles["processing-service"].services] == ["processing"]
    routes = {h[0]: h[1] for h in app.handlers}
    assert routes["/hub/api/twinhub/processing/tokens/([^/]+)"] == (
        "twinhub.services.processing.hubside.ProcessingTokensHandler"
    )
    assert "/hub/api/twinhub/processing/tokens/([^/]+)/([^/]+)" in routes
    # Visitors who are not logged in land on the registry's welcome page (a callable
    # default_url); the hub's support link is the desk.
    assert callable(app.default_url)
    assert app.config.TwinhubFace.support_url == "/services/desk/"
    # z2jh's hub settings are z2jh's: twinhub changed none of them.
    assert app.db_url.endswith("/jupyterhub.sqlite")
    assert app.hub_bind_url == "http://:8081/hub/" and app.hub.url == "http://hub:8081/hub/"
    assert app.proxy.api_url == "http://proxy-api:8001" and app.proxy.should_start is False
    # twinhub's login (local accounts: no Keycloak URL in the default values).
    assert type(app.authenticator).__name__ == "TwinhubLocalAuth"


def test_profiles_per_allocation_and_forged_profiles(hub) -> None:
    asyncio.run(_profiles(*hub))


async def _profiles(app: JupyterHub, files: dict, runtime: dict, start: Any) -> None:
    await start()
    from twinhub.spawn.kube import TwinhubKubeSpawner

    assert app.spawner_class is TwinhubKubeSpawner
    users = {
        "alice": await _user(app, "alice", ["A"]),
        "bob": await _user(app, "bob", ["B"]),
        "carol": await _user(app, "carol", []),
    }
    offered = {}
    for name, user in users.items():
        spawner = user.spawners[""]
        assert isinstance(spawner, TwinhubKubeSpawner)
        plist = await maybe_future(spawner.profile_list(spawner))
        offered[name] = [p["slug"] for p in plist]
    assert offered == {
        "alice": ["small-cpu"],
        "bob": ["small-cpu", "gpu"],
        "carol": ["small-cpu", "large-cpu"],
    }
    # The GPU entry is KubeSpawner's shape: the GPU image the chart filled in, the resource.
    bob = users["bob"].spawners[""]
    gpu = next(p for p in await maybe_future(bob.profile_list(bob)) if p["slug"] == "gpu")
    assert gpu["kubespawner_override"]["image"].startswith("ghcr.io/twinhub/gpu:")
    assert gpu["kubespawner_override"]["extra_resource_limits"] == {"nvidia.com/gpu": "1"}

    # A forged request for the GPU profile: spawn_check says why, the spawn is refused 403.
    alice = users["alice"].spawners[""]
    why = await maybe_future(alice.spawn_check(alice, "gpu"))
    assert why and "gpu" in why
    assert await maybe_future(alice.spawn_check(alice, "small-cpu")) is None
    with pytest.raises(web.HTTPError) as refused:
        await maybe_future(alice.apply_user_options(alice, {"profile": "gpu"}))
    assert refused.value.status_code == 403
    # What alice may run is accepted and applied.
    await maybe_future(alice.apply_user_options(alice, {"profile": "small-cpu"}))
    assert alice.profile["slug"] == "small-cpu"

    # Servers' environment: twinhub's service URLs and the gateway, in-cluster.
    env = alice.get_env()
    assert env["TWINHUB_STAC_URL"] == "http://proxy-public/services/stac/"
    assert env["DASK_GATEWAY__ADDRESS"] == (
        "http://traefik-twinhub-dask-gateway/services/dask-gateway"
    )
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://traefik-twinhub-dask-gateway:80"
    listed = json.loads(env["TWINHUB_SERVICES"])
    assert listed["projects"] == "http://proxy-public/services/projects/"
    # twinlab.services() asks the registry; the Help link opens the desk.
    assert listed["registry"] == "http://proxy-public/services/registry/"
    assert listed["desk"] == "http://proxy-public/services/desk/"
    assert env["SITE_NOTE"] == "from-values"

    # The running check, at each poll: bob's GPU server once bob has left project B.
    bob_sp = users["bob"].spawners[""]
    await maybe_future(bob_sp.apply_user_options(bob_sp, {"profile": "gpu"}))
    assert bob_sp.profile["slug"] == "gpu" and bob_sp.project == "B"
    assert await maybe_future(bob_sp.running_check(bob_sp)) is None
    group_b = orm.Group.find(app.db, "B")
    group_b.users.remove(users["bob"].orm_user)
    app.db.commit()
    why = await maybe_future(bob_sp.running_check(bob_sp))
    assert why and "gpu" in why


def test_keycloak_login_from_the_rendered_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, oidc_realm_factory
) -> None:
    """With twinhub.keycloak.url the hub logs in through the realm (a real OpenID Connect
    provider on the realm export stands for Keycloak), its client secret read from the
    Secret's key ``keycloak-client-secret``, never from runtime.json."""
    realm = oidc_realm_factory()
    public = "https://twinhub.example.org"
    extra = {
        "twinhub": {
            "publicUrl": public,
            "keycloak": {"url": f"http://127.0.0.1:{realm.port}", "clientId": realm.client_id},
        }
    }
    objects = helm.render("default", helm="4", extra=extra)
    state = tmp_path / "state"
    files = pod_state(objects, state)
    runtime_json = (state / "run/runtime.json").read_text()
    assert files["keycloak-client-secret"] not in runtime_json
    assert json.loads(runtime_json)["config"]["TwinhubKeycloak"]["url"] == realm.url
    # Keycloak imported the realm with the Secret's value; the stand-in has its own client
    # secret, which the key therefore holds here.
    (state / "secrets/keycloak-client-secret").write_text(realm.client_secret)
    monkeypatch.setenv("TWINHUB_STATE", str(state))
    app = JupyterHub.instance()  # the singleton: CryptKeeper reads its config
    app.config_file = str(z2jh_config_file(helm.chart_values("default", extra), tmp_path))
    CryptKeeper.clear_instance()  # a process-wide singleton: a hub process has its own
    try:
        asyncio.run(app.initialize([]))
        a = app.authenticator
        assert type(a).__name__ == "TwinhubKeycloakAuthenticator"
        assert a.client_id == realm.client_id and a.client_secret == realm.client_secret
        assert a.authorize_url.startswith(realm.url)
        assert a.oauth_callback_url == f"{public}/hub/oauth_callback"
    finally:
        JupyterHub.clear_instance()
        CryptKeeper.clear_instance()


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_every_value_profile_configures_the_hub(
    profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, oidc_realm_factory
) -> None:
    """Each value profile's hub configuration loads: its services registered, its S3 wired
    into spawns when it has one, its profiles offered. A profile that logs in through
    Keycloak (production) gets the OpenID Connect stand-in's address for the realm: the hub
    reads the realm's discovery document at start."""
    use_fake_kube_config(tmp_path, monkeypatch)
    extra: dict = {}
    realm = None
    plain = helm.find(helm.render(profile), "ConfigMap", "twinhub-runtime")["data"]
    if "TwinhubKeycloak" in json.loads(plain["runtime.json"])["config"]:
        realm = oidc_realm_factory()
        extra = {"twinhub": {"keycloak": {"url": f"http://127.0.0.1:{realm.port}"}}}
    objects = helm.render(profile, extra=extra)
    state = tmp_path / "state"
    pod_state(objects, state)
    runtime = json.loads((state / "run/runtime.json").read_text())
    if realm is not None:
        (state / "secrets/keycloak-client-secret").write_text(realm.client_secret)
    s3 = runtime["config"].get("TwinhubObjectStore", {})
    if s3.get("endpoint_url") and s3.get("provisioner") != "none":
        # From twinhub.s3.existingSecret through the projected volume (not rendered here).
        (state / "secrets/s3-access-key").write_text("AKEXAMPLE")
        (state / "secrets/s3-secret-key").write_text("SKEXAMPLE")
    monkeypatch.setenv("TWINHUB_STATE", str(state))
    app = JupyterHub.instance()  # the singleton: CryptKeeper reads its config
    app.config_file = str(z2jh_config_file(helm.chart_values(profile, extra), tmp_path))
    CryptKeeper.clear_instance()

    async def check() -> None:
        await app.initialize([])
        registered = {s["name"]: s["url"] for s in app.services if "url" in s}
        for name in runtime["ports"]:
            assert registered[name] == runtime["service_urls"][name]
        if "dask-gateway" in runtime["service_urls"]:
            assert registered["dask-gateway"] == runtime["service_urls"]["dask-gateway"]
        assert app.spawner_class.__name__ == "TwinhubKubeSpawner"
        carol = await _user(app, "carol", [])
        spawner = carol.spawners[""]
        offered = [p["slug"] for p in await maybe_future(spawner.profile_list(spawner))]
        profiles = runtime["config"]["Twinhub"]["profiles"]
        non_gpu = [p["slug"] for p in profiles if not p.get("gpu")]
        assert offered == non_gpu  # the default allocation: every non-GPU profile
        # With an S3 endpoint the object store's hook runs before each spawn.
        has_s3 = bool(s3.get("endpoint_url")) and s3.get("enabled", True)
        assert (spawner.pre_spawn_hook is not None) == has_s3

    try:
        asyncio.run(check())
    finally:
        JupyterHub.clear_instance()
        CryptKeeper.clear_instance()


STATE = "/srv/twinhub/state"


def _state_layout(volumes: list[dict], mounts: list[dict], env: dict[str, str]) -> dict:
    """What a pod gives twinhub's Runtime: $TWINHUB_STATE and the volume behind each path."""
    assert env.get("TWINHUB_STATE") == STATE
    by_name = {v["name"]: v for v in volumes}
    return {m["mountPath"]: (by_name[m["name"]], m) for m in mounts}


def _check_layout(layout: dict, secret: dict, needs: set[str]) -> None:
    state, _ = layout[STATE]
    run, _ = layout[f"{STATE}/run"]
    # Both writable by the pod (run/ holds the services' 0600 config files and state).
    assert "emptyDir" in state and "emptyDir" in run
    runtime, mount = layout[f"{STATE}/run/runtime.json"]
    assert runtime["configMap"]["name"] == "twinhub-runtime"
    assert mount["subPath"] == "runtime.json" and mount.get("readOnly") is True
    secrets, mount = layout[f"{STATE}/secrets"]
    assert mount.get("readOnly") is True
    # One file per key: a source without items puts every key of its Secret there.
    keys = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
    files: set[str] = set()
    for source in secrets["projected"]["sources"]:
        items = source["secret"].get("items")
        if items:
            files |= {i["path"] for i in items}
        elif source["secret"]["name"] == secret["metadata"]["name"]:
            files |= keys
    assert needs <= files, sorted(needs - files)


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_pods_give_the_runtime_what_it_reads(profile: str) -> None:
    """The hub pod (z2jh's values) and each service pod (twinhub's Deployments) mount the
    state directory as twinhub's Runtime reads it, and every service pod runs
    `twinhub service run <name>` with its part's health route as probe."""
    from twinhub import parts
    from twinhub.services.base import AsgiService

    objects = helm.render(profile)
    values = helm.chart_values(profile)
    runtime = json.loads(helm.find(objects, "ConfigMap", "twinhub-runtime")["data"]["runtime.json"])
    secret = helm.find(objects, "Secret", "twinhub-secrets")
    keys = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
    for name in [*runtime["ports"], "dask-gateway"]:
        assert f"service-{name}" in keys  # each registered token comes from the Secret
    assert "admin-password" in keys  # the first local admin's (auth.part)

    hub = values["jupyterhub"]["hub"]
    # The hub: every token it registers, Keycloak's client secret, the first admin's
    # password, the database URI.
    _check_layout(_state_layout(hub["extraVolumes"], hub["extraVolumeMounts"],
                                hub["extraEnv"]), secret, keys | {"db-url"})  # fmt: skip

    health = {p.name: p.health_path for p in parts.load() if isinstance(p, AsgiService)}
    deployed = {
        o["metadata"]["name"]: o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("twinhub-")
    }
    assert sorted(deployed) == sorted(f"twinhub-{n}" for n in runtime["ports"])
    for name, port in runtime["ports"].items():
        pod = deployed[f"twinhub-{name}"]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert [*container.get("command", []), *container.get("args", [])] == [
            "twinhub", "service", "run", name,
        ]  # fmt: skip
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        # A service: its own token and the database URI (test_workloads.py: nothing else).
        _check_layout(_state_layout(pod["volumes"], container["volumeMounts"], env), secret,
                      {f"service-{name}", "db-url"})  # fmt: skip
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        assert port in ports.values()
        probe = container["readinessProbe"]["httpGet"]
        assert probe["path"] == f"/services/{name}/{health[name]}"

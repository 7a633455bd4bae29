"""twinhub's hub services as Kubernetes workloads (helm/twinhub/templates/services.yaml):
each enabled service is a Deployment + Service twinhub-<name> running `twinhub service run
<name>` on port 8000, with probes on its health route, resources, security contexts, the
runtime mounts every twinhub pod shares, and a PodDisruptionBudget only when replicated.
Rendered with the real Helm 3 and Helm 4 (see tests/helpers/helm.py)."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml

from tests.helpers import helm
from twinhub import parts
from twinhub.services.desk import TwinhubDesk
from twinhub.services.processing import ProcessingPart

pytestmark = pytest.mark.usefixtures("helm_binaries")

SERVICES = ("stac", "cache", "projects", "accounting", "registry", "desk", "processing", "tiles")
#: The services whose pods hold a Kubernetes API token (a ServiceAccount of their own).
KUBE_API = {"processing"}


def _health_paths() -> dict[str, str]:
    """Each service part's unauthenticated health route, from the Python classes the pods run."""
    # ProcessingPart by name too: its pod runs it whether or not the parts list has it yet.
    return {
        cls.name: cls.prefix() + cls.health_path
        for cls in (*parts.PARTS, ProcessingPart)
        if getattr(cls, "health_path", None) is not None
    }


def _enabled(values: dict) -> list[str]:
    """The services that run: enabled, and accounting only with a Prometheus to meter
    (/work/briefs/k8s/runtime-config.md: without one it is off everywhere)."""
    twinhub = values["twinhub"]
    return sorted(
        name
        for name, svc in twinhub["services"].items()
        if svc.get("enabled") and (name != "accounting" or twinhub["prometheus"]["url"])
    )


def _deployed(objects: list[dict], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in objects if o["kind"] == kind}


def _container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(
    scope="module",
    params=[(p, v) for p in helm.PROFILES for v in helm.HELM_VERSIONS],
    ids=lambda pv: f"{pv[0]}-helm{pv[1]}",
)
def profile_render(request):
    profile, version = request.param
    return profile, helm.chart_values(profile), helm.render(profile, helm=version)


def test_every_enabled_service_is_a_deployment_and_a_service(profile_render):
    profile, values, objects = profile_render
    enabled = _enabled(values)
    assert enabled, f"{profile} enables no service"
    want = {f"twinhub-{n}" for n in enabled}
    assert want <= _deployed(objects, "Deployment")
    assert want <= _deployed(objects, "Service")


def test_deployment_shape(profile_render):
    profile, values, objects = profile_render
    for name in _enabled(values):
        svc_values = values["twinhub"]["services"][name]
        dep = helm.find(objects, "Deployment", f"twinhub-{name}")
        pod = dep["spec"]["template"]
        spec = pod["spec"]
        c = _container(dep)
        where = f"{profile}: twinhub-{name}"

        assert dep["spec"]["replicas"] == svc_values["replicas"], where
        assert c["command"] == ["twinhub", "service", "run", name], where
        assert c["image"] == helm_image(values), where
        assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in c["ports"], where
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            assert get == {"path": _health_paths()[name], "port": "http"}, (where, probe)
        assert c["resources"] == svc_values["resources"], where
        assert c["resources"]["requests"] and c["resources"]["limits"], where
        assert {"name": "TWINHUB_STATE", "value": "/srv/twinhub/state"} in c["env"], where

        # no Kubernetes API access for services but processing's (its own account, below);
        # non-root, read-only, no escalation
        if name in KUBE_API:
            assert spec["serviceAccountName"] == f"twinhub-{name}", where
            assert spec["automountServiceAccountToken"] is True, where
        else:
            assert "serviceAccountName" not in spec, where
            assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"], where

        # selector and pod labels: the pinned selector labels, plus z2jh's hub-access label
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector == {
            "app.kubernetes.io/name": "twinhub",
            "app.kubernetes.io/instance": "twinhub",
            "app.kubernetes.io/component": name,
        }, where
        assert selector.items() <= pod["metadata"]["labels"].items(), where
        assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true", where
        assert len(pod["metadata"]["annotations"]["checksum/runtime"]) == 64, where

        assert spec.get("nodeSelector", {}) == svc_values.get("nodeSelector", {}), where
        assert spec.get("tolerations", []) == svc_values.get("tolerations", []), where


def helm_image(values: dict) -> str:
    image = values["twinhub"]["image"]
    return f"{image['repository']}:{image['tag'] or '0.1.0'}"


def test_runtime_mounts(profile_render):
    profile, values, objects = profile_render
    for name in _enabled(values):
        dep = helm.find(objects, "Deployment", f"twinhub-{name}")
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in _container(dep)["volumeMounts"]}
        where = f"{profile}: twinhub-{name}"

        state = mounts["/srv/twinhub/state"]
        assert "emptyDir" in volumes[state["name"]], where
        runtime = mounts["/srv/twinhub/state/run/runtime.json"]
        assert runtime["subPath"] == "runtime.json", where
        assert volumes[runtime["name"]]["configMap"]["name"] == "twinhub-runtime", where
        secrets = mounts["/srv/twinhub/state/secrets"]
        assert secrets["readOnly"] is True, where
        assert "projected" in volumes[secrets["name"]], where
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], where
        # every mount has its volume
        assert {m["name"] for m in mounts.values()} <= set(volumes), where
        # the root filesystem is read-only: HOME must be on a writable (emptyDir) mount
        env = {e["name"]: e.get("value") for e in _container(dep)["env"]}
        home_mount = max(
            (path for path in mounts if env["HOME"].startswith(path)), key=len, default=None
        )
        assert home_mount and "emptyDir" in volumes[mounts[home_mount]["name"]], where


def test_service_objects(profile_render):
    profile, values, objects = profile_render
    for name in _enabled(values):
        svc = helm.find(objects, "Service", f"twinhub-{name}")
        dep = helm.find(objects, "Deployment", f"twinhub-{name}")
        assert svc["spec"]["type"] == "ClusterIP"
        assert svc["spec"]["ports"] == [
            {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
        ]
        # the Service selects exactly this service's pods
        assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_pdb_only_when_replicated(profile_render):
    profile, values, objects = profile_render
    pdbs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodDisruptionBudget"}
    for name in _enabled(values):
        svc_values = values["twinhub"]["services"][name]
        replicated = svc_values["replicas"] > 1
        assert (f"twinhub-{name}" in pdbs) == replicated, f"{profile}: {name}"
        if replicated:
            pdb = pdbs[f"twinhub-{name}"]
            assert pdb["spec"]["minAvailable"] == svc_values["podDisruptionBudget"]["minAvailable"]
            dep = helm.find(objects, "Deployment", f"twinhub-{name}")
            assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
            spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
            assert spread[0]["topologyKey"] == "kubernetes.io/hostname"
        else:
            dep = helm.find(objects, "Deployment", f"twinhub-{name}")
            assert "topologySpreadConstraints" not in dep["spec"]["template"]["spec"]


def test_replicas_and_pdb_follow_values():
    extra = {
        "twinhub": {
            "services": {"cache": {"replicas": 3, "podDisruptionBudget": {"minAvailable": 2}}}
        }
    }
    objects = helm.render(extra=extra)
    assert helm.find(objects, "Deployment", "twinhub-cache")["spec"]["replicas"] == 3
    assert helm.find(objects, "PodDisruptionBudget", "twinhub-cache")["spec"]["minAvailable"] == 2
    with pytest.raises(KeyError):
        helm.find(objects, "PodDisruptionBudget", "twinhub-stac")


@pytest.mark.parametrize("name", SERVICES)
def test_disabled_service_renders_nothing(name):
    extra = {
        "twinhub": {
            "prometheus": {"url": "http://prometheus:9090"},  # so accounting would run
            "services": {name: {"enabled": False, "replicas": 2}},
        }
    }
    objects = helm.render(extra=extra)
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        assert f"twinhub-{name}" not in _deployed(objects, kind), kind
    # the other services are still there
    others = set(SERVICES) - {name}
    assert {f"twinhub-{n}" for n in others} <= _deployed(objects, "Deployment")
    # and the NetworkPolicies no longer name it
    services_policy = helm.find(objects, "NetworkPolicy", "twinhub-services")
    exprs = services_policy["spec"]["podSelector"]["matchExpressions"]
    assert name not in exprs[0]["values"] and others <= set(exprs[0]["values"])


# the module of each service's ASGI app, whose PUBLIC_PATHS are answered without a token
APP_MODULES = {
    "stac": "twinhub.services.datalake.stac_app",
    "cache": "twinhub.services.cache.app",
    "projects": "twinhub.services.projects.app",
    "accounting": "twinhub.services.accounting.app",
    "registry": "twinhub.services.registry.app",
    "desk": "twinhub.services.desk.app",
    "processing": "twinhub.services.processing.app",
    "tiles": "twinhub.services.tiles.app",
}


@pytest.mark.parametrize("name", SERVICES)
def test_health_path_is_public_in_the_app(name):
    """A probe carries no token: its route must be one the app lets through unauthenticated
    (stac-fastapi's ping for stac, health elsewhere)."""
    path = _health_paths()[name]
    prefix = f"/services/{name}/"
    assert path.startswith(prefix)
    public = importlib.import_module(APP_MODULES[name]).PUBLIC_PATHS
    assert path.removeprefix(prefix) in public, (path, public)


def test_accounting_needs_prometheus():
    without = helm.render(extra={"twinhub": {"prometheus": {"url": ""}}})
    assert "twinhub-accounting" not in _deployed(without, "Deployment")
    with_prom = helm.render(extra={"twinhub": {"prometheus": {"url": "http://prometheus:9090"}}})
    dep = helm.find(with_prom, "Deployment", "twinhub-accounting")
    assert _container(dep)["command"] == ["twinhub", "service", "run", "accounting"]


def test_scheduling_values_pass_through():
    tolerations = [
        {"key": "dedicated", "operator": "Equal", "value": "platform", "effect": "NoSchedule"}
    ]
    extra = {
        "twinhub": {
            "services": {"stac": {"nodeSelector": {"pool": "platform"}, "tolerations": tolerations}}
        }
    }
    spec = helm.find(helm.render(extra=extra), "Deployment", "twinhub-stac")["spec"]["template"][
        "spec"
    ]
    assert spec["nodeSelector"] == {"pool": "platform"}
    assert spec["tolerations"] == tolerations


def test_runtime_change_restarts_pods():
    """The checksum annotation follows runtime.json: pods restart when it changes."""

    def checksum(extra):
        dep = helm.find(helm.render(extra=extra), "Deployment", "twinhub-projects")
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/runtime"]

    base = checksum({})
    assert checksum({}) == base
    public = {
        "twinhub": {"publicUrl": "https://twinhub.example.org"},
        # Keycloak pinned to the public URL, as the chart requires with one
        "keycloakx": {"args": ["start", "--hostname=https://twinhub.example.org/auth"]},
    }
    assert checksum(public) != base


def test_workloads_validate():
    objects = [
        o
        for o in helm.render("production")
        if o["kind"] in ("Deployment", "Service", "PodDisruptionBudget")
        and o["metadata"]["name"].removeprefix("twinhub-") in SERVICES
    ]
    assert objects
    for version in ("1.31", "1.34"):
        assert helm.validate(objects, version) == [], version


# -- each pod mounts only the secrets it reads ------------------------------------------------

# The services whose code uses the S3 admin keys (twinhub.objectstore): stac's data-lake loader,
# projects' buckets, accounting's storage meter. The cache never touches S3.
# processing: a job's outputs (size, removal) where users hold no keys (the chart's SeaweedFS).
S3_USERS = {"stac", "projects", "accounting", "processing", "tiles"}


def _secret_files(volume: dict) -> dict[str, set[str]]:
    """{Secret name: the files it puts in a projected volume} ("*" = every key)."""
    out: dict[str, set[str]] = {}
    for source in volume["projected"]["sources"]:
        secret = source["secret"]
        items = secret.get("items")
        out.setdefault(secret["name"], set()).update({i["path"] for i in items} if items else {"*"})
    return out


def test_service_pods_mount_only_their_own_secrets(profile_render):
    profile, values, objects = profile_render
    for name in _enabled(values):
        dep = helm.find(objects, "Deployment", f"twinhub-{name}")
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        files = _secret_files(volumes["twinhub-secrets"])
        where = f"{profile}: twinhub-{name}"
        # its own hub token, not the whole of twinhub-secrets (other services' tokens, the
        # gateway's, Keycloak's client secret)
        assert files.pop("twinhub-secrets") == {f"service-{name}"}, where
        mounted = set().union(*files.values())
        assert "db-url" in mounted, where
        s3 = {"s3-access-key", "s3-secret-key"}
        if name in S3_USERS:
            assert s3 <= mounted, where
        else:
            assert not s3 & mounted, where
        assert "keycloak-client-secret" not in mounted, where


def test_prometheus_token_is_accountings_alone():
    # the hub's volume (z2jh's literal values) must name the token's Secret too
    hub_volumes = helm.chart_values("production")["jupyterhub"]["hub"]["extraVolumes"]
    for volume in hub_volumes:
        if volume["name"] == "twinhub-secrets":
            volume["projected"]["sources"].append(
                {
                    "secret": {
                        "name": "prom-token",
                        "optional": True,
                        "items": [{"key": "token", "path": "prometheus-token"}],
                    }
                }
            )
    extra = {
        "twinhub": {"prometheus": {"existingSecret": "prom-token"}},
        "jupyterhub": {"hub": {"extraVolumes": hub_volumes}},
    }
    objects = helm.render("production", extra=extra)
    for name in ("stac", "cache", "projects", "accounting"):
        dep = helm.find(objects, "Deployment", f"twinhub-{name}")
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert ("prom-token" in _secret_files(volumes["twinhub-secrets"])) == (
            name == "accounting"
        ), name


def test_the_hub_keeps_every_secret():
    """The hub (z2jh's pod, its volume in values.yaml) registers every service with its token
    and logs in through Keycloak: it mounts all of twinhub-secrets."""
    for profile in helm.PROFILES:
        hub = helm.chart_values(profile)["jupyterhub"]["hub"]
        volume = next(v for v in hub["extraVolumes"] if v["name"] == "twinhub-secrets")
        assert _secret_files(volume)["twinhub-secrets"] == {"*"}, profile


# -- Keycloak: pinned to its public URL, admin console not published ---------------------------


def test_public_keycloak_must_be_pinned_to_its_url():
    """With a public URL, keycloakx's literal args must carry --hostname=<publicUrl>/auth (no
    forwarded Host header picks the issuer or e-mail links): the chart fails otherwise."""
    public = {"twinhub": {"publicUrl": "https://hub.example.org"}}
    with pytest.raises(helm.HelmError) as err:
        helm.render(extra=public)
    assert "--hostname=https://hub.example.org/auth" in err.value.stderr
    pinned = ["start", "--http-port=8080", "--hostname=https://hub.example.org/auth"]
    helm.render(extra=helm.merge_values(public, {"keycloakx": {"args": pinned}}))
    loose = [*pinned, "--hostname-strict=false"]
    with pytest.raises(helm.HelmError):
        helm.render(extra=helm.merge_values(public, {"keycloakx": {"args": loose}}))
    # no public URL (port-forward): the defaults render
    helm.render()


def test_production_publishes_no_keycloak_admin_console():
    rules = helm.chart_values("production")["keycloakx"]["ingress"]["rules"]
    paths = {p["path"] for rule in rules for p in rule["paths"]}
    assert paths == {"/auth/realms/", "/auth/resources/"}
    assert not any("/auth/admin".startswith(p.rstrip("/")) for p in paths)


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_proxy_is_not_published_in_plain_http(profile):
    """z2jh's default proxy Service is a LoadBalancer (plain HTTP on a public address): every
    profile keeps it a ClusterIP (port-forward, or the TLS ingress of production)."""
    proxy = helm.chart_values(profile)["jupyterhub"]["proxy"]
    assert proxy["service"]["type"] == "ClusterIP"


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_keycloak_pod_is_hardened(profile):
    """keycloakx's defaults mount a service account token and keep capabilities: Keycloak
    (jdbc-ping, no Kubernetes API) gets neither."""
    kc = helm.chart_values(profile)["keycloakx"]
    assert kc["serviceAccount"]["automountServiceAccountToken"] is False
    assert kc["enableServiceLinks"] is False
    ctx = kc["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["seccompProfile"]["type"] == kc["podSecurityContext"]["seccompProfile"]["type"]
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"


def test_the_gateway_reads_the_external_database_when_cnpg_is_off(helm_binaries):
    """dask-gateway.gateway.env is not templated by its chart: with an external database
    (production) it must name that database's Secret, or the gateway pod never starts."""
    objects = helm.render("production")
    assert objects  # production's gateway reads twinhub-postgres
    stale = {
        "dask-gateway": {
            "gateway": {
                "env": [
                    {
                        "name": "TWINHUB_DB_URL",
                        "valueFrom": {"secretKeyRef": {"name": "twinhub-db-app", "key": "uri"}},
                    }
                ]
            }
        }
    }
    with pytest.raises(helm.HelmError) as err:
        helm.render("production", extra=stale)
    assert "dask-gateway.gateway.env" in str(err.value)
    assert "twinhub-postgres" in str(err.value)


# -- the registry and the desk -------------------------------------------------------------------


def test_registry_and_desk_are_deployed_by_default():
    """Issue 14: both on by default (multi-user: every chart install is), each its own pod
    running its part, probed on its own health route."""
    objects = helm.render()
    for name in ("registry", "desk"):
        dep = helm.find(objects, "Deployment", f"twinhub-{name}")
        c = _container(dep)
        assert c["command"] == ["twinhub", "service", "run", name]
        assert c["readinessProbe"]["httpGet"]["path"] == f"/services/{name}/health"
        assert helm.find(objects, "Service", f"twinhub-{name}")["spec"]["ports"][0]["port"] == 8000


def _runtime_config(objects: list[dict]) -> dict:
    runtime = helm.find(objects, "ConfigMap", "twinhub-runtime")["data"]["runtime.json"]
    return json.loads(runtime)["config"]


def test_smtp_password_is_the_desks_alone():
    """Production's SMTP Secret is mounted in the desk's pods, at the file runtime.json names
    as TwinhubDesk.smtp_password_file, and in no other pod (the hub sends no mail)."""
    objects = helm.render("production")
    smtp = helm.chart_values("production")["twinhub"]["services"]["desk"]["smtp"]
    assert smtp["existingSecret"]
    desk = _runtime_config(objects)["TwinhubDesk"]
    assert desk["smtp_host"] == smtp["host"] and desk["smtp_port"] == smtp["port"]
    assert desk["smtp_username"] == smtp["username"]
    path = desk["smtp_password_file"]
    for name in _enabled(helm.chart_values("production")):
        dep = helm.find(objects, "Deployment", f"twinhub-{name}")
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        files = _secret_files(volumes["twinhub-secrets"])
        if name != "desk":
            assert smtp["existingSecret"] not in files, name
            continue
        (source,) = [
            s["secret"]
            for s in volumes["twinhub-secrets"]["projected"]["sources"]
            if s["secret"]["name"] == smtp["existingSecret"]
        ]
        assert source["items"] == [{"key": smtp["key"], "path": "smtp-password"}]
        assert "optional" not in source  # a missing Secret must stop the pod, visibly
        mount = next(m for m in _container(dep)["volumeMounts"] if m["name"] == "twinhub-secrets")
        assert path == f"{mount['mountPath']}/smtp-password"
    hub = helm.chart_values("production")["jupyterhub"]["hub"]
    hub_volume = next(v for v in hub["extraVolumes"] if v["name"] == "twinhub-secrets")
    assert smtp["existingSecret"] not in _secret_files(hub_volume)


def test_desk_without_smtp_secret_mounts_no_password():
    """The defaults: no SMTP server, no password file, nothing extra mounted."""
    objects = helm.render()
    desk = _runtime_config(objects)["TwinhubDesk"]
    assert desk["enabled"] is True and desk["smtp_host"] == ""
    assert "smtp_password_file" not in desk
    dep = helm.find(objects, "Deployment", "twinhub-desk")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert set(_secret_files(volumes["twinhub-secrets"])) == {"twinhub-secrets", "twinhub-db-app"}


def test_registry_and_desk_switches_reach_the_runtime():
    """services.<name>.enabled is what the hub reads too (TwinhubRegistry/TwinhubDesk.enabled
    in runtime.json): a Deployment exists exactly when the hub registers the service."""
    on = _runtime_config(helm.render())
    assert on["TwinhubRegistry"]["enabled"] is True and on["TwinhubDesk"]["enabled"] is True
    off = {"twinhub": {"services": {"registry": {"enabled": False}, "desk": {"enabled": False}}}}
    objects = helm.render(extra=off)
    config = _runtime_config(objects)
    assert config["TwinhubRegistry"] == {"enabled": False}
    assert config["TwinhubDesk"] == {"enabled": False}
    runtime = json.loads(helm.find(objects, "ConfigMap", "twinhub-runtime")["data"]["runtime.json"])
    assert not {"registry", "desk"} & set(runtime["ports"])
    secret = helm.find(objects, "Secret", "twinhub-secrets")
    assert not {"service-registry", "service-desk"} & set(secret["data"])
    names = _deployed(objects, "NetworkPolicy")
    assert not {"twinhub-registry-egress", "twinhub-stac-from-registry"} & names


def _notes(profile: str) -> str:
    """The release notes Helm 4 prints after an install (--dry-run=client needs no cluster;
    Helm 3 asks the cluster for its version even then)."""
    args = ["install", "twinhub", str(helm.stripped_chart()), "-n", "twinhub"]
    args.append("--dry-run=client")
    if profile != "default":
        args += ["-f", str(helm.stripped_chart() / "values" / f"{profile}.yaml")]
    out = helm.run_helm("4", args).stdout
    return out[out.index("NOTES:") :]


def test_notes_warn_when_the_desk_has_no_smtp_server():
    default, production = _notes("default"), _notes("production")
    assert "desk" in default and "registry" in default  # the services line
    assert "The service desk has no SMTP server" in default
    assert "The service desk has no SMTP server" not in production


def test_production_ingress_takes_the_desks_largest_attachment():
    """ingress-nginx's default body limit (1 MiB) would answer 413 before the desk sees an
    attachment its own cap allows."""
    annotations = helm.chart_values("production")["jupyterhub"]["ingress"]["annotations"]
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    limit = int(size[:-1]) * units[size[-1].lower()]
    assert limit >= TwinhubDesk().max_attachment_bytes + 64 * 1024  # headers, multipart slack


def test_the_documented_desk_values_render():
    """docs/kubernetes.md's SMTP example is values the chart takes, with the effect it says."""
    doc = (helm.REPO / "docs" / "kubernetes.md").read_text()
    start = doc.index("```yaml", doc.index("**The desk**")) + len("```yaml")
    values = yaml.safe_load(doc[start : doc.index("```", start)])
    assert values["twinhub"]["services"]["desk"]["smtp"]["existingSecret"]
    objects = helm.render(extra=values)
    desk = _runtime_config(objects)["TwinhubDesk"]
    assert desk["smtp_host"] == "smtp.example.org"
    assert desk["mail_from"] == "support@example.org"
    assert desk["smtp_password_file"] == "/srv/twinhub/state/secrets/smtp-password"
    dep = helm.find(objects, "Deployment", "twinhub-desk")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert "twinhub-smtp" in _secret_files(volumes["twinhub-secrets"])
    assert "twinhub-desk-egress" in _deployed(objects, "NetworkPolicy")

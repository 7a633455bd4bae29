"""The processing service in the chart: its Kubernetes API access (ServiceAccount, Role,
RoleBinding), the job backend's configuration in runtime.json, the job pods the service
makes (the real KubeJobBackend's manifests, validated against Kubernetes' schemas) and the
NetworkPolicies around both, judged by tests/kubernetes/netpol.py's model.

What no test here can show (no API server, no CNI, no images on this machine): that the
API server accepts the pods and grants the Role as read, that a CNI enforces the policies,
and that the runner starts in the user image.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers import helm
from tests.kubernetes.netpol import Pod, allowed, selector_matches
from tests.kubernetes.test_networkpolicy import EXTRA, cluster_pods, release
from twinhub.db.schema import upgrade
from twinhub.objectstore.credentials import create_row
from twinhub.objectstore.options import TwinhubObjectStore
from twinhub.process.runtime import Runtime
from twinhub.services.datalake import StacPart
from twinhub.services.processing import ProcessingPart
from twinhub.services.processing.backend import (
    ENV_PROCESSING_URL,
    KubeJobBackend,
    backend_for,
    runner_environment,
)
from twinhub.services.processing.config import TwinhubProcessing
from twinhub.services.processing.context import ProcessingContext

pytestmark = pytest.mark.usefixtures("helm_binaries")

NAME = "twinhub-processing"
JOB = {"id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "owner": "alice", "project": "ocean"}
OFF = {"twinhub": {"services": {"processing": {"enabled": False}}}}
#: The subcharts' Services the runtime names (z2jh's and dask-gateway's, not rendered here;
#: /work/briefs/k8s/versions.md): host -> {Service port: (pod, container port)}.
SUBCHART_SERVICES = {
    "hub": {8081: ("hub", 8081)},
    "proxy-public": {80: ("proxy", 8000)},
    "traefik-twinhub-dask-gateway": {80: ("traefik", 8000)},
    # production's external S3 (twinhub.s3.endpoint): the model's address of it
    "s3.example.org": {443: ("external-s3", 443)},
}


def _kinds(objects: list[dict]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def _state(objects: list[dict], tmp: Path) -> Path:
    """A processing pod's $TWINHUB_STATE: runtime.json from the ConfigMap, and the files its
    projected Secrets volume lists: its token, a SQLite database (twinhub's tables), test S3
    admin keys where the volume mounts some (an external S3's Secret in production)."""
    state = tmp / "state"
    (state / "run").mkdir(parents=True)
    runtime = helm.find(objects, "ConfigMap", "twinhub-runtime")["data"]["runtime.json"]
    (state / "run" / "runtime.json").write_text(runtime)
    (state / "secrets").mkdir()
    secret = helm.find(objects, "Secret", "twinhub-secrets")
    token = base64.b64decode(secret["data"]["service-processing"]).decode()
    files = {"service-processing": token, "db-url": f"sqlite:///{tmp / 'twinhub.sqlite'}"}
    dep = helm.find(objects, "Deployment", NAME)
    volume = next(
        v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "twinhub-secrets"
    )
    iam = TwinhubObjectStore(config=Runtime.load(state).config).provisioner == "auto"
    for source in volume["projected"]["sources"]:
        for item in source["secret"].get("items", []):
            # An external S3's keys (provisioner iam: the owner's recorded keys are used).
            # The chart's SeaweedFS keys stay out (its Secret is optional): with them the
            # service would make the owner's bucket, an S3 call that has no server here.
            if (
                item["path"].startswith("s3-")
                and iam
                and source["secret"].get("optional") is not True
            ):
                files[item["path"]] = f"test-{item['path']}"
    for name, value in files.items():
        (state / "secrets" / name).write_text(value)
    upgrade(files["db-url"])
    return state


def _context(objects: list[dict], tmp: Path) -> ProcessingContext:
    """The service's context as its pod builds it from the rendered runtime.json. The job's
    owner has started a server before (their storage is recorded: no S3 call here)."""
    rt = Runtime.load(_state(objects, tmp))
    store = TwinhubObjectStore(config=rt.config)
    if store.enabled:
        create_row(rt, JOB["owner"], store.home_bucket_prefix)
    part = ProcessingPart()
    return ProcessingContext(
        rt=rt,
        settings=TwinhubProcessing(config=rt.config),
        db_url=rt.db_url,
        hub_api=rt.hub_api_url,
        token=rt.secret("service-processing"),
        prefix=part.prefix(),
        internal_url=part.api_url(rt),
    )


# -- Kubernetes API access -------------------------------------------------------------------


def test_processing_has_its_own_service_account_and_namespaced_role():
    objects = helm.render(namespace="science")
    assert {
        ("Deployment", NAME),
        ("Service", NAME),
        ("ServiceAccount", NAME),
        ("Role", NAME),
        ("RoleBinding", NAME),
    } <= _kinds(objects)
    # nothing cluster-wide
    assert not {k for k, _ in _kinds(objects)} & {"ClusterRole", "ClusterRoleBinding"}
    account = helm.find(objects, "ServiceAccount", NAME)
    # a pod naming the account gets no token unless it asks (the Deployment does)
    assert account["automountServiceAccountToken"] is False
    binding = helm.find(objects, "RoleBinding", NAME)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": NAME,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": "science"}]
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"])
        for r in helm.find(objects, "Role", NAME)["rules"]
    }
    assert rules == {
        (("",), ("pods",)): {"create", "get", "list", "watch", "delete"},
        (("",), ("pods/log",)): {"get"},
        # the job's environment: written and removed, never read back
        (("",), ("secrets",)): {"create", "delete"},
    }


def test_role_covers_what_the_backend_calls():
    """Every Kubernetes API call of KubeJobBackend is a verb the Role grants (read from its
    source: kubernetes_asyncio's CoreV1Api method names say verb and resource)."""
    source = Path(KubeJobBackend.__module__.replace(".", "/") + ".py")
    text = (helm.REPO / "hub" / source).read_text()
    calls = set(re.findall(r"\b(create|delete|list|read|patch|replace)_namespaced_(\w+?)\(", text))
    calls |= set(re.findall(r"\.(create|delete|list|read|patch|replace)_namespaced_(\w+)\b", text))
    assert calls, "no Kubernetes API call found in the backend"
    verbs = {"read": "get", "list": "list", "create": "create", "delete": "delete"}
    resources = {"pod": "pods", "secret": "secrets", "pod_log": "pods/log"}
    granted = {
        (res, verb)
        for r in helm.render()
        if r["kind"] == "Role" and r["metadata"]["name"] == NAME
        for rule in r["rules"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }
    for verb, resource in calls:
        call = f"{verb}_namespaced_{resource}"
        assert verb in verbs and resource in resources, f"{call}: not granted by the Role"
        assert (resources[resource], verbs[verb]) in granted, call


def test_only_the_processing_pod_mounts_an_api_token():
    for profile in helm.PROFILES:
        objects = helm.render(profile)
        for dep in (o for o in objects if o["kind"] in ("Deployment", "StatefulSet")):
            spec = dep["spec"]["template"]["spec"]
            name = dep["metadata"]["name"]
            if name == NAME:
                assert spec["serviceAccountName"] == NAME
                assert spec["automountServiceAccountToken"] is True
            else:
                assert spec.get("automountServiceAccountToken") is False, (profile, name)


def test_processing_objects_validate():
    for profile in helm.PROFILES:
        objects = [o for o in helm.render(profile) if "processing" in o["metadata"]["name"]]
        assert len(objects) >= 8, profile
        for version in ("1.31", "1.34"):
            assert helm.validate(objects, version) == [], (profile, version)


def test_processing_off_renders_nothing_of_it():
    objects = helm.render(extra=OFF)
    assert not [o for o in objects if "processing" in o["metadata"]["name"]]
    runtime = json.loads(helm.find(objects, "ConfigMap", "twinhub-runtime")["data"]["runtime.json"])
    assert runtime["config"]["TwinhubProcessing"] == {"enabled": False}
    assert "KubeJobBackend" not in runtime["config"]
    assert "processing" not in runtime["ports"] and "processing" not in runtime["service_urls"]
    assert "service-processing" not in helm.find(objects, "Secret", "twinhub-secrets")["data"]
    # the job pods' peer leaves the other policies too
    assert "processing-job" not in json.dumps([o for o in objects if o["kind"] == "NetworkPolicy"])
    on = helm.render()
    assert "processing-job" in json.dumps(helm.find(on, "NetworkPolicy", "twinhub-processing-jobs"))


# -- the job backend the service runs, from runtime.json ---------------------------------------


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_runtime_configures_the_kube_backend(profile, tmp_path):
    values = helm.chart_values(profile)
    objects = helm.render(profile, namespace="science")
    ctx = _context(objects, tmp_path)
    assert ctx.rt.kubernetes and ProcessingPart().enabled(ctx.rt)
    backend = backend_for(ctx)
    assert type(backend) is KubeJobBackend
    user = values["twinhub"]["userImage"]
    assert backend.image == f"{user['repository']}:{user['tag'] or '0.1.0'}"
    # the job pods' own namespace (production names it; the default is "<release>-jobs")
    named = values["twinhub"]["services"]["processing"]["jobNamespace"]
    assert backend.namespace == (named or "science-jobs")
    job_pods = values["twinhub"]["services"]["processing"]["jobPods"]
    assert (backend.cpu, backend.memory) == (str(job_pods["cpu"]), str(job_pods["memory"]))
    # the user image's account, as the chart's Dask pods run
    dask_sc = values["dask-gateway"]["gateway"]["backend"]["worker"]["extraPodConfig"]
    uid_gid = (dask_sc["securityContext"]["runAsUser"], dask_sc["securityContext"]["runAsGroup"])
    assert (backend.run_as_uid, backend.run_as_gid) == uid_gid
    # the runners report to the service's own Service, straight
    assert ctx.internal_url == "http://twinhub-processing:8000/services/processing/"


def test_operator_settings_reach_the_service():
    extra = {"twinhub": {"config": {"TwinhubProcessing": {"wall_time": 900, "workers": 4}}}}
    runtime = json.loads(
        helm.find(helm.render(extra=extra), "ConfigMap", "twinhub-runtime")["data"]["runtime.json"]
    )
    assert runtime["config"]["TwinhubProcessing"] == {
        "enabled": True,
        "wall_time": 900,
        "workers": 4,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"twinhub": {"config": {"TwinhubProcessing": {"wall_time": "long"}}}},
        {"twinhub": {"config": {"TwinhubProcessing": {"no_such_trait": 1}}}},
        {"twinhub": {"services": {"processing": {"jobPods": {"memory": "lots"}}}}},
        {"twinhub": {"services": {"processing": {"jobPods": {"gpu": 1}}}}},
        {"twinhub": {"networkPolicy": {"kubeApiPorts": [0]}}},
        {"twinhub": {"networkPolicy": {"kubeApiEgress": [{"cidr": "10.0.0.1/32"}]}}},
    ],
    ids=["trait-type", "unknown-trait", "memory", "unknown-key", "port", "peer"],
)
def test_schema_refuses_bad_processing_values(bad):
    with pytest.raises(helm.HelmError) as err:
        helm.render(extra=bad)
    assert "values don't meet the specifications of the schema" in err.value.stderr


# -- the job pods the service makes ------------------------------------------------------------


def _job_objects(ctx: ProcessingContext) -> tuple[dict, dict, dict]:
    backend = backend_for(ctx)
    env = runner_environment(ctx, JOB, "job-secret", "user-token")
    return env, backend.pod_manifest(JOB, env), backend.secret_manifest(JOB, env)


@pytest.mark.parametrize("profile", ["default", "minimal"])
def test_job_pod_manifests_validate(profile, tmp_path):
    """KubeJobBackend's pod and Secret, as the chart configures it, are valid objects of
    the Kubernetes versions the chart supports (strict: no unknown field)."""
    _, pod, secret = _job_objects(_context(helm.render(profile), tmp_path))
    for version in ("1.31", "1.34"):
        assert helm.validate([pod, secret], version) == [], version
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    (container,) = spec["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # no secret in the pod object: its environment is the Secret's
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert "env" not in container and "user-token" not in json.dumps(pod)


def test_job_pods_are_selected_by_their_policy_alone(tmp_path):
    objects = helm.render()
    _, pod, _ = _job_objects(_context(objects, tmp_path))
    labels = pod["metadata"]["labels"]
    selecting = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "NetworkPolicy" and selector_matches(o["spec"]["podSelector"], labels)
    }
    assert selecting == {"twinhub-processing-jobs"}
    # ...and that policy selects no other pod of the release
    policy = helm.find(objects, "NetworkPolicy", "twinhub-processing-jobs")
    others = cluster_pods(objects, helm.chart_values())
    chosen = {
        n for n, p in others.items() if selector_matches(policy["spec"]["podSelector"], p.labels)
    }
    assert chosen == {"job", "bob-job"}


def _target(objects: list[dict], pods: dict[str, Pod], url: str) -> tuple[Pod, int]:
    """The pod and container port an in-cluster URL reaches (a rendered Service, or one of
    the subcharts'); fails for a host the chart does not know."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme, 0)
    host, port = parts.hostname, parts.port or default
    if host in SUBCHART_SERVICES:
        name, target = SUBCHART_SERVICES[host][port]
        return pods[name], target
    svc = helm.find(objects, "Service", host)
    (svc_port,) = [p for p in svc["spec"]["ports"] if p["port"] == port]
    selected = [p for p in pods.values() if svc["spec"]["selector"].items() <= p.labels.items()]
    assert selected, f"Service {host} selects no pod of the model"
    named = svc_port["targetPort"]
    target = selected[0].ports.get(named, named) if isinstance(named, str) else named
    if isinstance(target, str):  # SeaweedFS's named port, not in the model's pod
        target = port
    return selected[0], int(target)


def _urls(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if re.match(r"^(https?|gateway)://", v)}


@pytest.mark.parametrize("profile", ["default", "minimal", "production"])
def test_every_address_the_runner_gets_is_open_to_it(profile, tmp_path):
    """The runner's environment (runner_environment on the rendered runtime.json) names the
    services it calls; each is a peer the job pods' policy lets it reach, and the target's
    policies admit it. A new address in the environment fails here until the chart opens it."""
    objects, pods = release(profile, EXTRA)
    env, pod, _ = _job_objects(_context(objects, tmp_path))
    job = Pod("job", pod["metadata"]["labels"], namespace=pods["job"].namespace, ip="10.1.0.80")
    assert job.namespace != "twinhub"  # never the release's own, by default
    urls = _urls(env)
    assert {ENV_PROCESSING_URL, "JUPYTERHUB_API_URL", "TWINHUB_STAC_URL"} <= set(urls)
    assert "DASK_GATEWAY__ADDRESS" in urls and "DASK_GATEWAY__PROXY_ADDRESS" in urls
    if profile == "minimal":  # the in-cluster SeaweedFS
        assert urls["AWS_ENDPOINT_URL"] == "http://twinhub-seaweedfs:8333"
    for key, url in urls.items():
        if "PUBLIC_ADDRESS" in key:
            continue  # the browser's address of dashboards, never called by the runner
        target, port = _target(objects, pods, url)
        assert allowed(objects, job, target, port), f"{profile}: {key}={url}"
    # and nothing else of the platform
    for name in ("database", "keycloak", "stac", "alice", "scheduler", "kube-api", "metadata"):
        if name in pods:
            assert not allowed(objects, job, pods[name], 5432 if name == "database" else 443)


@pytest.mark.parametrize("profile", ["default", "minimal", "production"])
def test_every_address_the_service_calls_is_open_to_it(profile, tmp_path):
    """The processing pod's own calls (hub API, STAC straight for the items a submission
    names, the gateway's API when stopping a job's cluster, S3) reach their targets."""
    objects, pods = release(profile, EXTRA)
    ctx = _context(objects, tmp_path)
    env = runner_environment(ctx, JOB, "s", "t")
    urls = {
        "hub": ctx.hub_api,
        "stac": StacPart().api_url(ctx.rt),  # admission.py's lookup
        "gateway": env["DASK_GATEWAY__ADDRESS"],
    }
    if "AWS_ENDPOINT_URL" in env and "seaweedfs" in env["AWS_ENDPOINT_URL"]:
        urls["s3"] = env["AWS_ENDPOINT_URL"]
    for key, url in urls.items():
        target, port = _target(objects, pods, url)
        assert allowed(objects, pods["processing"], target, port), f"{profile}: {key}={url}"
    assert allowed(objects, pods["processing"], pods["kube-api"], 443)


#: sys.prefix in the service's pod: the hub image is z2jh's k8s-hub (images/hub/Containerfile),
#: whose Python (python:3 Debian images') lives in /usr/local.
HUB_IMAGE_PREFIX = Path("/usr/local")


def test_runner_path_finds_the_user_images_python(tmp_path, monkeypatch):
    """The job pod runs `python -m twinlab.processing.runner` with the Secret's environment
    (envFrom replaces the image's PATH): that PATH must hold the user image's environment,
    where twinlab is (images/user/Containerfile), not the service pod's (the hub image's,
    whose prefix is set here: this machine's venv happens to sit where the user image's does)."""
    containerfile = (helm.REPO / "images" / "user" / "Containerfile").read_text()
    venv = re.search(r"TWINHUB_VENV=(\S+)", containerfile).group(1)
    monkeypatch.setattr(Runtime, "prefix", property(lambda self: HUB_IMAGE_PREFIX))
    env, pod, _ = _job_objects(_context(helm.render(), tmp_path))
    command = pod["spec"]["containers"][0]["command"]
    if command[0].startswith("/"):
        assert command[0].startswith(f"{venv}/bin/"), command
        return
    # `python` is looked up in PATH: the Secret's, else the image's own
    path = env.get("PATH") or re.search(r"ENV .*?PATH=(\S+)", containerfile, re.S).group(1)
    assert path.split(":")[0] == f"{venv}/bin", path


# -- the policies around processing ------------------------------------------------------------


def test_processing_ways_come_from_its_own_policies():
    """The job pods' reports, the Kubernetes API and the gateway's API are opened by the
    processing policies: without them the same ways are closed."""
    objects, pods = release(extra=EXTRA)
    ways = [
        (pods["job"], pods["processing"], 8000),
        (pods["processing"], pods["kube-api"], 443),
        (pods["processing"], pods["traefik"], 8000),
        (pods["processing"], pods["stac"], 8000),
    ]
    for src, dst, port in ways:
        assert allowed(objects, src, dst, port), (src.name, dst.name)
    mine = {
        "twinhub-processing-egress",
        "twinhub-processing-from-jobs",
        "twinhub-stac-from-processing",
    }
    rest = [o for o in objects if o["metadata"]["name"] not in mine]
    for src, dst, port in ways:
        assert not allowed(rest, src, dst, port), (src.name, dst.name)
    # without the job pods' own policy they would reach anything (the metadata address)
    assert not allowed(objects, pods["job"], pods["metadata"], 80)
    free = [o for o in objects if o["metadata"]["name"] != "twinhub-processing-jobs"]
    assert allowed(free, pods["job"], pods["metadata"], 80)


def test_kube_api_egress_follows_its_values():
    """kubeApiEgress names where the API server is: an API server on a public address is
    reached once its /32 is there; [] closes the way (the service cannot start jobs)."""
    api = Pod("public-api", namespace=None, ip="198.51.100.40")
    objects, pods = release(extra=EXTRA)
    assert not allowed(objects, pods["processing"], api, 443)
    public = {"kubeApiEgress": [{"ipBlock": {"cidr": "198.51.100.40/32"}}], "kubeApiPorts": [443]}
    opened = helm.render(extra=helm.merge_values(EXTRA, {"twinhub": {"networkPolicy": public}}))
    assert allowed(opened, pods["processing"], api, 443)
    assert not allowed(opened, pods["processing"], api, 6443)
    assert not allowed(opened, pods["processing"], pods["kube-api"], 443)
    assert not allowed(opened, pods["projects"], api, 443)
    closed = helm.render(
        extra=helm.merge_values(EXTRA, {"twinhub": {"networkPolicy": {"kubeApiEgress": []}}})
    )
    assert not allowed(closed, pods["processing"], pods["kube-api"], 443)
    assert allowed(closed, pods["processing"], pods["traefik"], 8000)


def test_gateway_off_drops_the_job_pods_gateway_rules():
    objects, pods = release(extra={"twinhub": {"daskGateway": {"enabled": False}}})
    assert "traefik" not in pods
    text = json.dumps(
        [o for o in objects if o["metadata"]["name"].startswith("twinhub-processing")]
    )
    assert "dask-gateway" not in text
    assert allowed(objects, pods["job"], pods["processing"], 8000)


def _notes(extra: dict, tmp: Path) -> str:
    """The notes Helm 4 prints after an install (--dry-run=client needs no cluster)."""
    values = tmp / "values.yaml"
    values.write_text(json.dumps(extra))
    args = ["install", "twinhub", str(helm.stripped_chart()), "-n", "twinhub", "--dry-run=client"]
    out = helm.run_helm("4", [*args, "-f", str(values)]).stdout
    return out[out.index("NOTES:") :]


def test_notes_say_when_processing_cannot_work(tmp_path):
    assert "Processing" not in _notes({}, tmp_path)
    no_gateway = _notes({"twinhub": {"daskGateway": {"enabled": False}}}, tmp_path)
    assert "Processing has no Dask Gateway" in no_gateway
    no_api = _notes({"twinhub": {"networkPolicy": {"kubeApiEgress": []}}}, tmp_path)
    assert "Processing cannot reach the Kubernetes API" in no_api
    # processing off: nothing said about it
    off = {"twinhub": {"daskGateway": {"enabled": False}, **OFF["twinhub"]}}
    assert "Processing" not in _notes(off, tmp_path)


# -- H4: a job namespace of their own, and what the service account may write -----------------

JOB_NS = {"twinhub": {"services": {"processing": {"jobNamespace": "twinhub-jobs"}}}}
POLICY = "ValidatingAdmissionPolicy"


def test_job_namespace_holds_the_role_and_the_job_pods(tmp_path):
    objects = helm.render(extra=JOB_NS, namespace="science")
    for kind in ("Role", "RoleBinding"):
        assert helm.find(objects, kind, NAME)["metadata"]["namespace"] == "twinhub-jobs"
    # the account stays in the release's namespace, bound there only
    assert helm.find(objects, "RoleBinding", NAME)["subjects"] == [
        {"kind": "ServiceAccount", "name": NAME, "namespace": "science"}
    ]
    assert "namespace" not in helm.find(objects, "ServiceAccount", NAME)["metadata"]
    backend = backend_for(_context(objects, tmp_path))
    assert type(backend) is KubeJobBackend and backend.namespace == "twinhub-jobs"
    # the default: a namespace of their own, named after the release's
    default = helm.render(namespace="science")
    assert helm.find(default, "Role", NAME)["metadata"]["namespace"] == "science-jobs"
    for profile in helm.PROFILES:
        objs = [
            o for o in helm.render(profile, extra=JOB_NS) if "processing" in o["metadata"]["name"]
        ]
        for version in ("1.31", "1.34"):
            assert helm.validate(objs, version) == [], (profile, version)


def test_job_pods_in_their_namespace_reach_what_they_need_and_no_more(tmp_path):
    extra = helm.merge_values(EXTRA, JOB_NS)
    objects, pods = release(extra=extra)
    policy = helm.find(objects, "NetworkPolicy", "twinhub-processing-jobs")
    assert policy["metadata"]["namespace"] == "twinhub-jobs"  # applies to the job pods
    env, pod, _ = _job_objects(_context(objects, tmp_path))
    job = Pod("job", pod["metadata"]["labels"], namespace="twinhub-jobs", ip="10.1.7.80")
    for key, url in _urls(env).items():
        if "PUBLIC_ADDRESS" in key:
            continue
        target, port = _target(objects, pods, url)
        assert allowed(objects, job, target, port), f"{key}={url}"
    for name in ("database", "keycloak", "stac", "alice", "kube-api", "metadata"):
        if name in pods:
            assert not allowed(objects, job, pods[name], 5432 if name == "database" else 443)
    # a pod labelled as a job in the release's namespace is no job pod any more
    fake = Pod("fake-job", pod["metadata"]["labels"], ip="10.1.0.81")
    assert not allowed(objects, fake, pods["processing"], 8000)
    # nor is a pod of the job namespace without the labels
    other = Pod("other", {"app": "x"}, namespace="twinhub-jobs", ip="10.1.7.81")
    assert not allowed(objects, other, pods["processing"], 8000)


def _admission(objects: list[dict]) -> tuple[dict, dict]:
    (policy,) = [o for o in objects if o["kind"] == POLICY]
    (binding,) = [o for o in objects if o["kind"] == f"{POLICY}Binding"]
    return policy, binding


def test_admission_policy_binds_the_service_account_to_job_shaped_writes(tmp_path):
    objects = helm.render(namespace="science")
    policy, binding = _admission(objects)
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE", "CONNECT"}
    assert rule["resources"] == ["*", "*/*"] and rule["apiGroups"] == ["*"]
    (cond,) = spec["matchConditions"]
    assert cond["expression"] == (
        "request.userInfo.username == 'system:serviceaccount:science:twinhub-processing'"
    )
    text = json.dumps(spec)
    # What the backend really makes is what the policy names (labels, names, image).
    backend = backend_for(_context(objects, tmp_path))
    env, pod, secret = _job_objects(_context(objects, tmp_path / "again"))
    labels = pod["metadata"]["labels"]
    assert labels["twinhub.io/component"] == "processing-job" and "twinhub.io/job" in labels
    assert secret["metadata"]["labels"]["twinhub.io/component"] == "processing-job"
    for name in (pod["metadata"]["name"], secret["metadata"]["name"]):
        assert name.startswith("twinhub-job-")
    assert f"c.image == '{backend.image}'" in text
    assert pod["spec"]["containers"][0]["image"] == backend.image
    for needle in (
        "automountServiceAccountToken == false",
        "size(object.spec.volumes) == 0",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "runAsNonRoot == true",
        "privileged == false",
        "e.secretRef.name == object.metadata.name",
        "!has(c.env)",
    ):
        assert needle in text, needle
    # each pod rule holds for the real pod (the properties it reads, read here)
    spec_pod = pod["spec"]
    assert spec_pod["automountServiceAccountToken"] is False and not spec_pod.get("volumes")
    assert not {"hostNetwork", "hostPID", "hostIPC", "nodeName", "initContainers"} & set(spec_pod)
    (c,) = spec_pod["containers"]
    assert "env" not in c and c["envFrom"] == [{"secretRef": {"name": pod["metadata"]["name"]}}]
    assert secret["type"] == "Opaque"


def test_admission_policy_can_be_left_out():
    off = {"twinhub": {"services": {"processing": {"jobAdmissionPolicy": False}}}}
    kinds = {o["kind"] for o in helm.render(extra=off)}
    assert POLICY not in kinds and f"{POLICY}Binding" not in kinds
    assert POLICY not in {o["kind"] for o in helm.render(extra=OFF)}


@pytest.mark.parametrize("bad", ["Jobs", "-jobs", "a" * 64, "jobs.x"])
def test_schema_refuses_a_bad_job_namespace(bad):
    with pytest.raises(helm.HelmError) as err:
        helm.render(extra={"twinhub": {"services": {"processing": {"jobNamespace": bad}}}})
    assert "values don't meet the specifications of the schema" in err.value.stderr


# -- R4: the job namespace is not the release's unless asked for; Pod Security and quota there --

PSA = "pod-security.kubernetes.io"
_SUFFIX = {"m": 0.001, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_SUFFIX |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _quantity(value: str | int) -> float:
    """A Kubernetes quantity's value (the suffixes the chart's values use)."""
    number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    return float(number) * _SUFFIX.get(unit, 1)


def _in(objects: list[dict], kind: str, name: str) -> tuple[dict, str | None]:
    obj = helm.find(objects, kind, name)
    return obj, obj["metadata"].get("namespace")


@pytest.mark.parametrize("profile", ["default", "minimal"])
def test_default_job_namespace_is_made_restricted_and_bounded(profile, tmp_path):
    objects = helm.render(profile, namespace="science")
    values = helm.chart_values(profile)
    processing = values["twinhub"]["services"]["processing"]
    ns = helm.find(objects, "Namespace", "science-jobs")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"{PSA}/{mode}"] == "restricted", mode
    # the label the NetworkPolicies' namespaceSelectors read
    assert labels["kubernetes.io/metadata.name"] == "science-jobs"
    for kind, name in (
        ("Role", NAME),
        ("RoleBinding", NAME),
        ("NetworkPolicy", "twinhub-processing-jobs"),
    ):
        assert _in(objects, kind, name)[1] == "science-jobs", kind
    assert backend_for(_context(objects, tmp_path)).namespace == "science-jobs"
    # quota: jobQuota.pods pods and Secrets, CPU and memory of that many runner pods
    quota, where = _in(objects, "ResourceQuota", "twinhub-processing-jobs")
    assert where == "science-jobs"
    pods, cpu, memory = (
        processing["jobQuota"]["pods"],
        processing["jobPods"]["cpu"],
        processing["jobPods"]["memory"],
    )
    hard = quota["spec"]["hard"]
    assert int(hard["pods"]) == int(hard["secrets"]) == pods
    for key in ("requests.cpu", "limits.cpu"):
        assert _quantity(hard[key]) == pytest.approx(pods * _quantity(cpu)), key
    for key in ("requests.memory", "limits.memory"):
        assert _quantity(hard[key]) == pytest.approx(pods * _quantity(memory)), key
    assert hard["persistentvolumeclaims"] == hard["services"] == "0"
    # each container: at most a runner pod, and that by default
    limit_range, where = _in(objects, "LimitRange", "twinhub-processing-jobs")
    assert where == "science-jobs"
    (limit,) = limit_range["spec"]["limits"]
    assert limit["type"] == "Container"
    for key in ("max", "default", "defaultRequest"):
        assert {k: _quantity(v) for k, v in limit[key].items()} == {
            "cpu": _quantity(cpu),
            "memory": _quantity(memory),
        }, key
    made = [o for o in objects if o["kind"] in ("Namespace", "ResourceQuota", "LimitRange")]
    assert len(made) == 3
    for version in ("1.31", "1.34"):
        assert helm.validate(made, version) == [], version


def test_job_namespace_quota_and_creation_follow_their_values():
    p = {"jobQuota": {"pods": 3, "cpu": "2500m", "memory": "6Gi"}, "createJobNamespace": False}
    objects = helm.render(extra={"twinhub": {"services": {"processing": p}}}, namespace="science")
    # made by the operator beforehand: no Namespace object, the rest still there
    assert not [o for o in objects if o["kind"] == "Namespace"]
    hard = helm.find(objects, "ResourceQuota", "twinhub-processing-jobs")["spec"]["hard"]
    assert (hard["pods"], hard["limits.cpu"], hard["requests.memory"]) == ("3", "2500m", "6Gi")
    assert helm.find(objects, "Role", NAME)["metadata"]["namespace"] == "science-jobs"
    # the quota's CPU times a decimal quantity
    half = {"jobPods": {"cpu": "0.5", "memory": "1.5Gi"}, "jobQuota": {"pods": 3}}
    objects = helm.render(extra={"twinhub": {"services": {"processing": half}}})
    hard = helm.find(objects, "ResourceQuota", "twinhub-processing-jobs")["spec"]["hard"]
    assert _quantity(hard["limits.cpu"]) == 1.5 and _quantity(hard["limits.memory"]) == 4.5 * 2**30


def test_release_namespace_for_jobs_needs_an_explicit_opt_in(tmp_path):
    shared = {"jobNamespace": "science"}
    with pytest.raises(helm.HelmError) as err:
        helm.render(extra={"twinhub": {"services": {"processing": shared}}}, namespace="science")
    # the message says why and what to set
    assert "API tokens" in err.value.stderr and "allowSharedJobNamespace" in err.value.stderr
    opted = {**shared, "allowSharedJobNamespace": True}
    objects = helm.render(
        extra={"twinhub": {"services": {"processing": opted}}}, namespace="science"
    )
    assert helm.find(objects, "Role", NAME)["metadata"].get("namespace", "science") == "science"
    assert backend_for(_context(objects, tmp_path)).namespace == "science"
    # nothing made for, nor imposed on, the release's own namespace (its hub and servers)
    assert not {o["kind"] for o in objects} & {"Namespace", "ResourceQuota", "LimitRange"}
    # the opt-in alone does not move the default
    alone = {"twinhub": {"services": {"processing": {"allowSharedJobNamespace": True}}}}
    assert helm.find(helm.render(extra=alone), "Role", NAME)["metadata"]["namespace"] == (
        "twinhub-jobs"
    )
    # processing off: the job namespace is nobody's concern
    off = helm.merge_values(OFF, {"twinhub": {"services": {"processing": shared}}})
    assert not [o for o in helm.render(extra=off, namespace="science") if o["kind"] == "Role"]


def test_too_long_a_job_namespace_is_refused():
    with pytest.raises(helm.HelmError) as err:
        helm.render(namespace="n" * 60)
    assert "longer than 63 characters" in err.value.stderr


def test_job_pod_meets_pod_security_restricted(tmp_path):
    """The real runner pod against the rules of Pod Security's "restricted" level (which its
    namespace enforces) and the namespace's LimitRange."""
    objects = helm.render()
    _, pod, _ = _job_objects(_context(objects, tmp_path))
    spec = pod["spec"]
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["runAsGroup"] != 0
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"seLinuxOptions", "sysctls", "supplementalGroups", "appArmorProfile"} & set(sc)
    assert not {"hostNetwork", "hostPID", "hostIPC", "volumes"} & set(spec)
    limits = helm.find(objects, "LimitRange", "twinhub-processing-jobs")["spec"]["limits"][0]
    for c in spec["containers"]:
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False and not csc.get("privileged")
        assert csc["capabilities"] == {"drop": ["ALL"]}
        assert not {"seLinuxOptions", "procMount", "runAsUser", "seccompProfile"} & set(csc)
        assert not [p for p in c.get("ports", []) if p.get("hostPort")]
        for key in ("cpu", "memory"):
            assert _quantity(c["resources"]["limits"][key]) <= _quantity(limits["max"][key])
            assert c["resources"]["requests"][key] == c["resources"]["limits"][key]


# -- R5: the admission policy pins who a job pod runs as, where, and with what -----------------


def test_admission_policy_pins_the_pods_account_security_and_resources(tmp_path):
    """Each new rule is in the policy, and the real pod (KubeJobBackend.pod_manifest as the
    chart configures it) is what the rule allows; the limits are jobPods'."""
    extra = {"twinhub": {"services": {"processing": {"jobPriorityClassName": "jobs-default"}}}}
    objects = helm.render("minimal", extra=extra)
    policy, _ = _admission(objects)
    text = json.dumps(policy["spec"])
    for needle in (
        "object.spec.serviceAccountName == 'default'",
        "object.spec.serviceAccount == 'default'",
        "!has(object.spec.runtimeClassName)",
        "object.spec.priorityClassName == 'jobs-default'",
        "size(object.spec.resourceClaims) == 0",
        "size(object.spec.imagePullSecrets) == 0",
        "size(object.spec.nodeSelector) == 0",
        "!has(object.spec.affinity)",
        "'node.kubernetes.io/not-ready', 'node.kubernetes.io/unreachable'",
        "object.spec.securityContext.runAsGroup != 0",
        "object.spec.securityContext.fsGroup != 0",
        "supplementalGroups.all(g, g != 0)",
        "object.spec.securityContext.seccompProfile.type == 'RuntimeDefault'",
        "!has(object.spec.securityContext.seLinuxOptions)",
        "size(object.spec.securityContext.sysctls) == 0",
        "c.securityContext.capabilities.drop.exists(d, d == 'ALL')",
        "!has(c.securityContext.seLinuxOptions)",
        "c.securityContext.procMount == 'Default'",
        "c.securityContext.runAsGroup != 0",
        "!has(c.resources.claims)",
        "c.resources.limits.all(k, k in ['cpu', 'memory'])",
        # jobPods of the minimal profile: 250m, 512Mi
        "compareTo(quantity('250m')) <= 0",
        "compareTo(quantity('512Mi')) <= 0",
    ):
        assert needle in text, needle
    _, pod, _ = _job_objects(_context(objects, tmp_path))
    spec = pod["spec"]
    assert spec.get("serviceAccountName", "default") == "default"
    assert not {
        "serviceAccount",
        "runtimeClassName",
        "priorityClassName",
        "resourceClaims",
        "imagePullSecrets",
        "nodeSelector",
        "affinity",
        "tolerations",
    } & set(spec)
    (c,) = spec["containers"]
    assert set(c["resources"]) == {"requests", "limits"}
    assert {k: _quantity(v) for k, v in c["resources"]["limits"].items()} == {
        "cpu": 0.25,
        "memory": 512 * 2**20,
    }
    # no priority class named: none is allowed
    default_text = json.dumps(_admission(helm.render())[0]["spec"])
    assert "object.spec.priorityClassName == ''" in default_text


def _z2jh_hub_policy(values: dict) -> dict:
    """A fake of z2jh 4.4's hub NetworkPolicy ingress (templates/hub/netpol.yaml, which is
    not rendered here), as it reads the chart's values: labelled pods of its namespace, then
    jupyterhub.hub.networkPolicy.ingress."""
    netpol = values["jupyterhub"]["hub"]["networkPolicy"]
    labelled = {"podSelector": {"matchLabels": {"hub.jupyter.org/network-access-hub": "true"}}}
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": "hub"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "jupyterhub", "component": "hub"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": 8081}], "from": [labelled]}, *netpol["ingress"]],
        },
    }


def test_hub_admits_the_job_pods_of_its_job_namespace_alone(tmp_path):
    """With job pods in a namespace of their own, z2jh's hub policy must let them call the
    hub API: the chart's values add a rule for job pods of namespaces labelled as the chart
    labels the job namespace (or of the release's own, when shared)."""
    objects, pods = release(extra=EXTRA)
    values = helm.chart_values("default", EXTRA)
    ns = helm.find(objects, "Namespace", pods["job"].namespace)["metadata"]["labels"]
    namespaces = {pods["job"].namespace: ns}
    with_hub = [*objects, _z2jh_hub_policy(values)]
    assert allowed(with_hub, pods["job"], pods["hub"], 8081, namespaces=namespaces)
    # without the rule it would not be
    bare = _z2jh_hub_policy(values)
    bare["spec"]["ingress"] = bare["spec"]["ingress"][:1]
    assert not allowed([*objects, bare], pods["job"], pods["hub"], 8081, namespaces=namespaces)
    # not another pod of the job namespace, nor a job-labelled pod of an unlabelled namespace
    other = Pod("other", {"app": "x"}, namespace=pods["job"].namespace, ip="10.1.7.90")
    assert not allowed(with_hub, other, pods["hub"], 8081, namespaces=namespaces)
    elsewhere = Pod("fake", pods["job"].labels, namespace="elsewhere", ip="10.1.8.90")
    assert not allowed(with_hub, elsewhere, pods["hub"], 8081, namespaces=namespaces)
    # shared namespace: the release's own job pods
    shared = {"jobNamespace": "twinhub", "allowSharedJobNamespace": True}
    extra = helm.merge_values(EXTRA, {"twinhub": {"services": {"processing": shared}}})
    objects, pods = release(extra=extra)
    assert pods["job"].namespace == "twinhub"
    with_hub = [*objects, _z2jh_hub_policy(helm.chart_values("default", extra))]
    assert allowed(with_hub, pods["job"], pods["hub"], 8081)

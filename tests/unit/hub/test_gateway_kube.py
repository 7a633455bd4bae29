"""The chart's Dask Gateway on Kubernetes (twinhub.gateway.kube), run as the gateway pod runs
it: the chart's own ``twinhub-runtime`` ConfigMap (rendered by Helm) in the pod's variables,
the dask-gateway chart's config lines for ``gateway.backend`` (the table below, from its
templates/gateway/configmap.yaml), then ``gateway.extraConfig`` from values.yaml; the real
TwinhubKubeBackend and KubeClusterConfig process the options, and dask-gateway's own
``KubeController.make_pod`` builds the pods. No Kubernetes API is asked (the backend is
never set up) and twinhub's database is a real SQLite file."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import dask
import pytest
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig
from dask_gateway_server.backends.kubernetes.controller import KubeController
from dask_gateway_server.backends.kubernetes.utils import Informer
from dask_gateway_server.models import Cluster, ClusterStatus, User
from dask_gateway_server.tls import new_keypair
from dask_gateway_server.utils import Flag, FrozenAttrDict
from dask_gateway_server.workqueue import WorkQueue
from distributed import Scheduler
from traitlets.config import Config

from tests.helpers import helm
from twinhub import db
from twinhub.db.models import BudgetState
from twinhub.gateway import kube

NS = "twinhub"
INSTANCE = "twinhub-dask-gateway"
GIB = 2**30
# The dask-gateway chart's templates/gateway/configmap.yaml: c.KubeClusterConfig.<field> from
# gateway.backend.<key> when set.
CHART_BACKEND_FIELDS = {
    "scheduler_cores": "scheduler.cores.request",
    "scheduler_cores_limit": "scheduler.cores.limit",
    "scheduler_memory": "scheduler.memory.request",
    "scheduler_memory_limit": "scheduler.memory.limit",
    "scheduler_extra_container_config": "scheduler.extraContainerConfig",
    "scheduler_extra_pod_config": "scheduler.extraPodConfig",
    "worker_cores": "worker.cores.request",
    "worker_cores_limit": "worker.cores.limit",
    "worker_memory": "worker.memory.request",
    "worker_memory_limit": "worker.memory.limit",
    "worker_threads": "worker.threads",
    "worker_extra_container_config": "worker.extraContainerConfig",
    "worker_extra_pod_config": "worker.extraPodConfig",
    "image_pull_policy": "image.pullPolicy",
    "environment": "environment",
    "namespace": "namespace",
}
PROJECTS = {"climate": {"cpu_hours": 1.0}, "Ocean Science": {}}
LIMITS = {
    "worker_cores": 1,
    "worker_cores_max": 2,
    "worker_memory": 2.0,
    "worker_memory_max": 4.0,
    "max_workers_per_cluster": 3,
    "max_clusters_per_user": 1,
    "idle_timeout": 600.0,
}


def _get(values: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


@pytest.fixture(scope="module")
def runtime_json() -> dict[str, str]:
    """runtime.json of the chart's twinhub-runtime ConfigMap, per profile (Helm 3)."""
    extra = {"twinhub": {"config": {"TwinhubProjects": {"projects": PROJECTS}}}}
    extra["twinhub"]["config"]["TwinhubGateway"] = LIMITS
    # Accounting (and with it budgets) is on where a Prometheus is named.
    metered = {"twinhub": {"prometheus": {"url": "http://prometheus.invalid:9090"}}}
    out = {}
    for profile in helm.PROFILES:
        extra_p = helm.merge_values(extra, _profile_extra(profile))
        for name, more in ((profile, metered), (f"{profile}/unmetered", {})):
            objs = helm.render(profile, extra=helm.merge_values(extra_p, more))
            cm = helm.find(objs, "ConfigMap", "twinhub-runtime")
            out[name] = cm["data"]["runtime.json"]
    return out


def _profile_extra(profile: str) -> dict:
    # production requires a public URL (its schema says so).
    if profile == "production":
        return {"twinhub": {"publicUrl": "https://twinhub.example.org"}}
    return {}


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    return url


def gateway_config(profile: str, runtime: str, db_url: str, monkeypatch) -> Config:
    """The gateway pod's config: the chart's backend lines, then values' extraConfig."""
    values = helm.chart_values(profile)["dask-gateway"]["gateway"]
    env = {e["name"]: e["valueFrom"] for e in values["env"]}
    # What the pod's variables hold: the ConfigMap and Secret the values name.
    assert env[kube.ENV_RUNTIME] == {
        "configMapKeyRef": {"name": "twinhub-runtime", "key": "runtime.json"}
    }
    # twinhub's database: CNPG's app Secret, or the external database's (production)
    tw = helm.chart_values(profile)["twinhub"]["database"]
    expected = "twinhub-db-app" if tw["cnpg"]["enabled"] else tw["external"]["existingSecret"]
    assert env[kube.ENV_DB_URL]["secretKeyRef"]["name"] == expected
    monkeypatch.setenv(kube.ENV_RUNTIME, runtime)
    monkeypatch.setenv(kube.ENV_DB_URL, db_url)
    c = Config()
    c.DaskGateway.backend_class = "dask_gateway_server.backends.kubernetes.KubeBackend"
    c.KubeBackend.gateway_instance = INSTANCE
    c.KubeClusterConfig.image = f"{values['backend']['image']['name']}:0.1.0"
    for field, key in CHART_BACKEND_FIELDS.items():
        value = _get(values["backend"], key)
        if value is not None:
            setattr(c.KubeClusterConfig, field, value)
    for name in sorted(values["extraConfig"]):
        code = compile(values["extraConfig"][name], f"extraConfig[{name}]", "exec")
        exec(code, {"c": c})  # noqa: S102 (the chart's own configuration, as the gateway runs it)
    return c


@pytest.fixture
def make_backend(runtime_json, db_url, monkeypatch):
    def make(profile: str = "default", metered: bool = True) -> kube.TwinhubKubeBackend:
        runtime = runtime_json[profile if metered else f"{profile}/unmetered"]
        c = gateway_config(profile, runtime, db_url, monkeypatch)
        assert c.DaskGateway.backend_class == "twinhub.gateway.kube.TwinhubKubeBackend"
        return kube.TwinhubKubeBackend(config=c)  # never set up: no Kubernetes API

    return make


def _new(backend, user: User, request: dict):
    return asyncio.run(backend.process_cluster_options(user, request))


def _pod(config: KubeClusterConfig, is_worker: bool) -> dict:
    # As the controller reads the DaskCluster object's spec.config (JSON in the API).
    spec = FrozenAttrDict(json.loads(json.dumps(config.to_dict())))
    ctl = KubeController(gateway_instance=INSTANCE, api_url="http://api.invalid/api")
    return ctl.make_pod(NS, "5e6f", spec, is_worker=is_worker)


def _over_budget(db_url: str, project: str, since: datetime) -> None:
    with db.session(db_url) as s:
        s.add(
            BudgetState(
                project=project, budget="cpu_hours", used=1.5, limit=1.0, fraction=1.5,
                level=100, over_since=since,
            )
        )  # fmt: skip


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_limits_come_from_twinhub_gateway(make_backend, profile) -> None:
    backend = make_backend(profile)
    assert backend.max_clusters_per_user == LIMITS["max_clusters_per_user"]
    cfg = KubeClusterConfig(parent=backend)
    assert cfg.cluster_max_workers == LIMITS["max_workers_per_cluster"]
    assert cfg.idle_timeout == LIMITS["idle_timeout"]
    assert (cfg.worker_cores, cfg.worker_memory) == (1, 2 * GIB)
    # The scheduler and three of the largest workers, and no more.
    assert cfg.cluster_max_cores == cfg.scheduler_cores + 3 * 2
    assert cfg.cluster_max_memory == cfg.scheduler_memory + 3 * 4 * GIB


def test_project_option_is_one_of_the_users_projects(make_backend) -> None:
    backend = make_backend()
    dana = User("Dana@Example.org", groups=["guests", "Ocean Science", "climate"])
    options = asyncio.run(backend.get_cluster_options(dana))
    (field,) = [f for f in options.fields if f.field == "project"]
    assert sorted(field.options) == ["Ocean Science", "climate"]  # not "guests"

    requested, cfg = _new(backend, dana, {})  # the first project by default
    assert requested["project"] == next(iter(field.options))
    requested, cfg = _new(backend, dana, {"project": "Ocean Science"})
    assert requested["project"] == "Ocean Science"
    assert cfg.worker_extra_pod_annotations == {
        "twinhub.io/user": "Dana@Example.org",
        "twinhub.io/project": "Ocean Science",
    }
    assert cfg.worker_extra_pod_labels == cfg.scheduler_extra_pod_labels
    assert set(cfg.worker_extra_pod_labels) == {"twinhub.io/user", "twinhub.io/project"}
    for bad in ("guests", "platform-admins", ""):
        with pytest.raises(PublicException, match="not one of your projects"):
            _new(backend, dana, {"project": bad})

    # In no project: the personal project, as embedded.
    eve = User("eve", groups=["guests"])
    requested, cfg = _new(backend, eve, {})
    assert requested["project"] == "personal"
    with pytest.raises(PublicException, match="not one of your projects"):
        _new(backend, eve, {"project": "guests"})


def test_sizes_are_bounded_and_limits_equal_requests(make_backend) -> None:
    backend = make_backend()
    dana = User("dana", groups=["climate"])
    _, cfg = _new(backend, dana, {"worker_cores": 2, "worker_memory": 4})
    assert (cfg.worker_cores, cfg.worker_cores_limit) == (2, 2)
    assert cfg.worker_memory == cfg.worker_memory_limit == 4 * GIB
    with pytest.raises(PublicException, match="worker_cores"):
        _new(backend, dana, {"worker_cores": 3})
    with pytest.raises(PublicException, match="worker_memory"):
        _new(backend, dana, {"worker_memory": 8})


def test_an_over_budget_project_is_refused_at_creation(make_backend, db_url) -> None:
    backend = make_backend()
    dana = User("dana", groups=["climate", "Ocean Science"])
    _over_budget(db_url, "climate", datetime.now(UTC))
    # Without accounting, as embedded: budgets are not checked.
    unmetered = make_backend("default", metered=False)
    assert not unmetered._twinhub_budget.enabled
    assert _new(unmetered, dana, {"project": "climate"})[0]["project"] == "climate"
    with pytest.raises(PublicException, match="climate used 1.5 of 1 CPU-hours"):
        _new(backend, dana, {"project": "climate"})
    requested, _ = _new(backend, dana, {"project": "Ocean Science"})
    assert requested["project"] == "Ocean Science"


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_dask_pods_are_locked_down_and_labelled(make_backend, profile) -> None:
    backend = make_backend(profile)
    user = User("Dana@Example.org", groups=["Ocean Science"])
    _, cfg = _new(backend, user, {"worker_cores": 2, "worker_memory": 3})
    for is_worker in (False, True):
        pod = _pod(cfg, is_worker)
        spec, (ctr,) = pod["spec"], pod["spec"]["containers"]
        assert pod["metadata"]["annotations"]["twinhub.io/project"] == "Ocean Science"
        assert pod["metadata"]["labels"]["gateway.dask.org/instance"] == INSTANCE
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        psc, csc = spec["securityContext"], ctr["securityContext"]
        assert psc["runAsNonRoot"] and psc["runAsUser"] != 0
        assert psc["seccompProfile"] == csc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["capabilities"] == {"drop": ["ALL"]}
        assert ctr["resources"]["requests"] == ctr["resources"]["limits"]
        # The preload that requires a client certificate, and the TLS files it needs, in
        # the directory where dask-gateway mounts the cluster's own Secret.
        args = ctr["args"]
        assert args[args.index("--preload") + 1] == kube.DASHBOARD_PRELOAD
        env = {e["name"]: e.get("value") for e in ctr["env"]}
        (mount,) = [m for m in ctr["volumeMounts"] if m["name"] == "dask-credentials"]
        for key, path in kube.DASHBOARD_TLS_ENV.items():
            assert env[key] == path and path.startswith(mount["mountPath"].rstrip("/") + "/")
        assert env[key] == env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"]
        if is_worker:
            assert ctr["resources"]["limits"] == {"cpu": "2.000", "memory": str(3 * GIB)}
        else:
            assert args[args.index("--dg-idle-timeout") + 1] == "600.0"


class FakeCustomObjects:
    """A fake of the Kubernetes API's custom objects client (absent here): records the
    DaskCluster objects the backend creates, with what the API adds to them."""

    def __init__(self) -> None:
        self.created: list[dict] = []

    async def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        body["metadata"].update(namespace=namespace, creationTimestamp="2026-12-05T07:00:00Z")
        self.created.append(body)
        return body


def _as_set_up(backend: kube.TwinhubKubeBackend) -> FakeCustomObjects:
    """What KubeBackend.setup makes, without its API client: the cache, the work queue and
    the real Informer (never started: its cache is filled by the events the test delivers)."""
    backend.clusters, backend.username_to_clusters = {}, defaultdict(dict)
    backend.cluster_waiters = defaultdict(Flag)
    backend.queue = WorkQueue()
    backend.informer = Informer(
        parent=backend, name="cluster",
        on_update=backend.on_cluster_event, on_delete=backend.on_cluster_event,
    )  # fmt: skip
    backend.informer.cache = {}
    backend.custom_client = FakeCustomObjects()
    return backend.custom_client


async def _deliver(backend, obj: dict, event: str) -> None:
    """A watch event from the informer, then KubeBackend's sync loop until its queue is empty."""
    backend.informer.handle(obj, event)
    while not backend.queue.is_empty():
        name = await backend.queue.get()
        await backend.sync_cluster(name)
        backend.queue.task_done(name)


def test_the_per_user_cluster_limit_counts_clusters_not_yet_seen(make_backend) -> None:
    backend = make_backend()
    backend.max_clusters_per_user = 2
    dana = User("dana", groups=["climate"])

    async def main() -> None:
        api = _as_set_up(backend)
        assert await backend.active_cluster_count("dana") == 0
        a = await backend.start_cluster(dana, {})
        b = await backend.start_cluster(dana, {})
        # Neither reported by the informer yet: both counted, a third refused.
        assert backend.clusters == {} and await backend.active_cluster_count("dana") == 2
        with pytest.raises(PublicException, match="already has 2 active cluster"):
            await backend.start_cluster(dana, {})
        assert len(api.created) == 2
        # The informer reports the first: counted from its cache, once.
        await _deliver(backend, api.created[0], "ADDED")
        assert a in backend.clusters and a not in backend._created["dana"]
        assert await backend.active_cluster_count("dana") == 2
        # Both objects deleted (the controller's clean-up, kubectl) before dana comes back,
        # the second never seen alive: neither counts any more, and dana gets a new one.
        await _deliver(backend, api.created[0], "DELETED")
        await _deliver(backend, api.created[1], "DELETED")
        assert a not in backend.clusters and b not in backend.clusters
        assert await backend.active_cluster_count("dana") == 0
        assert backend._created == {}
        await backend.start_cluster(dana, {})
        assert await backend.active_cluster_count("dana") == 1
        backend.queue.close()

    asyncio.run(main())


def test_an_unreported_cluster_stops_counting_after_a_while(make_backend, monkeypatch) -> None:
    # A watch that missed the object (created and deleted between two lists) must not keep
    # the user locked out: past CREATED_TTL only the informer's view counts.
    backend = make_backend()  # max_clusters_per_user = 1
    dana = User("dana", groups=["climate"])
    now = [1000.0]
    monkeypatch.setattr(kube.time, "monotonic", lambda: now[0])

    async def main() -> None:
        _as_set_up(backend)
        await backend.start_cluster(dana, {})
        now[0] += kube.CREATED_TTL - 1
        with pytest.raises(PublicException, match="already has 1 active cluster"):
            await backend.start_cluster(dana, {})
        now[0] += 2
        assert await backend.active_cluster_count("dana") == 0
        await backend.start_cluster(dana, {})
        backend.queue.close()

    asyncio.run(main())


def _cluster(name: str, user: str, project: str) -> Cluster:
    return Cluster(
        name=f"{NS}.{name}", username=user, token="", options={"project": project},
        config={}, status=ClusterStatus.RUNNING,
    )  # fmt: skip


def test_budget_blocks_growth_then_stops_clusters(make_backend, db_url) -> None:
    backend = make_backend()
    big, other = _cluster("c1", "ada", "climate"), _cluster("c2", "bob", "Ocean Science")
    backend.clusters = {c.name: c for c in (big, other)}
    view = kube._BudgetView(backend)
    budget = backend._twinhub_budget
    assert budget.enabled and budget.db_url == db_url
    stopped: list[str] = []

    async def stop_cluster(name: str, failed: bool = False) -> None:
        # A fake of the patch of the DaskCluster object (the Kubernetes API, absent here).
        stopped.append(name)

    backend.stop_cluster = stop_cluster
    assert asyncio.run(budget.check(view)) == [] and budget.blocked == {}
    assert backend.capped_heartbeat(big.name, {"count": 3, "active_workers": [1]})["count"] == 3

    _over_budget(db_url, "climate", datetime.now(UTC))
    assert asyncio.run(budget.check(view)) == []  # within the grace: no growth
    heartbeat = {"count": 3, "active_workers": ["w1"]}
    assert backend.capped_heartbeat(big.name, heartbeat)["count"] == 1
    assert backend.capped_heartbeat(other.name, heartbeat)["count"] == 3
    # The size now is the cluster object's spec.replicas, which every gateway replica sees
    # (not the heartbeats that reached this one): scaling down from it stays allowed.
    backend.informer = Informer(name="cluster")
    backend.informer.cache = {big.name: {"spec": {"replicas": 5}}}
    assert "climate used 1.5 of 1" in backend.scale_refusal(big, {"op": "scale", "count": 6})
    assert backend.scale_refusal(big, {"op": "scale", "count": 5}) is None  # not more
    assert backend.scale_refusal(big, {"op": "scale", "count": 3}) is None  # 5 -> 3
    backend.informer.cache = {}  # object gone: nothing to keep, any growth refused
    assert backend.scale_refusal(big, {"op": "scale", "count": 1}) is not None
    assert backend.scale_refusal(big, {"op": "adapt", "maximum": 4}) is not None
    assert backend.scale_refusal(big, {"op": "adapt", "active": False}) is None
    assert backend.scale_refusal(other, {"op": "scale", "count": 9}) is None

    with db.session(db_url) as s:
        s.get(BudgetState, ("climate", "cpu_hours")).over_since = datetime(2020, 1, 1, tzinfo=UTC)
    assert asyncio.run(budget.check(view)) == [big.name] and stopped == [big.name]


def test_a_dashboard_needs_the_clusters_certificate(tmp_path) -> None:
    """The variables the pods get, with the preload, on a real scheduler: no TLS or TLS
    without the cluster's client certificate gets nothing; with it, the dashboard answers."""
    cert, key = new_keypair("twinhub.5e6f")
    (tmp_path / "dask.crt").write_bytes(cert)
    (tmp_path / "dask.pem").write_bytes(key)
    env = {k: v.replace(kube.CREDENTIALS, str(tmp_path)) for k, v in kube.DASHBOARD_TLS_ENV.items()}

    def get(port: int, ctx: ssl.SSLContext | None) -> int:
        if ctx is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()

    def client(with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if with_cert:
            ctx.load_cert_chain(tmp_path / "dask.crt", tmp_path / "dask.pem")
        return ctx

    async def main() -> list[int]:
        # As distributed reads the variables (flattened: set() replaces nested sections).
        nested = dask.config.collect(paths=[], env=env)
        flat = {
            "distributed.scheduler.dashboard.tls." + k: v
            for k, v in nested["distributed"]["scheduler"]["dashboard"]["tls"].items()
        }
        assert len(flat) == len(env) == 3
        with dask.config.set(flat):
            async with Scheduler(
                host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0",
                preload=[kube.DASHBOARD_PRELOAD],
            ) as s:  # fmt: skip
                port = s.http_server.port
                return [
                    await asyncio.to_thread(get, port, ctx)
                    for ctx in (None, client(False), client(True))
                ]

    assert asyncio.run(main()) == [0, 0, 200]

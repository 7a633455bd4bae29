"""The chart's NetworkPolicies, judged by tests/kubernetes/netpol.py's model of Kubernetes.

There is no cluster here (so no CNI enforces anything): the rendered policies are read and
every (from pod, to pod, port) of a matrix is evaluated as the NetworkPolicy API defines it.
twinhub's own pods take their labels from the rendered Deployments and StatefulSets; the
subcharts' pods (z2jh, dask-gateway, keycloakx, CNPG), which cannot be rendered here, carry
the labels their charts' sources give them (/work/briefs/k8s/versions.md, written from those
sources). z2jh's own hub and proxy policies are not rendered either: the hub and proxy count
as unrestricted here, so rows with them as the target judge twinhub's side only.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from traitlets.config import Config

from tests.helpers import helm
from tests.kubernetes.netpol import Pod, PolicyError, allowed, peer_matches, selector_matches
from twinhub.services.processing.backend import KubeJobBackend
from twinhub.services.processing.config import TwinhubProcessing

RELEASE = "twinhub"
EXTERNAL_S3 = "203.0.113.10"
EXTERNAL_DB = "203.0.113.20"
INTERNET = "198.51.100.7"
SMTP = "203.0.113.25"  # production's SMTP server (networkPolicy.smtpEgress)
# Extra values of every render: known external peers, so the rows about them are exact.
EXTRA = {
    "twinhub": {
        "networkPolicy": {
            "s3Egress": [{"ipBlock": {"cidr": f"{EXTERNAL_S3}/32"}}],
            "smtpEgress": [{"ipBlock": {"cidr": f"{SMTP}/32"}}],
        }
    }
}


def _z2jh(component: str, **extra: str) -> dict:
    # legacy and modern labels, both on by default in z2jh 4.x
    return {
        "component": component,
        "app": "jupyterhub",
        "release": RELEASE,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/name": "jupyterhub",
        "app.kubernetes.io/instance": RELEASE,
        **extra,
    }


def _dask_cluster_pod(component: str, cluster: str) -> dict:
    # made by dask-gateway's controller (KubeBackend.common_labels + get_labels)
    return {
        "app.kubernetes.io/name": "dask-gateway",
        "app.kubernetes.io/version": "2026.3.0",
        "gateway.dask.org/instance": "twinhub-dask-gateway",
        "gateway.dask.org/cluster": cluster,
        "app.kubernetes.io/component": component,
    }


def _dask_chart_pod(component: str) -> dict:
    return {
        "app.kubernetes.io/name": "dask-gateway",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/component": component,
    }


def job_pod_labels(owner: str, job_id: str, project: str | None = "ocean") -> dict:
    """The labels of a job's runner pod as the processing service makes it: the real
    KubeJobBackend.pod_manifest, on a fake context (only the settings it reads)."""
    fake_ctx = SimpleNamespace(rt=SimpleNamespace(config=Config()), settings=TwinhubProcessing())
    job = {"id": job_id, "owner": owner, "project": project}
    return KubeJobBackend(fake_ctx).pod_manifest(job, {})["metadata"]["labels"]


def job_namespace(objects: list[dict]) -> str:
    """Where the processing service makes job pods: its Role's namespace."""
    role = helm.find(objects, "Role", "twinhub-processing")
    return role["metadata"].get("namespace") or RELEASE


def _template_labels(objects: list[dict], kind: str, name: str) -> dict:
    return helm.find(objects, kind, name)["spec"]["template"]["metadata"]["labels"]


def _subchart_on(values: dict, key: str) -> bool:
    # Helm installs a subchart whose condition key is absent. dask-gateway's condition is
    # twinhub.daskGateway.enabled (its chart's schema refuses an `enabled` key of its own).
    if key == "dask-gateway":
        return bool(values["twinhub"]["daskGateway"]["enabled"])
    return bool((values.get(key) or {}).get("enabled", True))


def cluster_pods(objects: list[dict], values: dict) -> dict[str, Pod]:
    """The pods of an installed release (and their neighbours), by short name: only those
    the values deploy (no CNPG pods with an external database, no Keycloak when it is off)."""
    user = {"hub.jupyter.org/network-access-hub": "true", "hub.jupyter.org/servername": ""}
    pods = {
        "alice": Pod(
            "alice",
            _z2jh("singleuser-server", **user, **{"hub.jupyter.org/username": "alice"}),
            ip="10.1.0.11",
            ports={"notebook-port": 8888},
        ),
        "bob": Pod(
            "bob",
            _z2jh("singleuser-server", **user, **{"hub.jupyter.org/username": "bob"}),
            ip="10.1.0.12",
            ports={"notebook-port": 8888},
        ),
        "hub": Pod("hub", _z2jh("hub"), ip="10.1.0.2", ports={"http": 8081}),
        "proxy": Pod("proxy", _z2jh("proxy"), ip="10.1.0.3", ports={"http": 8000, "api": 8001}),
        "database": Pod(
            "database",
            {"cnpg.io/cluster": "twinhub-db", "cnpg.io/instanceRole": "primary"},
            ip="10.1.0.20",
            ports={"postgresql": 5432, "status": 8000, "metrics": 9187},
        ),
        "db-replica": Pod(
            "db-replica",
            {"cnpg.io/cluster": "twinhub-db", "cnpg.io/instanceRole": "replica"},
            ip="10.1.0.21",
        ),
        "keycloak": Pod(
            "keycloak",
            {"app.kubernetes.io/name": "keycloakx", "app.kubernetes.io/instance": RELEASE},
            ip="10.1.0.30",
            ports={"http": 8080, "http-internal": 9000},
        ),
        "traefik": Pod("traefik", _dask_chart_pod("traefik"), ip="10.1.0.40"),
        "gateway-api": Pod("gateway-api", _dask_chart_pod("gateway"), ip="10.1.0.41"),
        "scheduler": Pod(
            "scheduler", _dask_cluster_pod("dask-scheduler", "alice-1"), ip="10.1.0.42"
        ),
        "worker": Pod("worker", _dask_cluster_pod("dask-worker", "alice-1"), ip="10.1.0.43"),
        # another user's Dask cluster
        "bob-scheduler": Pod(
            "bob-scheduler", _dask_cluster_pod("dask-scheduler", "bob-1"), ip="10.1.0.44"
        ),
        "bob-worker": Pod("bob-worker", _dask_cluster_pod("dask-worker", "bob-1"), ip="10.1.0.45"),
        "ingress-controller": Pod(
            "ingress-controller",
            {"app.kubernetes.io/name": "ingress-nginx"},
            namespace="ingress-nginx",
            ip="10.1.1.5",
        ),
        "cnpg-operator": Pod(
            "cnpg-operator",
            {"app.kubernetes.io/name": "cloudnative-pg"},
            namespace="cnpg-system",
            ip="10.1.2.5",
        ),
        "kube-dns": Pod(
            "kube-dns", {"k8s-app": "kube-dns"}, namespace="kube-system", ip="10.1.3.10"
        ),
        "other-namespace": Pod(
            "other-namespace", {"app": "jupyterhub"}, namespace="other", ip="10.1.4.9"
        ),
        "internet": Pod("internet", namespace=None, ip=INTERNET),
        # the cloud's instance metadata (node credentials), the Kubernetes API's Service
        # address and a node's kubelet (both outside every pod selector), a carrier-grade NAT
        # address (pods of some clusters live there)
        "metadata": Pod("metadata", namespace=None, ip="169.254.169.254"),
        "kube-api": Pod("kube-api", namespace=None, ip="10.96.0.1"),
        "node": Pod("node", namespace=None, ip="172.18.0.2"),
        "cgnat": Pod("cgnat", namespace=None, ip="100.64.3.4"),
        "private-net": Pod("private-net", namespace=None, ip="10.200.0.9"),
        "external-s3": Pod("external-s3", namespace=None, ip=EXTERNAL_S3),
        "external-db": Pod("external-db", namespace=None, ip=EXTERNAL_DB),
        "smtp-server": Pod("smtp-server", namespace=None, ip=SMTP),
    }
    absent = set()
    if not values["twinhub"]["database"]["cnpg"]["enabled"]:
        absent |= {"database", "db-replica"}
    if not _subchart_on(values, "keycloakx"):
        absent.add("keycloak")
    if not _subchart_on(values, "dask-gateway"):
        absent |= {"traefik", "gateway-api", "scheduler", "worker", "bob-scheduler", "bob-worker"}
    pods = {name: pod for name, pod in pods.items() if name not in absent}
    services = (
        "stac",
        "cache",
        "projects",
        "accounting",
        "registry",
        "desk",
        "processing",
        "tiles",
    )
    for host, name in enumerate(services, start=50):
        try:
            labels = _template_labels(objects, "Deployment", f"twinhub-{name}")
        except KeyError:
            continue
        pods[name] = Pod(name, labels, ip=f"10.1.0.{host}", ports={"http": 8000})
    if "processing" in pods:
        # Runner pods of alice's and bob's jobs (made by the service, not by Helm), in the
        # namespace its Role is bound in (the job namespace).
        ns = job_namespace(objects)
        pods["job"] = Pod("job", job_pod_labels("alice", "a1b2c3"), namespace=ns, ip="10.1.0.70")
        pods["bob-job"] = Pod(
            "bob-job", job_pod_labels("bob", "d4e5f6", None), namespace=ns, ip="10.1.0.71"
        )
    try:
        labels = _template_labels(objects, "StatefulSet", "twinhub-seaweedfs")
    except KeyError:
        pass
    else:
        pods["seaweedfs"] = Pod("seaweedfs", labels, ip="10.1.0.60")
    return pods


def release(profile: str = "default", extra: dict | None = None) -> tuple[list[dict], dict]:
    """The rendered objects of a profile (plus ``extra``) and the pods of that release."""
    objects = helm.render(profile, extra=extra)
    return objects, cluster_pods(objects, helm.chart_values(profile, extra))


# (from, to, port, protocol, allowed). Rows naming a pod the profile does not deploy are
# skipped for it (e.g. seaweedfs where the profile uses an external S3).
MATRIX = [
    # user pods: the issue's three denials, and what they do need
    ("alice", "database", 5432, "TCP", False),
    ("alice", "keycloak", 8080, "TCP", False),
    ("alice", "keycloak", 9000, "TCP", False),
    ("alice", "bob", 8888, "TCP", False),
    ("bob", "alice", 8888, "TCP", False),
    ("alice", "proxy", 8000, "TCP", True),
    ("alice", "proxy", 8001, "TCP", False),  # the proxy's API is the hub's alone
    ("alice", "hub", 8081, "TCP", True),
    ("alice", "traefik", 8000, "TCP", True),
    ("alice", "traefik", 8786, "TCP", True),
    # Dask clients and dashboards go through Traefik, never to a scheduler directly
    ("alice", "scheduler", 8786, "TCP", False),
    ("alice", "scheduler", 8787, "TCP", False),
    ("alice", "bob-scheduler", 8786, "TCP", False),
    ("alice", "bob-scheduler", 8787, "TCP", False),
    ("alice", "metadata", 80, "TCP", False),
    ("alice", "kube-api", 443, "TCP", False),
    ("alice", "worker", 40123, "TCP", False),
    ("alice", "gateway-api", 8000, "TCP", False),  # reached through the proxy
    ("alice", "seaweedfs", 8333, "TCP", True),
    ("alice", "seaweedfs", 9333, "TCP", False),  # SeaweedFS's master, not S3
    ("alice", "external-s3", 443, "TCP", True),
    ("alice", "kube-dns", 53, "UDP", True),
    ("alice", "kube-dns", 53, "TCP", True),
    ("alice", "stac", 8000, "TCP", False),  # only through the proxy's public route
    ("alice", "internet", 443, "TCP", False),
    ("alice", "external-db", 5432, "TCP", False),
    ("alice", "other-namespace", 80, "TCP", False),
    ("proxy", "alice", 8888, "TCP", True),
    ("hub", "alice", 8888, "TCP", True),
    ("hub", "alice", 22, "TCP", False),
    ("stac", "alice", 8888, "TCP", False),
    ("worker", "alice", 8888, "TCP", False),
    ("ingress-controller", "alice", 8888, "TCP", False),
    # twinhub services
    ("proxy", "stac", 8000, "TCP", True),
    ("hub", "stac", 8000, "TCP", True),
    ("hub", "projects", 8000, "TCP", True),
    ("proxy", "cache", 8000, "TCP", True),
    ("traefik", "stac", 8000, "TCP", False),
    ("worker", "cache", 8000, "TCP", False),
    ("ingress-controller", "stac", 8000, "TCP", False),
    ("other-namespace", "projects", 8000, "TCP", False),
    ("stac", "hub", 8081, "TCP", True),
    ("stac", "proxy", 8000, "TCP", True),  # stac -> cache by its public route
    ("projects", "hub", 8081, "TCP", True),
    ("stac", "database", 5432, "TCP", True),
    ("projects", "database", 5432, "TCP", True),
    ("stac", "kube-dns", 53, "UDP", True),
    ("stac", "keycloak", 8080, "TCP", False),
    ("stac", "bob", 8888, "TCP", False),
    ("stac", "scheduler", 8786, "TCP", False),
    ("stac", "seaweedfs", 8333, "TCP", True),
    ("stac", "external-s3", 443, "TCP", True),
    ("cache", "internet", 443, "TCP", True),  # data providers
    ("cache", "private-net", 443, "TCP", False),  # upstreamEgress excludes private ranges
    ("cache", "metadata", 80, "TCP", False),
    ("cache", "cgnat", 443, "TCP", False),
    ("stac", "cgnat", 443, "TCP", False),
    ("stac", "internet", 443, "TCP", True),  # federated remote catalogues
    ("projects", "internet", 443, "TCP", False),
    ("projects", "stac", 8000, "TCP", False),  # services meet through the proxy
    # the registry: the proxy sends it /services/registry/ and every /services/<slug>/ of an
    # integrated web service (its gateway); it reaches the hub API (routes, users), the
    # database, stac straight (the landing page's collections) and public upstreams only
    ("proxy", "registry", 8000, "TCP", True),
    ("hub", "registry", 8000, "TCP", True),
    ("alice", "registry", 8000, "TCP", False),  # only through the proxy's routes
    ("ingress-controller", "registry", 8000, "TCP", False),
    ("worker", "registry", 8000, "TCP", False),
    ("other-namespace", "registry", 8000, "TCP", False),
    ("registry", "hub", 8081, "TCP", True),
    ("registry", "proxy", 8000, "TCP", True),
    ("registry", "database", 5432, "TCP", True),
    ("registry", "kube-dns", 53, "UDP", True),
    ("registry", "stac", 8000, "TCP", True),
    ("registry", "stac", 5432, "TCP", False),
    ("registry", "projects", 8000, "TCP", False),
    ("registry", "cache", 8000, "TCP", False),
    ("registry", "internet", 443, "TCP", True),  # providers' upstreams and descriptions
    ("registry", "internet", 8080, "TCP", True),  # on whatever port they listen
    ("registry", "metadata", 80, "TCP", False),
    ("registry", "private-net", 443, "TCP", False),
    ("registry", "cgnat", 443, "TCP", False),
    ("registry", "kube-api", 443, "TCP", False),
    ("registry", "node", 10250, "TCP", False),
    ("registry", "alice", 8888, "TCP", False),
    ("registry", "keycloak", 8080, "TCP", False),
    ("registry", "scheduler", 8786, "TCP", False),
    ("registry", "other-namespace", 80, "TCP", False),  # in-cluster upstreams: registryEgress
    # stac's new way in is the registry's alone
    ("cache", "stac", 8000, "TCP", False),
    ("desk", "stac", 8000, "TCP", False),
    # the desk: its SMTP server on the SMTP port, nothing else outside the cluster
    ("proxy", "desk", 8000, "TCP", True),
    ("hub", "desk", 8000, "TCP", True),
    ("alice", "desk", 8000, "TCP", False),
    ("desk", "hub", 8081, "TCP", True),
    ("desk", "database", 5432, "TCP", True),
    ("desk", "smtp-server", 587, "TCP", True),
    ("desk", "smtp-server", 25, "TCP", False),
    ("desk", "internet", 443, "TCP", False),
    ("desk", "internet", 587, "TCP", False),
    ("desk", "metadata", 80, "TCP", False),
    ("desk", "registry", 8000, "TCP", False),  # it reads the registry's tables, not its API
    ("desk", "private-net", 587, "TCP", False),
    ("alice", "smtp-server", 587, "TCP", False),
    ("projects", "smtp-server", 587, "TCP", False),
    ("worker", "smtp-server", 587, "TCP", False),
    # processing: reached like every service (proxy, hub) and by its job pods (reports);
    # it reaches the Kubernetes API server (job pods), the gateway's API (stopping a job's
    # cluster) and stac straight (the items a submission names) beyond what every service
    # reaches
    ("proxy", "processing", 8000, "TCP", True),
    ("hub", "processing", 8000, "TCP", True),
    ("job", "processing", 8000, "TCP", True),
    ("bob-job", "processing", 8000, "TCP", True),
    ("job", "processing", 8001, "TCP", False),
    ("alice", "processing", 8000, "TCP", False),  # notebooks use its public route
    ("worker", "processing", 8000, "TCP", False),
    ("scheduler", "processing", 8000, "TCP", False),
    ("ingress-controller", "processing", 8000, "TCP", False),
    ("other-namespace", "processing", 8000, "TCP", False),
    ("processing", "hub", 8081, "TCP", True),
    ("processing", "proxy", 8000, "TCP", True),  # STAC by its public route
    ("processing", "database", 5432, "TCP", True),
    ("processing", "kube-dns", 53, "UDP", True),
    ("processing", "kube-api", 443, "TCP", True),
    ("processing", "node", 6443, "TCP", True),  # a control plane's own API port
    ("processing", "node", 10250, "TCP", False),  # never a kubelet
    ("processing", "kube-api", 80, "TCP", False),
    ("processing", "traefik", 8000, "TCP", True),
    ("processing", "traefik", 8786, "TCP", False),
    ("processing", "gateway-api", 8000, "TCP", False),  # through Traefik, as the hub's hook
    ("processing", "scheduler", 8786, "TCP", False),
    ("processing", "worker", 40123, "TCP", False),
    ("processing", "seaweedfs", 8333, "TCP", True),
    ("processing", "external-s3", 443, "TCP", True),
    ("processing", "metadata", 80, "TCP", False),
    ("processing", "internet", 443, "TCP", False),
    ("processing", "cgnat", 443, "TCP", False),
    ("processing", "keycloak", 8080, "TCP", False),
    ("processing", "alice", 8888, "TCP", False),
    ("processing", "stac", 8000, "TCP", True),  # the items a submission names
    ("processing", "stac", 5432, "TCP", False),
    ("processing", "cache", 8000, "TCP", False),
    ("processing", "projects", 8000, "TCP", False),
    ("processing", "registry", 8000, "TCP", False),
    ("processing", "job", 8000, "TCP", False),  # nothing reaches a job pod
    ("processing", "smtp-server", 587, "TCP", False),
    # job runner pods run users' code as the user: closed like a Dask pod, plus the
    # processing service, the hub API and the proxy's public routes
    ("job", "kube-dns", 53, "UDP", True),
    ("job", "hub", 8081, "TCP", True),
    ("job", "proxy", 8000, "TCP", True),  # STAC
    ("job", "proxy", 8001, "TCP", False),
    ("job", "traefik", 8000, "TCP", True),  # the gateway's API
    ("job", "traefik", 8786, "TCP", True),  # its scheduler, through the TLS proxy
    ("job", "seaweedfs", 8333, "TCP", True),
    ("job", "seaweedfs", 9333, "TCP", False),
    ("job", "external-s3", 443, "TCP", True),
    ("job", "scheduler", 8786, "TCP", False),  # Dask clients go through Traefik
    ("job", "worker", 40123, "TCP", False),
    ("job", "gateway-api", 8000, "TCP", False),
    ("job", "database", 5432, "TCP", False),
    ("job", "external-db", 5432, "TCP", False),
    ("job", "keycloak", 8080, "TCP", False),
    ("job", "kube-api", 443, "TCP", False),
    ("job", "node", 6443, "TCP", False),
    ("job", "node", 10250, "TCP", False),
    ("job", "metadata", 80, "TCP", False),
    ("job", "internet", 443, "TCP", False),
    ("job", "private-net", 443, "TCP", False),
    ("job", "alice", 8888, "TCP", False),
    ("job", "bob-job", 8000, "TCP", False),
    ("job", "stac", 8000, "TCP", False),
    ("job", "registry", 8000, "TCP", False),
    ("job", "smtp-server", 587, "TCP", False),
    ("job", "other-namespace", 80, "TCP", False),
    # nothing reaches a job pod
    ("alice", "job", 8000, "TCP", False),
    ("bob", "job", 8888, "TCP", False),
    ("hub", "job", 8000, "TCP", False),
    ("proxy", "job", 8000, "TCP", False),
    ("worker", "job", 40123, "TCP", False),
    ("scheduler", "job", 40123, "TCP", False),
    ("bob-job", "job", 8000, "TCP", False),
    ("traefik", "job", 8000, "TCP", False),
    ("other-namespace", "job", 8000, "TCP", False),
    # the Kubernetes API is processing's alone
    ("stac", "kube-api", 443, "TCP", False),
    ("desk", "node", 6443, "TCP", False),
    ("alice", "node", 6443, "TCP", False),
    # the database (CNPG)
    ("hub", "database", 5432, "TCP", True),
    ("keycloak", "database", 5432, "TCP", True),
    ("gateway-api", "database", 5432, "TCP", True),  # project catalog, budgets
    ("db-replica", "database", 5432, "TCP", True),
    ("cnpg-operator", "database", 8000, "TCP", True),
    ("cnpg-operator", "database", 5432, "TCP", True),
    ("hub", "database", 8000, "TCP", False),
    ("proxy", "database", 5432, "TCP", False),
    ("traefik", "database", 5432, "TCP", False),
    ("worker", "database", 5432, "TCP", False),
    ("ingress-controller", "database", 5432, "TCP", False),
    ("other-namespace", "database", 5432, "TCP", False),
    # Keycloak
    ("ingress-controller", "keycloak", 8080, "TCP", True),
    ("ingress-controller", "keycloak", 9000, "TCP", False),
    ("hub", "keycloak", 8080, "TCP", True),
    ("hub", "keycloak", 9000, "TCP", False),
    ("proxy", "keycloak", 8080, "TCP", False),
    ("worker", "keycloak", 8080, "TCP", False),
    ("other-namespace", "keycloak", 8080, "TCP", False),
    # Dask clusters
    ("traefik", "scheduler", 8786, "TCP", True),
    ("traefik", "scheduler", 8787, "TCP", True),
    ("gateway-api", "scheduler", 8788, "TCP", True),
    ("worker", "scheduler", 8786, "TCP", True),
    ("scheduler", "worker", 40123, "TCP", True),
    ("proxy", "scheduler", 8786, "TCP", False),
    ("hub", "worker", 40123, "TCP", False),
    ("traefik", "worker", 40123, "TCP", False),
    ("other-namespace", "scheduler", 8786, "TCP", False),
    # dashboards from Traefik only, the scheduler's API from the gateway server only
    ("gateway-api", "scheduler", 8787, "TCP", False),
    ("traefik", "scheduler", 8788, "TCP", False),
    ("worker", "scheduler", 8787, "TCP", False),
    ("worker", "scheduler", 8788, "TCP", False),
    ("worker", "bob-worker", 8787, "TCP", False),
    ("scheduler", "worker", 8787, "TCP", False),
    ("alice", "worker", 8787, "TCP", False),
    ("traefik", "worker", 8787, "TCP", False),
    # Dask pods run users' code: their egress is as closed as a user server's
    ("worker", "metadata", 80, "TCP", False),
    ("scheduler", "metadata", 80, "TCP", False),
    ("worker", "internet", 443, "TCP", False),
    ("worker", "kube-api", 443, "TCP", False),
    ("worker", "node", 443, "TCP", False),
    ("worker", "node", 10250, "TCP", False),
    ("worker", "other-namespace", 80, "TCP", False),
    ("worker", "hub", 8081, "TCP", False),
    ("worker", "proxy", 8001, "TCP", False),
    ("scheduler", "database", 5432, "TCP", False),
    ("scheduler", "keycloak", 8080, "TCP", False),
    ("worker", "kube-dns", 53, "UDP", True),
    ("scheduler", "gateway-api", 8000, "TCP", True),  # the scheduler's heartbeats
    ("worker", "external-s3", 443, "TCP", True),
    ("bob-worker", "bob-scheduler", 8786, "TCP", True),
    ("worker", "bob-scheduler", 8787, "TCP", False),
    # a policy cannot tell clusters apart: the scheduler port stays open between them, and
    # each cluster's own TLS credentials keep others out (docs/kubernetes.md)
    ("worker", "bob-scheduler", 8786, "TCP", True),
    # the in-cluster SeaweedFS
    ("worker", "seaweedfs", 8333, "TCP", True),
    ("hub", "seaweedfs", 8333, "TCP", True),
    ("proxy", "seaweedfs", 8333, "TCP", False),
    ("keycloak", "seaweedfs", 8333, "TCP", False),
    ("ingress-controller", "seaweedfs", 8333, "TCP", False),
]

PROFILES = helm.PROFILES


@pytest.fixture(scope="module", params=PROFILES)
def rendered(request, helm_binaries) -> tuple[str, list[dict], dict[str, Pod]]:
    objects, pods = release(request.param, EXTRA)
    return request.param, objects, pods


def _row_id(row) -> str:
    src, dst, port, proto, ok = row
    return f"{src}->{dst}:{port}/{proto}:{'allow' if ok else 'deny'}"


@pytest.mark.parametrize("row", MATRIX, ids=_row_id)
def test_matrix(rendered, row):
    profile, objects, pods = rendered
    src, dst, port, proto, expected = row
    if src not in pods or dst not in pods:
        pytest.skip(f"profile {profile} deploys no {src if src not in pods else dst}")
    got = allowed(objects, pods[src], pods[dst], port, proto)
    assert got is expected, f"{profile}: {_row_id(row)} but the policies say {got}"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_matrix_pod_of_twinhub_is_covered(profile, helm_binaries):
    """The matrix really ran on the services and the S3 pod of each profile: a row skipped
    because a Deployment vanished would otherwise hide a regression."""
    _, pods = release(profile, EXTRA)
    values = helm.chart_values(profile, EXTRA)
    services = {n for n, s in values["twinhub"]["services"].items() if s.get("enabled")}
    assert {"stac", "cache", "projects", "registry", "desk", "processing"} & services <= set(pods)
    assert {"registry", "desk", "processing"} <= services
    assert {"job", "bob-job"} <= set(pods)
    assert ("seaweedfs" in pods) == bool(values["twinhub"]["s3"]["seaweedfs"]["enabled"])


@pytest.mark.parametrize("profile", ["default", "production"])
def test_issue_rows_run(profile, helm_binaries):
    """The issue's denials (user pod -> PostgreSQL, Keycloak 8080/9000, another user's pod)
    and allowances (proxy, traefik) are evaluated, not skipped, in these two profiles:
    PostgreSQL is the CNPG pod, or with an external database its address."""
    _, pods = release(profile, EXTRA)
    assert {"alice", "bob", "proxy", "keycloak", "traefik", "scheduler"} <= set(pods)
    assert (
        "database" in pods
        or not helm.chart_values(profile)["twinhub"]["database"]["cnpg"]["enabled"]
    )
    rows = {(src, dst) for src, dst, *_ in MATRIX}
    assert {("alice", "database"), ("alice", "external-db"), ("alice", "keycloak")} <= rows


def test_seaweedfs_rows_run_somewhere(helm_binaries):
    """At least one profile deploys SeaweedFS, so the seaweedfs rows are not all skipped."""
    deployed = [p for p in PROFILES if "seaweedfs" in release(p, EXTRA)[1]]
    assert deployed, f"no profile of {PROFILES} deploys SeaweedFS"


def test_external_database_egress(helm_binaries):
    """Production's external PostgreSQL (CNPG off) is reached by the services only when
    networkPolicy.databaseEgress names it, and never by user pods."""
    assert not helm.chart_values("production")["twinhub"]["database"]["cnpg"]["enabled"]
    # EXTRA narrows s3Egress to one address, so only databaseEgress can open the way (to
    # projects: stac and cache also reach public addresses through upstreamEgress)
    peers = [{"ipBlock": {"cidr": f"{EXTERNAL_DB}/32"}}]
    db = {"twinhub": {"networkPolicy": {"databaseEgress": []}}}
    closed = helm.render("production", extra=helm.merge_values(EXTRA, db))
    db["twinhub"]["networkPolicy"]["databaseEgress"] = peers
    opened, pods = release("production", helm.merge_values(EXTRA, db))
    assert not allowed(closed, pods["projects"], pods["external-db"], 5432)
    assert allowed(opened, pods["projects"], pods["external-db"], 5432)
    assert not allowed(opened, pods["projects"], pods["external-db"], 22)
    assert not allowed(opened, pods["alice"], pods["external-db"], 5432)
    # no CNPG cluster, so no policy for its pods
    names = {o["metadata"]["name"] for o in opened if o["kind"] == "NetworkPolicy"}
    assert "twinhub-db" not in names


def test_prometheus_egress_is_accounting_only(helm_binaries):
    prom = Pod("prometheus", {"app": "prometheus"}, namespace="monitoring", ip="10.1.5.5")
    extra = {
        "twinhub": {
            "prometheus": {"url": "http://prometheus.monitoring:9090"},
            "networkPolicy": {
                "prometheusEgress": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                        }
                    }
                ]
            },
        }
    }
    objects, pods = release(extra=extra)
    assert allowed(objects, pods["accounting"], prom, 9090)
    assert not allowed(objects, pods["projects"], prom, 9090)
    assert not allowed(objects, pods["alice"], prom, 9090)


def test_policies_off(helm_binaries):
    objects = helm.render(extra={"twinhub": {"networkPolicy": {"enabled": False}}})
    assert not [o for o in objects if o["kind"] == "NetworkPolicy"]


def test_gateway_and_keycloak_off_drop_their_policies(helm_binaries):
    extra = {"twinhub": {"daskGateway": {"enabled": False}}, "keycloakx": {"enabled": False}}
    objects, pods = release(extra=extra)
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert not {"twinhub-dask", "twinhub-dask-scheduler", "twinhub-keycloak"} & names
    assert "traefik" not in pods and "keycloak" not in pods
    # with no gateway, user pods get no route to where its traefik would be
    traefik = Pod("traefik", _dask_chart_pod("traefik"), ip="10.1.0.40")
    assert not allowed(objects, pods["alice"], traefik, 8000)


def test_helm3_and_helm4_render_the_same_policies(helm_binaries):
    def policies(version):
        return [
            o
            for o in helm.render("default", helm=version, extra=EXTRA)
            if o["kind"] == "NetworkPolicy"
        ]

    assert policies("3") == policies("4")


def test_policies_validate(helm_binaries):
    for profile in PROFILES:
        objects = [o for o in helm.render(profile, extra=EXTRA) if o["kind"] == "NetworkPolicy"]
        assert objects
        for version in ("1.31", "1.34"):
            assert helm.validate(objects, version) == [], (profile, version)


# -- the evaluator itself: it must be able to say both yes and no -----------------------------

WEB = Pod("web", {"app": "web", "tier": "front"}, ports={"http": 8080})
API = Pod("api", {"app": "api"}, ip="10.0.0.2", ports={"grpc": 9090})
OTHER_NS = Pod("x", {"app": "web"}, namespace="other", ip="10.0.9.9")


def _policy(spec, namespace=None):
    meta = {"name": "p"} | ({"namespace": namespace} if namespace else {})
    return {
        "kind": "NetworkPolicy",
        "apiVersion": "networking.k8s.io/v1",
        "metadata": meta,
        "spec": spec,
    }


def test_no_policy_allows_everything():
    assert allowed([], WEB, API, 1234)


def test_ingress_policy_allows_only_its_peers_and_ports():
    pol = _policy(
        {
            "podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                    "ports": [{"port": 9090}],
                }
            ],
        }
    )
    assert allowed([pol], WEB, API, 9090)
    assert not allowed([pol], WEB, API, 9091)
    assert not allowed([pol], API, API, 9090)
    assert not allowed([pol], WEB, API, 9090, "UDP")
    # a podSelector peer alone means the policy's own namespace
    assert not allowed([pol], OTHER_NS, API, 9090)
    # the policy does not select web: web stays open
    assert allowed([pol], API, WEB, 1)


def test_egress_and_ingress_must_both_allow():
    ingress_ok = _policy(
        {
            "podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{}],
            "policyTypes": ["Ingress"],
        }
    )
    egress_none = _policy(
        {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]}
    )
    assert allowed([ingress_ok], WEB, API, 80)
    assert not allowed([ingress_ok, egress_none], WEB, API, 80)


def test_policy_types_default():
    # no policyTypes and no egress section: Ingress only, egress stays open
    pol = _policy({"podSelector": {}, "ingress": []})
    assert not allowed([pol], WEB, API, 80)
    outside = Pod("out", namespace=None, ip="192.0.2.1")
    assert allowed([pol], WEB, outside, 80)
    # an egress section without policyTypes makes it an egress policy too
    pol2 = _policy({"podSelector": {"matchLabels": {"app": "web"}}, "egress": []})
    assert not allowed([pol2], WEB, outside, 80)


def test_namespace_selector_and_combined_peer():
    both = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}},
        "podSelector": {"matchLabels": {"app": "web"}},
    }
    assert peer_matches(both, OTHER_NS, "twinhub", {})
    assert not peer_matches(both, WEB, "twinhub", {})
    ns_only = {"namespaceSelector": {"matchLabels": {"team": "a"}}}
    assert peer_matches(ns_only, OTHER_NS, "twinhub", {"other": {"team": "a"}})
    assert not peer_matches(ns_only, OTHER_NS, "twinhub", {})


def test_ip_block_with_except():
    peer = {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}
    assert peer_matches(peer, Pod("o", namespace=None, ip="8.8.8.8"), "twinhub", {})
    assert not peer_matches(peer, Pod("o", namespace=None, ip="10.3.2.1"), "twinhub", {})
    # selectors never match addresses outside the cluster
    assert not peer_matches({"podSelector": {}}, Pod("o", namespace=None, ip="8.8.8.8"), "t", {})


def test_named_ports_and_port_ranges():
    named = _policy(
        {"podSelector": {"matchLabels": {"app": "api"}}, "ingress": [{"ports": [{"port": "grpc"}]}]}
    )
    assert allowed([named], WEB, API, 9090)
    assert not allowed([named], WEB, API, 8080)
    ranged = _policy(
        {
            "podSelector": {"matchLabels": {"app": "api"}},
            "ingress": [{"ports": [{"port": 30000, "endPort": 30010}]}],
        }
    )
    assert allowed([ranged], WEB, API, 30005)
    assert not allowed([ranged], WEB, API, 30011)


def test_match_expressions():
    labels = {"app": "api", "tier": "back"}
    assert selector_matches(
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["api"]}]}, labels
    )
    assert not selector_matches(
        {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["api"]}]}, labels
    )
    assert selector_matches(
        {"matchExpressions": [{"key": "gone", "operator": "NotIn", "values": ["x"]}]}, labels
    )
    assert selector_matches({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, labels)
    assert not selector_matches(
        {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, labels
    )
    with pytest.raises(PolicyError):
        selector_matches({"matchExpressions": [{"key": "a", "operator": "Near"}]}, labels)


def test_policies_of_another_namespace_do_not_apply():
    pol = _policy({"podSelector": {}, "policyTypes": ["Ingress"]}, namespace="elsewhere")
    assert allowed([pol], WEB, API, 80)


def test_denials_come_from_the_policies(helm_binaries):
    """Without twinhub's user-pod policy, another user's server is reachable: the matrix's
    denials are the chart's doing, not the evaluator's default."""
    objects, pods = release(extra=EXTRA)
    assert not allowed(objects, pods["alice"], pods["bob"], 8888)
    rest = [o for o in objects if o["metadata"]["name"] != "twinhub-user-pods"]
    assert allowed(rest, pods["alice"], pods["bob"], 8888)


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_shipped_profiles_keep_user_pods_off_the_internet(profile, helm_binaries):
    """The profiles as shipped (no test peers merged in): a user pod reaches no public
    address and no private one outside the cluster; s3Egress must name the S3 provider's
    addresses, not the whole internet."""
    objects, pods = release(profile)
    for target in ("internet", "private-net"):
        assert not allowed(objects, pods["alice"], pods[target], 443), f"{profile}: {target}"


def test_database_metrics_only_with_monitoring(helm_binaries):
    """CNPG's exporter (9187) is open to Prometheus only when monitoring is on, and only
    from where prometheusEgress says Prometheus runs."""
    prom = Pod("prometheus", {"app": "prometheus"}, namespace="monitoring", ip="10.1.5.5")
    where = {
        "prometheusEgress": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]
    }
    off, pods = release(extra={"twinhub": {"networkPolicy": where}})
    on = helm.render(
        extra={"twinhub": {"networkPolicy": where, "database": {"cnpg": {"monitoring": True}}}}
    )
    assert not allowed(off, prom, pods["database"], 9187)
    assert allowed(on, prom, pods["database"], 9187)
    assert not allowed(on, prom, pods["database"], 5432)
    assert not allowed(on, pods["other-namespace"], pods["database"], 9187)


def test_unknown_peer_fields_are_errors():
    # a misspelt selector must not read as "any peer"
    with pytest.raises(PolicyError):
        peer_matches({"podselector": {}}, WEB, "twinhub", {})
    with pytest.raises(PolicyError):
        peer_matches({}, WEB, "twinhub", {})

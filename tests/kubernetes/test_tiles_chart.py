"""The tiles service (/services/tiles/, docs/vizlab.md) in the chart: on by default in every
profile, a Deployment + Service like the other hub services, its caches and render threads
passed from its values into runtime.json (sized within its pod's memory limit), the S3 keys
it reads the lake's data with, and the NetworkPolicies that let the proxy and the hub reach
it and it reach the hub API, stac (straight) and S3 — judged by tests/kubernetes/netpol.py.

What no test here can show (no cluster): that a CNI enforces the policies and the pod starts
in the hub image.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

from tests.helpers import helm
from tests.kubernetes.netpol import Pod, allowed
from tests.kubernetes.test_networkpolicy import EXTRA, cluster_pods
from twinhub.objectstore.options import TwinhubObjectStore
from twinhub.process.runtime import Runtime
from twinhub.services.datalake import StacPart
from twinhub.services.tiles import SERVICE_NAME, SERVICE_PREFIX
from twinhub.services.tiles.config import TwinhubTiles

pytestmark = pytest.mark.usefixtures("helm_binaries")

NAME = "twinhub-tiles"
OFF = {"twinhub": {"services": {"tiles": {"enabled": False}}}}
#: The policies that open the tiles pod's straight call to stac, beyond twinhub-services.
OWN_POLICIES = {"twinhub-tiles-egress", "twinhub-stac-from-tiles"}
#: The subcharts' Services the runtime names (not rendered here): host -> (pod, port).
SUBCHART_SERVICES = {"hub": ("hub", 8081), "s3.example.org": ("external-s3", 443)}
_UNITS = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()
    return int(float(number) * _UNITS[unit])


def _runtime(objects: list[dict]) -> dict:
    return json.loads(helm.find(objects, "ConfigMap", "twinhub-runtime")["data"]["runtime.json"])


def _load_runtime(objects: list[dict], tmp: Path) -> Runtime:
    """The Runtime a tiles pod loads from the rendered ConfigMap (runtime.json alone)."""
    (tmp / "run").mkdir(parents=True)
    (tmp / "run" / "runtime.json").write_text(json.dumps(_runtime(objects)))
    return Runtime.load(tmp)


def _pods(objects: list[dict], profile: str, extra: dict | None = None) -> dict[str, Pod]:
    """The release's pods (test_networkpolicy's model) plus the tiles pod, labelled as its
    rendered Deployment labels it."""
    pods = cluster_pods(objects, helm.chart_values(profile, extra))
    labels = helm.find(objects, "Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    pods["tiles"] = Pod("tiles", labels, ip="10.1.0.58", ports={"http": 8000})
    return pods


def _target(objects: list[dict], pods: dict[str, Pod], url: str) -> tuple[Pod, int]:
    """The pod and port an in-cluster URL reaches: a rendered Service or a subchart's."""
    parts = urlsplit(url)
    host = parts.hostname
    port = parts.port or {"http": 80, "https": 443}[parts.scheme]
    if host in SUBCHART_SERVICES:
        name, target = SUBCHART_SERVICES[host]
        return pods[name], target
    svc = helm.find(objects, "Service", host)
    selected = [p for p in pods.values() if svc["spec"]["selector"].items() <= p.labels.items()]
    assert len(selected) == 1, f"Service {host} selects {[p.name for p in selected]}"
    (svc_port,) = [p for p in svc["spec"]["ports"] if p["port"] == port]
    target = svc_port["targetPort"]
    if isinstance(target, str):
        target = selected[0].ports.get(target, port)
    return selected[0], int(target)


# -- the workload ------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_tiles_is_deployed_and_registered_by_default(profile):
    values = helm.chart_values(profile)
    assert values["twinhub"]["services"]["tiles"]["enabled"] is True
    for version in helm.HELM_VERSIONS:
        objects = helm.render(profile, helm=version)
        dep = helm.find(objects, "Deployment", NAME)
        svc = helm.find(objects, "Service", NAME)
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["twinhub", "service", "run", SERVICE_NAME]
        assert container["readinessProbe"]["httpGet"] == {
            "path": f"{SERVICE_PREFIX}health",
            "port": "http",
        }
        want = values["twinhub"]["services"]["tiles"]
        assert container["resources"] == want["resources"], profile
        assert dep["spec"]["replicas"] == want["replicas"], profile
        assert svc["spec"]["ports"][0]["port"] == 8000
        # the hub registers it (runtime.json's ports and URLs) with a token of its own
        runtime = _runtime(objects)
        assert runtime["ports"][SERVICE_NAME] == 8000
        assert runtime["service_urls"][SERVICE_NAME] == f"http://{NAME}:8000"
        assert f"service-{SERVICE_NAME}" in helm.find(objects, "Secret", "twinhub-secrets")["data"]
        # no Kubernetes API token in its pod
        assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # replicated where the profile asks, with a disruption budget
    pdbs = {o["metadata"]["name"] for o in objects if o["kind"] == "PodDisruptionBudget"}
    assert (NAME in pdbs) == (want["replicas"] > 1), profile


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_tiles_objects_validate(profile):
    objects = [o for o in helm.render(profile) if "tiles" in o["metadata"]["name"]]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "NetworkPolicy"} <= kinds, profile
    for version in ("1.31", "1.34"):
        assert helm.validate(objects, version) == [], (profile, version)


def test_tiles_off_renders_nothing_of_it():
    objects = helm.render(extra=OFF)
    assert not [o for o in objects if "tiles" in o["metadata"]["name"]]
    runtime = _runtime(objects)
    assert runtime["config"]["TwinhubTiles"] == {"enabled": False}
    assert SERVICE_NAME not in runtime["ports"] and SERVICE_NAME not in runtime["service_urls"]
    assert "service-tiles" not in helm.find(objects, "Secret", "twinhub-secrets")["data"]


# -- its configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_caches_fit_the_pods_memory(profile, tmp_path):
    """The service reads its caches' sizes and threads from the rendered runtime.json (the
    real TwinhubTiles), and by default both caches together take at most half the pod's
    memory limit: the rest is the process and the chunks in flight."""
    objects = helm.render(profile)
    values = helm.chart_values(profile)["twinhub"]["services"]["tiles"]
    settings = TwinhubTiles(config=_load_runtime(objects, tmp_path).config)
    assert settings.enabled is True
    assert settings.chunk_cache_bytes == values["chunkCacheBytes"]
    assert settings.tile_cache_bytes == values["tileCacheBytes"]
    assert settings.render_threads == values["renderThreads"]
    limit = _bytes(values["resources"]["limits"]["memory"])
    assert settings.chunk_cache_bytes + settings.tile_cache_bytes <= limit // 2, profile
    # the class's own default (1 GiB of chunks) would not fit the chart's pods
    assert settings.chunk_cache_bytes < TwinhubTiles().chunk_cache_bytes
    # no more render threads than CPUs the pod may use
    assert settings.render_threads <= max(1, _bytes(values["resources"]["limits"]["cpu"]))


def test_operator_values_reach_the_service(tmp_path):
    tiles = {"chunkCacheBytes": 3 * 2**30, "tileCacheBytes": 0, "renderThreads": 6}
    config = {"TwinhubTiles": {"public_collections": ["climate-dt"], "max_age": 60}}
    extra = {"twinhub": {"services": {"tiles": tiles}, "config": config}}
    settings = TwinhubTiles(config=_load_runtime(helm.render(extra=extra), tmp_path).config)
    assert settings.chunk_cache_bytes == 3 * 2**30  # beyond 32-bit ints: kept whole
    assert settings.tile_cache_bytes == 0
    assert settings.render_threads == 6
    assert settings.public_collections == ["climate-dt"]
    assert settings.max_age == 60


@pytest.mark.parametrize(
    "bad",
    [
        {"renderThreads": 0},
        {"chunkCacheBytes": -1},
        {"tileCacheBytes": "256Mi"},
        {"replicas": 0},
        {"cacheBytes": 1},
    ],
)
def test_schema_refuses_bad_tiles_values(bad):
    values = helm.chart_values(extra={"twinhub": {"services": {"tiles": bad}}})
    schema = json.loads((helm.CHART_DIR / "values.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, schema)
    with pytest.raises(helm.HelmError):
        helm.render(extra={"twinhub": {"services": {"tiles": bad}}})


def test_reads_the_lake_with_the_s3_keys():
    """It opens items' data itself (Zarr by chunk): its pod mounts the S3 keys — and only
    its own hub token, no other service's."""
    for profile in ("default", "production"):
        dep = helm.find(helm.render(profile), "Deployment", NAME)
        volume = next(
            v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "twinhub-secrets"
        )
        paths = {
            item["path"]
            for source in volume["projected"]["sources"]
            for item in source["secret"]["items"]
        }
        assert {"s3-access-key", "s3-secret-key", "service-tiles"} <= paths, profile
        assert not {p for p in paths if p.startswith("service-")} - {"service-tiles"}


# -- the NetworkPolicies around it -------------------------------------------------------------


@pytest.mark.parametrize("profile", ["default", "minimal", "production"])
def test_every_address_the_service_calls_is_open_to_it(profile, tmp_path):
    """The hub API (its token, users' access), stac straight (the items) and S3 (their data)
    from the rendered runtime, each reached through the policies; the proxy and the hub
    reach it; users' pods, the database's other users and the outside do not."""
    objects = helm.render(profile, extra=EXTRA)
    pods = _pods(objects, profile, EXTRA)
    rt = _load_runtime(objects, tmp_path)
    urls = {"hub": rt.hub_api_url, "stac": StacPart().api_url(rt)}
    store = TwinhubObjectStore(config=rt.config)
    if store.enabled:
        urls["s3"] = store.endpoint_url
    # an S3 wherever the profile has one (the default profile has none: no data to read)
    assert ("s3" in urls) == ("s3" in rt.service_urls), profile
    tiles = pods["tiles"]
    for key, url in urls.items():
        target, port = _target(objects, pods, url)
        assert allowed(objects, tiles, target, port), f"{profile}: {key}={url}"
    for src in ("proxy", "hub"):
        assert allowed(objects, pods[src], tiles, 8000), (profile, src)
    # user servers reach it through the proxy only (the hub checks their token there)
    assert not allowed(objects, pods["alice"], tiles, 8000)
    for dst, port in (("metadata", 80), ("internet", 443), ("kube-api", 443), ("alice", 8888)):
        assert not allowed(objects, tiles, pods[dst], port), (profile, dst)
    if "keycloak" in pods:
        assert not allowed(objects, tiles, pods["keycloak"], 8080)


def test_the_stac_way_comes_from_its_own_policies():
    """tiles -> stac is opened by the tiles policies alone: without them it is closed, and
    they open stac to no other pod."""
    objects = helm.render(extra=EXTRA)
    pods = _pods(objects, "default", EXTRA)
    assert allowed(objects, pods["tiles"], pods["stac"], 8000)
    rest = [o for o in objects if o["metadata"]["name"] not in OWN_POLICIES]
    assert not allowed(rest, pods["tiles"], pods["stac"], 8000)
    for other in ("alice", "projects", "desk", "cache"):
        assert not allowed(objects, pods[other], pods["stac"], 8000), other
    assert not allowed(objects, pods["tiles"], pods["stac"], 8001)
    # no stac: no policy naming it
    no_stac = helm.render(extra={"twinhub": {"services": {"stac": {"enabled": False}}}})
    names = {o["metadata"]["name"] for o in no_stac}
    assert not names & OWN_POLICIES
    assert NAME in names


def test_grib_copies_have_a_bounded_scratch_volume():
    """GRIB files are copied whole before they are read: onto an emptyDir of their own,
    bounded (a full node disk would evict every pod on it), at the path the service uses."""
    objects = helm.render(extra={"twinhub": {"services": {"tiles": {"gribScratch": "3Gi"}}}})
    pod = helm.find(objects, "Deployment", NAME)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tiles-grib"]
    assert volume["emptyDir"] == {"sizeLimit": "3Gi"}
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tiles-grib"]
    # the pod's state dir is /srv/twinhub/state; opening.py copies to <run dir>/tiles-grib
    assert mount["mountPath"] == "/srv/twinhub/state/run/tiles-grib"

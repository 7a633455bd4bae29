"""The operator's extra egress peers (networkPolicy.userEgress and daskEgress), judged like
test_networkpolicy.py's matrix by tests/kubernetes/netpol.py's model of Kubernetes: closed by
default, and when opened, opened for those pods only."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers import helm
from tests.kubernetes.netpol import Pod, allowed
from tests.kubernetes.test_networkpolicy import EXTRA, release


def test_dask_egress_opens_only_its_peers(helm_binaries):
    """daskEgress lets the operator open a data provider to the workers (and nothing for
    user servers); by default workers reach no public address."""
    provider = Pod("provider", namespace=None, ip="192.0.2.44")
    peers = [{"ipBlock": {"cidr": "192.0.2.44/32"}}]
    closed, pods = release(extra=EXTRA)
    opened = helm.render(
        extra=helm.merge_values(EXTRA, {"twinhub": {"networkPolicy": {"daskEgress": peers}}})
    )
    assert not allowed(closed, pods["worker"], provider, 443)
    assert allowed(opened, pods["worker"], provider, 443)
    assert not allowed(opened, pods["alice"], provider, 443)
    assert not allowed(opened, pods["worker"], pods["metadata"], 80)


# The one-liner of docs/kubernetes.md that opens public addresses to notebooks.
PUBLIC_ONLY = [
    {
        "ipBlock": {
            "cidr": "0.0.0.0/0",
            "except": [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "169.254.0.0/16",
                "100.64.0.0/10",
            ],
        }
    }
]


@pytest.mark.parametrize(
    ("target", "port", "expected"),
    [
        ("internet", 443, True),
        ("internet", 80, True),
        ("metadata", 80, False),
        ("private-net", 443, False),
        ("kube-api", 443, False),
        ("cgnat", 443, False),
        ("bob", 8888, False),
        ("database", 5432, False),
    ],
)
def test_user_egress_opens_public_addresses_only(target, port, expected, helm_binaries):
    """userEgress as docs/kubernetes.md shows it: notebooks reach public addresses (pip,
    public data) and still nothing private; closed by default."""
    closed, pods = release(extra=EXTRA)
    opened = helm.render(
        extra=helm.merge_values(EXTRA, {"twinhub": {"networkPolicy": {"userEgress": PUBLIC_ONLY}}})
    )
    assert not allowed(closed, pods["alice"], pods["internet"], 443)
    assert allowed(opened, pods["alice"], pods[target], port) is expected
    # the opening is the user servers' alone
    assert not allowed(opened, pods["worker"], pods["internet"], 443)


def test_user_egress_example_is_the_documented_one():
    """The test above runs the peers docs/kubernetes.md tells operators to paste."""
    doc = (helm.REPO / "docs" / "kubernetes.md").read_text()
    marker = "userEgress:"
    start = doc.index(marker)
    block = doc[start : doc.index("```", start)]
    assert yaml.safe_load(block)["userEgress"] == PUBLIC_ONLY


# -- the registry's upstreams and the desk's SMTP server ----------------------------------------


def test_registry_ways_come_from_its_own_policies(helm_binaries):
    """The registry's way to public upstreams and to stac are opened by its two policies and
    by nothing else: without them the services' common policy keeps it in."""
    objects, pods = release(extra=EXTRA)
    assert allowed(objects, pods["registry"], pods["internet"], 443)
    assert allowed(objects, pods["registry"], pods["stac"], 8000)
    mine = {"twinhub-registry-egress", "twinhub-stac-from-registry"}
    rest = [o for o in objects if o["metadata"]["name"] not in mine]
    assert len(rest) == len(objects) - 2
    assert not allowed(rest, pods["registry"], pods["internet"], 443)
    assert not allowed(rest, pods["registry"], pods["stac"], 8000)
    # each half alone is not enough: stac must admit it, and it must be let out
    egress_only = [o for o in objects if o["metadata"]["name"] != "twinhub-stac-from-registry"]
    assert not allowed(egress_only, pods["registry"], pods["stac"], 8000)


def test_registry_egress_can_be_closed(helm_binaries):
    """registryEgress: [] leaves the registry no address outside the cluster (integrated
    services then answer 502: docs/kubernetes.md), and still its way to stac."""
    closed = helm.merge_values(EXTRA, {"twinhub": {"networkPolicy": {"registryEgress": []}}})
    objects, pods = release(extra=closed)
    assert not allowed(objects, pods["registry"], pods["internet"], 443)
    assert allowed(objects, pods["registry"], pods["stac"], 8000)
    assert not allowed(objects, pods["registry"], pods["metadata"], 80)


def test_registry_egress_example_opens_one_namespace(helm_binaries):
    """docs/kubernetes.md's registryEgress for upstreams inside the cluster: the providers'
    namespace is opened to the registry alone; metadata, nodes and other namespaces stay
    closed, and public upstreams stay open."""
    doc = (helm.REPO / "docs" / "kubernetes.md").read_text()
    start = doc.index("    registryEgress:")
    peers = yaml.safe_load(doc[start : doc.index("```", start)])["registryEgress"]
    assert any("namespaceSelector" in p for p in peers)
    provider = Pod("provider", {"app": "forecast"}, namespace="providers", ip="10.1.6.6")
    extra = helm.merge_values(EXTRA, {"twinhub": {"networkPolicy": {"registryEgress": peers}}})
    objects, pods = release(extra=extra)
    assert allowed(objects, pods["registry"], provider, 8080)
    assert allowed(objects, pods["registry"], pods["internet"], 443)
    for target in ("metadata", "node", "other-namespace", "kube-api"):
        assert not allowed(objects, pods["registry"], pods[target], 443), target
    for src in ("cache", "stac", "desk", "alice", "worker"):
        assert not allowed(objects, pods[src], provider, 8080), src


def test_smtp_egress_follows_the_desks_port(helm_binaries):
    """The SMTP rule's port is services.desk.smtp.port, the same value the desk's runtime
    configuration gets; without smtpEgress the desk reaches no mail server."""
    smtp = Pod("smtp", namespace=None, ip="192.0.2.25")
    peers = [{"ipBlock": {"cidr": "192.0.2.25/32"}}]
    values = {
        "twinhub": {
            "networkPolicy": {"smtpEgress": peers},
            "services": {"desk": {"smtp": {"host": "mail.example.org", "port": 465}}},
        }
    }
    objects, pods = release(extra=values)
    assert allowed(objects, pods["desk"], smtp, 465)
    assert not allowed(objects, pods["desk"], smtp, 587)
    assert not allowed(objects, pods["projects"], smtp, 465)
    runtime = helm.find(objects, "ConfigMap", "twinhub-runtime")["data"]["runtime.json"]
    assert yaml.safe_load(runtime)["config"]["TwinhubDesk"]["smtp_port"] == 465
    closed, pods = release()
    assert not allowed(closed, pods["desk"], smtp, 465)
    names = {o["metadata"]["name"] for o in closed if o["kind"] == "NetworkPolicy"}
    assert "twinhub-desk-egress" not in names


def _z2jh_egress(values: dict, pod_labels: dict) -> dict:
    """A policy as z2jh renders the egress rules its values add for one of its pods (z2jh
    copies `*.networkPolicy.egress` into the pod's policy; its own rules are not modelled)."""
    return {
        "kind": "NetworkPolicy",
        "apiVersion": "networking.k8s.io/v1",
        "metadata": {"name": "z2jh"},
        "spec": {
            "podSelector": {"matchLabels": pod_labels},
            "policyTypes": ["Egress"],
            "egress": values,
        },
    }


@pytest.mark.parametrize("profile", helm.PROFILES)
def test_proxy_and_hub_values_reach_the_registry_and_the_desk(profile, helm_binaries):
    """z2jh's proxy and hub policies are not rendered here, but the egress our values give
    them is: the proxy reaches the registry (its routes and every /services/<slug>/ the hub
    adds for integrated services point at twinhub-registry:8000) and the desk, the hub both."""
    objects, pods = release(profile, EXTRA)
    jh = helm.chart_values(profile)["jupyterhub"]
    proxy = _z2jh_egress(jh["proxy"]["chp"]["networkPolicy"]["egress"], {"component": "proxy"})
    hub = _z2jh_egress(jh["hub"]["networkPolicy"]["egress"], {"component": "hub"})
    policies = [*objects, proxy, hub]
    for target in ("registry", "desk"):
        assert allowed(policies, pods["proxy"], pods[target], 8000), (profile, target)
        assert allowed(policies, pods["hub"], pods[target], 8000), (profile, target)
        assert not allowed(policies, pods["proxy"], pods[target], 8001), (profile, target)
    # the modelled rules do restrict: the proxy gets nowhere else with them
    assert not allowed(policies, pods["proxy"], pods["internet"], 443)

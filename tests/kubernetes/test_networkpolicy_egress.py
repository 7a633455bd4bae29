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

"""A small evaluator of Kubernetes NetworkPolicy semantics (networking.k8s.io/v1), for tests.

There is no cluster here, so the chart's rendered policies are judged by this model of what
the API documents (https://kubernetes.io/docs/concepts/services-networking/network-policies/):

- a policy applies to the pods in its namespace that its ``podSelector`` selects (``{}``: all);
- ``policyTypes`` absent means Ingress, plus Egress when the policy has an ``egress`` section;
- a pod selected by no policy of a type is unrestricted for that type; a pod selected by at
  least one is allowed only what some rule of those policies allows (rules add up, never deny);
- a rule's ``from``/``to`` absent or empty means any peer, its ``ports`` absent or empty any port;
- a peer is a ``podSelector`` (pods of the policy's namespace), a ``namespaceSelector`` (every
  pod of the namespaces it selects), both (the selected pods of the selected namespaces), or
  an ``ipBlock`` (addresses in ``cidr`` outside every ``except``);
- a port is a number (with an optional ``endPort``) or the name of a container port of the
  destination pod; ``protocol`` defaults to TCP;
- a connection is allowed iff the source's egress AND the destination's ingress allow it.

Namespaces carry the label ``kubernetes.io/metadata.name`` as the API server sets it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Pod:
    """A pod (or, with ``namespace=None``, an address outside the cluster) as policies see it.

    ``ports`` maps container port names to numbers (for named ports in rules)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace: str | None = "twinhub"
    ip: str = "10.0.0.1"
    ports: Mapping[str, int] = field(default_factory=dict)


class PolicyError(ValueError):
    """A policy this evaluator does not understand (so no test silently passes on it)."""


def selector_matches(selector: Mapping | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector selects ``labels``; ``{}`` selects everything."""
    if selector is None:
        return True
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise PolicyError(f"unknown label selector fields {sorted(unknown)}")
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != str(value):
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], [str(v) for v in expr.get("values") or []]
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            raise PolicyError(f"unknown selector operator {op!r}")
        if not ok:
            return False
    return True


def _namespace_labels(namespace: str, namespaces: Mapping[str, Mapping[str, str]]) -> dict:
    return {NAME_LABEL: namespace, **namespaces.get(namespace, {})}


def peer_matches(
    peer: Mapping,
    pod: Pod,
    policy_namespace: str,
    namespaces: Mapping[str, Mapping[str, str]],
) -> bool:
    """Whether one ``from``/``to`` peer of a policy in ``policy_namespace`` covers ``pod``."""
    unknown = set(peer) - {"podSelector", "namespaceSelector", "ipBlock"}
    if unknown or not peer:
        raise PolicyError(f"unknown or empty peer {dict(peer)!r}")
    if "ipBlock" in peer:
        if len(peer) > 1:
            raise PolicyError("ipBlock cannot be combined with selectors")
        block = peer["ipBlock"]
        addr = ipaddress.ip_address(pod.ip)
        if addr not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(addr in ipaddress.ip_network(ex) for ex in block.get("except") or [])
    if pod.namespace is None:  # outside the cluster: only ipBlocks reach it
        return False
    if "namespaceSelector" in peer:
        ns_labels = _namespace_labels(pod.namespace, namespaces)
        if not selector_matches(peer["namespaceSelector"], ns_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector"), pod.labels)


def port_matches(rule_port: Mapping, port: int, protocol: str, target: Pod) -> bool:
    """Whether a NetworkPolicyPort covers ``port``/``protocol`` on ``target`` (named ports
    are looked up in the target's container ports)."""
    if rule_port.get("protocol", "TCP") != protocol:
        return False
    if "port" not in rule_port:
        return True
    want = rule_port["port"]
    if isinstance(want, str) and not want.isdigit():
        return target.ports.get(want) == port
    low = int(want)
    high = int(rule_port.get("endPort", low))
    return low <= port <= high


def _policy_types(policy: Mapping) -> set[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress", "Egress"} if "egress" in spec else {"Ingress"}


def _namespace_of(policy: Mapping, default: str) -> str:
    return policy.get("metadata", {}).get("namespace") or default


def policies_for(
    policies: Iterable[Mapping], pod: Pod, direction: str, default_namespace: str
) -> list[Mapping]:
    """The policies of type ``direction`` ("Ingress"/"Egress") that select ``pod``."""
    if pod.namespace is None:
        return []
    return [
        p
        for p in policies
        if direction in _policy_types(p)
        and _namespace_of(p, default_namespace) == pod.namespace
        and selector_matches(p["spec"].get("podSelector", {}), pod.labels)
    ]


def _rules_allow(
    selecting: list[Mapping],
    direction: str,
    peer: Pod,
    target: Pod,
    port: int,
    protocol: str,
    default_namespace: str,
    namespaces: Mapping[str, Mapping[str, str]],
) -> bool:
    if not selecting:
        return True
    section, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in selecting:
        ns = _namespace_of(policy, default_namespace)
        for rule in policy["spec"].get(section) or []:
            peers = rule.get(peers_key) or []
            if peers and not any(peer_matches(p, peer, ns, namespaces) for p in peers):
                continue
            ports = rule.get("ports") or []
            if ports and not any(port_matches(rp, port, protocol, target) for rp in ports):
                continue
            return True
    return False


def allowed(
    policies: Iterable[Mapping],
    src: Pod,
    dst: Pod,
    port: int,
    protocol: str = "TCP",
    default_namespace: str = "twinhub",
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> bool:
    """Whether ``src`` may open a connection to ``dst`` on ``port``: ``src``'s egress and
    ``dst``'s ingress must both allow it. ``policies`` are NetworkPolicy objects (others are
    ignored); those without ``metadata.namespace`` are in ``default_namespace``; ``namespaces``
    gives extra namespace labels."""
    policies = [p for p in policies if p.get("kind") == "NetworkPolicy"]
    namespaces = namespaces or {}
    egress = policies_for(policies, src, "Egress", default_namespace)
    ingress = policies_for(policies, dst, "Ingress", default_namespace)
    return _rules_allow(
        egress, "Egress", dst, dst, port, protocol, default_namespace, namespaces
    ) and _rules_allow(ingress, "Ingress", src, dst, port, protocol, default_namespace, namespaces)

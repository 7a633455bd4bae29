"""The processing service's ValidatingAdmissionPolicy (helm/twinhub/templates/processing.yaml),
its CEL evaluated: the real job pod and Secret (KubeJobBackend's manifests, as the chart
configures it) pass every validation, and each way a compromised service could widen a pod
(another account, a runtime or priority class, node choice, a weaker security context, more
resources) is refused.

The CEL runtime is cel-python's, not the API server's cel-go; Kubernetes' own CEL library
function ``quantity()`` (and its ``compareTo``) is a fake written here, from the quantity
suffixes the chart's values use. What the API server adds to a pod before validating
admission runs (the namespace's "default" account, the two not-ready/unreachable
tolerations, procMount Default) is added here as it would be.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import helm
from tests.kubernetes.test_processing_chart import _admission, _context, _job_objects

celpy = pytest.importorskip("celpy", reason="cel-python (pyproject's dev extra) is not installed")
celtypes = pytest.importorskip("celpy.celtypes")

pytestmark = pytest.mark.usefixtures("helm_binaries")

ACCOUNT = "system:serviceaccount:science:twinhub-processing"
_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_SUFFIX |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class _Quantity:
    """Fake of Kubernetes' CEL quantity (the suffixes the chart's values use)."""

    def __init__(self, text: str):
        number, unit = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text)).groups()
        self.value = float(number) * _SUFFIX[unit]


def _compare_to(a: _Quantity, b: _Quantity) -> object:
    return celtypes.IntType((a.value > b.value) - (a.value < b.value))


FUNCTIONS = {"quantity": _Quantity, "compareTo": _compare_to}


class Policy:
    """A rendered ValidatingAdmissionPolicy's variables and validations, compiled."""

    def __init__(self, policy: dict):
        env = celpy.Environment()
        spec = policy["spec"]

        def program(expr: str):
            return env.program(env.compile(expr), functions=FUNCTIONS)

        self.matches = [program(c["expression"]) for c in spec["matchConditions"]]
        self.variables = [(v["name"], program(v["expression"])) for v in spec["variables"]]
        self.validations = [(v["message"], program(v["expression"])) for v in spec["validations"]]

    def refusals(self, obj: dict, resource: str, operation: str = "CREATE") -> list[str]:
        """The messages of the validations ``obj`` fails (``[]``: admitted)."""
        request = {
            "operation": operation,
            "subResource": "",
            "resource": {"group": "", "resource": resource},
            "userInfo": {"username": ACCOUNT},
        }
        deleting = operation == "DELETE"
        act = {
            "request": celpy.json_to_cel(request),
            "object": celpy.json_to_cel(None if deleting else obj),
            "oldObject": celpy.json_to_cel(obj if deleting else None),
        }
        assert all(m.evaluate(act) == celtypes.BoolType(True) for m in self.matches)
        variables: dict = {}
        for name, prog in self.variables:
            act["variables"] = celtypes.MapType(dict(variables))
            variables[celtypes.StringType(name)] = prog.evaluate(act)
        act["variables"] = celtypes.MapType(variables)
        return [
            message
            for message, prog in self.validations
            if prog.evaluate(act) != celtypes.BoolType(True)
        ]


def _as_admitted(pod: dict) -> dict:
    """The pod as validating admission sees it: what the API server adds, added."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    spec["serviceAccountName"] = spec["serviceAccount"] = "default"
    spec["tolerations"] = [
        {"key": f"node.kubernetes.io/{k}", "operator": "Exists", "effect": "NoExecute"}
        for k in ("not-ready", "unreachable")
    ]
    spec["containers"][0]["securityContext"]["procMount"] = "Default"
    return pod


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Policy, dict, dict]:
    """The minimal profile's policy (jobPods 250m / 512Mi) and the real pod and Secret."""
    objects = helm.render("minimal", namespace="science")
    policy, _ = _admission(objects)
    _, pod, secret = _job_objects(_context(objects, Path(tmp_path_factory.mktemp("cel"))))
    return Policy(policy), _as_admitted(pod), secret


def test_the_backends_pod_and_secret_are_admitted(rendered):
    policy, pod, secret = rendered
    assert policy.refusals(pod, "pods") == []
    assert policy.refusals(secret, "secrets") == []
    # at jobPods' limits written otherwise (0.25 CPU = 250m)
    same = copy.deepcopy(pod)
    same["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "0.25"
    assert policy.refusals(same, "pods") == []
    # deleting them too
    assert policy.refusals(pod, "pods", "DELETE") == []


def _spec(key: str, value: object) -> Callable[[dict], None]:
    return lambda pod: pod["spec"].__setitem__(key, value)


def _pod_sc(key: str, value: object) -> Callable[[dict], None]:
    return lambda pod: pod["spec"]["securityContext"].__setitem__(key, value)


def _sc(key: str, value: object) -> Callable[[dict], None]:
    return lambda pod: pod["spec"]["containers"][0]["securityContext"].__setitem__(key, value)


def _limit(key: str, value: str) -> Callable[[dict], None]:
    return lambda pod: pod["spec"]["containers"][0]["resources"]["limits"].__setitem__(key, value)


WIDENINGS = {
    "service-account": _spec("serviceAccountName", "twinhub-processing"),
    "deprecated-service-account": _spec("serviceAccount", "admin"),
    "runtime-class": _spec("runtimeClassName", "unconfined"),
    "priority-class": _spec("priorityClassName", "system-node-critical"),
    "resource-claims": _spec("resourceClaims", [{"name": "gpu"}]),
    "pull-secret": _spec("imagePullSecrets", [{"name": "registry"}]),
    "node-selector": _spec("nodeSelector", {"kubernetes.io/hostname": "node-1"}),
    "affinity": _spec("affinity", {"nodeAffinity": {}}),
    "tolerate-all": lambda pod: pod["spec"]["tolerations"].append({"operator": "Exists"}),
    "seccomp-unconfined": _pod_sc("seccompProfile", {"type": "Unconfined"}),
    "no-seccomp": lambda pod: pod["spec"]["securityContext"].pop("seccompProfile"),
    "selinux": _pod_sc("seLinuxOptions", {"type": "spc_t"}),
    "sysctls": _pod_sc("sysctls", [{"name": "net.ipv4.ip_forward", "value": "1"}]),
    "group-0": _pod_sc("runAsGroup", 0),
    "fs-group-0": _pod_sc("fsGroup", 0),
    "supplemental-group-0": _pod_sc("supplementalGroups", [100, 0]),
    "apparmor-unconfined": _pod_sc("appArmorProfile", {"type": "Unconfined"}),
    "capabilities-kept": _sc("capabilities", {}),
    "capability-added": _sc("capabilities", {"drop": ["ALL"], "add": ["NET_ADMIN"]}),
    "container-seccomp": _sc("seccompProfile", {"type": "Unconfined"}),
    "container-selinux": _sc("seLinuxOptions", {"level": "s0"}),
    "container-group-0": _sc("runAsGroup", 0),
    "proc-unmasked": _sc("procMount", "Unmasked"),
    "cpu": _limit("cpu", "2"),
    "memory": _limit("memory", "513Mi"),
    "gpu": _limit("nvidia.com/gpu", "1"),
    "no-limits": lambda pod: pod["spec"]["containers"][0]["resources"].pop("limits"),
    "request-over-limit": lambda pod: pod["spec"]["containers"][0]["resources"]["requests"].update(
        cpu="300m"
    ),
    "volume": _spec("volumes", [{"name": "h", "hostPath": {"path": "/"}}]),
    "root": _pod_sc("runAsUser", 0),
}


@pytest.mark.parametrize("name", sorted(WIDENINGS))
def test_a_widened_pod_is_refused(rendered, name):
    policy, pod, _ = rendered
    widened = copy.deepcopy(pod)
    WIDENINGS[name](widened)
    assert policy.refusals(widened, "pods"), name


def test_the_named_priority_class_alone_is_admitted(tmp_path):
    """A cluster's globalDefault PriorityClass (written into every pod) is admitted once
    named in jobPriorityClassName; another is not."""
    extra = {"twinhub": {"services": {"processing": {"jobPriorityClassName": "batch"}}}}
    objects = helm.render("minimal", extra=extra, namespace="science")
    policy = Policy(_admission(objects)[0])
    _, pod, _ = _job_objects(_context(objects, tmp_path))
    pod = _as_admitted(pod)
    pod["spec"]["priorityClassName"] = "batch"
    assert policy.refusals(pod, "pods") == []
    pod["spec"]["priorityClassName"] = "system-cluster-critical"
    assert policy.refusals(pod, "pods")

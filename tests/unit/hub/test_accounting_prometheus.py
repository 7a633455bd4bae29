"""Who the Prometheus meter backend charges a pod to, from kube-state-metrics' series as
dicts (``PrometheusBackend.attribute``: no Prometheus is asked here; the queries themselves
run against a real one in tests/integration/test_accounting_prometheus.py)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig
from dask_gateway_server.backends.kubernetes.controller import KubeController
from traitlets.config import Config

from twinhub import db
from twinhub.services.accounting import backend_prometheus as bp
from twinhub.services.accounting.readings import CLUSTER, NAMED_SERVER, SERVER, Source

NS = "twinhub"
SERVER_POD = (NS, "jupyter-dana-example-org---8adfdf65")
WORKER_POD = (NS, "dask-worker-5e6f-aaaaa")


@pytest.fixture
def backend():
    # Never asked: attribute() reads what it is handed.
    b = bp.PrometheusBackend("http://prometheus.invalid", namespace=NS)
    yield b
    b.close()


def _server_labels(uid: str = "0f1e2d3c-aaaa") -> dict[str, str]:
    return {
        "namespace": NS,
        "pod": SERVER_POD[1],
        "uid": uid,
        bp.LABEL_USER: "dana-example-org---8adfdf65",
        bp.LABEL_USER_KUBESPAWNER: "dana-example-org---8adfdf65",
        bp.LABEL_PROJECT: "ocean-science---884a542d",
        bp.LABEL_SERVER: "",
    }


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == bp.__name__]


def test_ksm_names() -> None:
    assert bp.ksm_name("label", "twinhub.io/user") == "label_twinhub_io_user"
    assert bp.ksm_name("annotation", "hub.jupyter.org/servername") == (
        "annotation_hub_jupyter_org_servername"
    )


def test_annotations_name_the_user_and_project_of_a_labelled_pod(backend, caplog) -> None:
    caplog.set_level(logging.WARNING, logger=bp.__name__)
    labels = {SERVER_POD: _server_labels()}
    annotations = {
        SERVER_POD: {
            bp.ANNOTATION_USER: "Dana@Example.org",
            bp.ANNOTATION_PROJECT: "Ocean Science",
        }
    }
    (info,) = backend.attribute([], labels, annotations=annotations).values()
    src = info.source
    assert (src.user, src.project, src.kind) == ("Dana@Example.org", "Ocean Science", SERVER)
    assert _warnings(caplog) == []

    # KubeSpawner's own annotation names the user too (its own key, on every server pod).
    annotations = {
        SERVER_POD: {
            bp.ANNOTATION_USER_KUBESPAWNER: "Dana@Example.org",
            bp.ANNOTATION_PROJECT: "Ocean Science",
        }
    }
    (info,) = backend.attribute([], labels, annotations=annotations).values()
    assert info.source.user == "Dana@Example.org"
    assert _warnings(caplog) == []


def test_a_charge_file_wins_over_annotations(backend) -> None:
    charged = Source("server:dana/#1", "dana-from-hub", "charged", SERVER)

    class Charge:  # what the meter hands over: a source and its charge's pod
        source = charged
        extra = {"pod": SERVER_POD[1], "namespace": NS}

    labels = {SERVER_POD: _server_labels()}
    annotations = {SERVER_POD: {bp.ANNOTATION_USER: "Dana@Example.org"}}
    pods = backend.attribute([Charge()], labels, annotations=annotations)
    assert pods[SERVER_POD].source is charged


def test_missing_annotations_fall_back_to_slugs_warning_once_per_pod(backend, caplog) -> None:
    caplog.set_level(logging.WARNING, logger=bp.__name__)
    worker = {
        "namespace": NS,
        "pod": WORKER_POD[1],
        "uid": "5e6f-bbbb",
        bp.LABEL_USER: "dana-example-org---8adfdf65",
        bp.LABEL_CLUSTER: "twinhub.5e6f",
        bp.LABEL_COMPONENT: "dask-worker",
    }
    server = _server_labels() | {bp.LABEL_SERVER: "gpu-1---0a1b2c3d"}
    labels = {SERVER_POD: server, WORKER_POD: worker}
    pods = backend.attribute([], labels, annotations={})
    assert pods[SERVER_POD].source.user == "dana-example-org---8adfdf65"
    assert pods[SERVER_POD].source.project == "ocean-science---884a542d"
    assert (pods[SERVER_POD].source.kind, pods[SERVER_POD].source.name) == (
        NAMED_SERVER,
        "gpu-1---0a1b2c3d",
    )
    # No project label on the worker: the personal project, and no project annotation missed.
    assert pods[WORKER_POD].source.kind == CLUSTER and pods[WORKER_POD].worker
    assert pods[WORKER_POD].source.project == "personal"
    worker_line, server_line = sorted(_warnings(caplog))  # "dask-..." before "jupyter-..."
    assert f"{NS}/{WORKER_POD[1]} " in worker_line and f"{NS}/{SERVER_POD[1]} " in server_line
    assert "has no annotation_twinhub_io_user for it" in worker_line
    assert "--metric-annotations-allowlist" in worker_line
    assert (
        "has no annotation_twinhub_io_user, annotation_twinhub_io_project, "
        "annotation_hub_jupyter_org_servername for it" in server_line
    )

    caplog.clear()
    backend.attribute([], labels, annotations={})
    assert _warnings(caplog) == []
    # The same pod name with a new uid (a restart): a new pod, warned about again.
    labels[SERVER_POD] = server | {"uid": "0f1e2d3c-cccc"}
    backend.attribute([], labels, annotations={})
    (line,) = _warnings(caplog)
    assert f"{NS}/{SERVER_POD[1]} " in line


def _as_kube_state_metrics(pod: dict, uid: str) -> tuple[dict, dict]:
    """A pod's ``kube_pod_labels`` and ``kube_pod_annotations`` series labels, as
    kube-state-metrics exports them with docs/accounting.md's allowlists."""
    meta = pod["metadata"]
    base = {"namespace": NS, "pod": WORKER_POD[1], "uid": uid}
    labels = base | {
        bp.ksm_name("label", k): v for k, v in meta["labels"].items() if k in bp.POD_LABEL_KEYS
    }
    annotations = base | {
        bp.ksm_name("annotation", k): v
        for k, v in meta["annotations"].items()
        if k in bp.POD_ANNOTATION_KEYS
    }
    return labels, annotations


def test_the_charts_dask_pods_are_charged_to_the_names(
    backend, caplog, monkeypatch, tmp_path
) -> None:
    """The chart's ``twinhub-labels`` gateway configuration (values.yaml), run as the gateway
    runs it; dask-gateway's own controller builds the worker pod (``make_pod``: no API server
    is asked); that pod's labels and annotations name the user and project accounting
    charges."""
    values = yaml.safe_load((Path(__file__).parents[3] / "helm/twinhub/values.yaml").read_text())
    snippet = values["dask-gateway"]["gateway"]["extraConfig"]["twinhub-labels"]
    # The gateway pod's variables (twinhub.gateway.kube): a runtime with the project, and
    # twinhub's database (a real SQLite file).
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    runtime = {
        "deployment": "kubernetes",
        "mode": "multi-user",
        "config": {"TwinhubProjects": {"projects": {"Ocean Science": {}}}},
    }
    monkeypatch.setenv("TWINHUB_RUNTIME_JSON", json.dumps(runtime))
    monkeypatch.setenv("TWINHUB_DB_URL", url)
    c = Config()
    exec(snippet, {"c": c})  # noqa: S102 (the chart's own configuration, as the gateway runs it)
    user = SimpleNamespace(name="Dana@Example.org", groups=["Ocean Science"])
    options = c.Backend.cluster_options(user)  # per user: their projects
    overrides = options.get_configuration(options.parse_options({"project": "Ocean Science"}), user)
    controller = KubeController(gateway_instance="twinhub-dask-gateway", api_url="http://x")
    pod = controller.make_pod(NS, "twinhub.5e6f", KubeClusterConfig(**overrides), is_worker=True)
    for value in pod["metadata"]["labels"].values():
        assert re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", value)

    caplog.set_level(logging.WARNING, logger=bp.__name__)
    labels, annotations = _as_kube_state_metrics(pod, "5e6f-cccc")
    pods = backend.attribute([], {WORKER_POD: labels}, annotations={WORKER_POD: annotations})
    src = pods[WORKER_POD].source
    assert (src.user, src.project, src.kind, src.name) == (
        "Dana@Example.org",
        "Ocean Science",
        CLUSTER,
        "twinhub.5e6f",
    )
    assert pods[WORKER_POD].worker and _warnings(caplog) == []

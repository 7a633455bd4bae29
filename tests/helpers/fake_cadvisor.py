"""A FAKE cAdvisor + kube-state-metrics exporter for the Prometheus meter backend's tests.

There is no Kubernetes here. :class:`FakeCadvisorExporter` is a small HTTP server on
127.0.0.1 that serves, at ``/metrics``, series shaped like the kubelet's cAdvisor endpoint
(``container_cpu_usage_seconds_total``, ``container_memory_working_set_bytes``, with the
pod-level cgroup ``container=""`` and the pause container ``POD`` that real cAdvisor also
exports) and like kube-state-metrics' ``kube_pod_labels``, ``kube_pod_annotations`` and
``kube_pod_start_time``. The values are whatever the test sets; a real Prometheus scrapes it
(tests/fixtures/prometheus.py).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


@dataclass
class FakePod:
    namespace: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    start_time: float = field(default_factory=time.time)  # Unix seconds
    #: container -> cumulative CPU seconds / working set bytes
    cpu: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items()) + "}"


class FakeCadvisorExporter:
    """FAKE exporter of cAdvisor- and kube-state-metrics-shaped series (see module doc).

    ``add_pod``/``remove_pod`` and ``set_cpu``/``add_cpu``/``set_memory`` change what the next
    scrape sees; ``scrapes`` counts scrapes, ``wait_scrapes(n)`` waits for ``n`` more.
    ``annotations_allowlist`` plays kube-state-metrics' ``--metric-annotations-allowlist`` for
    pods: None exports every annotation (``pods=[*]``), a tuple of keys only those, and an
    empty tuple no ``kube_pod_annotations`` series at all (kube-state-metrics without the flag).
    """

    def __init__(self) -> None:
        self._pods: dict[tuple[str, str], FakePod] = {}
        self.annotations_allowlist: tuple[str, ...] | None = None
        self._lock = threading.Condition()
        self.scrapes = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with exporter._lock:
                    exporter.scrapes += 1
                    exporter._lock.notify_all()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakeCadvisorExporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what the test sets ----------------------------------------------------------------
    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str] | None = None,
        containers: tuple[str, ...] = ("notebook",),
        annotations: dict[str, str] | None = None,
    ) -> FakePod:
        """A pod (labels and annotations as Kubernetes keys, e.g. ``twinhub.io/user``), CPU
        and memory 0 in each container."""
        pod = FakePod(namespace, name, dict(labels or {}), dict(annotations or {}))
        for c in containers:
            pod.cpu[c] = 0.0
            pod.memory[c] = 0.0
        with self._lock:
            self._pods[(namespace, name)] = pod
        return pod

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)

    def clear(self) -> None:
        """No pods, every annotation exported."""
        with self._lock:
            self._pods.clear()
            self.annotations_allowlist = None

    def set_cpu(self, namespace: str, name: str, seconds: float, container: str = "") -> None:
        with self._lock:
            pod = self._pods[(namespace, name)]
            pod.cpu[container or next(iter(pod.cpu))] = float(seconds)

    def add_cpu(self, namespace: str, name: str, seconds: float, container: str = "") -> None:
        with self._lock:
            pod = self._pods[(namespace, name)]
            c = container or next(iter(pod.cpu))
            pod.cpu[c] += float(seconds)

    def set_memory(self, namespace: str, name: str, nbytes: float, container: str = "") -> None:
        with self._lock:
            pod = self._pods[(namespace, name)]
            pod.memory[container or next(iter(pod.memory))] = float(nbytes)

    def wait_scrapes(self, n: int = 2, timeout: float = 30.0) -> None:
        """Wait until ``n`` more scrapes have been answered: with ``n=2`` the values set
        before the call are in Prometheus's head (the first may have been under way)."""
        with self._lock:
            target = self.scrapes + n
            if not self._lock.wait_for(lambda: self.scrapes >= target, timeout):
                raise TimeoutError(f"no scrape of the fake exporter within {timeout} s")

    # -- the exposition ----------------------------------------------------------------------
    def render(self) -> str:
        with self._lock:
            allow = self.annotations_allowlist
            pods = [
                FakePod(
                    p.namespace,
                    p.name,
                    dict(p.labels),
                    dict(p.annotations),
                    p.uid,
                    p.start_time,
                    dict(p.cpu),
                    dict(p.memory),
                )
                for p in self._pods.values()
            ]
        lines = [
            "# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.",
            "# TYPE container_cpu_usage_seconds_total counter",
        ]
        for p in pods:
            base = f"/kubepods/burstable/pod{p.uid}"
            # Real cAdvisor also exports the pod's own cgroup (container="") and the pause
            # container (container="POD"): a query that does not leave them out counts twice.
            lines.append(
                "container_cpu_usage_seconds_total"
                + _labels(container="", cpu="total", id=base, namespace=p.namespace, pod=p.name)
                + f" {sum(p.cpu.values()) + 0.01!r}"
            )
            lines.append(
                "container_cpu_usage_seconds_total"
                + _labels(
                    container="POD",
                    cpu="total",
                    id=f"{base}/pause",
                    namespace=p.namespace,
                    pod=p.name,
                )
                + " 0.01"
            )
            for c, v in p.cpu.items():
                lines.append(
                    "container_cpu_usage_seconds_total"
                    + _labels(
                        container=c,
                        cpu="total",
                        id=f"{base}/{c}",
                        image="quay.io/twinhub/lab",
                        namespace=p.namespace,
                        pod=p.name,
                    )
                    + f" {v!r}"
                )
        lines += [
            "# HELP container_memory_working_set_bytes Current working set in bytes.",
            "# TYPE container_memory_working_set_bytes gauge",
        ]
        for p in pods:
            base = f"/kubepods/burstable/pod{p.uid}"
            lines.append(
                "container_memory_working_set_bytes"
                + _labels(container="", id=base, namespace=p.namespace, pod=p.name)
                + f" {sum(p.memory.values()) + 4096.0!r}"
            )
            for c, v in p.memory.items():
                lines.append(
                    "container_memory_working_set_bytes"
                    + _labels(container=c, id=f"{base}/{c}", namespace=p.namespace, pod=p.name)
                    + f" {v!r}"
                )
        lines += [
            "# HELP kube_pod_labels Kubernetes labels converted to Prometheus labels.",
            "# TYPE kube_pod_labels gauge",
        ]
        for p in pods:
            labels = {"namespace": p.namespace, "pod": p.name, "uid": p.uid}
            labels |= {"label_" + _UNSAFE.sub("_", k): v for k, v in p.labels.items()}
            lines.append("kube_pod_labels" + _labels(**labels) + " 1")
        if allow is None or allow:  # kube-state-metrics with no allowlist: no series
            lines += [
                "# HELP kube_pod_annotations Kubernetes annotations converted to Prometheus "
                "labels.",
                "# TYPE kube_pod_annotations gauge",
            ]
            for p in pods:
                labels = {"namespace": p.namespace, "pod": p.name, "uid": p.uid}
                labels |= {
                    "annotation_" + _UNSAFE.sub("_", k): v
                    for k, v in p.annotations.items()
                    if allow is None or k in allow
                }
                lines.append("kube_pod_annotations" + _labels(**labels) + " 1")
        lines += [
            "# HELP kube_pod_start_time Start time in unix timestamp for a pod.",
            "# TYPE kube_pod_start_time gauge",
        ]
        for p in pods:
            lines.append(
                "kube_pod_start_time"
                + _labels(namespace=p.namespace, pod=p.name, uid=p.uid)
                + f" {float(int(p.start_time))!r}"
            )
        return "\n".join(lines) + "\n"

"""The Kubernetes meter backend: usage from Prometheus, which scrapes cAdvisor (the kubelet).

Five instant queries per tick (``/api/v1/query``, bounded in time and in size; only
``TwinhubAccounting.prometheus_namespace`` when set):

- CPU: ``sum by (namespace, pod) (container_cpu_usage_seconds_total{container!="",
  container!="POD"})`` -- a counter of core-seconds per pod (the pod's containers, not the
  pod-level cgroup ``container=""`` nor the pause container ``POD``, which would count twice);
- memory: the same sum of ``container_memory_working_set_bytes`` -- a gauge, in GiB;
- ``kube_pod_labels`` (kube-state-metrics, with ``--metric-labels-allowlist=pods=[...]``,
  :data:`POD_LABEL_KEYS`) for pods no charge file names: ``twinhub.io/user`` and
  ``twinhub.io/project`` (TwinhubKubeSpawner and the gateway's options),
  ``hub.jupyter.org/username`` and ``hub.jupyter.org/servername`` (KubeSpawner),
  ``gateway.dask.org/cluster`` and ``app.kubernetes.io/component`` (dask-gateway pods);
- ``kube_pod_annotations`` of those pods (``--metric-annotations-allowlist=pods=[...]``,
  :data:`POD_ANNOTATION_KEYS`): label values are KubeSpawner's ``safe_slug`` of the names
  ("Ocean Science" -> ``ocean-science---884a542d``), the annotations of the same keys hold
  the names themselves, and those are what is charged. An annotation kube-state-metrics does
  not export: the slug is charged, and the log says so once per pod;
- ``kube_pod_start_time`` of those labelled pods: a pod's counter began when it started.

The meter hands over its sources (``meter.MeteredSource``: the source and its charge file).
A source's pod comes first from its charge (``extra`` or ``cgroups``: ``pod``,
``namespace``; a cluster's pods by their ``gateway.dask.org/cluster`` label = its name),
written by the hub or the gateway; only pods no charge names are attributed
by their labels and annotations. A pod with no user label and no charge file is ignored.
Labels and annotations are set by KubeSpawner and the gateway, never by user code (users get
no access to the Kubernetes API).

A Dask cluster is many pods that come and go: each pod is read as a source of its own,
``<cluster source id>/<pod>`` (same user, project, kind and name), so that one worker's
end never reads as a drop of the cluster's CPU counter. Worker pods also give a
``dask_worker`` gauge of 1.

What this backend can miss (docs/accounting.md): the CPU a pod used after Prometheus's last
scrape of it (one scrape interval) and, when one container of a pod restarts, the sum drops
and the store charges the pod's whole counter again (a restart of a single-container pod, the
usual server, is exact: its counter starts from zero).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from ...spawn import podmeta
from .readings import (
    CLUSTER,
    CPU,
    DASK_WORKER,
    MEMORY,
    NAMED_SERVER,
    SERVER,
    Reading,
    Source,
)

log = logging.getLogger(__name__)

GIB = float(1 << 30)
METHOD = "prometheus"

#: The pod label and annotation keys kube-state-metrics must export (its allowlists).
USER_KEY = podmeta.USER_KEY
PROJECT_KEY = podmeta.PROJECT_KEY
KUBESPAWNER_USER_KEY = "hub.jupyter.org/username"
SERVER_KEY = "hub.jupyter.org/servername"
CLUSTER_KEY = "gateway.dask.org/cluster"
COMPONENT_KEY = "app.kubernetes.io/component"
POD_LABEL_KEYS = (USER_KEY, PROJECT_KEY, SERVER_KEY, CLUSTER_KEY, COMPONENT_KEY)
POD_ANNOTATION_KEYS = (USER_KEY, KUBESPAWNER_USER_KEY, PROJECT_KEY, SERVER_KEY)

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


def ksm_name(prefix: str, key: str) -> str:
    """kube-state-metrics' Prometheus label for a pod label (``label``) or annotation
    (``annotation``) key: the prefix, ``_``, the key with every other character as ``_``."""
    return f"{prefix}_{_UNSAFE.sub('_', key)}"


#: kube-state-metrics' names for the pod labels read (label-safe slugs of the names).
LABEL_USER = ksm_name("label", USER_KEY)
LABEL_USER_KUBESPAWNER = ksm_name("label", KUBESPAWNER_USER_KEY)  # a pod of plain KubeSpawner
LABEL_SERVER = ksm_name("label", SERVER_KEY)
LABEL_PROJECT = ksm_name("label", PROJECT_KEY)
LABEL_CLUSTER = ksm_name("label", CLUSTER_KEY)
LABEL_COMPONENT = ksm_name("label", COMPONENT_KEY)
LABEL_COMPONENT_OLD = "label_component"  # dask-gateway also sets plain ``component``
DASK_WORKER_COMPONENT = "dask-worker"
#: ... and for the annotations read (the raw names).
ANNOTATION_USER = ksm_name("annotation", USER_KEY)
ANNOTATION_USER_KUBESPAWNER = ksm_name("annotation", KUBESPAWNER_USER_KEY)
ANNOTATION_PROJECT = ksm_name("annotation", PROJECT_KEY)
ANNOTATION_SERVER = ksm_name("annotation", SERVER_KEY)

PodKey = tuple[str, str]  # (namespace, pod)


class PrometheusError(RuntimeError):
    """Prometheus could not be asked, or answered something unusable."""


@dataclass(frozen=True)
class PodInfo:
    """Who a pod is charged to (from a charge file or from its labels)."""

    source: Source
    worker: bool = False
    per_pod: bool = False  # a cluster's pod: read as the source ``<source_id>/<pod>``


class PrometheusBackend:
    """Reads CPU and memory of Kubernetes pods from Prometheus (``read(sources, now)``)."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "",
        personal_project: str | None = "personal",
        timeout: float = 5.0,
        max_series: int = 20000,
        max_bytes: int = 32 << 20,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url:
            raise ValueError("TwinhubAccounting.prometheus_url is empty (backend 'prometheus')")
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.personal_project = personal_project
        self.timeout = timeout
        self.max_series = max_series
        self.max_bytes = max_bytes
        self._client = httpx.Client(timeout=timeout, transport=transport)
        #: The last error (None after a good tick), for the service's status and /health.
        self.last_error: str | None = None
        # Pods (namespace, pod, uid) already logged as charged to label slugs.
        self._warned: set[tuple[str, str, str]] = set()

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> PrometheusBackend:
        return cls(
            settings.prometheus_url,
            namespace=settings.prometheus_namespace,
            personal_project=settings.personal_project,
            **kw,
        )

    def close(self) -> None:
        self._client.close()

    # -- the MeterBackend protocol -------------------------------------------------------
    def read(self, sources: Iterable[Any], now: datetime | None = None) -> list[Reading]:
        """Readings for every pod of ``sources`` (the meter's) and every labelled pod.

        Prometheus unreachable or answering garbage: no readings this tick (logged,
        ``last_error``); counters catch up at the next tick, gauges lose this interval.
        """
        now = now or datetime.now(UTC)
        try:
            cpu = self._vector(_sum_query("container_cpu_usage_seconds_total", self.namespace), now)
            mem = self._vector(
                _sum_query("container_memory_working_set_bytes", self.namespace), now
            )
            labels = self._by_pod(self._labels_expr(), now)
            # Only the labelled pods' annotations and starts: answers as small as the labels'.
            annotations = self._by_pod(
                f"kube_pod_annotations{_ns(self.namespace)} and on (namespace, pod) "
                f"({self._labels_expr()})",
                now,
            )
            starts = self._vector(
                f"kube_pod_start_time{_ns(self.namespace)} and on (namespace, pod) "
                f"({self._labels_expr()})",
                now,
            )
        except PrometheusError as e:
            self.last_error = str(e)
            log.warning("accounting: no Prometheus readings this tick: %s", e)
            return []
        self.last_error = None
        pods = self.attribute(
            sources, labels, seen=set(cpu) | set(mem), starts=starts, annotations=annotations
        )
        out: list[Reading] = []
        for key in sorted(pods):
            info = pods[key]
            if key not in cpu and key not in mem:
                continue  # not (or no longer) scraped
            src = info.source
            if info.per_pod:
                src = Source(
                    source_id=f"{src.source_id}/{key[1]}",
                    user=src.user,
                    project=src.project,
                    kind=src.kind,
                    name=src.name,
                    started_at=_when(starts.get(key)) or src.started_at,
                    ended_at=src.ended_at,
                )
            if key in cpu:
                out.append(Reading(src, CPU, "counter", cpu[key], METHOD, now))
            if src.ended_at is not None:
                continue  # a final read: counters only (a level now would bill idle time)
            if key in mem:
                out.append(Reading(src, MEMORY, "gauge", mem[key] / GIB, METHOD, now))
            if info.worker:
                out.append(Reading(src, DASK_WORKER, "gauge", 1.0, METHOD, now))
        return out

    # -- who each pod is charged to ------------------------------------------------------
    def attribute(
        self,
        sources: Iterable[Any],
        labels: dict[PodKey, dict[str, str]],
        seen: Iterable[PodKey] = (),
        starts: dict[PodKey, float] | None = None,
        annotations: dict[PodKey, dict[str, str]] | None = None,
    ) -> dict[PodKey, PodInfo]:
        """Pod -> who pays, for the pods ``seen`` in the series and those ``labels`` name:
        charge files first, then pod labels (the names from ``annotations``, slugs where
        those lack them); pods with neither are left out."""
        named: dict[PodKey, Source] = {}  # namespace "" in a charge: any namespace
        clusters: dict[str, Source] = {}
        for item in sources:
            src = as_source(item)
            where = _probe(item)
            if src.kind == CLUSTER:
                clusters[src.name] = src
            elif where.get("pod"):
                ns = str(where.get("namespace") or self.namespace)
                named[(ns, str(where["pod"]))] = src
        annotations = annotations or {}
        pods: dict[PodKey, PodInfo] = {}
        for key in sorted(set(seen) | set(labels)):
            lab = labels.get(key, {})
            charged = named.get(key) or named.get(("", key[1]))
            cluster = lab.get(LABEL_CLUSTER, "")
            worker = DASK_WORKER_COMPONENT in (
                lab.get(LABEL_COMPONENT, ""),
                lab.get(LABEL_COMPONENT_OLD, ""),
            )
            if charged is not None:
                pods[key] = PodInfo(charged)
            elif cluster and cluster in clusters:
                pods[key] = PodInfo(clusters[cluster], worker=worker, per_pod=True)
            elif lab.get(LABEL_USER) or lab.get(LABEL_USER_KUBESPAWNER):
                start = _when((starts or {}).get(key))
                ann = annotations.get(key, {})
                pods[key] = PodInfo(
                    self._labelled(key, lab, ann, start), worker=worker, per_pod=bool(cluster)
                )
            # else: nobody to charge -- not a twinhub pod
        # Forget the warnings of pods gone (a pod's name may come back with a new uid).
        self._warned &= {(*key, lab.get("uid", "")) for key, lab in labels.items()}
        return pods

    def _labelled(
        self, key: PodKey, lab: dict[str, str], ann: dict[str, str], start: datetime | None
    ) -> Source:
        """The source of a pod no charge file names, from its (trusted) labels and
        annotations: the names from the annotations, the label slugs where those lack them."""
        named = ann.get(ANNOTATION_USER) or ann.get(ANNOTATION_USER_KUBESPAWNER)
        user = named or lab.get(LABEL_USER) or lab[LABEL_USER_KUBESPAWNER]
        project = ann.get(ANNOTATION_PROJECT) or lab.get(LABEL_PROJECT) or self.personal_project
        server = ann.get(ANNOTATION_SERVER) or lab.get(LABEL_SERVER, "")
        missing = [] if named else [USER_KEY]
        if lab.get(LABEL_PROJECT) and not ann.get(ANNOTATION_PROJECT):
            missing.append(PROJECT_KEY)
        if lab.get(LABEL_SERVER) and not ann.get(ANNOTATION_SERVER):
            missing.append(SERVER_KEY)
        if missing:
            self._warn_slugs(key, lab.get("uid", ""), missing, user, project)
        cluster = lab.get(LABEL_CLUSTER, "")
        if cluster:
            return Source(f"cluster:{cluster}", user, project, CLUSTER, cluster)
        # One run of a server is one pod: its uid (kube-state-metrics' ``uid`` label) names it.
        run = (lab.get("uid", "") or key[1]).replace("-", "")[:12]
        kind = NAMED_SERVER if server else SERVER
        return Source(f"server:{user}/{server}#{run}", user, project, kind, server, start)

    def _warn_slugs(
        self, key: PodKey, uid: str, missing: list[str], user: str, project: str | None
    ) -> None:
        """Once per pod: it is charged to label slugs, which may not be the names."""
        if (*key, uid) in self._warned:
            return
        self._warned.add((*key, uid))
        log.warning(
            "accounting: pod %s/%s is charged to user %r, project %r from its label values "
            "(slugs, not necessarily the names): kube_pod_annotations has no %s for it; add "
            "%s to kube-state-metrics' --metric-annotations-allowlist=pods=[...] "
            "(docs/accounting.md)",
            key[0],
            key[1],
            user,
            project,
            ", ".join(ksm_name("annotation", k) for k in missing),
            ",".join(missing),
        )

    # -- Prometheus's HTTP API -------------------------------------------------------------
    def _labels_expr(self) -> str:
        """The ``kube_pod_labels`` series of pods with a user or a cluster label."""
        ns = f",namespace={_quote(self.namespace)}" if self.namespace else ""
        return " or ".join(
            f'kube_pod_labels{{{label}!=""{ns}}}'
            for label in (LABEL_USER, LABEL_USER_KUBESPAWNER, LABEL_CLUSTER)
        )

    def _by_pod(self, expr: str, now: datetime) -> dict[PodKey, dict[str, str]]:
        """The labels of each pod's series (``kube_pod_labels``, ``kube_pod_annotations``)."""
        out: dict[PodKey, dict[str, str]] = {}
        for metric, _ in self._query(expr, now):
            key = (metric.get("namespace", ""), metric.get("pod", ""))
            if key[1]:
                out[key] = metric  # several kube-state-metrics replicas: the same labels
        return out

    def _vector(self, expr: str, now: datetime) -> dict[PodKey, float]:
        out: dict[PodKey, float] = {}
        for metric, value in self._query(expr, now):
            key = (metric.get("namespace", ""), metric.get("pod", ""))
            if key[1]:
                out[key] = value
        return out

    def _query(self, expr: str, now: datetime) -> list[tuple[dict[str, str], float]]:
        params = {
            "query": expr,
            "time": f"{now.timestamp():.3f}",
            "timeout": f"{max(1, int(self.timeout * 1000))}ms",
        }
        try:
            with self._client.stream("GET", f"{self.url}/api/v1/query", params=params) as r:
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise PrometheusError(f"answer over {self.max_bytes} bytes to {expr!r}")
                status = r.status_code
        except httpx.HTTPError as e:
            raise PrometheusError(f"{type(e).__name__} asking {self.url}: {e}") from e
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise PrometheusError(f"HTTP {status}, not JSON, from {self.url}") from e
        if status != 200 or doc.get("status") != "success":
            raise PrometheusError(f"HTTP {status} from {self.url}: {doc.get('error', doc)!r}")
        data = doc.get("data") or {}
        if data.get("resultType") != "vector":
            raise PrometheusError(f"expected a vector for {expr!r}, got {data.get('resultType')}")
        result = data.get("result") or []
        if len(result) > self.max_series:
            raise PrometheusError(f"{len(result)} series for {expr!r}, over {self.max_series}")
        out = []
        for item in result:
            try:
                value = float(item["value"][1])
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise PrometheusError(f"bad sample {item!r}") from e
            if value == value and value >= 0:  # NaN or negative: not a usage figure
                out.append((dict(item.get("metric") or {}), value))
        return out


def _quote(value: str) -> str:
    return json.dumps(value)  # a PromQL string literal is a JSON-like quoted string


def _ns(namespace: str) -> str:
    return f"{{namespace={_quote(namespace)}}}" if namespace else ""


def _when(unix: float | None) -> datetime | None:
    """A pod's start (kube-state-metrics' ``kube_pod_start_time``, Unix seconds)."""
    return datetime.fromtimestamp(unix, UTC) if unix else None


def _sum_query(metric: str, namespace: str) -> str:
    sel = 'container!="",container!="POD"'
    if namespace:
        sel += f",namespace={_quote(namespace)}"
    return f"sum by (namespace, pod) ({metric}{{{sel}}})"


def _probe(item: Any) -> dict[str, Any]:
    """Where a source's charge says its pod is: ``extra`` first, then ``cgroups``."""
    charge = getattr(item, "charge", item)
    out: dict[str, Any] = {}
    for attr in ("cgroups", "extra"):
        value = getattr(charge, attr, None)
        if isinstance(value, dict):
            out.update({k: v for k, v in value.items() if k in ("pod", "namespace") and v})
    return out


def as_source(item: Any) -> Source:
    """The :class:`Source` of what the meter hands over (a ``meter.MeteredSource``: its
    ``source``), or a Source itself."""
    src = getattr(item, "source", item)
    if not isinstance(src, Source):
        raise TypeError(f"not a metered source: {item!r}")
    return src

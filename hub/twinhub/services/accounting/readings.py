"""What the meter hands to a backend (:class:`MeteredSource`, the :class:`MeterBackend`
protocol) and what a backend hands to the store: one reading of one resource of one source.

Backends (cgroups and /proc here, Prometheus in Kubernetes, NVML for GPUs) only *read*;
turning readings into interval records (deltas against cursors, idempotent writes,
roll-ups, energy and CO2e) is :mod:`.store`'s job, the same for every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol, runtime_checkable

from ...spawn.charges import Charge

#: Resources and the base unit of a record's ``quantity`` (the API converts to hours/days).
CPU: Final = "cpu"  # core-seconds (counter: cumulative CPU time)
MEMORY: Final = "memory"  # GiB-seconds (gauge: working set in GiB)
GPU: Final = "gpu"  # GPU-seconds (gauge: GPUs allocated)
DASK_WORKER: Final = "dask_worker"  # worker-seconds (gauge: live workers)
STORAGE: Final = "storage"  # GiB-seconds (gauge: GiB stored)
RESOURCES: Final = (CPU, MEMORY, GPU, DASK_WORKER, STORAGE)

#: Kinds of source (what a record is charged for).
SERVER: Final = "server"
NAMED_SERVER: Final = "named-server"
CLUSTER: Final = "cluster"
JOB: Final = "job"
STORAGE_SOURCE: Final = "storage"
SOURCE_KINDS: Final = (SERVER, NAMED_SERVER, CLUSTER, JOB, STORAGE_SOURCE)

#: How a quantity was measured (``method``) and how its energy was found (``energy_method``).
MEASURE_METHODS: Final = (
    "cgroup",
    "proc",
    "pacct",
    "prometheus",
    "allocation",
    "nvml",
    "s3-list",
    "du",
)
ENERGY_METHODS: Final = ("rapl", "nvml", "model", "none")


@dataclass(frozen=True)
class Source:
    """Something usage is charged for: a server run, a cluster, a job, a bucket.

    Only trusted processes (hub, gateway, the service itself) say who a source belongs to;
    never a user's environment or labels.
    """

    source_id: str  # unique per run, e.g. "server:alice/#<uuid>", "cluster:<name>", "bucket:<b>"
    user: str
    project: str | None  # None: charged to nobody's budget (a home bucket), shown to the user
    kind: str  # one of SOURCE_KINDS
    name: str = ""  # server name ("" default), cluster name, bucket name
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True)
class Reading:
    """One value read at ``at`` (timezone-aware UTC).

    ``kind="counter"``: ``value`` is cumulative since the source began (CPU core-seconds,
    NVML energy joules); the store charges the increase since the previous reading (a value
    below it means the counter restarted: the whole value is charged).
    ``kind="gauge"``: ``value`` is a level (GiB held, GPUs allocated, live workers); the
    store charges ``value x`` the time since the previous reading of that source, capped at
    ``2 x interval`` so an outage is not billed as if the level held throughout.
    """

    source: Source
    resource: str  # one of RESOURCES
    kind: Literal["counter", "gauge"]
    value: float
    method: str  # one of MEASURE_METHODS
    at: datetime
    #: Measured energy counter in joules for this source (NVML), cumulative; None: modelled.
    energy_j: float | None = None


@dataclass(frozen=True)
class MeteredSource:
    """An open (or just ended) source: what the store knows it as, and its charge file."""

    source: Source
    charge: Charge

    @property
    def ended(self) -> bool:
        return self.charge.ended_at is not None


@runtime_checkable
class MeterBackend(Protocol):
    """What the meter asks each backend, once per tick.

    ``read`` gets every source the meter knows (open ones and those ended since the last
    tick: their final read) and returns the readings of those it can measure, ignoring the
    others (e.g. the cgroup backend skips sources without cgroups). It must not raise for one
    bad source (skip it and log); it may return readings of sources it finds itself (storage:
    buckets), with their own :class:`Source`. Readings of an ended source should be counters
    only: a gauge read after the end would charge time the source did not run.
    """

    name: str

    def read(self, sources: Sequence[MeteredSource], now: datetime) -> list[Reading]: ...

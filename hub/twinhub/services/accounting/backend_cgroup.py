"""Readings from the accounting cgroups the spawner and the gateway make (embedded, root).

Per source (its charge file's ``cgroups``):

- ``cpu`` (counter, core-seconds, method ``cgroup``): cgroup v1 ``cpuacct.usage`` (ns) or
  v2 ``cpu.stat`` ``usage_usec``; it counts every process that ever ran in the leaf and its
  children, detached or not, short-lived or not, and a parent keeps what removed children
  used. Nothing is missed while the leaf exists; the meter removes it after its last read.
  A source metered in its limits cgroup (v2; v1 with cpu,cpuacct co-mounted), which the hub
  removes at stop, has the counter the hub read last in its charge (``extra["final_cpu"]``).
- ``memory`` (gauge, GiB, method ``cgroup``): the working set, as cAdvisor counts it --
  usage minus inactive file cache (v1 ``memory.usage_in_bytes`` - ``total_inactive_file``,
  v2 ``memory.current`` - ``inactive_file``), summed over the source's memory cgroups (a
  glob for a cluster's per-process limit groups). Sampled: a peak between two samples is
  not seen. Without a memory cgroup: the RSS of the leaf's processes (psutil).
- ``dask_worker`` (gauge, workers, method ``cgroup``): a cluster's worker leaves that hold
  a process.
- ``gpu`` (gauge, GPUs, method ``allocation``): the GPUs the charge says were allocated.
"""

from __future__ import annotations

import contextlib
import glob
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import psutil

from ...spawn.resource_limits import cpu_seconds
from .readings import CLUSTER, CPU, DASK_WORKER, GPU, MEMORY, MeteredSource, Reading

log = logging.getLogger("twinhub.accounting.cgroup")
GIB = 1024**3


def _stat(path: Path) -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[key] = int(value)
    return out


def working_set_bytes(mem_dir: Path) -> int | None:
    """usage - inactive file cache of one memory cgroup (v1 or v2), None when gone."""
    for usage_file, inactive_key in (
        ("memory.usage_in_bytes", "total_inactive_file"),
        ("memory.current", "inactive_file"),
    ):
        try:
            usage = int((mem_dir / usage_file).read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return None
        inactive = _stat(mem_dir / "memory.stat").get(inactive_key, 0)
        return max(0, usage - inactive)
    return None


def _procs(d: Path) -> list[int]:
    out: list[int] = []
    for procs in [d / "cgroup.procs", *d.glob("*/cgroup.procs")]:
        with contextlib.suppress(OSError, ValueError):
            out += [int(p) for p in procs.read_text().split()]
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def live_workers(cpu_dir: Path) -> int:
    n = 0
    with contextlib.suppress(OSError):
        for child in cpu_dir.iterdir():
            if child.is_dir() and child.name.startswith("worker-"):
                with contextlib.suppress(OSError):
                    n += bool((child / "cgroup.procs").read_text().split())
    return n


class CgroupBackend:
    """CPU, memory, Dask workers and GPU allocation of sources that have accounting cgroups."""

    name = "cgroup"

    def read(self, sources: Sequence[MeteredSource], now: datetime) -> list[Reading]:
        out: list[Reading] = []
        for m in sources:
            cg = m.charge.cgroups or {}
            if not cg.get("cpu"):
                continue  # no cgroups: the /proc backend's
            try:
                out += self._read_one(m, Path(cg["cpu"]), cg.get("memory") or [], now)
            except Exception:  # one odd source must not stop the others
                log.exception("cannot read the cgroups of %s", m.source.source_id)
        return out

    def _read_one(
        self, m: MeteredSource, cpu_dir: Path, memory: list[str], now: datetime
    ) -> list[Reading]:
        out: list[Reading] = []
        cpu = cpu_seconds(cpu_dir)
        final = (m.charge.extra or {}).get("final_cpu")
        if cpu is None and m.ended and isinstance(final, int | float):
            # Metered in a limits cgroup, removed at stop: its counter as the hub last read it.
            cpu = float(final)
        if cpu is not None:
            out.append(Reading(m.source, CPU, "counter", cpu, "cgroup", now))
        if m.ended:
            return out  # final read: counters only
        mem_dirs = [Path(p) for pattern in memory for p in sorted(glob.glob(pattern))]
        sets = [w for d in mem_dirs if (w := working_set_bytes(d)) is not None]
        if sets:
            out.append(Reading(m.source, MEMORY, "gauge", sum(sets) / GIB, "cgroup", now))
        elif cpu is not None:
            rss = rss_bytes(_procs(cpu_dir))
            out.append(Reading(m.source, MEMORY, "gauge", rss / GIB, "proc", now))
        if m.charge.kind == CLUSTER and cpu is not None:
            workers = float(live_workers(cpu_dir))
            out.append(Reading(m.source, DASK_WORKER, "gauge", workers, "cgroup", now))
        if m.charge.gpus:
            out.append(Reading(m.source, GPU, "gauge", float(m.charge.gpus), "allocation", now))
        return out

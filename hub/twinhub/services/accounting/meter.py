"""The meter: every ``interval``, read every open source and hand the readings to the store.

Sources are the charge files the hub's spawner and the Dask gateway write
(:mod:`twinhub.spawn.charges`); backends turn them into :class:`~.readings.Reading` s:

- :class:`~.backend_cgroup.CgroupBackend`: sources with accounting cgroups (root, Linux);
- :class:`~.backend_proc.ProcBackend`: sources without (per-process accounting);
- more backends plug in through :class:`MeterBackend` (Prometheus on Kubernetes, NVML for
  GPUs, storage): anything with ``read(sources, now) -> list[Reading]``.

A source that has ended gets one last read; only once the store has committed it are its
cgroup leaves removed and its charge file deleted, so a kill -9 anywhere in a tick loses
nothing and counts nothing twice (the store's cursors make a repeated reading worth zero).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ...process.runtime import Runtime
from ...spawn import charges as charge_files
from ...spawn.charges import Charge
from .backend_cgroup import CgroupBackend
from .backend_proc import ProcBackend
from .backend_prometheus import PrometheusBackend
from .backend_storage import StorageBackend
from .config import TwinhubAccounting
from .nvml import NvmlBackend, prefer_nvml
from .readings import (
    CLUSTER,
    NAMED_SERVER,
    SERVER,
    MeterBackend,
    MeteredSource,
    Reading,
    Source,
)

if TYPE_CHECKING:  # the store is only called, never built here
    from .store import UsageStore

log = logging.getLogger("twinhub.accounting.meter")


def to_source(charge: Charge, default_project: str) -> Source:
    kind = charge.kind
    if kind == SERVER and charge.name:
        kind = NAMED_SERVER
    return Source(
        source_id=charge.source_id,
        user=charge.user,
        project=charge.project or default_project,
        kind=kind,
        name=charge.name,
        started_at=charge.started_at,
        ended_at=charge.ended_at,
    )


def charges_dir(rt: Runtime) -> Path:
    return rt.path(charge_files.CHARGES_DIR)


class Meter:
    """Reads every source each tick and stores the readings (sync: run it in a thread)."""

    def __init__(
        self,
        rt: Runtime,
        settings: TwinhubAccounting,
        store: UsageStore,
        backends: Sequence[MeterBackend] | None = None,
        directory: str | Path | None = None,
    ) -> None:
        self.rt = rt
        self.settings = settings
        self.store = store
        self.directory = Path(directory) if directory else charges_dir(rt)
        if backends is None:
            backends = default_backends(rt, settings)
        self.backends: list[MeterBackend] = list(backends)
        self.last_tick: datetime | None = None
        self.last_error: str = ""
        self._registered: set[str] = set()

    def add_backend(self, backend: MeterBackend) -> None:
        self.backends.append(backend)

    def sources(self, charges: list[Charge] | None = None) -> list[MeteredSource]:
        """What every charge file (or ``charges``, read already) says, as the store knows it."""
        project = self.settings.personal_project
        if charges is None:
            charges = charge_files.list_charges(self.directory)
        return [MeteredSource(to_source(c, project), c) for c in charges]

    def tick(self, now: datetime | None = None) -> int:
        """One sample of every source; returns the records the store wrote."""
        now = now or datetime.now(UTC)
        charges = charge_files.list_charges(self.directory)  # read once per tick
        for i, c in enumerate(charges):
            if _orphaned_cluster(c, now, self.settings.interval):
                # The gateway died with its clusters (its database is in memory): no stop
                # will come. The leaves are empty; read them one last time.
                log.warning("cluster %s has no process left: ended", c.source_id)
                charges[i] = charge_files.end(self.directory, c.source_id, now) or c
        sources = self.sources(charges)
        new = [m for m in sources if m.source.source_id not in self._registered]
        if new:  # where each is read (the charge file), for operators: once per meter run
            probes = {m.source.source_id: m.charge.to_json() for m in new}
            self.store.register([m.source for m in new], probes)
            self._registered.update(probes)
        readings: list[Reading] = []
        failed = False
        for backend in self.backends:
            try:
                readings += backend.read(sources, now)
            except Exception as e:  # one broken backend must not stop the others
                log.exception("accounting backend %s failed", getattr(backend, "name", backend))
                self.last_error = f"{getattr(backend, 'name', backend)}: {e}"
                failed = True
        # NVML's measured GPU readings replace the allocation-only ones of the same source.
        readings = prefer_nvml(readings)
        written = self.store.apply(readings) if readings else 0
        # Only now (the store committed) may ended sources lose their counters; not after a
        # failed read (their last reading may be missing).
        for m in sources:
            if m.ended and not failed and _empty(m.charge):
                self._finish(m)
        self.last_tick = now
        return written

    def _finish(self, m: MeteredSource) -> None:
        ended = m.charge.ended_at or datetime.now(UTC)
        for leaf in _leaves_deepest_first(m.charge):
            with contextlib.suppress(FileNotFoundError):
                try:
                    leaf.rmdir()
                except OSError as e:  # still busy: try again next tick
                    log.warning("cannot remove %s yet: %s", leaf, e)
                    return
        self.store.end_source(m.source.source_id, ended)
        self.store.mark_final_read(m.source.source_id)
        self._registered.discard(m.source.source_id)
        charge_files.remove(self.directory, m.source.source_id)
        log.info("source %s ended and removed", m.source.source_id)


def _leaves_deepest_first(charge: Charge) -> list[Path]:
    out: list[Path] = []
    for leaf in charge.cgroups.get("leaves", []):
        p = Path(leaf)
        if p.is_dir():
            out += [d for d in p.rglob("*") if d.is_dir()]
        out.append(p)
    return sorted(set(out), key=lambda p: len(p.parts), reverse=True)


def _orphaned_cluster(charge: Charge, now: datetime, interval: float) -> bool:
    """An open cluster whose processes are all gone for a while (not just starting)."""
    if charge.kind != CLUSTER or charge.ended_at is not None or charge.started_at is None:
        return False
    if now - charge.started_at < timedelta(seconds=max(120.0, 4 * interval)):
        return False
    if (charge.cgroups or {}).get("cpu"):
        return Path(charge.cgroups["cpu"]).is_dir() and _empty(charge)
    pids = (charge.extra or {}).get("pids") or []
    return bool(pids) and not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, TypeError):
        return True
    return True


def _empty(charge: Charge) -> bool:
    """No process left in the source's cgroups (always true without cgroups)."""
    for leaf in _leaves_deepest_first(charge):
        with contextlib.suppress(OSError):
            if (leaf / "cgroup.procs").read_text().split():
                return False
    return True


def default_backends(rt: Runtime, settings: TwinhubAccounting) -> list[MeterBackend]:
    """The backends ``settings`` ask for: embedded (cgroups where the source has them, else
    /proc) or Kubernetes (Prometheus); then GPUs (NVML: off by itself without one) and
    storage (buckets and home directories, sampled every ``storage_interval``)."""
    if settings.backend == "prometheus":
        backends: list[MeterBackend] = [PrometheusBackend.from_settings(settings)]
    else:
        backends = [CgroupBackend(), ProcBackend(rt.path("run/accounting/proc-state.json"))]
    return [*backends, NvmlBackend.from_settings(settings), StorageBackend(rt, settings)]


__all__ = [
    "Meter",
    "MeterBackend",
    "MeteredSource",
    "charges_dir",
    "to_source",
]

"""GPU readings from NVML: measured energy per source, and which sources use which GPU.

The module is ``TwinhubAccounting.nvml_module`` (nvidia-ml-py's ``pynvml``; the tests name
a fake). Each tick, per device: ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the
driver loaded; where unsupported, ``nvmlDeviceGetPowerUsage`` integrated over the tick), the
compute processes on it (``nvmlDeviceGetComputeRunningProcesses``) and their SM utilisation
(``nvmlDeviceGetProcessUtilization``). A process belongs to the source whose accounting
cgroup holds it, else whose root process (the charge's ``pid``, while that pid is still a
process of the charge's ``uid``) it descends from, else to the one open source of its uid (the latest started when several). A device's energy since the
last tick goes to the sources the device is allocated to (charge ``extra["gpu_uuids"]``),
else to the sources with processes on it, split by their SM utilisation (equally when NVML
gives none); processes of nobody known take their share away, an idle unallocated device
is charged to nobody.

Each source gets one ``gpu`` gauge reading (GPUs: those allocated or, if more, those its
processes run on) with method ``nvml`` and ``energy_j``: the energy apportioned to it since
this meter started (a cumulative counter: after a restart it starts from zero again, which the
store reads as a counter restart -- the energy of the restart's gap is lost, none counted
twice). :func:`prefer_nvml` drops another backend's allocation-only ``gpu`` reading of a
source NVML read.

No module, or an ``NVMLError`` at ``nvmlInit``: no readings at all (GPU-hours stay the
allocation x wall time of the other backends, energy by ``gpu_watts`` or none).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...spawn.charges import Charge
from .readings import GPU, MeteredSource, Reading

log = logging.getLogger(__name__)

METHOD = "nvml"


@dataclass
class _Device:
    uuid: str
    energy_j: float | None  # the device's counter (or integrated power), None: unreadable
    pids: list[int]
    sm_util: dict[int, float] = field(default_factory=dict)  # pid -> SM %
    utilisation: float | None = None  # whole device, %


class NvmlBackend:
    """GPU energy and use per source from NVML (``read(sources, now)``, a meter backend)."""

    name = "nvml"

    def __init__(self, module: str = "pynvml", *, proc: str | Path = "/proc") -> None:
        self.module_name = module
        self.proc = Path(proc)
        self._nvml: Any = None
        self._tried = False
        self._last_energy: dict[str, float] = {}  # device uuid -> its counter at the last tick
        self._last_power_at: dict[str, datetime] = {}  # power-only devices: when last read
        self._last_sample: dict[str, int] = {}  # device uuid -> last process sample (us)
        self._energy: dict[str, float] = {}  # source id -> joules since this meter started
        #: Last tick's SM utilisation per source (% summed over its processes and GPUs).
        self.utilisation: dict[str, float] = {}
        #: Why there are no readings (None while NVML answers).
        self.unavailable: str | None = None

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> NvmlBackend:
        return cls(settings.nvml_module, **kw)

    # -- NVML -----------------------------------------------------------------------------
    def _init(self) -> Any:
        """The NVML module, initialised once; None without one (logged once)."""
        if self._tried:
            return self._nvml
        self._tried = True
        try:
            nvml = importlib.import_module(self.module_name)
        except ImportError as e:
            self.unavailable = f"no NVML module {self.module_name!r} ({e})"
            log.info("accounting: GPU readings off: %s", self.unavailable)
            return None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            self.unavailable = f"nvmlInit failed: {e}"
            log.info("accounting: GPU readings off: %s", self.unavailable)
            return None
        self._nvml = nvml
        self.unavailable = None
        return nvml

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
            self._nvml = None

    def _devices(self, nvml: Any, now: datetime) -> list[_Device]:
        err = nvml.NVMLError
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            try:
                energy: float | None = nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
            except err:
                energy = self._integrated_power(nvml, h, uuid, now)
            try:
                pids = [int(p.pid) for p in nvml.nvmlDeviceGetComputeRunningProcesses(h)]
            except err:
                pids = []
            dev = _Device(uuid, energy, pids)
            try:
                samples = nvml.nvmlDeviceGetProcessUtilization(h, self._last_sample.get(uuid, 0))
            except err:
                samples = []  # not supported, or no sample since the last tick
            for s in samples:
                dev.sm_util[int(s.pid)] = dev.sm_util.get(int(s.pid), 0.0) + float(s.smUtil)
                self._last_sample[uuid] = max(self._last_sample.get(uuid, 0), int(s.timeStamp))
            with contextlib.suppress(err):
                dev.utilisation = float(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
            out.append(dev)
        return out

    def _integrated_power(self, nvml: Any, h: Any, uuid: str, now: datetime) -> float | None:
        """A joules counter made of power readings (mW x the time since the last one)."""
        try:
            watts = nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
        except nvml.NVMLError:
            return None
        last = self._last_power_at.get(uuid)
        self._last_power_at[uuid] = now
        before = self._last_energy.get(uuid, 0.0)
        return before + (watts * (now - last).total_seconds() if last else 0.0)

    # -- the MeterBackend protocol ---------------------------------------------------------
    def read(self, sources: Sequence[MeteredSource], now: datetime | None = None) -> list[Reading]:
        now = now or datetime.now(UTC)
        nvml = self._init()
        if nvml is None:
            return []
        try:
            devices = self._devices(nvml, now)
        except nvml.NVMLError as e:
            log.warning("accounting: no GPU readings this tick: %s", e)
            return []
        # Who runs on a GPU: only worth walking the sources' cgroups when some process does.
        owner = _Owners(sources, self.proc) if any(d.pids for d in devices) else None
        used: dict[str, set[str]] = {}  # source id -> device uuids its processes run on
        util: dict[str, float] = {}
        for dev in devices:
            shares: dict[str | None, float] = {}  # None: processes of nobody known
            for pid in dev.pids:
                assert owner is not None  # made above whenever a device has a pid
                sid = owner.of(pid)
                if sid is not None:
                    used.setdefault(sid, set()).add(dev.uuid)
                    util[sid] = util.get(sid, 0.0) + dev.sm_util.get(pid, 0.0)
                shares[sid] = shares.get(sid, 0.0) + dev.sm_util.get(pid, 0.0)
            holders = [
                m.source.source_id
                for m in sources
                if m.charge.ended_at is None and dev.uuid in _gpu_uuids(m.charge)
            ]
            self._apportion(dev, holders, shares)
        self.utilisation = util
        out = []
        for m in sources:
            sid = m.source.source_id
            if m.charge.ended_at is not None:
                continue  # a final read: the GPU reading is a level (see MeterBackend)
            gpus = max(int(m.charge.gpus or 0), len(used.get(sid, ())))
            if gpus == 0 and sid not in self._energy:
                continue  # no GPU: nothing to say
            energy = self._energy.get(sid, 0.0)
            out.append(Reading(m.source, GPU, "gauge", float(gpus), METHOD, now, energy_j=energy))
        return out

    def _apportion(self, dev: _Device, holders: list[str], shares: dict[str | None, float]) -> None:
        """Add the device's energy since the last tick to its sources' counters."""
        if dev.energy_j is None:
            return
        before = self._last_energy.get(dev.uuid)
        self._last_energy[dev.uuid] = dev.energy_j
        if before is None or dev.energy_j < before:
            return  # first sight of the device (or its driver reloaded): a baseline
        delta = dev.energy_j - before
        if holders:  # allocated: all of it to those holding the device
            weights: dict[str | None, float] = {s: shares.get(s, 0.0) for s in holders}
        else:
            weights = dict(shares)
        total = sum(weights.values())
        if total <= 0:  # no utilisation samples: equal split among those present
            weights = dict.fromkeys(weights, 1.0)
            total = float(len(weights))
        for sid, w in weights.items():
            if sid is not None:
                self._energy[sid] = self._energy.get(sid, 0.0) + delta * w / total


def prefer_nvml(readings: list[Reading]) -> list[Reading]:
    """Drop the allocation-only ``gpu`` readings of sources that NVML read this tick (one
    record per source, resource and interval)."""
    measured = {r.source.source_id for r in readings if r.resource == GPU and r.method == METHOD}
    return [
        r
        for r in readings
        if not (r.resource == GPU and r.method != METHOD and r.source.source_id in measured)
    ]


def _gpu_uuids(charge: Charge) -> set[str]:
    """The GPUs allocated to a source (``extra["gpu_uuids"]``, written by the hub)."""
    extra = charge.extra if isinstance(charge.extra, dict) else {}
    return {str(u) for u in extra.get("gpu_uuids") or ()}


class _Owners:
    """pid -> source id: accounting cgroup, else root-process ancestry, else uid."""

    def __init__(self, sources: Sequence[MeteredSource], proc: Path) -> None:
        self.proc = proc
        self.by_cgroup: dict[int, str] = {}
        self.by_root: dict[int, str] = {}
        self.by_uid: dict[int, str] = {}
        started: dict[int, datetime] = {}
        for m in sources:
            c, sid = m.charge, m.source.source_id
            if c.ended_at is not None:
                continue
            for d in _cgroup_dirs(c.cgroups):
                for pid in _procs_under(d):
                    self.by_cgroup.setdefault(pid, sid)
            # The root process only while it is still the charge's account's: a pid reused
            # by another account's process must not hand that process's tree to the source.
            if c.pid and (c.uid is None or self._uid(int(c.pid)) == int(c.uid)):
                self.by_root[int(c.pid)] = sid
            at = c.started_at or datetime.min.replace(tzinfo=UTC)
            if c.uid is not None and (c.uid not in started or at >= started[c.uid]):
                self.by_uid[int(c.uid)], started[c.uid] = sid, at

    def of(self, pid: int) -> str | None:
        if pid in self.by_cgroup:
            return self.by_cgroup[pid]
        seen = 0
        p = pid
        while p > 1 and seen < 64:  # up the parent chain to the source's root process
            if p in self.by_root:
                return self.by_root[p]
            p = self._ppid(p)
            seen += 1
        uid = self._uid(pid)
        return self.by_uid.get(uid) if uid is not None else None

    def _ppid(self, pid: int) -> int:
        try:
            stat = (self.proc / str(pid) / "stat").read_text()
        except OSError:
            return 0
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        return int(stat.rsplit(")", 1)[1].split()[1])

    def _uid(self, pid: int) -> int | None:
        """The real uid of ``pid`` (``/proc/<pid>/status``: the directory's owner is root
        for a non-dumpable process)."""
        try:
            for line in (self.proc / str(pid) / "status").read_text().splitlines():
                if line.startswith("Uid:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return None


def _cgroup_dirs(cgroups: Any) -> list[str]:
    if not isinstance(cgroups, dict):
        return []
    dirs: list[str] = []
    for key in ("cpu", "memory", "leaves"):
        value = cgroups.get(key)
        dirs += (
            [value] if isinstance(value, str) else [v for v in value or () if isinstance(v, str)]
        )
    return [d for d in dict.fromkeys(dirs) if d and "*" not in d]


def _procs_under(directory: str) -> list[int]:
    """The pids in a cgroup and its children (``cgroup.procs`` lists only direct members)."""
    pids: list[int] = []
    for root, _dirs, files in os.walk(directory):
        if "cgroup.procs" in files:
            try:
                text = Path(root, "cgroup.procs").read_text()
            except OSError:
                continue
            pids += [int(x) for x in text.split()]
    return pids

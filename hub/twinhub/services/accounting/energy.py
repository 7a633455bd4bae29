"""Energy and CO2e of usage records.

CPU energy is *measured* where the machine exposes RAPL (``/sys/class/powercap``): the
package energy of a tick is shared among sources by their CPU time, i.e. joules per busy
core-second of the whole machine over that tick (method ``rapl``). Without RAPL it is a
*model*: watts per busy core (by the CPU's model name, else a default) and watts per GiB of
memory held (method ``model``). GPU energy comes from NVML energy counters (``nvml``), else
``gpu_watts`` x GPU-seconds (``model``) when an operator set it, else nothing (``none``):
never a silent guess. Every figure is multiplied by the PUE; CO2e = kWh x carbon intensity
(a constant or a step function read from a CSV file).

The functions on :class:`EnergyModel` are pure given their inputs; :class:`RaplSampler` is
the only part that reads the machine (once per tick).
"""

from __future__ import annotations

import bisect
import csv
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .config import TwinhubAccounting
from .readings import CPU, GPU, MEMORY
from .rollup import utc

POWERCAP = Path("/sys/class/powercap")
PROC_STAT = Path("/proc/stat")
CPUINFO = Path("/proc/cpuinfo")
J_PER_KWH = 3.6e6


def cpu_model_name(cpuinfo: Path = CPUINFO) -> str:
    """The first ``model name`` of /proc/cpuinfo ("" when there is none, e.g. on ARM)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return ""
    m = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    return m.group(1).strip() if m else ""


def watts_per_core(model_name: str, table: dict[str, float], default: float) -> float:
    """The first ``table`` entry whose regular expression matches ``model_name``, else
    ``default``."""
    for pattern, watts in table.items():
        if re.search(pattern, model_name):
            return float(watts)
    return float(default)


def read_carbon_series(path: str | Path) -> tuple[list[datetime], list[float]]:
    """``time,g_per_kwh`` rows (ISO 8601, ascending; a header line is allowed)."""
    times: list[datetime] = []
    values: list[float] = []
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if lineno == 1 and row[0].strip().lower() == "time":
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'time,g_per_kwh', got {row!r}")
            try:
                at = utc(datetime.fromisoformat(row[0].strip()))
                value = float(row[1])
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from e
            if value < 0:
                raise ValueError(f"{path}:{lineno}: negative carbon intensity {value}")
            if times and at <= times[-1]:
                raise ValueError(f"{path}:{lineno}: times must ascend ({at} after {times[-1]})")
            times.append(at)
            values.append(value)
    if not times:
        raise ValueError(f"{path}: no carbon intensity rows")
    return times, values


@dataclass(frozen=True)
class Energy:
    """Joules (PUE included) and how they were found."""

    joules: float | None
    method: str  # rapl | nvml | model | none


@dataclass
class EnergyModel:
    cpu_watts: float  # per busy core, model method
    memory_watts_per_gib: float
    gpu_watts: float | None
    pue: float
    carbon_intensity: float  # g/kWh when no series
    carbon_times: list[datetime] = field(default_factory=list)
    carbon_values: list[float] = field(default_factory=list)
    rapl: RaplSampler | None = None

    @classmethod
    def from_settings(cls, settings: TwinhubAccounting) -> EnergyModel:
        times: list[datetime] = []
        values: list[float] = []
        if settings.carbon_intensity_file:
            times, values = read_carbon_series(settings.carbon_intensity_file)
        rapl = RaplSampler()
        return cls(
            cpu_watts=watts_per_core(
                cpu_model_name(), settings.cpu_watts_per_core, settings.default_cpu_watts
            ),
            memory_watts_per_gib=settings.memory_watts_per_gib,
            gpu_watts=settings.gpu_watts,
            pue=settings.pue,
            carbon_intensity=settings.carbon_intensity,
            carbon_times=times,
            carbon_values=values,
            rapl=rapl if rapl.available else None,
        )

    # -- pure functions -------------------------------------------------------------------
    def cpu(self, core_s: float, rapl_j_per_core_s: float | None = None) -> Energy:
        """Energy of ``core_s`` busy core-seconds: RAPL's joules per core-second of the tick
        when known, else the model."""
        if rapl_j_per_core_s is not None:
            return Energy(core_s * rapl_j_per_core_s * self.pue, "rapl")
        return Energy(core_s * self.cpu_watts * self.pue, "model")

    def memory(self, gib_s: float) -> Energy:
        return Energy(gib_s * self.memory_watts_per_gib * self.pue, "model")

    def gpu(self, gpu_s: float, nvml_j: float | None = None) -> Energy:
        """Measured NVML joules when given, else ``gpu_watts`` x GPU-seconds, else none."""
        if nvml_j is not None:
            return Energy(nvml_j * self.pue, "nvml")
        if self.gpu_watts is not None:
            return Energy(gpu_s * self.gpu_watts * self.pue, "model")
        return Energy(None, "none")

    def for_record(
        self,
        resource: str,
        quantity: float,
        *,
        measured_j: float | None = None,
        rapl_j_per_core_s: float | None = None,
    ) -> Energy:
        """The energy of one record of ``resource`` (dask workers and storage: none, their
        CPU and memory are counted by their own records)."""
        if resource == CPU:
            return self.cpu(quantity, rapl_j_per_core_s)
        if resource == MEMORY:
            return self.memory(quantity)
        if resource == GPU:
            return self.gpu(quantity, measured_j)
        if measured_j is not None:
            return Energy(measured_j * self.pue, "nvml")
        return Energy(None, "none")

    def intensity(self, at: datetime) -> float:
        """g CO2e per kWh in force at ``at``: the series' last entry at or before it (its
        first before the series starts), else the constant."""
        if not self.carbon_times:
            return self.carbon_intensity
        i = bisect.bisect_right(self.carbon_times, utc(at)) - 1
        return self.carbon_values[max(i, 0)]

    def co2e_g(self, joules: float | None, at: datetime) -> float | None:
        if joules is None:
            return None
        return joules / J_PER_KWH * self.intensity(at)


class RaplSampler:
    """Joules per busy core-second of the whole machine since the previous sample.

    Package energy from every ``intel-rapl:N`` (top-level package) zone, with wrap-around at
    ``max_energy_range_uj``; busy CPU time from /proc/stat (everything but idle and iowait).
    """

    #: A sample closer than this to the previous one reuses the previous rate (the store may
    #: apply several small batches in one tick).
    MIN_SPAN_S = 1.0

    def __init__(self, powercap: Path = POWERCAP, proc_stat: Path = PROC_STAT) -> None:
        self.powercap, self.proc_stat = powercap, proc_stat
        self.zones = self._zones()
        self._last: tuple[float, dict[Path, int], float] | None = None
        self._rate: float | None = None

    @property
    def available(self) -> bool:
        return bool(self.zones)

    def _zones(self) -> list[Path]:
        zones = []
        for z in sorted(self.powercap.glob("intel-rapl:*")):
            # Sub-zones (intel-rapl:0:0, core/uncore/dram) are inside their package's figure.
            if z.name.count(":") != 1:
                continue
            try:
                int((z / "energy_uj").read_text())
            except (OSError, ValueError):
                continue
            zones.append(z)
        return zones

    def _busy_cpu_s(self) -> float:
        fields = self.proc_stat.read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(x) for x in fields]
        # user nice system idle iowait irq softirq steal (guest is inside user already)
        busy = sum(ticks[:8]) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
        return busy / _clk_tck()

    def sample(self, monotonic: float | None = None) -> float | None:
        """J per busy core-second since the previous call; None on the first call or when
        the machine was idle or a counter could not be read."""
        if not self.zones:
            return None
        now = time.monotonic() if monotonic is None else monotonic
        if self._last is not None and now - self._last[0] < self.MIN_SPAN_S:
            return self._rate
        try:
            energy = {z: int((z / "energy_uj").read_text()) for z in self.zones}
            busy = self._busy_cpu_s()
        except (OSError, ValueError):
            return None
        last, self._last = self._last, (now, energy, busy)
        if last is None:
            return None
        joules = 0.0
        for z, uj in energy.items():
            before = last[1].get(z)
            if before is None:
                return None
            delta = uj - before
            if delta < 0:  # wrapped
                try:
                    delta += int((z / "max_energy_range_uj").read_text())
                except (OSError, ValueError):
                    return None
            joules += delta / 1e6
        busy_s = busy - last[2]
        self._rate = joules / busy_s if busy_s > 0 else None
        return self._rate


def _clk_tck() -> int:
    return os.sysconf("SC_CLK_TCK")

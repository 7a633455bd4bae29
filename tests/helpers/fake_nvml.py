"""A FAKE of nvidia-ml-py's ``pynvml``: the subset :mod:`twinhub.services.accounting.nvml`
calls, for tests on machines without a GPU (``TwinhubAccounting.nvml_module =
"tests.helpers.fake_nvml"``).

Module-level functions like pynvml's, answering from :data:`STATE`, a :class:`FakeNvml` the
test installs with :func:`install`. Each :class:`FakeGpu`'s energy counter advances with
time at its ``watts`` (``clock``: ``time.monotonic`` unless the test gives its own).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_UNINITIALIZED = 1


class NVMLError(Exception):
    """As pynvml's: ``value`` is the NVML return code."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return f"NVML error {self.value} (fake)"


@dataclass
class FakeGpu:
    uuid: str
    watts: float = 300.0
    #: pid -> SM utilisation %; the processes NVML lists on this GPU.
    processes: dict[int, float] = field(default_factory=dict)
    energy_supported: bool = True  # False: only nvmlDeviceGetPowerUsage answers
    process_util_supported: bool = True
    energy_mj_at_start: float = 123_456_789.0  # since the (fake) driver loaded


@dataclass
class FakeNvml:
    """The FAKE NVML's state: its GPUs, its clock, whether init fails."""

    gpus: list[FakeGpu] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic
    init_error: int | None = None  # e.g. NVML_ERROR_DRIVER_NOT_LOADED
    initialised: bool = False
    t0: float = 0.0

    def __post_init__(self) -> None:
        self.t0 = self.clock()

    def energy_mj(self, gpu: FakeGpu) -> int:
        return int(gpu.energy_mj_at_start + gpu.watts * (self.clock() - self.t0) * 1000)


STATE = FakeNvml()


def install(state: FakeNvml) -> FakeNvml:
    global STATE
    STATE = state
    return state


def _gpu(handle: Any) -> FakeGpu:
    if not STATE.initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return STATE.gpus[handle]


def nvmlInit() -> None:  # noqa: N802 (pynvml's names)
    if STATE.init_error is not None:
        raise NVMLError(STATE.init_error)
    STATE.initialised = True


def nvmlShutdown() -> None:  # noqa: N802
    STATE.initialised = False


def nvmlDeviceGetCount() -> int:  # noqa: N802
    if not STATE.initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return len(STATE.gpus)


def nvmlDeviceGetHandleByIndex(index: int) -> int:  # noqa: N802
    _gpu(index)
    return index


def nvmlDeviceGetUUID(handle: int) -> str:  # noqa: N802
    return _gpu(handle).uuid


def nvmlDeviceGetTotalEnergyConsumption(handle: int) -> int:  # noqa: N802
    gpu = _gpu(handle)
    if not gpu.energy_supported:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return STATE.energy_mj(gpu)


def nvmlDeviceGetPowerUsage(handle: int) -> int:  # noqa: N802
    return int(_gpu(handle).watts * 1000)  # mW


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:  # noqa: N802
    gpu = _gpu(handle)
    return SimpleNamespace(gpu=min(100, int(sum(gpu.processes.values()))), memory=0)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:  # noqa: N802
    return [SimpleNamespace(pid=pid, usedGpuMemory=1 << 30) for pid in _gpu(handle).processes]


def nvmlDeviceGetProcessUtilization(handle: int, timeStamp: int) -> list[SimpleNamespace]:  # noqa: N802, N803
    gpu = _gpu(handle)
    if not gpu.process_util_supported:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    now_us = int(STATE.clock() * 1e6)
    if not gpu.processes:
        raise NVMLError(NVML_ERROR_NOT_FOUND)  # as NVML: no sample since timeStamp
    return [
        SimpleNamespace(pid=pid, timeStamp=now_us, smUtil=int(u), memUtil=0, encUtil=0, decUtil=0)
        for pid, u in gpu.processes.items()
    ]

"""The accounting service's settings (``c.TwinhubAccounting.*``), read by the hub, the
service and the CLI alike."""

from __future__ import annotations

from traitlets import Bool, Dict, Float, Int, Unicode, validate
from traitlets.config import Configurable

from ...process.runtime import Runtime


class TwinhubAccounting(Configurable):
    """Metering of what users' processes really use, budgets held while running, energy and
    CO2e (the ``accounting`` service at /services/accounting/, docs/accounting.md)."""

    enabled = Bool(
        None,
        allow_none=True,
        help="Meter usage and run the accounting service at /services/accounting/. Unset: on "
        "in multi-user mode, off in personal mode.",
    ).tag(config=True)

    interval = Float(
        15.0,
        help="Seconds between two samples of every running source (servers, clusters). A kill "
        "-9 of the meter loses at most this much of gauges (memory, worker-hours); counters "
        "(CPU) lose nothing while their cgroup lives. At most 30.",
    ).tag(config=True)

    @validate("interval")
    def _check_interval(self, proposal):  # type: ignore[no-untyped-def]
        value = float(proposal["value"])
        if not 0.2 <= value <= 30:
            raise ValueError(f"TwinhubAccounting.interval must be within 0.2..30 s, not {value}")
        return value

    storage_interval = Float(
        300.0,
        help="Seconds between two samples of storage (buckets and home directories).",
    ).tag(config=True)

    grace = Float(
        300.0,
        help="Seconds a running server or cluster may go on once its project's budget is used "
        "up (after the 100 % warning), before it is stopped.",
    ).tag(config=True)

    backend = Unicode(
        "cgroup",
        help="Where usage is read: 'cgroup' (embedded: the cgroups the spawner and the gateway "
        "make, per-process accounting where there are none) or 'prometheus' (Kubernetes: "
        "cAdvisor series from prometheus_url).",
    ).tag(config=True)

    prometheus_url = Unicode(
        "",
        help="Base URL of the Prometheus that scrapes cAdvisor (backend 'prometheus'), e.g. "
        "http://prometheus-server.monitoring.svc.",
    ).tag(config=True)

    raw_retention_days = Float(
        35.0,
        help="Days raw interval records are kept; hourly and daily roll-ups are kept forever.",
    ).tag(config=True)

    personal_project = Unicode(
        "personal",
        help="The project everything is charged to when a user is in no project (and in "
        "personal mode).",
    ).tag(config=True)

    # -- energy and CO2e (docs/accounting.md says where each default comes from) ----------
    cpu_watts_per_core = Dict(
        default_value={},
        help="Regular expression on /proc/cpuinfo's 'model name' -> watts per busy core, for "
        "the 'model' energy method (no RAPL). First match wins; none: default_cpu_watts.",
    ).tag(config=True)
    default_cpu_watts = Float(
        3.5,
        help="Watts per busy core when no RAPL counter is readable and no cpu_watts_per_core "
        "entry matches.",
    ).tag(config=True)
    memory_watts_per_gib = Float(
        0.421,
        help="Watts per GiB of memory held (the 'model' energy method). Default: Cloud Carbon "
        "Footprint's 0.392 W per GB, per GiB.",
    ).tag(config=True)
    gpu_watts = Float(
        None,
        allow_none=True,
        help="Watts per allocated GPU when NVML gives no power reading. Unset: GPU energy is "
        "not estimated (method 'none'), never guessed.",
    ).tag(config=True)
    pue = Float(
        1.58,
        help="Power usage effectiveness of the data centre (energy is multiplied by it). "
        "Default: the Uptime Institute survey's 2023 industry average; set your own.",
    ).tag(config=True)
    carbon_intensity = Float(
        300.0,
        help="Grams CO2e per kWh, when no carbon_intensity_file is given. Default: a round "
        "placeholder of the order of Europe's large grids (docs/accounting.md); set your "
        "grid's.",
    ).tag(config=True)
    carbon_intensity_file = Unicode(
        "",
        help="CSV file 'time,g_per_kwh' (ISO 8601 times, ascending): the intensity in force "
        "from each time on. Empty: carbon_intensity.",
    ).tag(config=True)
    nvml_module = Unicode(
        "pynvml",
        help="Module giving NVML (nvidia-ml-py's pynvml). Without a GPU or the module, GPU "
        "usage is allocation x wall time only.",
    ).tag(config=True)
    storage_max_objects = Int(
        100_000,
        min=1,
        help="Most objects listed per bucket at each storage sample (1000 per S3 request); a "
        "bigger bucket is listed over several samples, each going on after the last key "
        "listed, and is recorded at its last complete size (or the partial sum if more, a "
        "lower bound) until a listing reaches the end; a warning names it.",
    ).tag(config=True)
    storage_max_files = Int(
        200_000,
        min=1,
        help="Most files and directories walked per home directory at each storage sample; a "
        "home with more is recorded at the size of those walked (a lower bound) and a "
        "warning names it.",
    ).tag(config=True)

    prometheus_namespace = Unicode(
        "",
        help="Kubernetes namespace the 'prometheus' backend reads pods from (the hub's and "
        "the gateway's pods). Empty: every namespace (pods are still charged only when a "
        "charge file or their twinhub labels name a user).",
    ).tag(config=True)

    storage_walk_timeout = Float(
        60.0,
        help="Most seconds one home directory's walk may take at each storage sample (it runs "
        "in a child process as the home's user); a walk stopped at this bound records what it "
        "counted (a lower bound), one still stuck 10 s later (a hung file system) is killed and "
        "the home keeps its last size.",
    ).tag(config=True)


def is_enabled(rt: Runtime) -> bool:
    value = TwinhubAccounting(config=rt.config).enabled
    return rt.mode == "multi-user" if value is None else bool(value)

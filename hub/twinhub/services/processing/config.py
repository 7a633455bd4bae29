"""``c.TwinhubProcessing.*``: the processing service's configuration (docs/processing.md)."""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Float, Integer, TraitError, Unicode, validate
from traitlets.config import Configurable

#: Seconds at least for every interval and limit: 0 would spin a loop or fail every job.
MIN_SECONDS = 1.0


class TwinhubProcessing(Configurable):
    """OGC API - Processes at /services/processing/: staged jobs run as their user."""

    enabled = Bool(
        None,
        allow_none=True,
        help="Run the processing service. None: on in multi-user mode and on Kubernetes, off "
        "in personal mode.",
    ).tag(config=True)

    backend_class = Unicode(
        "",
        help="Import path of the job backend (twinhub.services.processing.backend.JobBackend "
        "subclass) that starts each job's runner. '': the local backend embedded (a process "
        "as the user's OS account), the Kubernetes backend in a chart (a pod).",
    ).tag(config=True)

    wall_time = Float(
        3600.0,
        help="Seconds a job may run, from its runner's start to its end; past it the job "
        "fails with that reason (its cluster stopped, its outputs removed).",
    ).tag(config=True)

    max_output_bytes = Integer(
        2 * 1024**3,
        help="Bytes a job may write to its output prefix; past it the job fails with that "
        "reason and its outputs are removed.",
    ).tag(config=True)

    max_running_per_user = Integer(
        2, min=1, help="Jobs of one user running at once (more wait, accepted, in a queue)."
    ).tag(config=True)

    max_running_per_project = Integer(
        4, min=1, help="Jobs charged to one project running at once (more wait in the queue)."
    ).tag(config=True)

    max_queued_per_user = Integer(
        20,
        min=1,
        help="Jobs of one user accepted and not yet running; a submission past it is refused "
        "(429).",
    ).tag(config=True)

    max_jobs_per_user = Integer(
        1000,
        min=1,
        help="Jobs of one user stored at once, whatever their status (finished ones stay "
        "retention_days); a submission past it is refused (429) until some are removed "
        "(DELETE jobs/{id}) or expire.",
    ).tag(config=True)

    max_attempts = Integer(
        2,
        min=1,
        help="Runs of a job at most: a job whose runner was lost to a restart of the service "
        "(or the machine) is run again from its start until this many runs, then failed "
        "with the reason.",
    ).tag(config=True)

    max_time_range_days = Float(
        3660.0,
        help="Longest time range (days) a job's 'datetime' input may span; longer -> 400.",
    ).tag(config=True)

    max_time_steps = Integer(
        20000, min=1, help="Most time steps one job may read (checked by its runner)."
    ).tag(config=True)

    max_points = Integer(1000, min=1, help="Most points a point-series job may ask for.").tag(
        config=True
    )

    max_target_cells = Integer(
        50_000_000,
        min=1,
        help="Most cells of a regrid target grid (a 0.05 degree lat-lon grid has 26 million).",
    ).tag(config=True)

    sync_wait = Float(
        300.0,
        help="Seconds a synchronous execution waits for its job; a job still running then "
        "is answered as an asynchronous one (201 and its Location).",
    ).tag(config=True)

    worker_cores = Integer(1, min=1, help="Cores of each Dask worker of a job's cluster.").tag(
        config=True
    )

    worker_memory = Float(2.0, help="Memory (GiB) of each Dask worker of a job's cluster.").tag(
        config=True
    )

    workers = Integer(2, min=1, help="Dask workers of a job's cluster.").tag(config=True)

    poll_interval = Float(
        1.0,
        help="Seconds between the service's checks of running jobs (runners alive, wall "
        "time) and of the queue.",
    ).tag(config=True)

    report_timeout = Float(
        600.0,
        help="Seconds a runner keeps retrying its reports while the service is unreachable "
        "(a restart) before it gives up and stops its work.",
    ).tag(config=True)

    retention_days = Float(
        30.0,
        help="Days finished jobs (and their logs) are kept; their outputs stay in the "
        "user's bucket.",
    ).tag(config=True)

    max_log_lines = Integer(
        5000, min=10, help="Log lines kept per job (older ones are dropped, noted)."
    ).tag(config=True)

    max_user_processes = Integer(50, min=1, help="Processes one user may register.").tag(
        config=True
    )

    max_code_bytes = Integer(
        4 * 1024**2, min=1024, help="Size of a registered process's pickled code at most."
    ).tag(config=True)

    max_input_bytes = Integer(
        1024**2,
        min=1024,
        help="Bytes of an execute request's body (the job's inputs, as JSON) at most; a "
        "larger one is refused (413). The inputs are stored with the job: data belongs in "
        "the lake, named by its item.",
    ).tag(config=True)

    @validate("wall_time", "sync_wait", "poll_interval", "report_timeout")
    def _seconds(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if value < MIN_SECONDS:
            raise TraitError(
                f"TwinhubProcessing.{proposal['trait'].name} must be at least "
                f"{MIN_SECONDS:g} seconds, not {value!r}"
            )
        return value

    @validate("max_output_bytes")
    def _bytes(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 1024:
            raise TraitError(f"TwinhubProcessing.max_output_bytes must be >= 1024, not {value}")
        return value

    @validate("max_time_range_days", "retention_days", "worker_memory")
    def _positive(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value > 0:
            raise TraitError(
                f"TwinhubProcessing.{proposal['trait'].name} must be positive, not {value!r}"
            )
        return value


def is_enabled(rt: Any) -> bool:
    """On when configured so; by default in multi-user mode and on Kubernetes."""
    enabled = TwinhubProcessing(config=rt.config).enabled
    if enabled is None:
        return rt.mode != "personal" or rt.kubernetes
    return bool(enabled)

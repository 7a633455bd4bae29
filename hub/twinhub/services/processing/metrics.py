"""The processing service's Prometheus metrics (``/services/processing/metrics``, admins).

Jobs by status and stage *now* are read from the database at each scrape (app.py), so they
are right across restarts and replicas; what is counted here is what this process did.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: The service's own registry (not the process-global one: tests build several apps).
REGISTRY = CollectorRegistry(auto_describe=True)

SUBMISSIONS = Counter(
    "twinhub_processing_submissions",
    "Execution requests, by process and outcome (accepted; refused: bad input, a limit, "
    "no allocation).",
    ["process", "outcome"],
    registry=REGISTRY,
)
FINISHED = Counter(
    "twinhub_processing_jobs_finished",
    "Jobs that ended, by process and final status (successful, failed, dismissed).",
    ["process", "status"],
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "twinhub_processing_job_seconds",
    "Time from a job's submission to its end, in seconds, by process.",
    ["process"],
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "twinhub_processing_stage_seconds",
    "Time a job spent in one stage (scheduling, fetching, processing, ingesting), in seconds.",
    ["stage"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
START_DELAY = Histogram(
    "twinhub_processing_start_delay_seconds",
    "Time from a job's submission to the start of its processing stage (queue, runner "
    "start, cluster, data fetch), in seconds.",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
    registry=REGISTRY,
)
RUNNER_STARTS = Counter(
    "twinhub_processing_runner_starts",
    "Job runners started by the backend, by outcome (started, failed) and attempt kind "
    "(first, resumed).",
    ["outcome", "attempt"],
    registry=REGISTRY,
)
RECOVERED = Counter(
    "twinhub_processing_recovered_jobs",
    "Running jobs found at the service's start, by what became of them (adopted: runner "
    "alive; resumed: run again; failed: no attempt left).",
    ["outcome"],
    registry=REGISTRY,
)
REPORTS = Counter(
    "twinhub_processing_runner_reports",
    "Reports of job runners, by outcome (ok, refused: bad secret or body, gone: the job "
    "has ended).",
    ["outcome"],
    registry=REGISTRY,
)
LIMIT_FAILURES = Counter(
    "twinhub_processing_limit_failures",
    "Jobs failed by a limit, by limit (wall_time, output_size).",
    ["limit"],
    registry=REGISTRY,
)

"""``python -m twinlab.processing.runner``: one processing job, run as its user.

The service's job backend starts it (the user's OS account, or a pod) with the job's id,
secret and the service's URL in the environment. It reads the job's spec from the
service, goes through the stages *scheduling* (a Dask Gateway cluster of the job's own),
*fetching* (the lake items, lazily), *processing* and *ingesting* (size check, STAC item),
and reports each step to the service; it ends with a ``done`` or ``failed`` event.

Exit status: 0 done (or stopped by the service), 1 failed, 2 no job to run (bad
environment, refused spec), 3 the service stayed unreachable (work stopped).
"""

from __future__ import annotations

import base64
import inspect
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle
import httpx

from twinlab.contract import ENV_HUB_TOKEN, ENV_STAC_URL

from . import ingest, templates
from .context import (
    SECRET_HEADER,
    JobContext,
    JobStopped,
    Reporter,
    ServiceLost,
    to_json_value,
)
from .schemas import MEDIA_GEOJSON

ENV_JOB_ID = "TWINHUB_JOB_ID"
ENV_JOB_SECRET = "TWINHUB_JOB_SECRET"
ENV_PROCESSING_URL = "TWINHUB_PROCESSING_URL"
EXIT_DONE, EXIT_FAILED, EXIT_NO_JOB, EXIT_LOST = 0, 1, 2, 3
#: Seconds the runner retries fetching its spec while the service is unreachable.
SPEC_RETRY_SECONDS = 60.0
#: Seconds to wait for the cluster's workers; then go on with those up, or fail with none.
WORKER_WAIT_SECONDS = 300.0
#: Seconds the watchdog gives the main thread to stop after a stop or a lost service.
STOP_GRACE_SECONDS = 15.0

log = logging.getLogger("twinlab.processing.runner")

#: ``factory(ctx) -> (cluster or None, dask client)``: how the scheduling stage gets a
#: cluster (tests pass an in-process one).
ClusterFactory = Callable[[JobContext], tuple[Any, Any]]


class OutputLimitExceeded(RuntimeError):
    """The job wrote more than its output size limit."""


# -- the spec ------------------------------------------------------------------------------
def fetch_spec(http: httpx.Client, base_url: str, job_id: str, secret: str) -> dict | None:
    """The job's spec from the service; None when it refuses (unknown, ended, bad secret,
    changed process)."""
    url = f"{base_url.rstrip('/')}/internal/jobs/{job_id}"
    deadline = time.monotonic() + SPEC_RETRY_SECONDS
    while True:
        try:
            r = http.get(url, headers={SECRET_HEADER: secret})
        except httpx.HTTPError as err:
            r, why = None, str(err)
        else:
            why = f"HTTP {r.status_code}"
            # 409: the (user) process changed since the job was submitted: the service has
            # failed the job already, and asking again would not change that.
            if r.status_code in (401, 403, 404, 409, 410):
                log.error("the service refused the job's spec: %s %s", r.status_code, r.text)
                return None
            if r.status_code < 400:
                spec: dict = r.json()
                return spec
        if time.monotonic() > deadline:
            log.error("no spec from %s: %s", url, why)
            return None
        time.sleep(1.0)


# -- scheduling ----------------------------------------------------------------------------
def gateway_cluster(ctx: JobContext) -> tuple[Any, Any]:
    """A Dask Gateway cluster of the job's own (charged to its project), scaled and with
    its workers up; progress per worker."""
    # the gateway client: only jobs with a cluster. GatewayCluster is what
    # Gateway().new_cluster() makes, less a Gateway object left to the garbage collector
    # (whose finalizer would close the event loop the cluster shares with it)
    from dask_gateway import GatewayCluster

    # twinlab's fixes to the gateway client (the platform's auth class loads them too):
    # finalizers that never block, and the lease that stops the cluster if this dies
    from twinlab.clusters import client as _fixes  # noqa: F401

    c = ctx.spec.get("cluster") or {}
    workers = int(c.get("workers") or 1)
    options: dict[str, Any] = {"job": str(c.get("job") or ctx.id)}
    for key in ("project", "worker_cores", "worker_memory"):
        if c.get(key) not in (None, ""):
            options[key] = c[key]
    ctx.progress(0.0, "asking the gateway for a cluster")
    cluster = GatewayCluster(shutdown_on_close=True, **options)
    try:
        ctx.reporter.emit("cluster", name=cluster.name)
        ctx.log(f"cluster {cluster.name}: {workers} worker(s) {options}")
        cluster.scale(workers)
        client = cluster.get_client()
        wait_for_workers(ctx, client, workers)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster, client


def wait_for_workers(ctx: JobContext, client: Any, workers: int) -> None:
    """Wait for ``workers`` workers, reporting each one up; go on with fewer after
    WORKER_WAIT_SECONDS, fail with none."""
    deadline = time.monotonic() + WORKER_WAIT_SECONDS
    seen = -1
    while True:
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        if n != seen:
            seen = n
            ctx.progress(10.0 + 90.0 * min(n, workers) / workers, f"{n}/{workers} workers up")
        if n >= workers:
            return
        if time.monotonic() > deadline:
            if n:
                ctx.log(f"going on with {n} of {workers} workers", "warning")
                return
            raise RuntimeError(f"no Dask worker started within {WORKER_WAIT_SECONDS:.0f} s")
        ctx.check_stop()
        time.sleep(0.5)


# -- processing ----------------------------------------------------------------------------
def user_function(spec: dict) -> Callable[..., Any]:
    """The registered function of a user process (cloudpickle, base64)."""

    code = spec.get("code")
    if not code:
        raise RuntimeError(f"process {spec['process'].get('id')!r} has no code to run")
    fn = cloudpickle.loads(base64.b64decode(code))
    if not callable(fn):
        raise TypeError(f"the registered code is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]


def call_user_function(ctx: JobContext, fn: Callable[..., Any]) -> dict:
    """``fn(**inputs)``, or ``fn(ctx, **inputs)`` when its first parameter is ``ctx``;
    a value that is not a dict is the process's one output."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    out = fn(ctx, **ctx.inputs) if params[:1] == ["ctx"] else fn(**ctx.inputs)
    if isinstance(out, dict):
        return out
    names = list((ctx.process.get("outputs") or {}).keys())
    return {names[0] if len(names) == 1 else "result": out}


def store_outputs(ctx: JobContext, outputs: dict) -> dict:
    """Inline values of the outputs; xarray objects go to Zarr, pandas ones to CSV."""
    inline: dict[str, Any] = {}
    for name, value in outputs.items():
        if hasattr(value, "to_zarr") or type(value).__name__ == "DataArray":
            ctx.write_zarr(name, value)
        elif hasattr(value, "to_csv"):
            frame = value.to_frame() if hasattr(value, "to_frame") else value
            ctx.write_csv(name, frame.reset_index() if hasattr(frame, "reset_index") else frame)
        else:
            inline[name] = to_json_value(value)
    return inline


# -- ingesting -----------------------------------------------------------------------------
def ingest_outputs(ctx: JobContext, inline: dict, http: httpx.Client) -> tuple[dict, int, str]:
    """(OGC results document, bytes written, STAC item URL or "")."""
    results = dict(inline)
    size = ingest.output_bytes(ctx.fs, ctx.prefix) if ctx.files else 0
    ctx.progress(30.0, f"{size} bytes written")
    most = int(ctx.limits.get("max_output_bytes") or 0)
    if most and size > most:
        ingest.remove_outputs(ctx.fs, ctx.prefix)
        raise OutputLimitExceeded(f"output size limit of {most} bytes exceeded ({size} written)")
    href = ""
    if ctx.files:
        item = ingest.build_item(
            ctx.spec, ctx.files, sources=ctx.sources, time_range=ctx.time_range
        )
        stac = os.environ.get(ENV_STAC_URL, "")
        if not stac:
            raise RuntimeError(f"{ENV_STAC_URL} is not set: cannot ingest the outputs")
        href = ingest.publish(
            http, stac, os.environ.get(ENV_HUB_TOKEN, ""), item, str(ctx.spec.get("owner"))
        )
        ctx.log(f"STAC item {href}")
        for name, f in ctx.files.items():
            results[name] = {"href": f["href"], "type": f["type"]}
        results["item"] = {"href": href, "type": MEDIA_GEOJSON}
    ctx.progress(100.0, "ingested" if href else "nothing to ingest")
    return results, size, href


# -- the job -------------------------------------------------------------------------------
def _watchdog(reporter: Reporter, shutdown: Callable[[], None], finished: threading.Event) -> None:
    """When the service says stop (or is lost), stop the cluster at once: a computation
    blocked on it fails, and the main thread ends the job; exit if it does not."""
    while not (reporter.stop.wait(0.2) or reporter.lost.is_set()):
        if finished.is_set():
            return
    shutdown()
    if not finished.wait(STOP_GRACE_SECONDS):
        log.error("the job did not stop within %.0f s: exiting", STOP_GRACE_SECONDS)
        os._exit(EXIT_LOST if reporter.lost.is_set() else EXIT_DONE)


def run_job(
    spec: dict,
    reporter: Reporter,
    *,
    cluster_factory: ClusterFactory = gateway_cluster,
    http: httpx.Client | None = None,
    watchdog: bool = True,
) -> int:
    """Run the job of ``spec`` through its stages; the exit status."""
    http = http or httpx.Client(timeout=60.0)
    ctx = JobContext(spec, reporter)
    process = ctx.process
    held: dict[str, Any] = {}
    lock = threading.Lock()
    finished = threading.Event()

    def shutdown() -> None:
        # the watchdog and the main thread may both get here: the second one waits for the
        # first; the cluster goes first (its workers are what the job holds)
        with lock:
            cluster, client = held.pop("cluster", None), held.pop("client", None)
            for what, close in (
                ("cluster", getattr(cluster, "shutdown", None)),
                ("client", getattr(client, "close", None)),
            ):
                try:
                    if close is not None:
                        close()
                except Exception as err:  # a cluster already gone is fine
                    log.warning("closing the %s: %s", what, err)

    if watchdog:
        threading.Thread(
            target=_watchdog,
            args=(reporter, shutdown, finished),
            name="job-watchdog",
            daemon=True,
        ).start()
    try:
        ctx.stage("scheduling")
        if process.get("twinhub:cluster", True):
            cluster, client = cluster_factory(ctx)
            with lock:
                held.update(cluster=cluster, client=client)
            ctx.client = client
        else:
            ctx.progress(100.0, "no cluster needed")
        ctx.stage("fetching")
        if process.get("twinhub:item_inputs"):
            templates.fetch(ctx)
        else:
            reporter.emit("sources", items=[])
            ctx.progress(100.0, "no lake items to read")
        ctx.stage("processing")
        if spec.get("code") or process.get("id") not in templates.TEMPLATES:
            outputs = call_user_function(ctx, user_function(spec))
        else:
            outputs = templates.TEMPLATES[process["id"]](ctx, **ctx.inputs)
        inline = store_outputs(ctx, outputs)
        ctx.stage("ingesting")
        results, size, href = ingest_outputs(ctx, inline, http)
        reporter.emit("done", results=results, output_bytes=size, stac_item=href or None)
        status = EXIT_DONE
    except JobStopped as err:
        log.info("stopped: %s", err)
        _remove_quietly(ctx)
        status = EXIT_DONE
    except ServiceLost as err:
        log.error("%s: stopping the work", err)
        status = EXIT_LOST
    except Exception as err:
        if reporter.stop.is_set() or reporter.lost.is_set():  # the cluster went with a stop
            status = EXIT_LOST if reporter.lost.is_set() else EXIT_DONE
        else:
            for line in traceback.format_exc().rstrip().splitlines():
                ctx.log(line, "error")
            _remove_quietly(ctx)
            reason = " ".join(str(err).split()) or type(err).__name__
            if not isinstance(err, OutputLimitExceeded):
                reason = f"{ctx.current_stage or 'starting'}: {reason}"
            reporter.emit("failed", reason=reason[:1000])
            status = EXIT_FAILED
    finally:
        shutdown()
        finished.set()
    if status != EXIT_LOST and not reporter.close(float(ctx.limits.get("report_timeout") or 600)):
        status = EXIT_LOST if reporter.lost.is_set() else status
    return status


def _remove_quietly(ctx: JobContext) -> None:
    try:
        ingest.remove_outputs(ctx.fs, ctx.prefix)
    except Exception as err:  # the service removes a failed job's outputs too
        log.warning("removing partial outputs: %s", err)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    job_id, secret = os.environ.get(ENV_JOB_ID, ""), os.environ.get(ENV_JOB_SECRET, "")
    base = os.environ.get(ENV_PROCESSING_URL, "")
    if not (job_id and secret and base):
        log.error("%s, %s and %s must be set", ENV_JOB_ID, ENV_JOB_SECRET, ENV_PROCESSING_URL)
        return EXIT_NO_JOB
    # SIGTERM (the service stopping the job) unwinds like an exception: the job's cluster is
    # shut down on the way out instead of waiting for its lease to lapse
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_DONE))
    http = httpx.Client(timeout=60.0)
    spec = fetch_spec(http, base, job_id, secret)
    if spec is None:
        return EXIT_NO_JOB
    limits = spec.get("limits") or {}
    reporter = Reporter(
        base, job_id, secret, report_timeout=float(limits.get("report_timeout") or 600)
    ).start()
    log.info(
        "job %s: process %s (attempt %s)", job_id, spec["process"].get("id"), spec.get("attempt")
    )
    return run_job(spec, reporter, http=http)


if __name__ == "__main__":
    sys.exit(main())

"""Jobs: admission, the queue, the watch of running jobs, dismissal, recovery, reports.

A job's life (docs/processing.md):

- :meth:`JobManager.submit` checks the inputs (the process's JSON Schemas, lake items that
  exist, limits), the project (the caller's) and its allocation, then stores the job
  (status ``accepted``, stage ``queued``): nothing is stored on a refusal.
- :meth:`JobManager.run` starts queued jobs oldest first while their owner and project are
  below their running limits (claimed by a conditional update: two replicas never start one
  job twice), through the backend (the runner as the user); it watches running jobs (runner
  gone without a result, wall time) and drops jobs past their retention.
- The runner reports stages, progress, logs and its end (:meth:`JobManager.report`), with
  the job's secret (only its sha256 is stored). A user process's runner gets the code fixed
  at submission (owner, version, sha256) or none: the job fails if the process changed.
- :meth:`JobManager.recover` at the service's start adopts runners still alive, runs the
  others again (a new attempt) or fails them when no attempt is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from twinlab.processing import schemas

from ..accounting.config import TwinhubAccounting
from ..accounting.config import is_enabled as accounting_enabled
from ..accounting.enforce import spawn_refusal
from ..asgi import BadRequest
from . import admission, outputs, store
from .context import ProcessingContext
from .metrics import FINISHED, JOB_SECONDS, LIMIT_FAILURES, RECOVERED, RUNNER_STARTS, SUBMISSIONS
from .model import Caller, JobFailed, NoSuchJob, ResultNotReady, secret_hash, status_doc
from .release import cleanup, maybe, read_backend, release, start_runner, unfinished
from .reports import REPORTS_PER_SECOND, Gone, ReportRate, apply_events, spec_doc
from .store import rfc3339

log = logging.getLogger("twinhub.processing")

#: A running job without a runner handle this long is lost (its starter died mid-start).
START_GRACE = 300.0
#: Seconds between retention sweeps.
RETENTION_EVERY = 3600.0
#: Lines of a dead runner's output kept in the job's log.
TAIL_LINES = 40
#: Threads checking inputs against schemas (bounded work each, schemas.validate_inputs): their
#: own, so that many submissions at once wait here, not in the pool that reads the database.
VALIDATION = ThreadPoolExecutor(max_workers=2, thread_name_prefix="processing-validate")


class JobManager:
    """The jobs of one service process (several may share one database)."""

    def __init__(self, ctx: ProcessingContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.db_url = ctx.db_url
        #: Where status documents' links point (api.py may pass a request's own instead).
        self.base_url = ctx.rt.url + ctx.prefix.lstrip("/")
        self._wake = asyncio.Event()
        self._ended: dict[str, asyncio.Event] = {}
        #: Jobs whose runner this process is starting (the watch leaves them alone).
        self._launching: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._swept = -math.inf  # the first tick sweeps, however recent the boot
        #: Reports per job and second (a fake clock in tests).
        self.report_rate = ReportRate()

    # -- the API's side ----------------------------------------------------------------------
    async def submit(
        self,
        caller: Caller,
        process: dict,
        inputs: dict,
        *,
        request: dict,
        project: str | None,
        base_url: str | None = None,
    ) -> dict:
        """Admit and store a job of ``process`` (a description the caller may run); its
        status document. Refusals raise :class:`BadRequest` (400 input, 403 project or
        allocation, 409 a user process changed meanwhile, 429 the owner's queue or stored
        jobs) and store nothing."""
        pid = str(process.get("id"))
        label = pid if pid in schemas.PROCESS_IDS else "user-process"
        try:
            # In threads: a slow schema (a user's) must not stall reports and health checks
            # (regular expressions hold the GIL: user schemas have none, catalogue.py).
            normalized = await asyncio.get_running_loop().run_in_executor(
                VALIDATION, schemas.validate_inputs, process, inputs
            )
            normalized = await admission.check_lake(self.ctx, process, normalized)
            await asyncio.to_thread(admission.check_limits, self.settings, process, normalized)
            # What a user process's job runs is fixed now (its runner gets that or nothing).
            fixed = await asyncio.to_thread(admission.snapshot, self.db_url, process)
        except schemas.InputError as e:
            SUBMISSIONS.labels(label, "bad-input").inc()
            raise BadRequest(str(e), 400) from None
        except BadRequest:
            SUBMISSIONS.labels(label, "bad-input").inc()
            raise
        project = self._project(caller, project, label)
        if accounting_enabled(self.ctx.rt):
            why = await asyncio.to_thread(spawn_refusal, self.db_url, project, ("cpu_hours",))
            if why:
                SUBMISSIONS.labels(label, "no-allocation").inc()
                raise BadRequest(why, 403)
        jid = uuid.uuid4().hex
        t = store.now()
        request = {k: v for k, v in (request or {}).items() if k != "process"}
        if fixed is not None:
            request["process"] = fixed
        row = {
            "id": jid,
            "owner": caller.name,
            "project": project,
            "process_id": pid,
            "process_version": str(process.get("version") or "1")[:32],
            "inputs": normalized,
            "request": request,
            "status": "accepted",
            "stage": "queued",
            "progress": 0,
            "stages": {"queued": {"started": rfc3339(t), "progress": 0}},
            "message": "accepted",
            "attempt": 0,
            "output_prefix": await asyncio.to_thread(
                outputs.output_prefix, self.ctx.rt, caller.name, jid
            ),
            "wall_time": float(self.settings.wall_time),
            "max_output_bytes": int(self.settings.max_output_bytes),
            "created_at": t,
            "updated_at": t,
        }
        text = f"accepted: {pid} for {caller.name}, charged to project {project}"
        try:
            stored = await asyncio.to_thread(
                store.insert_job,
                self.db_url,
                row,
                max_queued=self.settings.max_queued_per_user,
                max_stored=self.settings.max_jobs_per_user,
                log_text=text,
            )
        except store.Full as e:
            SUBMISSIONS.labels(label, "limit").inc()
            if e.limit == "max_queued_per_user":
                why = "waiting to run (max_queued_per_user); submit again when some have started"
            else:
                why = "stored (max_jobs_per_user); remove ended ones (DELETE jobs/{id}) first"
            raise BadRequest(f"{caller.name} already has {e.count} jobs {why}", 429) from None
        SUBMISSIONS.labels(label, "accepted").inc()
        self._wake.set()
        return status_doc(stored, base_url or self.base_url)

    def _project(self, caller: Caller, project: str | None, label: str) -> str:
        personal = TwinhubAccounting(config=self.ctx.rt.config).personal_project
        mine = caller.projects or (personal,)
        if project is None or project == "":
            return mine[0]
        if project not in mine:
            SUBMISSIONS.labels(label, "bad-input").inc()
            raise BadRequest(
                f"project {project!r} is not one of {caller.name}'s projects ({', '.join(mine)})",
                403,
            )
        return project

    def _mine(self, caller: Caller, job_id: str) -> dict[str, Any]:
        row = store.get_job(self.db_url, job_id) if len(job_id) <= 64 else None
        if row is None or (row["owner"] != caller.name and not caller.admin):
            # Someone else's job is as unknown as a missing one: ids are not disclosed.
            raise NoSuchJob(job_id)
        return row

    def status(self, caller: Caller, job_id: str, *, base_url: str | None = None) -> dict:
        return status_doc(self._mine(caller, job_id), base_url or self.base_url)

    def list(
        self,
        caller: Caller,
        *,
        status: list[str],
        process_ids: list[str],
        limit: int,
        offset: int,
        base_url: str | None = None,
    ) -> tuple[list[dict], int]:
        """The caller's jobs (admins: everybody's), newest first, and how many match."""
        rows, total = store.list_jobs(
            self.db_url,
            owner=None if caller.admin else caller.name,
            statuses=status,
            process_ids=process_ids,
            limit=limit,
            offset=offset,
        )
        return [status_doc(r, base_url or self.base_url) for r in rows], total

    def results(self, caller: Caller, job_id: str) -> dict:
        """The results document of a successful job."""
        row = self._mine(caller, job_id)
        if row["status"] == "successful":
            return row["results"] or {}
        if row["status"] == "failed":
            raise JobFailed(f"job {job_id!r} failed: {row['message']}", 500)
        if row["status"] == "dismissed":
            raise JobFailed(f"job {job_id!r} was dismissed: {row['message']}", 410)
        raise ResultNotReady(job_id, row["status"])

    def logs(self, caller: Caller, job_id: str, *, after: int = 0, limit: int = 1000) -> list:
        self._mine(caller, job_id)
        lines = store.get_logs(self.db_url, job_id, after=after, limit=limit)
        for line in lines:
            line["at"] = rfc3339(line["at"])
        return lines

    async def wait(self, job_id: str, timeout: float, *, base_url: str | None = None) -> dict:
        """The job's status document once it ended, or at ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        ended = self._ended.setdefault(job_id, asyncio.Event())
        try:
            while True:
                row = await asyncio.to_thread(store.get_job, self.db_url, job_id)
                if row is None:
                    raise NoSuchJob(job_id)
                left = deadline - time.monotonic()
                if row["status"] in store.ENDED or left <= 0:
                    return status_doc(row, base_url or self.base_url)
                # Woken at once by this process's reports; other replicas' by the poll.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), min(0.2, left))
        finally:
            self._ended.pop(job_id, None)

    async def dismiss(self, caller: Caller, job_id: str, *, base_url: str | None = None) -> dict:
        """Stop a job (runner, cluster, outputs); a job that ended successfully or failed
        is removed (its record and log; outputs stay in the user's bucket)."""
        row = await asyncio.to_thread(self._mine, caller, job_id)
        base = base_url or self.base_url
        if row["status"] in store.LIVE:
            row = await self._stop(row, "dismissed", f"dismissed by {caller.name}")
            if row["status"] in store.LIVE:  # pragma: no cover - _stop always ends it
                raise BadRequest(f"job {job_id!r} could not be dismissed", 409)
            return status_doc(row, base)
        if row["status"] == "dismissed":
            return status_doc(row, base)
        await asyncio.to_thread(store.delete_job, self.db_url, job_id)
        doc = status_doc(row, base)
        doc.update(status="dismissed", message=f"removed by {caller.name}")
        doc["links"] = [link for link in doc["links"] if link["rel"] == "self"]
        return doc

    # -- the runner's side -------------------------------------------------------------------
    def _authorized(self, job_id: str, secret: str) -> dict[str, Any]:
        row = store.get_job(self.db_url, job_id) if len(job_id) <= 64 else None
        given = secret_hash(secret or "")
        # An unknown job answers as a wrong secret does: job ids are not disclosed.
        if not (row and row["secret_hash"] and hmac.compare_digest(given, row["secret_hash"])):
            raise BadRequest("bad job secret", 401)
        return row

    async def spec(self, job_id: str, secret: str) -> dict:
        """What the runner of a running job needs (process, inputs, limits, cluster). A user
        process that changed since the submission: 409, and the job fails with that reason
        (never other code, nor another user's, as the job's owner)."""
        row = await asyncio.to_thread(self._authorized, job_id, secret)
        if row["status"] != "running":
            raise Gone(row["status"])
        try:
            process, code = await asyncio.to_thread(admission.runnable, self.db_url, row)
        except admission.ProcessChanged as e:
            await self._stop(row, "failed", e.message, background=True)
            raise
        return spec_doc(row, self.settings, process, code)

    async def report(self, job_id: str, secret: str, events: list[dict]) -> dict:
        """Apply a runner's events in order; ``{"status", "stop"}`` (stop: the job is over).
        401 bad secret or unknown job, 410 (:class:`Gone`) the job already ended, 429 too
        many reports (the runner sends it again), 400 a bad event (nothing applied)."""
        row = await asyncio.to_thread(self._authorized, job_id, secret)
        if row["status"] != "running":
            self.report_rate.forget(job_id)
            raise Gone(row["status"])
        if not self.report_rate.take(job_id):
            raise BadRequest(
                f"more than {REPORTS_PER_SECOND:g} reports a second; send it again", 429
            )
        change = apply_events(row, events, self.settings)
        if change.values:
            updated = await asyncio.to_thread(
                store.update_job,
                self.db_url,
                job_id,
                expect=("running",),
                logs=change.logs,
                max_lines=self.settings.max_log_lines,
                **change.values,
            )
            if updated is None:  # ended meanwhile (a dismissal, a limit)
                now = store.get_job(self.db_url, job_id)
                raise Gone(now["status"] if now else "dismissed")
            row = updated
        if change.limit:
            LIMIT_FAILURES.labels(change.limit).inc()
        if row["status"] in store.ENDED:
            self._finished(row)
            self._later(self._cleanup(row, remove=row["status"] != "successful", wait=True))
            self._notify(job_id)
        return {"status": row["status"], "stop": row["status"] != "running"}

    # -- ending a job ------------------------------------------------------------------------
    async def _stop(
        self, row: dict, status: str, message: str, *, background: bool = False
    ) -> dict:
        """End a live job as ``status`` with ``message``: its runner stopped, its cluster
        stopped, its outputs removed, its token revoked (``background``: after this returns,
        the runner given time to exit on its own). Idempotent: a job that already ended is
        returned as it is."""
        t = store.now()
        stages = dict(row["stages"] or {})
        if row["stage"] in stages and "finished" not in stages[row["stage"]]:
            stages[row["stage"]] = {**stages[row["stage"]], "finished": rfc3339(t)}
        ended = await asyncio.to_thread(
            store.update_job,
            self.db_url,
            row["id"],
            expect=store.LIVE,
            status=status,
            message=message,
            stages=stages,
            finished_at=t,
            logs=[_service_line(t, row["stage"], message, "warning")],
            max_lines=self.settings.max_log_lines,
        )
        if ended is None:
            return await asyncio.to_thread(store.get_job, self.db_url, row["id"]) or row
        self._finished(ended)
        self._notify(row["id"])
        if background:
            self._later(self._cleanup(ended, remove=True, wait=True))
        else:
            await self._cleanup(ended, remove=True, wait=False)
        return ended

    def _finished(self, row: dict) -> None:
        FINISHED.labels(_label(row["process_id"]), row["status"]).inc()
        if row.get("finished_at") and row.get("created_at"):
            seconds = (row["finished_at"] - row["created_at"]).total_seconds()
            JOB_SECONDS.labels(_label(row["process_id"])).observe(max(0.0, seconds))

    async def _cleanup(self, row: dict, *, remove: bool, wait: bool) -> None:
        problems = await release(self.ctx, row, remove=remove, wait=wait)
        if problems:
            t = store.now()
            lines = [_service_line(t, row["stage"], p, "warning") for p in problems]
            await asyncio.to_thread(
                store.add_logs, self.db_url, row["id"], lines, max_lines=self.settings.max_log_lines
            )

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for this process's background work (runner starts, releases): at shutdown,
        and in tests."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _notify(self, job_id: str) -> None:
        ev = self._ended.get(job_id)
        if ev is not None:
            ev.set()
        self._wake.set()

    # -- the background loop -----------------------------------------------------------------
    async def run(self) -> None:
        """Start queued jobs, watch running ones, drop old ones: every ``poll_interval``
        and at once when woken (a submission, a report, a dismissal)."""
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("the jobs loop failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)

    async def tick(self) -> None:
        """One round of the loop (tests call it)."""
        await self._start_queued()
        await self._watch()
        if time.monotonic() - self._swept >= RETENTION_EVERY:
            self._swept = time.monotonic()
            cutoff = store.now() - timedelta(days=self.settings.retention_days)
            gone = await asyncio.to_thread(store.delete_ended_before, self.db_url, cutoff)
            for jid, handle in gone:  # what a failed release left of their runners
                try:
                    await cleanup(self.ctx, handle)
                except Exception as e:
                    log.warning("job %s: cannot remove the runner's files: %s", jid, e)
            if gone:
                log.info("removed %d jobs that ended before %s", len(gone), cutoff)

    async def _start_queued(self) -> None:
        s = self.settings
        queued = await asyncio.to_thread(store.jobs_with_status, self.db_url, "accepted")
        if not queued:
            return
        # Jobs of owners or projects already at their limit are not even tried (each try
        # is a write transaction); the claim itself decides the rest.
        owners, projects = await asyncio.to_thread(store.running_counts, self.db_url)
        for row in queued:
            if (
                owners.get(row["owner"], 0) >= s.max_running_per_user
                or projects.get(row["project"], 0) >= s.max_running_per_project
            ):
                continue
            secret = secrets.token_urlsafe(32)
            claimed = await asyncio.to_thread(
                store.claim_job,
                self.db_url,
                row["id"],
                max_per_user=s.max_running_per_user,
                max_per_project=s.max_running_per_project,
                secret_hash=secret_hash(secret),
            )
            if claimed is not None:
                owners[row["owner"]] = owners.get(row["owner"], 0) + 1
                projects[row["project"]] = projects.get(row["project"], 0) + 1
                self._launching.add(claimed["id"])
                self._later(self._launch(claimed, secret))

    async def _launch(self, row: dict, secret: str) -> None:
        kind = "first" if row["attempt"] <= 1 else "resumed"
        try:
            try:
                started = await start_runner(self.ctx, row, secret)
            except Exception as e:
                RUNNER_STARTS.labels("failed", kind).inc()
                log.warning("job %s: the runner did not start: %s", row["id"], e)
                await self._stop(row, "failed", f"the job's runner could not start: {e}")
                return
            if started is None:
                return  # ended before its runner started
            handle, token_id = started
            RUNNER_STARTS.labels("started", kind).inc()
            t = store.now()
            note = f"runner started (attempt {row['attempt']})"
            stored = await asyncio.to_thread(
                store.update_job,
                self.db_url,
                row["id"],
                expect=("running",),
                runner=handle,
                token_id=token_id,
                logs=[_service_line(t, "scheduling", note)],
                max_lines=self.settings.max_log_lines,
            )
            if stored is None:
                # Ended while starting: dismissed (stop what was started), or a quick job
                # (echo) whose runner reported its end already (keep its outputs, let it
                # exit). The handle is kept for the record either way.
                ended = await asyncio.to_thread(
                    store.update_job, self.db_url, row["id"], runner=handle, token_id=token_id
                )
                if ended is not None:
                    ok = ended["status"] == "successful"
                    await self._cleanup(ended, remove=not ok, wait=ok)
        finally:
            self._launching.discard(row["id"])

    async def _watch(self) -> None:
        for row in await asyncio.to_thread(store.jobs_with_status, self.db_url, "running"):
            if row["id"] in self._launching:
                continue
            started = row["started_at"] or row["created_at"]
            age = (store.now() - started).total_seconds()
            if age > row["wall_time"]:
                LIMIT_FAILURES.labels("wall_time").inc()
                await self._stop(
                    row, "failed", f"wall-time limit of {row['wall_time']:g} s exceeded"
                )
                continue
            handle = row["runner"]
            if handle is None:
                if age > START_GRACE:
                    await self._stop(row, "failed", "the job's runner never started")
                continue
            if await maybe(self.ctx.backend.alive(handle)):
                continue
            await self._lost(row)

    async def _lost(self, row: dict) -> None:
        """A running job whose runner is gone without a result: its output's tail into the
        log, then failed with the tail's last line."""
        fresh = await asyncio.to_thread(store.get_job, self.db_url, row["id"])
        if fresh is None or fresh["status"] != "running":
            return  # it reported its end after all
        try:
            tail = await maybe(self.ctx.backend.output_tail(row["runner"]))
        except Exception as e:
            tail = f"(its output cannot be read: {e})"
        lines = [ln for ln in (tail or "").splitlines() if ln.strip()][-TAIL_LINES:]
        t = store.now()
        await asyncio.to_thread(
            store.add_logs,
            self.db_url,
            row["id"],
            [_service_line(t, row["stage"], ln, "error", source="runner") for ln in lines],
            max_lines=self.settings.max_log_lines,
        )
        last = lines[-1].strip()[:500] if lines else "no output"
        await self._stop(fresh, "failed", f"the job's runner ended without a result: {last}")

    # -- a restart -----------------------------------------------------------------------------
    async def recover(self) -> None:
        """At the service's start: every running job's runner alive is adopted; the others
        run again (a new attempt, queued) or, with no attempt left, fail with the reason.
        Ended jobs whose release a restart cut short (the runner's charge still open) are
        released again, in the background."""
        await read_backend(self.ctx)  # Kubernetes: the pods' phases (else all look alive)
        for row in await unfinished(self.ctx):
            self._later(self._cleanup(row, remove=row["status"] != "successful", wait=False))
        for row in await asyncio.to_thread(store.jobs_with_status, self.db_url, "running"):
            handle = row["runner"]
            if handle is None:
                age = (store.now() - (row["started_at"] or row["created_at"])).total_seconds()
                if age <= START_GRACE:
                    continue  # another replica may be starting it; the watch decides later
            elif await maybe(self.ctx.backend.alive(handle)):
                RECOVERED.labels("adopted").inc()
                t = store.now()
                await asyncio.to_thread(
                    store.add_logs,
                    self.db_url,
                    row["id"],
                    [
                        _service_line(
                            t,
                            row["stage"],
                            "runner adopted after a restart of the processing service",
                        )
                    ],
                    max_lines=self.settings.max_log_lines,
                )
                continue
            if row["attempt"] >= self.settings.max_attempts:
                RECOVERED.labels("failed").inc()
                await self._stop(
                    row,
                    "failed",
                    "interrupted by a restart of the processing service; no attempt left",
                )
                continue
            await self._cleanup(row, remove=True, wait=False)
            t = store.now()
            note = f"resumed after the processing service restarted (attempt {row['attempt'] + 1})"
            again = await asyncio.to_thread(
                store.update_job,
                self.db_url,
                row["id"],
                expect=("running",),
                status="accepted",
                stage="queued",
                progress=0,
                stages={"queued": {"started": rfc3339(t), "progress": 0}},
                message=note,
                runner=None,
                token_id="",
                cluster="",
                secret_hash="",
                logs=[_service_line(t, "queued", note, "warning")],
                max_lines=self.settings.max_log_lines,
            )
            if again is not None:
                RECOVERED.labels("resumed").inc()
        self._wake.set()


def _label(process_id: str) -> str:
    """The metrics' process label: user processes are one label (ids are unbounded)."""
    return process_id if process_id in schemas.PROCESS_IDS else "user-process"


def _service_line(
    at: datetime, stage: str, text: str, level: str = "info", source: str = "service"
) -> dict[str, Any]:
    return {"at": at, "stage": stage, "level": level, "source": source, "text": text}

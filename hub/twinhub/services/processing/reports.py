"""The runners' side of the service: their internal endpoints and what their events mean.

A runner authenticates with its job's secret (header ``X-Twinhub-Job-Secret``), not with a
hub token: these paths are public to the hub auth layer (app.py) and the secret is checked
here (its sha256 against the job's, in constant time).

- ``GET internal/jobs/{id}``: the job's spec (:meth:`JobManager.spec`);
- ``POST internal/jobs/{id}/events``: ``{"events": [...]}`` (at most :data:`MAX_EVENTS`,
  :data:`MAX_REPORT_BYTES`) → ``{"status", "stop"}``; 401 bad secret or unknown job (one
  answer: job ids are not disclosed), 410 the job already ended (``stop`` true in the body
  too), 400 a bad event (its index named; nothing of the report applied), 429 more than
  :data:`REPORTS_PER_SECOND` reports of one job (the runner sends it again).

:func:`apply_events` turns a valid report into the job's new columns and log lines.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from twinlab.contract import USER_COLLECTION_PREFIX

from ..asgi import BadRequest, error_body
from ..datalake import input_limits
from .config import TwinhubProcessing
from .metrics import REPORTS, STAGE_SECONDS, START_DELAY
from .store import now, rfc3339, utc

SECRET_HEADER = "X-Twinhub-Job-Secret"
MAX_EVENTS = 200
MAX_REPORT_BYTES = 1024 * 1024
#: Bytes of one log line kept (longer ones are cut, marked).
MAX_LINE_BYTES = 4096
#: Lengths of the other strings a runner sends.
MAX_MESSAGE = 2000
MAX_SOURCES = 1000
#: The stages a runner reports, in order (``queued`` and ``finished`` are the service's).
RUNNER_STAGES = ("scheduling", "fetching", "processing", "ingesting")
ORDER = ("queued", *RUNNER_STAGES, "finished")
#: Each stage's share of the overall progress (0..100).
RANGES = {
    "queued": (0, 0),
    "scheduling": (0, 10),
    "fetching": (10, 30),
    "processing": (30, 90),
    "ingesting": (90, 100),
    "finished": (100, 100),
}
#: Reports of one job accepted per second (as many in a burst); past it 429: a runner
#: reports every half second, a flood would be a write transaction each.
REPORTS_PER_SECOND = 20.0
EVENT_TYPES = ("stage", "progress", "log", "cluster", "sources", "done", "failed")
LEVELS = ("info", "warning", "error")


class Gone(BadRequest):
    """The job has ended (``status``): the runner is to stop."""

    def __init__(self, status: str) -> None:
        super().__init__(f"the job has ended ({status}); stop", 410)
        self.job_status = status


class ReportRate:
    """A token bucket per job (this process's; each replica keeps its own)."""

    def __init__(self, rate: float = REPORTS_PER_SECOND, clock: Any = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, job_id: str) -> bool:
        """Whether one more report of ``job_id`` is allowed now (it counts)."""
        t = self.clock()
        if len(self._buckets) > 10_000:  # a full bucket is as good as none
            self._buckets = {
                k: v for k, v in self._buckets.items() if t - v[1] < 1.0 + v[0] / self.rate
            }
        tokens, last = self._buckets.get(job_id, (self.rate, t))
        tokens = min(self.rate, tokens + (t - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[job_id] = (tokens - 1.0 if allowed else tokens, t)
        return allowed

    def forget(self, job_id: str) -> None:
        self._buckets.pop(job_id, None)


def stage_progress(stage: str, progress: float) -> int:
    """The overall progress of ``progress`` % within ``stage``."""
    lo, hi = RANGES.get(stage, (0, 0))
    return int(lo + (hi - lo) * max(0.0, min(100.0, progress)) / 100.0)


@dataclass
class Change:
    """What a report does to its job: new column values, log lines, a limit it broke."""

    values: dict[str, Any] = field(default_factory=dict)
    logs: list[dict[str, Any]] = field(default_factory=list)
    limit: str | None = None


# -- checking ----------------------------------------------------------------------------------
def _refuse(i: int, what: str) -> BadRequest:
    return BadRequest(f"event {i}: {what}", 400)


def _text(i: int, ev: dict, key: str, *, required: bool = True, limit: int = 0) -> str:
    value = ev.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _refuse(i, f"'{key}' must be a string")
    return value[:limit] if limit else value


def _at(i: int, ev: dict, t: datetime) -> datetime:
    """The event's time (the runner's clock), never after the service's now."""
    raw = ev.get("at")
    if raw is None:
        return t
    if not isinstance(raw, str):
        raise _refuse(i, "'at' must be an RFC 3339 string")
    try:
        at = utc(datetime.fromisoformat(raw.replace("Z", "+00:00")))
    except ValueError:
        raise _refuse(i, f"'at' is not an RFC 3339 time: {raw[:40]!r}") from None
    return min(at, t)


def _line(text: str) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_LINE_BYTES:
        return text
    return data[: MAX_LINE_BYTES - 16].decode("utf-8", "ignore") + " [line cut]"


def check_events(events: Any) -> list[dict[str, Any]]:
    """The report's events, checked and normalized (``at`` a datetime); 400 naming the
    first bad event's index."""
    if not isinstance(events, list):
        raise BadRequest('the body must be {"events": [...]}', 400)
    if len(events) > MAX_EVENTS:
        raise BadRequest(f"{len(events)} events in one report; at most {MAX_EVENTS}", 400)
    t = now()
    out = []
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            raise _refuse(i, "must be a JSON object")
        kind = ev.get("type")
        if kind not in EVENT_TYPES:
            raise _refuse(i, f"unknown type {kind!r} (one of {', '.join(EVENT_TYPES)})")
        e: dict[str, Any] = {"type": kind, "at": _at(i, ev, t)}
        if kind == "stage":
            if ev.get("stage") not in RUNNER_STAGES:
                raise _refuse(i, f"'stage' must be one of {', '.join(RUNNER_STAGES)}")
            e["stage"] = ev["stage"]
        elif kind == "progress":
            p = ev.get("progress")
            if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p):
                raise _refuse(i, "'progress' must be a number 0..100")
            e["progress"] = max(0.0, min(100.0, float(p)))
            e["message"] = _text(i, ev, "message", required=False, limit=MAX_MESSAGE)
        elif kind == "log":
            if ev.get("level", "info") not in LEVELS:
                raise _refuse(i, f"'level' must be one of {', '.join(LEVELS)}")
            e["level"] = ev.get("level", "info")
            e["text"] = _line(_text(i, ev, "text"))
        elif kind == "cluster":
            e["name"] = _text(i, ev, "name")
            if not 0 < len(e["name"]) <= 255:
                raise _refuse(i, "'name' must be 1 to 255 characters")
        elif kind == "sources":
            items = ev.get("items")
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise _refuse(i, "'items' must be a list of strings")
            e["items"] = [x[:2000] for x in items[:MAX_SOURCES]]
        elif kind == "done":
            results, size = ev.get("results"), ev.get("output_bytes", 0)
            if not isinstance(results, dict):
                raise _refuse(i, "'results' must be a JSON object")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise _refuse(i, "'output_bytes' must be an integer >= 0")
            e.update(results=results, output_bytes=size)
            e["stac_item"] = _text(i, ev, "stac_item", required=False, limit=2000)
        else:
            e["reason"] = _text(i, ev, "reason", limit=MAX_MESSAGE) or "failed"
        out.append(e)
    return out


# -- applying ----------------------------------------------------------------------------------
def apply_events(row: dict[str, Any], events: Any, settings: TwinhubProcessing) -> Change:
    """The change a report makes to a running job ``row``, events in order. A stage the job
    already passed is ignored (a runner resends a report whose answer it lost); after the
    ending event only log lines count."""
    checked = check_events(events)
    change = Change()
    stage, progress, message = row["stage"], int(row["progress"]), row["message"]
    stages = copy.deepcopy(row["stages"] or {})
    sources = list(row["source_items"] or [])
    values = change.values
    ended = False

    def close(at: datetime, complete: bool = True) -> None:
        cur = stages.setdefault(stage, {"started": rfc3339(at)})
        if "finished" not in cur:
            cur["finished"] = rfc3339(at)
            if complete:  # a stage a failure stopped keeps the progress it reached
                cur["progress"] = 100
            began = datetime.fromisoformat(cur["started"].replace("Z", "+00:00"))
            STAGE_SECONDS.labels(stage).observe(max(0.0, (at - began).total_seconds()))

    def end(status: str, text: str, at: datetime, level: str, source: str = "service") -> None:
        nonlocal message, ended
        ok = status == "successful"
        close(at, complete=ok)
        values.update(status=status, finished_at=now())
        message, ended = text, True
        change.logs.append(_log(at, "finished" if ok else stage, level, source, text))

    for ev in checked:
        at, kind = ev["at"], ev["type"]
        if kind == "log":
            change.logs.append(_log(at, stage, ev["level"], "runner", ev["text"]))
        elif ended:
            continue
        elif kind == "stage" and ORDER.index(ev["stage"]) > ORDER.index(stage):
            close(at)
            stage = ev["stage"]
            stages[stage] = {"started": rfc3339(at), "progress": 0}
            progress = stage_progress(stage, 0)
            if stage == "processing":
                START_DELAY.observe(max(0.0, (at - row["created_at"]).total_seconds()))
        elif kind == "progress":
            stages.setdefault(stage, {"started": rfc3339(at)})["progress"] = int(ev["progress"])
            progress = max(progress, stage_progress(stage, ev["progress"]))
            message = ev["message"] or message
        elif kind == "cluster":
            values["cluster"] = ev["name"]
        elif kind == "sources":
            sources += [s for s in ev["items"] if s not in sources]
            values["source_items"] = sources[:MAX_SOURCES]
        elif kind == "done":
            cap = int(row["max_output_bytes"])
            if ev["output_bytes"] > cap:
                change.limit = "output_size"
                why = f"output size limit of {cap} bytes exceeded ({ev['output_bytes']} written)"
                end("failed", why, at, "error")
                continue
            end("successful", "finished", at, "info")
            stage, progress = "finished", 100
            stages["finished"] = {"started": rfc3339(at), "finished": rfc3339(at), "progress": 100}
            values.update(
                results=ev["results"],
                output_bytes=ev["output_bytes"],
                stac_item=ev["stac_item"],
            )
        elif kind == "failed":  # the runner's words: logged as its, not the service's
            end("failed", ev["reason"], at, "error", source="runner")
    values.update(stage=stage, stages=stages, progress=progress, message=message)
    return change


def _log(at: datetime, stage: str, level: str, source: str, text: str) -> dict[str, Any]:
    return {"at": at, "stage": stage, "level": level, "source": source, "text": text}


def spec_doc(row: dict[str, Any], settings: TwinhubProcessing, process: dict, code: Any) -> dict:
    """What a job's runner works from (``GET internal/jobs/{id}``): the process's
    description, the job's inputs, where outputs go, limits, its cluster's size, and a
    user process's pickled code (base64; None for templated processes)."""
    return {
        "id": row["id"],
        "process": process,
        "process_version": row["process_version"],
        "inputs": row["inputs"],
        "request": row["request"],
        "owner": row["owner"],
        "project": row["project"],
        "attempt": row["attempt"],
        "output_prefix": row["output_prefix"],
        "collection": f"{USER_COLLECTION_PREFIX}{row['owner']}",
        "limits": {
            "wall_time": row["wall_time"],
            "max_output_bytes": row["max_output_bytes"],
            "max_time_steps": settings.max_time_steps,
            "report_timeout": settings.report_timeout,
        },
        "cluster": {
            "workers": settings.workers,
            "worker_cores": settings.worker_cores,
            "worker_memory": settings.worker_memory,
            "project": row["project"],
            "job": row["id"],
        },
        "code": code,
    }


# -- the endpoints -----------------------------------------------------------------------------
def _answer(e: BadRequest) -> JSONResponse:
    body = error_body(e.status, e.message)
    if isinstance(e, Gone):
        body.update(status=e.job_status, stop=True)
    headers = {"Cache-Control": "no-store"}
    if e.status == 429:
        headers["Retry-After"] = "1"
    return JSONResponse(body, status_code=e.status, headers=headers)


def reports_router(ctx: Any, manager: Any) -> APIRouter:
    """``internal/jobs/{id}`` (the spec) and ``internal/jobs/{id}/events`` (reports), for
    ``manager`` (a :class:`~.jobs.JobManager`); mount it at the service's prefix."""
    router = APIRouter()

    @router.get("/internal/jobs/{job_id}")
    async def spec(job_id: str, request: Request) -> JSONResponse:
        secret = request.headers.get(SECRET_HEADER, "")
        try:
            doc = await manager.spec(job_id, secret)
        except BadRequest as e:
            return _answer(e)
        return JSONResponse(doc, headers={"Cache-Control": "no-store"})

    @router.post("/internal/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> JSONResponse:
        secret = request.headers.get(SECRET_HEADER, "")
        try:
            body = await request.body()
            if len(body) > MAX_REPORT_BYTES:
                raise BadRequest(f"a report is at most {MAX_REPORT_BYTES} bytes", 413)
            # Strictly: NaN, Infinity, NUL and lone surrogates are refused (PostgreSQL's json
            # type refuses them; stored, they would break every answer about the job).
            data = input_limits.loads(body, "the report")
            if not isinstance(data, dict):
                raise BadRequest('the body must be {"events": [...]}', 400)
            result = await manager.report(job_id, secret, data.get("events"))
        except Gone as e:
            REPORTS.labels("gone").inc()
            return _answer(e)
        except BadRequest as e:
            REPORTS.labels("limited" if e.status == 429 else "refused").inc()
            return _answer(e)
        REPORTS.labels("ok").inc()
        return JSONResponse(result, headers={"Cache-Control": "no-store"})

    return router

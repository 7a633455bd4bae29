"""What the jobs' API speaks: who calls (:class:`Caller`), statuses and stages, the status
document (OGC statusInfo with twinhub's fields) and the refusals that carry OGC's exception
types. Shared by the job manager (jobs.py), the routes (api.py) and the catalogue."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ..asgi import BadRequest
from .store import rfc3339

STAGES = ("queued", "scheduling", "fetching", "processing", "ingesting", "finished")
STATUSES = ("accepted", "running", "successful", "failed", "dismissed")
#: OGC's exception types of the answers below (api.py puts them in its documents).
OGC_EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"


@dataclass(frozen=True)
class Caller:
    """Who calls the API (api.py builds it from the hub's user model)."""

    name: str
    #: acts_as_admin(token model), as in the desk: admins see and dismiss every job.
    admin: bool
    groups: frozenset[str]
    #: The caller's groups that are projects (the projects catalogue's), sorted.
    projects: tuple[str, ...]


class NoSuchJob(BadRequest):
    ogc_type = OGC_EXCEPTIONS + "no-such-job"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}", 404)


class ResultNotReady(BadRequest):
    ogc_type = OGC_EXCEPTIONS + "result-not-ready"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"the results of job {job_id!r} are not ready (it is {status})", 404)


class JobFailed(BadRequest):
    """Results asked of a failed (500) or dismissed (410) job; the message says why."""

    ogc_type = OGC_EXCEPTIONS + "job-results-failed"


def status_doc(row: dict[str, Any], base_url: str) -> dict[str, Any]:
    """OGC's statusInfo of a job with twinhub's fields (stage, stages, owner, project,
    attempt); ``base_url``: the service's, ending in ``/``. Unknown times are left out."""
    jid = row["id"]
    self_url = f"{base_url}jobs/{jid}"
    links = [
        {"href": self_url, "rel": "self", "type": "application/json", "title": "this job"},
        {"href": f"{self_url}?f=html", "rel": "alternate", "type": "text/html"},
        {"href": f"{self_url}/logs", "rel": "logs", "type": "application/json", "title": "log"},
    ]
    if row["status"] == "successful":
        links.append(
            {
                "href": f"{self_url}/results",
                "rel": "http://www.opengis.net/def/rel/ogc/1.0/results",
                "type": "application/json",
                "title": "results",
            }
        )
    doc: dict[str, Any] = {
        "jobID": jid,
        "processID": row["process_id"],
        "type": "process",
        "status": row["status"],
        "message": row["message"] or "",
        "progress": int(row["progress"]),
        "stage": row["stage"],
        "stages": {k: v for k, v in (row["stages"] or {}).items() if k in STAGES},
        "owner": row["owner"],
        "project": row["project"],
        "attempt": int(row["attempt"]),
        "links": links,
    }
    for key, col in (
        ("created", "created_at"),
        ("started", "started_at"),
        ("finished", "finished_at"),
        ("updated", "updated_at"),
    ):
        if row.get(col) is not None:
            doc[key] = rfc3339(row[col])
    return doc


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()

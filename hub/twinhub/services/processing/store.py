"""The processing service's tables (twinhub's database): jobs, their logs, user processes.
Synchronous (SQLAlchemy): async callers use ``asyncio.to_thread``.

Each function is one transaction. State changes of a job are compare-and-set on its status
(``UPDATE ... WHERE id = ? AND status = ?``): of two racing writers (two replicas, a runner's
report and a dismissal) only one wins, the other learns it from the answer. Rows leave as
dicts of their columns; datetimes as timezone-aware UTC ``datetime`` (SQLite hands back
naive ones: they were stored as UTC).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ... import db
from ...db.models import ProcessingJob, ProcessingLog, UserProcess

#: Statuses of a job that has not ended.
LIVE = ("accepted", "running")
#: Statuses of a job that has ended.
ENDED = ("successful", "failed", "dismissed")
#: The first words of the line that stands for log lines dropped past ``max_log_lines``.
TRIM_MARK = "[log trimmed]"
#: PostgreSQL advisory lock key serializing claims of queued jobs across replicas
#: (the limits' counts and the claim must be one step); "twinproc" in ASCII.
CLAIM_LOCK = 0x7477696E70726F63
#: The marker line as :func:`_trim` writes it (its count read back from it).
_TRIMMED = re.compile(re.escape(TRIM_MARK) + r" ([0-9]{1,18}) earlier lines dropped")


class Taken(Exception):
    """A user process id that belongs to another user."""

    def __init__(self, process_id: str, owner: str) -> None:
        super().__init__(f"process id {process_id!r} is taken by another user; choose another")
        self.process_id, self.owner = process_id, owner


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(d: datetime) -> str:
    """``d`` as RFC 3339 in UTC with a ``Z`` (what the API answers)."""
    return utc(d).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc(d: datetime | None) -> datetime | None:
    """``d`` timezone-aware in UTC (SQLite stores naive UTC)."""
    if d is None:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).astimezone(UTC)


def _columns(row: Any) -> dict[str, Any]:
    out = {c.key: getattr(row, c.key) for c in row.__table__.columns}
    for k, v in out.items():
        if isinstance(v, datetime):
            out[k] = utc(v)
    return out


# -- user processes ----------------------------------------------------------------------------
def save_user_process(
    db_url: str,
    *,
    id: str,
    owner: str,
    visibility: str,
    description: dict[str, Any],
    code: bytes,
    source: str,
    python: str,
) -> dict[str, Any]:
    """Register process ``id`` of ``owner``, or a new version of theirs (version + 1).
    Another owner's id raises :class:`Taken` (also when two users race for a new id: the
    primary key decides)."""
    for _ in range(2):
        try:
            with db.session(db_url) as s:
                row = s.get(UserProcess, id)
                t = now()
                if row is None:
                    row = UserProcess(id=id, owner=owner, version=1, created_at=t)
                    s.add(row)
                elif row.owner != owner:
                    raise Taken(id, row.owner)
                else:
                    row.version += 1
                row.visibility, row.description, row.code = visibility, description, code
                row.source, row.python, row.updated_at = source, python, t
                s.flush()
                return _columns(row)
        except IntegrityError:
            continue  # another registration of the same new id won: read it again
    raise Taken(id, "")


#: A user process's columns but its pickled code (up to max_code_bytes each): listing and
#: describing never read it; only a runner's start does.
_NO_CODE = tuple(c for c in UserProcess.__table__.columns if c.key != "code")


def _plain(row: Any) -> dict[str, Any]:
    return {k: utc(v) if isinstance(v, datetime) else v for k, v in row._mapping.items()}


def get_user_process(db_url: str, id: str, *, code: bool = True) -> dict[str, Any] | None:
    """User process ``id`` (None: no such id); ``code=False``: without its ``code``."""
    with db.session(db_url) as s:
        if not code:
            row = s.execute(select(*_NO_CODE).where(UserProcess.id == id)).first()
            return None if row is None else _plain(row)
        found = s.get(UserProcess, id)
        return None if found is None else _columns(found)


def list_user_processes(db_url: str) -> list[dict[str, Any]]:
    """Every user process without its ``code``, by id (the caller filters what a user may
    see)."""
    with db.session(db_url) as s:
        return [_plain(r) for r in s.execute(select(*_NO_CODE).order_by(UserProcess.id))]


def delete_user_process(db_url: str, id: str) -> bool:
    with db.session(db_url) as s:
        return s.execute(delete(UserProcess).where(UserProcess.id == id)).rowcount > 0


def count_user_processes(db_url: str, owner: str) -> int:
    with db.session(db_url) as s:
        q = select(func.count()).select_from(UserProcess).where(UserProcess.owner == owner)
        return int(s.scalar(q) or 0)


def user_process_code(db_url: str, id: str) -> dict[str, Any] | None:
    """What a job of user process ``id`` runs: its ``owner``, ``version``, ``description``
    and ``code`` (None when there is no such process)."""
    with db.session(db_url) as s:
        q = select(
            UserProcess.owner, UserProcess.version, UserProcess.description, UserProcess.code
        ).where(UserProcess.id == id)
        row = s.execute(q).first()
        if row is None:
            return None
        return {
            "owner": row[0],
            "version": int(row[1]),
            "description": row[2],
            "code": bytes(row[3]),
        }


# -- jobs --------------------------------------------------------------------------------------
class Full(Exception):
    """A new job past one of its owner's caps (``limit``: the setting's name)."""

    def __init__(self, limit: str, count: int) -> None:
        super().__init__(f"{limit} reached ({count})")
        self.limit, self.count = limit, count


def insert_job(
    db_url: str, job: dict[str, Any], *, max_queued: int, log_text: str, max_stored: int = 0
) -> dict[str, Any]:
    """Store a new job (status accepted) with its first log line, unless its owner already
    has ``max_queued`` accepted jobs or ``max_stored`` jobs in all (any status; 0: no cap):
    then nothing is stored and :class:`Full` is raised."""
    with db.session(db_url) as s:
        mine = select(func.count()).where(ProcessingJob.owner == job["owner"])
        queued = int(s.scalar(mine.where(ProcessingJob.status == "accepted")) or 0)
        if queued >= max_queued:
            raise Full("max_queued_per_user", queued)
        if max_stored > 0:
            stored = int(s.scalar(mine) or 0)
            if stored >= max_stored:
                raise Full("max_jobs_per_user", stored)
        row = ProcessingJob(**job)
        s.add(row)
        s.add(
            ProcessingLog(
                job_id=job["id"],
                at=job["created_at"],
                stage=job["stage"],
                level="info",
                source="service",
                text=log_text,
            )
        )
        s.flush()
        return _columns(row)


def get_job(db_url: str, job_id: str) -> dict[str, Any] | None:
    with db.session(db_url) as s:
        row = s.get(ProcessingJob, job_id)
        return None if row is None else _columns(row)


def list_jobs(
    db_url: str,
    *,
    owner: str | None,
    statuses: Iterable[str] = (),
    process_ids: Iterable[str] = (),
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Jobs newest first (``owner`` None: everybody's) and how many match in all."""
    where = []
    if owner is not None:
        where.append(ProcessingJob.owner == owner)
    if statuses := list(statuses):
        where.append(ProcessingJob.status.in_(statuses))
    if process_ids := list(process_ids):
        where.append(ProcessingJob.process_id.in_(process_ids))
    with db.session(db_url) as s:
        total = int(s.scalar(select(func.count()).select_from(ProcessingJob).where(*where)) or 0)
        q = (
            select(ProcessingJob)
            .where(*where)
            .order_by(ProcessingJob.created_at.desc(), ProcessingJob.id)
            .limit(limit)
            .offset(offset)
        )
        return [_columns(r) for r in s.scalars(q)], total


def jobs_with_status(db_url: str, status: str) -> list[dict[str, Any]]:
    """Jobs of ``status``, oldest first (the queue's order)."""
    with db.session(db_url) as s:
        q = (
            select(ProcessingJob)
            .where(ProcessingJob.status == status)
            .order_by(ProcessingJob.created_at, ProcessingJob.id)
        )
        return [_columns(r) for r in s.scalars(q)]


def ended_jobs_since(db_url: str, since: datetime) -> list[dict[str, Any]]:
    """Jobs that ended at or after ``since`` (what a restart may have left to release)."""
    with db.session(db_url) as s:
        q = select(ProcessingJob).where(
            ProcessingJob.status.in_(ENDED), ProcessingJob.finished_at >= since
        )
        return [_columns(r) for r in s.scalars(q)]


def running_counts(db_url: str) -> tuple[dict[str, int], dict[str, int]]:
    """Running jobs per owner and per project (a hint for the queue: claims decide)."""
    with db.session(db_url) as s:
        q = select(ProcessingJob.owner, ProcessingJob.project).where(
            ProcessingJob.status == "running"
        )
        owners: dict[str, int] = {}
        projects: dict[str, int] = {}
        for owner, project in s.execute(q):
            owners[owner] = owners.get(owner, 0) + 1
            projects[project] = projects.get(project, 0) + 1
        return owners, projects


def _running(s: Session, column: Any, value: str) -> int:
    q = select(func.count()).where(column == value, ProcessingJob.status == "running")
    return int(s.scalar(q) or 0)


def claim_job(
    db_url: str,
    job_id: str,
    *,
    max_per_user: int,
    max_per_project: int,
    secret_hash: str,
) -> dict[str, Any] | None:
    """Move a queued job to running (stage scheduling, attempt + 1, the runner's secret)
    when its owner and its project are below their running limits; None when the limits
    are reached or the job is no longer queued (another replica took it, a dismissal).

    The counts and the claim are one step: SQLite serializes writers, PostgreSQL takes an
    advisory lock for the transaction (replicas claim one at a time)."""
    with db.session(db_url) as s:
        if s.bind is not None and s.bind.dialect.name == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CLAIM_LOCK})
        else:
            # SQLite: take the write lock before counting (a deferred transaction would
            # count under a read lock another writer may pass).
            s.execute(update(ProcessingJob).where(ProcessingJob.id == "").values(message=""))
        row = s.get(ProcessingJob, job_id)
        if row is None or row.status != "accepted":
            return None
        if _running(s, ProcessingJob.owner, row.owner) >= max_per_user:
            return None
        if _running(s, ProcessingJob.project, row.project) >= max_per_project:
            return None
        t = now()
        stages = dict(row.stages or {})
        if "queued" in stages:
            stages["queued"] = {**stages["queued"], "finished": rfc3339(t), "progress": 100}
        stages["scheduling"] = {"started": rfc3339(t), "progress": 0}
        done = s.execute(
            update(ProcessingJob)
            .where(ProcessingJob.id == job_id, ProcessingJob.status == "accepted")
            .values(
                status="running",
                stage="scheduling",
                progress=0,
                stages=stages,
                attempt=ProcessingJob.attempt + 1,
                secret_hash=secret_hash,
                runner=None,
                cluster="",
                message="",
                started_at=t,
                updated_at=t,
            )
        ).rowcount
        if not done:
            return None
        s.expire_all()
        return _columns(s.get(ProcessingJob, job_id))


def update_job(
    db_url: str,
    job_id: str,
    *,
    expect: Iterable[str] | None = None,
    logs: list[dict[str, Any]] = (),  # type: ignore[assignment]
    max_lines: int = 0,
    **values: Any,
) -> dict[str, Any] | None:
    """Set ``values`` of a job (``updated_at`` too) and append ``logs`` (see
    :func:`add_logs`) if its status is one of ``expect`` (None: any), in one transaction;
    the row after the change, or None when nothing changed."""
    where = [ProcessingJob.id == job_id]
    if expect is not None:
        where.append(ProcessingJob.status.in_(list(expect)))
    with db.session(db_url) as s:
        values.setdefault("updated_at", now())
        if not s.execute(update(ProcessingJob).where(*where).values(**values)).rowcount:
            return None
        if logs:
            s.add_all(ProcessingLog(job_id=job_id, **line) for line in logs)
            s.flush()
            _trim(s, job_id, max_lines)
        s.expire_all()
        return _columns(s.get(ProcessingJob, job_id))


def delete_job(db_url: str, job_id: str) -> bool:
    """Remove a job and its log."""
    with db.session(db_url) as s:
        s.execute(delete(ProcessingLog).where(ProcessingLog.job_id == job_id))
        return s.execute(delete(ProcessingJob).where(ProcessingJob.id == job_id)).rowcount > 0


def delete_ended_before(db_url: str, cutoff: datetime) -> list[tuple[str, dict | None]]:
    """Remove jobs that ended before ``cutoff`` and their logs (retention); the (id, runner
    handle) of each removed job (what the backend may still hold of it)."""
    with db.session(db_url) as s:
        gone = list(
            s.execute(
                select(ProcessingJob.id, ProcessingJob.runner).where(
                    ProcessingJob.status.in_(ENDED), ProcessingJob.finished_at < cutoff
                )
            )
        )
        ids = [jid for jid, _ in gone]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            s.execute(delete(ProcessingLog).where(ProcessingLog.job_id.in_(chunk)))
            s.execute(delete(ProcessingJob).where(ProcessingJob.id.in_(chunk)))
        return [(jid, runner) for jid, runner in gone]


def count_jobs(db_url: str) -> list[tuple[str, str, int]]:
    """(status, stage, count) of every job (the metrics' gauge)."""
    with db.session(db_url) as s:
        q = select(ProcessingJob.status, ProcessingJob.stage, func.count()).group_by(
            ProcessingJob.status, ProcessingJob.stage
        )
        return [(a, b, int(n)) for a, b, n in s.execute(q)]


# -- logs --------------------------------------------------------------------------------------
def add_logs(db_url: str, job_id: str, lines: list[dict[str, Any]], *, max_lines: int) -> None:
    """Append lines (``at``, ``stage``, ``level``, ``source``, ``text``) to a job's log, then
    keep at most ``max_lines``: the oldest go, and one line (``TRIM_MARK``, where the first
    dropped one was) says how many went in all."""
    if not lines:
        return
    with db.session(db_url) as s:
        s.add_all(ProcessingLog(job_id=job_id, **line) for line in lines)
        s.flush()
        _trim(s, job_id, max_lines)


def _trim(s: Session, job_id: str, max_lines: int) -> None:
    total = int(s.scalar(select(func.count()).where(ProcessingLog.job_id == job_id)) or 0)
    if max_lines <= 0 or total <= max_lines:
        return
    q = select(ProcessingLog).where(ProcessingLog.job_id == job_id).order_by(ProcessingLog.id)
    first = s.scalars(q.limit(1)).one()
    dropped, marker = 0, None
    # Only the service's own marker counts (any other text, a runner's too, is a line).
    counted = _TRIMMED.match(first.text) if first.source == "service" else None
    if counted is not None:
        marker = first
        dropped = int(counted.group(1))
    # Room for the marker: the real lines kept are max_lines - 1.
    excess = total - max_lines + (0 if marker else 1)
    gone = list(s.scalars(q.where(ProcessingLog.id != (marker.id if marker else -1)).limit(excess)))
    dropped += len(gone)
    at, stage = gone[0].at, gone[0].stage
    for g in gone:
        s.delete(g)
    note = f"{TRIM_MARK} {dropped} earlier lines dropped (at most {max_lines} are kept)"
    if marker is not None:
        marker.text = note
    else:
        # The marker takes the first dropped line's id: it stays first in the log.
        s.flush()
        s.add(
            ProcessingLog(
                id=gone[0].id,
                job_id=job_id,
                at=at,
                stage=stage,
                level="warning",
                source="service",
                text=note,
            )
        )


def get_logs(db_url: str, job_id: str, *, after: int = 0, limit: int = 1000) -> list[dict]:
    """A job's log lines with an id above ``after``, oldest first."""
    with db.session(db_url) as s:
        q = (
            select(ProcessingLog)
            .where(ProcessingLog.job_id == job_id, ProcessingLog.id > after)
            .order_by(ProcessingLog.id)
            .limit(limit)
        )
        return [
            {
                "id": r.id,
                "at": utc(r.at),
                "stage": r.stage,
                "level": r.level,
                "source": r.source,
                "text": r.text,
            }
            for r in s.scalars(q)
        ]

"""The hub's side of job tokens: hub API handlers that only the processing service may call.

A job's runner reaches the Dask gateway and the STAC API *as the job's user*, with a short
token of that user. JupyterHub's ``tokens`` scope would let the service mint any scope the
user holds (an admin's included): an admin-equivalent credential. Instead the hub mints here
(in its own process, with ``user.new_api_token``, as :mod:`twinhub.gateway.hooks` does),
with a fixed allow-list of scopes, a bounded lifetime, and only for a job of that user in
twinhub's ``processing_jobs`` (read here, as the gateway checks job clusters):

- ``POST /hub/api/twinhub/processing/tokens/{user}`` ``{"job", "purpose", "expires_in"}``
  -> 201 ``{"id", "token", "user", "job", "purpose", "note", "scopes", "expires_at"}``.
  ``runner``: the runner's scopes (:data:`~.hubtokens.RUNNER_SCOPES`), for a *running* job
  of ``user`` (the service marks it running before it asks); ``stop``: the gateway's scope
  alone, at most :data:`~.hubtokens.STOP_TOKEN_SECONDS`, for a job of ``user`` that runs or
  ended less than :data:`STOP_WINDOW` ago. Noted ``twinhub processing job <id> (<purpose>)``;
- ``DELETE /hub/api/twinhub/processing/tokens/{user}/{token_id}`` -> 204, or 404 unless it
  is a token minted here (its note, its scopes) for a job of that user and either that job's
  recorded runner token (``processing_jobs.token_id``), a stop token, or a runner token of a
  job that no longer runs (minted while it ended: never recorded, of no further use).

Every other caller (a user's, an admin's, another service's token; a browser session) gets
403; a database that cannot be read, 503. :meth:`~twinhub.services.processing.ProcessingPart.
configure_service` registers the handlers (``c.JupyterHub.extra_handlers``, by import path:
only the hub imports this module, not the service's own process).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.utils import isoformat
from sqlalchemy.exc import SQLAlchemyError
from tornado import web

from ...db import DatabaseError, session
from ...db.models import ProcessingJob
from . import SERVICE_NAME
from .hubtokens import (
    PURPOSE_SCOPES,
    STOP_TOKEN_SECONDS,
    job_note,
    parse_note,
)

#: How long after its end a job's clusters may still be stopped (a stop token minted): a
#: release retried late, a service restarted meanwhile.
STOP_WINDOW = timedelta(hours=1)
#: The statuses of a job that is over (processing.store.ENDED; not imported: the hub loads
#: no more of the service than this module).
_ENDED = ("successful", "failed", "dismissed")
_TOKEN_ID = re.compile(r"^a([0-9]{1,18})$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def job_record(db_url: str, job_id: str) -> dict[str, Any] | None:
    """What the hub needs of processing job ``job_id`` (owner, status, end, runner token);
    None if there is none."""
    with session(db_url) as s:
        row = s.get(ProcessingJob, job_id)
        if row is None:
            return None
        finished = row.finished_at
        if finished is not None and finished.tzinfo is None:
            finished = finished.replace(tzinfo=UTC)  # SQLite keeps no zone: stored as UTC
        return {
            "owner": row.owner,
            "status": row.status,
            "finished_at": finished,
            "token_id": row.token_id or "",
        }


class _ServiceOnly(APIHandler):
    """Answers only requests carrying the processing service's own token."""

    def initialize(
        self, max_expires_in: int, service: str = SERVICE_NAME, db_url: str = ""
    ) -> None:
        self.max_expires_in = int(max_expires_in)
        self.service_name = service
        self.db_url = db_url

    def check_xsrf_cookie(self) -> None:
        # Token-only endpoints: a browser session (cookie) is refused in _caller anyway.
        return None

    def _check_caller(self) -> None:
        caller = self.current_user
        token = self.get_token()
        # The service's own API token: not a user's (an admin's included), not another
        # service's, not a cookie (services have none, but a user's browser has).
        ok = (
            isinstance(caller, orm.Service)
            and caller.name == self.service_name
            and token is not None
            and token.service is caller
        )
        if not ok:
            raise web.HTTPError(403, f"only the {self.service_name} service may use this API")

    def _user(self, name: str) -> Any:
        user = self.find_user(name)
        if user is None:
            raise web.HTTPError(404, f"no user {name[:100]!r}")
        return user

    async def _job(self, job_id: str) -> dict[str, Any] | None:
        """The job's record in twinhub's database (503 when it cannot be read: nothing is
        minted or revoked unchecked)."""
        if not self.db_url:
            raise web.HTTPError(503, "processing jobs cannot be checked: no database given")
        try:
            # Off the hub's event loop: a slow database must not stall the hub.
            return await asyncio.to_thread(job_record, self.db_url, job_id)
        except (SQLAlchemyError, DatabaseError) as e:
            self.log.warning("processing: jobs unreadable: %s", e)
            raise web.HTTPError(503, "processing jobs cannot be checked now") from None


class ProcessingTokensHandler(_ServiceOnly):
    """``POST .../tokens/{user}``: a new short token of ``user`` for one of their jobs."""

    async def post(self, user_name: str) -> None:
        self._check_caller()
        user = self._user(user_name)
        job_id, purpose, expires_in = self._parse(self.get_json_body())
        job = await self._job(job_id)
        if job is None or job["owner"] != user.name:
            raise web.HTTPError(403, f"{job_id} is not a processing job of {user.name}")
        if job["status"] != "running" and not (purpose == "stop" and _ended_lately(job)):
            why = "is not running" if purpose == "runner" else "neither runs nor ended lately"
            raise web.HTTPError(403, f"job {job_id} of {user.name} {why}")
        scopes = PURPOSE_SCOPES[purpose]
        note = job_note(job_id, purpose)
        try:
            token = user.new_api_token(scopes=list(scopes), expires_in=expires_in, note=note)
        except ValueError as e:
            # The user does not hold one of the scopes (the access grants were changed).
            raise web.HTTPError(403, f"no such token for {user.name}: {e}") from None
        orm_token = orm.APIToken.find(self.db, token)
        self.log.info(
            "processing: token %s for %s (%s, expires in %d s)",
            orm_token.api_id, user.name, note, expires_in,
        )  # fmt: skip
        self.set_status(201)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(
            json.dumps(
                {
                    "id": orm_token.api_id,
                    "token": token,
                    "user": user.name,
                    "job": job_id,
                    "purpose": purpose,
                    "note": note,
                    "scopes": list(scopes),
                    "expires_at": isoformat(orm_token.expires_at),
                }
            )
        )

    def _parse(self, body: Any) -> tuple[str, str, int]:
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        unknown = set(body) - {"job", "purpose", "expires_in"}
        if unknown:
            raise web.HTTPError(400, f"unknown fields: {', '.join(sorted(unknown))}")
        job = body.get("job")
        if not isinstance(job, str) or not _JOB_ID.match(job):
            raise web.HTTPError(400, "job must be a job id")
        purpose = body.get("purpose")
        if purpose not in PURPOSE_SCOPES:
            raise web.HTTPError(400, f"purpose must be one of: {', '.join(PURPOSE_SCOPES)}")
        expires_in = body.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise web.HTTPError(400, "expires_in must be an integer number of seconds")
        most = self.max_expires_in if purpose == "runner" else STOP_TOKEN_SECONDS
        if not 1 <= expires_in <= most:
            raise web.HTTPError(400, f"expires_in must be between 1 and {most} seconds")
        return job, purpose, expires_in


def _ended_lately(job: dict[str, Any]) -> bool:
    ended = job["finished_at"]
    return job["status"] in _ENDED and ended is not None and datetime.now(UTC) - ended < STOP_WINDOW


class ProcessingTokenHandler(_ServiceOnly):
    """``DELETE .../tokens/{user}/{token_id}``: revoke a token minted by the handler above
    for a job of ``user``."""

    async def delete(self, user_name: str, token_id: str) -> None:
        self._check_caller()
        user = self._user(user_name)
        m = _TOKEN_ID.match(token_id)
        orm_token = self.db.get(orm.APIToken, int(m.group(1))) if m else None
        named = parse_note(orm_token.note or "") if orm_token is not None else None
        ok = (
            orm_token is not None
            and orm_token.user_id == user.id
            and named is not None
            and named[1] is not None  # noted by this hub ("(runner)"/"(stop)"), ...
            and set(orm_token.scopes or ()) <= set(PURPOSE_SCOPES[named[1]])  # ... scoped so
        )
        if ok:
            job = await self._job(named[0])
            ok = (
                job is not None
                and job["owner"] == user.name
                and (
                    named[1] == "stop"
                    or job["token_id"] == orm_token.api_id
                    or job["status"] != "running"
                )
            )
        if not ok:
            raise web.HTTPError(
                404, f"{user.name} has no token {token_id[:40]!r} minted for processing"
            )
        self.db.delete(orm_token)
        self.db.commit()
        self.set_status(204)

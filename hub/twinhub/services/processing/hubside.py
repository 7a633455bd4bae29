"""The hub's side of job tokens: hub API handlers that only the processing service may call.

A job's runner reaches the Dask gateway and the STAC API *as the job's user*, with a short
token of that user. JupyterHub's ``tokens`` scope would let the service mint any scope the
user holds (an admin's included): an admin-equivalent credential. Instead the hub mints here
(in its own process, with ``user.new_api_token``, as :mod:`twinhub.gateway.hooks` does),
with a fixed allow-list of scopes and a bounded lifetime:

- ``POST /hub/api/twinhub/processing/tokens/{user}`` ``{"expires_in", "note", "scopes"?}``
  -> 201 ``{"id", "token", "expires_at", "note", "scopes"}``; ``scopes`` (optional) is a
  non-empty subset of :data:`~.hubtokens.RUNNER_SCOPES` (default: all of them);
- ``DELETE /hub/api/twinhub/processing/tokens/{user}/{token_id}`` -> 204, or 404 unless
  it is a token of that user minted here (note prefix, allowed scopes only).

Every other caller (a user's, an admin's, another service's token; a browser session) gets
403. :meth:`~twinhub.services.processing.ProcessingPart.configure_service` registers the
handlers (``c.JupyterHub.extra_handlers``, by import path: only the hub imports this module,
not the service's own process).
"""

from __future__ import annotations

import json
import re
from typing import Any

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.utils import isoformat
from tornado import web

from . import SERVICE_NAME
from .hubtokens import NOTE_PREFIX, RUNNER_SCOPES

#: Longest note kept (the service's notes name a job or a cluster).
MAX_NOTE = 200
_TOKEN_ID = re.compile(r"^a([0-9]{1,18})$")


class _ServiceOnly(APIHandler):
    """Answers only requests carrying the processing service's own token."""

    def initialize(self, max_expires_in: int, service: str = SERVICE_NAME) -> None:
        self.max_expires_in = int(max_expires_in)
        self.service_name = service

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


class ProcessingTokensHandler(_ServiceOnly):
    """``POST .../tokens/{user}``: a new short token of ``user`` with the runner's scopes."""

    async def post(self, user_name: str) -> None:
        self._check_caller()
        user = self._user(user_name)
        expires_in, note, scopes = self._parse(self.get_json_body())
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
                    "note": note,
                    "scopes": list(scopes),
                    "expires_at": isoformat(orm_token.expires_at),
                }
            )
        )

    def _parse(self, body: Any) -> tuple[int, str, tuple[str, ...]]:
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        unknown = set(body) - {"expires_in", "note", "scopes"}
        if unknown:
            raise web.HTTPError(400, f"unknown fields: {', '.join(sorted(unknown))}")
        expires_in = body.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise web.HTTPError(400, "expires_in must be an integer number of seconds")
        if not 1 <= expires_in <= self.max_expires_in:
            raise web.HTTPError(
                400, f"expires_in must be between 1 and {self.max_expires_in} seconds"
            )
        note = body.get("note", "")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise web.HTTPError(400, f"note must be a string of at most {MAX_NOTE} characters")
        # Every token minted here carries the prefix: revocation touches only those.
        if not note.startswith(NOTE_PREFIX):
            note = f"{NOTE_PREFIX}: {note}" if note else NOTE_PREFIX
        scopes = body.get("scopes", list(RUNNER_SCOPES))
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(s, str) and s in RUNNER_SCOPES for s in scopes)
        ):
            raise web.HTTPError(
                400, f"scopes must be a non-empty list of: {', '.join(RUNNER_SCOPES)}"
            )
        return expires_in, note, tuple(dict.fromkeys(scopes))


class ProcessingTokenHandler(_ServiceOnly):
    """``DELETE .../tokens/{user}/{token_id}``: revoke a token minted by the handler above."""

    async def delete(self, user_name: str, token_id: str) -> None:
        self._check_caller()
        user = self._user(user_name)
        m = _TOKEN_ID.match(token_id)
        orm_token = self.db.get(orm.APIToken, int(m.group(1))) if m else None
        if not (
            orm_token is not None
            and orm_token.user_id == user.id
            and (orm_token.note or "").startswith(NOTE_PREFIX)
            and set(orm_token.scopes or ()) <= set(RUNNER_SCOPES)
        ):
            raise web.HTTPError(
                404, f"{user.name} has no token {token_id[:40]!r} minted for processing"
            )
        self.db.delete(orm_token)
        self.db.commit()
        self.set_status(204)

"""Hub tokens of a job's user: the runner's short-lived token, and stopping a job's cluster.

The runner authenticates to the Dask gateway and the STAC API *as the job's user*, with a
token the hub mints for that user when the service asks (:mod:`.hubside`: handlers in the
hub that only this service may call; the service holds no ``tokens`` scope). Each request
names a job and a purpose (:data:`PURPOSE_SCOPES`): the hub mints only for a job of that
user that runs (``runner``) or runs or ended lately (``stop``), with that purpose's scopes,
for a bounded time; the service revokes the token when the job ends (the hub revokes only
the job's recorded runner token, or a stop token of a job of that user).

The gateway lets only a cluster's owner stop it, so stopping a job's cluster (dismiss, a
limit) goes through a five-minute token of the owner, as :mod:`twinhub.gateway.hooks`
does in the hub process.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import httpx

from ...gateway import ACCESS_SCOPE as GATEWAY_SCOPE
from ...gateway import gateway_url
from . import HUB_TOKENS_PATH
from .context import ProcessingContext

log = logging.getLogger("twinhub.processing")

#: The STAC service's name (twinhub.services.datalake.SERVICE_NAME: not imported, that
#: package loads its database driver and seeding for nothing here).
STAC_SERVICE = "stac"

#: What a runner's token may do: make/stop the user's clusters, read and write the lake.
RUNNER_SCOPES = (GATEWAY_SCOPE, f"access:services!service={STAC_SERVICE}")
#: What a token minted for each purpose may do: ``runner``, the runner's; ``stop``, stopping
#: the job's clusters (the gateway lets only their owner stop them).
PURPOSE_SCOPES = {"runner": RUNNER_SCOPES, "stop": (GATEWAY_SCOPE,)}
#: Every token the hub mints for the service has a note starting so (:func:`job_note`).
NOTE_PREFIX = "twinhub processing"
#: A job's note: ``twinhub processing job <id>``, then `` (<purpose>)`` (the hub adds it).
_JOB_NOTE = re.compile(rf"{NOTE_PREFIX} job ([A-Za-z0-9_-]{{1,64}})(?: \((runner|stop)\))?")
#: Seconds the token that stops a job's cluster lives.
STOP_TOKEN_SECONDS = 300
#: Seconds to wait for a stopped cluster to be gone.
STOP_WAIT = 30.0
#: Cluster states that are over (the gateway's API may still list them a while).
_ENDED = {"STOPPED", "FAILED"}


class HubTokenError(RuntimeError):
    """The hub refused or failed a token request; the message says what it answered."""


@asynccontextmanager
async def _client(ctx: ProcessingContext) -> AsyncIterator[httpx.AsyncClient]:
    # The app's client when it has one (its lifespan); tests may run without it.
    if ctx.hub is not None:
        yield ctx.hub
        return
    async with httpx.AsyncClient(timeout=30.0) as c:
        yield c


def _service_headers(ctx: ProcessingContext) -> dict[str, str]:
    return {"Authorization": f"token {ctx.token}"}


def job_note(job_id: str, purpose: str) -> str:
    """The note of a token minted for job ``job_id`` and ``purpose`` (what the hub writes)."""
    return f"{NOTE_PREFIX} job {job_id} ({purpose})"


def parse_note(note: str) -> tuple[str, str | None] | None:
    """(job id, purpose or None when the note names none) of a job's note; None if it is
    not one."""
    m = _JOB_NOTE.fullmatch(note or "")
    return (m.group(1), m.group(2)) if m else None


def purpose_of(scopes: tuple[str, ...] | list[str]) -> str:
    """The purpose whose scopes are exactly ``scopes`` (ValueError if none)."""
    wanted = tuple(dict.fromkeys(scopes))
    for purpose, allowed in PURPOSE_SCOPES.items():
        if wanted == allowed:
            return purpose
    raise ValueError(f"no token purpose has the scopes {list(wanted)}")


async def mint(
    ctx: ProcessingContext,
    user: str,
    expires_in: int,
    note: str,
    scopes: tuple[str, ...] = RUNNER_SCOPES,
) -> tuple[str, str]:
    """A new token of ``user`` for the job that ``note`` names (``twinhub processing job
    <id>``, :func:`job_note`), expiring in ``expires_in`` seconds: (token, its id).
    ``scopes`` say its purpose (:data:`PURPOSE_SCOPES`: the runner's, or the gateway's alone
    to stop the job's clusters); the hub checks the job and writes the note. Raises
    :class:`HubTokenError` when the hub refuses or the note names no job (nothing asked);
    ValueError for scopes of no purpose."""
    parsed = parse_note(note)
    if parsed is None:
        raise HubTokenError(f"no job token for {note[:100]!r}: it names no job id")
    job, named = parsed
    purpose = purpose_of(scopes)
    if named is not None and named != purpose:
        raise ValueError(f"the note says {named!r}, the scopes {purpose!r}")
    url = f"{ctx.hub_api}/{HUB_TOKENS_PATH}/{quote(user, safe='')}"
    body = {"job": job, "purpose": purpose, "expires_in": int(expires_in)}
    async with _client(ctx) as c:
        try:
            r = await c.post(url, json=body, headers=_service_headers(ctx))
        except httpx.HTTPError as e:
            raise HubTokenError(f"the hub did not answer a token request for {user}: {e}") from e
    if r.status_code != 201:
        raise HubTokenError(f"the hub refused a token for {user} ({r.status_code}): {r.text[:300]}")
    data = r.json()
    return str(data["token"]), str(data["id"])


async def revoke(ctx: ProcessingContext, user: str, token_id: str) -> bool:
    """Revoke ``user``'s token ``token_id``; True if it existed. Idempotent; ``""`` is a
    no-op. Raises :class:`HubTokenError` on any other answer than 204/404."""
    if not token_id:
        return False
    url = f"{ctx.hub_api}/{HUB_TOKENS_PATH}/{quote(user, safe='')}/{quote(token_id, safe='')}"
    async with _client(ctx) as c:
        try:
            r = await c.delete(url, headers=_service_headers(ctx))
        except httpx.HTTPError as e:
            raise HubTokenError(f"the hub did not answer revoking {token_id} of {user}: {e}") from e
    if r.status_code == 404:
        return False
    if r.status_code != 204:
        raise HubTokenError(
            f"the hub refused revoking token {token_id} of {user} ({r.status_code}): {r.text[:300]}"
        )
    return True


async def stop_job_cluster(
    ctx: ProcessingContext, user: str, cluster: str, wait: float = STOP_WAIT, *, job: str
) -> bool:
    """Stop ``user``'s gateway cluster ``cluster`` of job ``job`` (whose stop token the hub
    mints) and wait (at most ``wait`` s) until it is gone; True once gone (or never there).
    ``""``: nothing to stop."""
    if not cluster:
        return True
    token, token_id = await mint(
        ctx, user, STOP_TOKEN_SECONDS, job_note(job, "stop"), PURPOSE_SCOPES["stop"]
    )
    url = f"{gateway_url(ctx.rt)}/api/v1/clusters/{quote(cluster, safe='')}"
    headers = {"Authorization": f"jupyterhub {token}"}
    try:
        async with _client(ctx) as c:
            r = await c.delete(url, headers=headers)
            if r.status_code not in (200, 204, 404):
                log.warning("Gateway refused stopping %s of %s: %s", cluster, user, r.text[:200])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while True:
                r = await c.get(url, headers=headers)
                if r.status_code == 404 or (
                    r.status_code == 200 and r.json().get("status") in _ENDED
                ):
                    return True
                if loop.time() >= deadline:
                    log.warning("Cluster %s of %s still stopping after %.0f s", cluster, user, wait)
                    return False
                await asyncio.sleep(0.5)
    except httpx.HTTPError as e:
        # A gateway that is down has no cluster left to stop (it stops them all on exit).
        log.warning("Gateway unreachable stopping %s of %s: %s", cluster, user, e)
        return False
    finally:
        try:
            await revoke(ctx, user, token_id)
        except HubTokenError as e:
            log.warning("Could not revoke the stop token of %s: %s", user, e)


async def stop_job_clusters(
    ctx: ProcessingContext, user: str, job_id: str, wait: float = STOP_WAIT
) -> list[str]:
    """Stop every active cluster of ``user`` made for job ``job_id`` (option ``job``): the
    runner may have made more than the one it reported, or reported none. The names of
    those stopped; waits (at most ``wait`` s) until they are gone. Raises
    :class:`HubTokenError` when the gateway cannot list them."""
    token, token_id = await mint(
        ctx, user, STOP_TOKEN_SECONDS, job_note(job_id, "stop"), PURPOSE_SCOPES["stop"]
    )
    base = f"{gateway_url(ctx.rt)}/api/v1/clusters/"
    headers = {"Authorization": f"jupyterhub {token}"}
    try:
        async with _client(ctx) as c:
            try:
                r = await c.get(base, headers=headers)  # the token's user's active clusters
                listed = r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError) as e:
                raise HubTokenError(f"the gateway did not list {user}'s clusters: {e}") from e
            if not isinstance(listed, dict):
                raise HubTokenError(
                    f"the gateway refused listing {user}'s clusters ({r.status_code})"
                )
            names = [
                str(name)
                for name, model in listed.items()
                if isinstance(model, dict) and (model.get("options") or {}).get("job") == job_id
            ]
            for name in names:
                r = await c.delete(base + quote(name, safe=""), headers=headers)
                if r.status_code not in (200, 204, 404):
                    log.warning("Gateway refused stopping %s of %s: %s", name, user, r.text[:200])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            left = list(names)
            while left:
                r = await c.get(
                    base, params={"status": "pending,running,stopping"}, headers=headers
                )
                active = r.json() if r.status_code == 200 else {}
                left = [n for n in left if isinstance(active, dict) and n in active]
                if not left or loop.time() >= deadline:
                    break
                await asyncio.sleep(0.5)
            if left:
                log.warning("Clusters %s of %s still stopping after %.0f s", left, user, wait)
            if names:
                log.info("Stopped the clusters of job %s of %s: %s", job_id, user, names)
            return names
    except httpx.HTTPError as e:
        log.warning("Gateway unreachable stopping the clusters of job %s: %s", job_id, e)
        return []
    finally:
        try:
            await revoke(ctx, user, token_id)
        except HubTokenError as e:
            log.warning("Could not revoke the stop token of %s: %s", user, e)

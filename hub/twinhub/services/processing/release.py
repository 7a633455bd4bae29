"""What a job's runner holds, from its start to its release.

- :func:`start_runner`: the runner's hub token is minted (and its id stored with the job)
  before the backend starts anything, and revoked if the start fails;
- :func:`release`: freeing what an ended job held: its runner (and what the backend keeps
  of it: its job directory), its clusters, its outputs (unless it succeeded), its hub
  token. Each step on its own: one failing (a gateway down) is reported, the others still
  done."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from datetime import timedelta
from typing import Any

from . import hubtokens, outputs, store
from .context import ProcessingContext

log = logging.getLogger("twinhub.processing")

#: Seconds a runner that reported its end has to exit before it is stopped.
EXIT_GRACE = 10.0
#: Seconds the runner's hub token outlives the job's wall time and report timeout.
TOKEN_MARGIN = 600


async def maybe(value: Any) -> Any:
    """A backend's answer, awaited when it is awaitable (sync local, async Kubernetes)."""
    return await value if inspect.isawaitable(value) else value


async def start_runner(ctx: ProcessingContext, row: dict, secret: str) -> tuple[dict, str] | None:
    """Start job ``row``'s runner (the backend's ``start(job, secret, (token, token_id))``)
    with a new hub token of its owner, whose id is stored with the job first (a crash
    after the mint leaves it to the job's release). (handle, token id); None when the job
    ended meanwhile (the token revoked)."""
    start = ctx.backend.start
    if not _takes_token(start):  # a backend that mints the runner's token itself
        handle = await start(row, secret)
        return handle, str(handle.get("token_id") or "")
    owner = str(row["owner"])
    seconds = int(float(row["wall_time"]) + ctx.settings.report_timeout) + TOKEN_MARGIN
    token, token_id = await hubtokens.mint(
        ctx, owner, seconds, note=f"twinhub processing job {row['id']}"
    )
    try:
        kept = await asyncio.to_thread(
            store.update_job, ctx.db_url, row["id"], expect=("running",), token_id=token_id
        )
        if kept is None:
            await hubtokens.revoke(ctx, owner, token_id)
            return None
        handle = await start(row, secret, (token, token_id))
    except BaseException:
        with contextlib.suppress(Exception):
            await hubtokens.revoke(ctx, owner, token_id)
        raise
    return handle, token_id


def _takes_token(start: Any) -> bool:
    """Whether a backend's ``start`` takes the runner's token (job, secret, token)."""
    try:
        params = inspect.signature(start).parameters.values()
    except (TypeError, ValueError):
        return True
    kinds = [p.kind for p in params]
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return inspect.Parameter.VAR_POSITIONAL in kinds or sum(k in positional for k in kinds) >= 3


async def release(ctx: ProcessingContext, row: dict, *, remove: bool, wait: bool) -> list[str]:
    """Stop the job's runner (``wait``: give one that reported its end
    :data:`EXIT_GRACE` s to exit first) and drop its files, stop its clusters, remove its
    outputs (``remove``), revoke its token; what could not be done, one line each."""
    owner = row["owner"]
    steps: list[tuple[str, Any]] = []
    if row.get("runner") and ctx.backend is not None:
        steps.append(("stop the runner", lambda: _stop_runner(ctx, row["runner"], wait)))
        steps.append(("remove the runner's files", lambda: cleanup(ctx, row["runner"])))
    # Every cluster made for the job, not only the one the runner reported (its word).
    steps.append(("stop the clusters", lambda: _stop_clusters(ctx, owner, row)))
    if remove and row.get("output_prefix"):
        steps.append(
            ("remove the outputs", lambda: outputs.remove(ctx.rt, owner, row["output_prefix"]))
        )
    if row.get("token_id"):
        steps.append(("revoke the token", lambda: hubtokens.revoke(ctx, owner, row["token_id"])))
    problems = []
    for what, step in steps:
        try:
            await step()
        except Exception as e:
            log.warning("job %s: cannot %s: %s", row["id"], what, e)
            problems.append(f"cannot {what}: {e}")
    return problems


async def cleanup(ctx: ProcessingContext, handle: dict | None) -> None:
    """What the backend keeps of a stopped runner (its job directory, its log) removed,
    when the backend can (``cleanup``)."""
    drop = getattr(ctx.backend, "cleanup", None)
    if handle and drop is not None:
        await maybe(drop(handle))


async def _stop_clusters(ctx: ProcessingContext, owner: str, row: dict) -> None:
    reported = row.get("cluster") or ""
    try:
        stopped = await hubtokens.stop_job_clusters(ctx, owner, row["id"])
    except Exception:
        if reported:  # the one the runner named still goes
            with contextlib.suppress(Exception):
                await hubtokens.stop_job_cluster(ctx, owner, reported, job=row["id"])
        raise
    if reported and reported not in stopped:
        await hubtokens.stop_job_cluster(ctx, owner, reported, job=row["id"])


async def _stop_runner(ctx: ProcessingContext, handle: dict, wait: bool) -> None:
    if wait:
        deadline = time.monotonic() + EXIT_GRACE
        while time.monotonic() < deadline and await maybe(ctx.backend.alive(handle)):
            await asyncio.sleep(0.2)
    await ctx.backend.stop(handle)


async def read_backend(ctx: ProcessingContext) -> None:
    """Let a backend with a state to read (Kubernetes: its pods' phases) read it now, before
    runners are judged alive or lost (a restart)."""
    refresh = getattr(ctx.backend, "refresh", None)
    if refresh is None:
        return
    try:
        await refresh()
    except Exception as e:
        log.warning("the job backend's state is unreadable now (%s): runners count as alive "
                    "until the watch reads it", e)  # fmt: skip


async def unfinished(ctx: ProcessingContext) -> list[dict]:
    """Jobs that ended in the last day whose runner the backend still holds something of
    (the runner's charge, its directory or cgroup): their release was cut short by a
    restart; releasing again is harmless."""
    held = getattr(ctx.backend, "holds", None)
    if held is None:
        return []
    since = store.now() - timedelta(days=1)
    rows = await asyncio.to_thread(store.ended_jobs_since, ctx.db_url, since)
    return [r for r in rows if r["runner"] and await asyncio.to_thread(held, r["runner"])]

"""Freeing what an ended job held: its runner, its cluster, its outputs (unless it
succeeded), its hub token. Each step on its own: one failing (a gateway down) is
reported, the others still done."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any

from . import hubtokens, outputs
from .context import ProcessingContext

log = logging.getLogger("twinhub.processing")

#: Seconds a runner that reported its end has to exit before it is stopped.
EXIT_GRACE = 10.0


async def maybe(value: Any) -> Any:
    """A backend's answer, awaited when it is awaitable (sync local, async Kubernetes)."""
    return await value if inspect.isawaitable(value) else value


async def release(ctx: ProcessingContext, row: dict, *, remove: bool, wait: bool) -> list[str]:
    """Stop the job's runner (``wait``: give one that reported its end
    :data:`EXIT_GRACE` s to exit first), stop its cluster, remove its outputs (``remove``),
    revoke its token; what could not be done, one line each."""
    owner = row["owner"]
    steps: list[tuple[str, Any]] = []
    if row.get("runner") and ctx.backend is not None:
        steps.append(("stop the runner", lambda: _stop_runner(ctx, row["runner"], wait)))
    if row.get("cluster"):
        steps.append(
            ("stop the cluster", lambda: hubtokens.stop_job_cluster(ctx, owner, row["cluster"]))
        )
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


async def _stop_runner(ctx: ProcessingContext, handle: dict, wait: bool) -> None:
    if wait:
        deadline = time.monotonic() + EXIT_GRACE
        while time.monotonic() < deadline and await maybe(ctx.backend.alive(handle)):
            await asyncio.sleep(0.2)
    await ctx.backend.stop(handle)

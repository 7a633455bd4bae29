"""Health checks of integrated entries: status and latency, shown on entries and the landing
page.

Every ``health_interval`` seconds each integrated entry's upstream is fetched once through the
outbound guard, with the address rule the admin set at integration (``allow_private``); an
entry without an upstream has its first endpoint checked, always with public addresses only:
the provider may edit that URL, the admin approved only the upstream. At most 16 at a time:

- ``up``: an answer below 500 (a 401 or a redirect elsewhere is a service that answers);
- ``down``: 5xx, no connection, too slow, or the guard refused the address (the gateway
  could not reach it either); ``detail`` says which.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ... import outbound
from . import metrics, store
from .context import RegistryContext

log = logging.getLogger("twinhub.registry.health")

#: Checks running at once.
CONCURRENCY = 16
#: Bytes of an answer read: only its status matters.
MAX_BYTES = 64 * 1024


def target(row: dict[str, Any]) -> tuple[str, bool]:
    """(URL to check, allow_private) of a published row: its upstream under the admin's
    rule, else its first endpoint under the public-only rule ("" : nothing to check)."""
    if row.get("upstream"):
        return row["upstream"], bool(row.get("allow_private"))
    endpoints = (row.get("entry") or {}).get("endpoints") or []
    return (endpoints[0].get("url", "") if endpoints else ""), False


async def check(url: str, *, allow_private: bool, timeout: float) -> dict[str, Any]:
    """One check: ``{"status", "latency_ms", "http_status", "detail"}``."""
    t0 = time.monotonic()
    try:
        r = await outbound.fetch(
            url, allow_private=allow_private, timeout=timeout, max_bytes=MAX_BYTES
        )
    except outbound.OutboundRefused as e:
        ms = round((time.monotonic() - t0) * 1000, 1)
        metrics.OUTBOUND_REFUSED.labels(reason=e.reason).inc()
        if e.reason in ("redirect", "size"):
            # it answered (a redirect off its origin, a large page): it is up
            return {"status": "up", "latency_ms": ms, "http_status": None, "detail": str(e)}
        return {"status": "down", "latency_ms": None, "http_status": None, "detail": str(e)}
    except Exception as e:  # anything else the fetch raised: down, and say what
        return {
            "status": "down",
            "latency_ms": None,
            "http_status": None,
            "detail": f"check failed: {type(e).__name__}: {e}"[:500],
        }
    ms = round(r.elapsed_s * 1000, 1)
    if r.status >= 500:
        detail = f"answered {r.status}"
        return {"status": "down", "latency_ms": ms, "http_status": r.status, "detail": detail}
    return {"status": "up", "latency_ms": ms, "http_status": r.status, "detail": ""}


async def check_all(ctx: RegistryContext) -> dict[str, dict[str, Any]]:
    """Check every integrated entry once (concurrently, bounded) and record the results."""
    rows = await asyncio.to_thread(store.published, ctx.db_url)
    s = ctx.settings
    timeout = max(0.5, min(s.fetch_timeout, s.health_interval))
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(row: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        url, allow_private = target(row)
        if not url:
            return None  # a dataset without endpoints: nothing to check
        async with gate:
            result = await check(url, allow_private=allow_private, timeout=timeout)
        metrics.HEALTH_CHECKS.labels(status=result["status"]).inc()
        await asyncio.to_thread(store.record_health, ctx.db_url, row["slug"], **result)
        return row["slug"], result

    done = await asyncio.gather(*(one(r) for r in rows))
    return dict(d for d in done if d is not None)


async def health_loop(ctx: RegistryContext) -> None:
    """Forever: :func:`check_all` every ``health_interval`` seconds (a failed round is
    logged; the next one comes as usual)."""
    while True:
        t0 = time.monotonic()
        try:
            await check_all(ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("a round of health checks failed")
        await asyncio.sleep(max(0.0, ctx.settings.health_interval - (time.monotonic() - t0)))

"""The ``cache`` key of ``/twinlab/api/info``: the platform's rolling cache, in aggregate.

Read from ``$TWINHUB_CACHE_URL/stats`` with this server's token (the hub sets both).  Kept
cheap: the standard library only, a short timeout, and the answer reused for a few seconds
(a page polling the info endpoint does not become a stream of requests to the cache).
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from twinlab import environment
from twinlab.serverext.info import info_provider

TIMEOUT = 2.0
REUSE_SECONDS = 5.0
_last: dict[str, Any] = {}


@info_provider("cache")
def _cache() -> dict[str, Any] | None:
    base = environment.cache_url()
    if not base:
        return None
    now = time.monotonic()
    if _last and now - _last["at"] < REUSE_SECONDS and _last["url"] == base:
        return _last["value"]
    req = urllib.request.Request(
        base.rstrip("/") + "/stats",
        headers={"Authorization": f"token {environment.hub_token()}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            value: dict[str, Any] = {"url": base, **json.load(r)}
    except Exception as e:  # the cache down or slow must not break the info document
        value = {"url": base, "error": f"{type(e).__name__}: {e}"}
    _last.update(at=now, url=base, value=value)
    return value

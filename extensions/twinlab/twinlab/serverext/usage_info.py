"""The ``usage`` key of ``/twinlab/api/info``: what this server's user used, and budgets.

Read from the accounting service (``$TWINHUB_ACCOUNTING_URL``, ``api/v1/usage``) with this
server's token, as the ``cache`` key reads the cache: the standard library only, a short
timeout, the answer reused for a few seconds (JupyterLab polls the info endpoint), an
``error`` instead of the figures when the service is down. ``notices`` is what JupyterLab
shows (@twinhub/lab), as the service's budget checks give it: each budget of the user's
projects at 80 % or more (level, figures, message, ``stop_at`` when servers charged to it
stop) and the user's servers stopped for a budget in the last day (``kind`` "stopped").
"""

from __future__ import annotations

import time
from typing import Any

from twinlab.serverext.info import info_provider
from twinlab.usage.client import UsageError, fetch_json, service_url

TIMEOUT = 2.0
REUSE_SECONDS = 5.0
_last: dict[str, Any] = {}


@info_provider("usage")
def _usage() -> dict[str, Any] | None:
    base = service_url()
    if not base:
        return None
    now = time.monotonic()
    if _last and now - _last["at"] < REUSE_SECONDS and _last["url"] == base:
        reused: dict[str, Any] = _last["value"]
        return reused
    try:
        # all time (the budgets are allocations), by month: the series is not reported here
        doc = fetch_json({"step": "month"}, timeout=TIMEOUT)
        budgets = doc.get("budgets") or {}
        value: dict[str, Any] = {
            "url": base,
            "user": doc.get("user"),
            "start": doc.get("start"),
            "end": doc.get("end"),
            "totals": doc.get("totals") or {},
            "methods": doc.get("methods") or {},
            "budgets": budgets,
            "notices": doc.get("notices") or [],
        }
    except (UsageError, ValueError, TypeError, AttributeError) as e:
        # the service down, slow or odd must not break the info document
        value = {"url": base, "error": str(e) if isinstance(e, UsageError) else repr(e)}
    _last.update(at=now, url=base, value=value)
    return value

"""twinlab.usage: what one used, from the platform's accounting service.

- ``twinlab.usage(start=None, end=None, step="day", project=None)`` in a notebook: a pandas
  DataFrame, one row per interval (index: its start, UTC), one column per total
  (``cpu_core_hours`` ... ``co2e_kg``); the answer's totals, methods and budgets are in
  ``df.attrs``.
- the "Usage" page (``static/``, a Launcher tile like "Data lake"): usage over time by
  resource, each project's budget left, energy and CO2e with their methods. Served by
  ``python -m twinlab.usage`` behind jupyter-server-proxy (:func:`server_process`), which
  also asks the service on the page's behalf with the server's token.

The package itself is callable (``twinlab.usage(...)`` is :func:`usage`): the function and
the package share the name users type. See docs/usage.md.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from twinlab.usage.client import STEPS, TOTALS, UsageError, fetch_json

__all__ = ["TOTALS", "UsageError", "server_process", "usage"]

STATIC = Path(__file__).parent / "static"
#: The proxied path under the user server's base URL (the entry point's name).
NAME = "usage"


def usage(
    start: Any = None,
    end: Any = None,
    step: str | int | float | None = "day",
    project: str | None = None,
    *,
    user: str | None = None,
    timeout: float = 30.0,
) -> Any:
    """Your usage (or a project's, ``project=``) as a pandas DataFrame.

    ``start``/``end``: datetimes, dates or ISO 8601 strings (default: from your first
    record to now); ``step``: "hour", "day", "month" or seconds. Rows are intervals
    (index: their start, UTC), columns the totals in :data:`TOTALS` (floats, unrounded).
    ``df.attrs`` holds the answer's ``totals``, ``methods`` (how each figure was measured:
    ``model`` is an estimate, ``rapl``/``nvml`` are measured) and ``budgets``.
    ``user``: another user's usage (admins only; with ``project``: theirs in it).

    Raises :class:`UsageError` with the reason: no accounting service, the service not
    reachable, or its refusal (a project you are not in: 403 naming the scope).
    """
    if isinstance(step, str) and step not in STEPS:
        raise ValueError(f"step must be one of {', '.join(STEPS)} or seconds, not {step!r}")
    if isinstance(step, (int, float)) and not step > 0:
        raise ValueError(f"step must be a positive number of seconds, not {step!r}")
    # pandas costs ~0.3 s to import: only a notebook asking for usage pays it, not the
    # server extension (which imports this package's client)
    import pandas as pd

    doc = fetch_json(
        {"start": start, "end": end, "step": step, "project": project, "user": user},
        timeout=timeout,
    )
    rows = doc.get("series") or []
    index = pd.DatetimeIndex(pd.to_datetime([r["start"] for r in rows], utc=True), name="start")
    df = pd.DataFrame(
        {key: [float(r.get(key) or 0.0) for r in rows] for key in TOTALS},
        index=index,
        columns=list(TOTALS),
    )
    df.attrs.update(
        {
            "scope": {k: doc[k] for k in ("user", "project") if k in doc},
            "start": doc.get("start"),
            "end": doc.get("end"),
            "step": step,
            "totals": doc.get("totals", {}),
            "methods": doc.get("methods", {}),
            "budgets": doc.get("budgets", {}),
        }
    )
    return df


def server_process() -> dict[str, Any]:
    """jupyter-server-proxy's settings for the page server (a Launcher tile "Usage")."""
    return {
        # a Unix socket in a private directory, as the Data lake page (twinlab.browse): a
        # loopback port could be taken first by another user's process
        "command": [sys.executable, "-m", "twinlab.usage", "--unix-socket", "{unix_socket}"],
        "unix_socket": True,
        "timeout": 30,
        "absolute_url": False,
        "launcher_entry": {
            "enabled": True,
            "title": "Usage",
            "icon_path": str(STATIC / "icon.svg"),
            "category": "Notebook",  # beside "Data lake" (see twinlab.browse)
        },
        "new_browser_tab": True,
    }


class _CallableModule(types.ModuleType):
    """``twinlab.usage(...)`` calls :func:`usage`: importing the package (its page server,
    its client) must not hide the function users call by the same name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return usage(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

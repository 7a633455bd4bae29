"""The accounting service's usage API, asked with this server's token (standard library only).

Shared by ``twinlab.usage()`` (a notebook), the Usage page's server and the info endpoint's
``usage`` key: one place builds the URL, sends the token and turns a refusal into a message
a person can act on (the service's own 403 text names the scope that is missing).
"""

from __future__ import annotations

import datetime as _dt
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

from twinlab import environment
from twinlab.contract import ENV_ACCOUNTING_URL

#: The service's name in ``$TWINHUB_SERVICES`` (a fallback for its URL).
SERVICE: Final = "accounting"
#: The usage endpoint under the service's root.
USAGE_PATH: Final = "api/v1/usage"
#: The totals every answer carries (the columns of ``twinlab.usage()``), in display order.
TOTALS: Final = (
    "cpu_core_hours",
    "memory_gib_hours",
    "gpu_hours",
    "dask_worker_hours",
    "storage_gib_days",
    "energy_kwh",
    "co2e_kg",
)
#: Steps the API rolls usage up by (it also takes a number of seconds).
STEPS: Final = ("hour", "day", "month")
#: Query parameters passed on to the service; nothing else is.
PARAMS: Final = ("user", "project", "start", "end", "step", "format")


class UsageError(RuntimeError):
    """The usage could not be read; the message says why (and ``status`` the HTTP status,
    0 when the service was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def service_url() -> str:
    """The accounting service's root as the hub set it ("" when none: accounting is off or
    this is not a twinhub server)."""
    url = environment.text(ENV_ACCOUNTING_URL) or environment.services().get(SERVICE, "")
    return url.rstrip("/") + "/" if url else ""


def when(value: Any) -> str | None:
    """``value`` (None, an ISO 8601 string, a ``date`` or ``datetime``) as the API's text;
    a naive datetime is taken as UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return str(value.isoformat())
    if isinstance(value, _dt.date):
        return str(value.isoformat())
    if isinstance(value, str):
        return value
    raise TypeError(f"a time must be a datetime, a date or an ISO 8601 string, not {value!r}")


def query(params: dict[str, Any]) -> str:
    """The query string of ``params`` (the known ones, those not None), times as text."""
    out: dict[str, str] = {}
    for key in PARAMS:
        value = params.get(key)
        if key in ("start", "end"):
            value = when(value)
        if value is not None and value != "":
            out[key] = str(value)
    return urllib.parse.urlencode(out)


def _refusal(e: urllib.error.HTTPError) -> str:
    """The service's own message of an error answer (JSON ``description``, twinhub's error
    body, or ``message``/``detail``), else its first bytes."""
    try:
        raw = e.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        raw = ""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("description", "message", "detail", "error"):
            text = doc.get(key)
            if isinstance(text, str) and text:
                return text
    return raw.strip()[:300] or str(e.reason)


def fetch(params: dict[str, Any] | None = None, *, timeout: float = 30.0) -> tuple[str, bytes]:
    """GET the usage API with ``params``; returns (content type, body).

    Raises :class:`UsageError`: no service URL, the service not reachable, or an error
    answer (its status and the service's message, e.g. the scope a 403 names).
    """
    base = service_url()
    if not base:
        raise UsageError(
            f"no accounting service: ${ENV_ACCOUNTING_URL} is not set (accounting is off on "
            "this platform, or this is not a twinhub server)"
        )
    qs = query(params or {})
    url = base + USAGE_PATH + ("?" + qs if qs else "")
    req = urllib.request.Request(url, headers={"Authorization": f"token {environment.hub_token()}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        with e:
            message = _refusal(e)
        raise UsageError(f"the accounting service refused ({e.code}): {message}", e.code) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UsageError(f"the accounting service is not reachable at {base}: {reason}") from None


def fetch_json(params: dict[str, Any] | None = None, *, timeout: float = 30.0) -> dict[str, Any]:
    """The usage API's JSON answer (see :func:`fetch`)."""
    _, body = fetch({**(params or {}), "format": "json"}, timeout=timeout)
    try:
        doc = json.loads(body)
    except ValueError:
        raise UsageError(f"the accounting service answered no JSON: {body[:200]!r}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"the accounting service answered {type(doc).__name__}, not an object")
    return doc

"""Admission of a job beyond its inputs' JSON Schemas: the lake items they name exist
(asked of the STAC API), the time range and the sizes are within the platform's limits,
and what a user process's job will run (its owner, version and code, fixed at submission).
Refusals are :class:`~twinhub.services.asgi.BadRequest` (400; 409 a process that changed;
503 when the lake cannot be asked)."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from twinlab.processing import schemas

from ...errors import PlatformError
from ..asgi import BadRequest
from ..datalake import StacPart
from . import store
from .config import TwinhubProcessing
from .context import ProcessingContext
from .store import utc

#: Why a user process's job does not run the code there now (the job fails with it).
CHANGED = "the process changed since it was submitted"


class ProcessChanged(BadRequest):
    """The user process a job was submitted for is not the one stored now."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(CHANGED + (f" ({detail})" if detail else ""), 409)


def _fingerprint(up: dict[str, Any]) -> dict[str, Any]:
    return {
        "owner": up["owner"],
        "version": int(up["version"]),
        "sha256": hashlib.sha256(up["code"]).hexdigest(),
    }


def snapshot(db_url: str, process: dict) -> dict[str, Any] | None:
    """What a job of ``process`` will run, fixed at submission: a user process's
    ``{"owner", "version", "sha256"}`` (None for a templated one). The description the
    caller was shown must still be the stored one (another user may have taken the id
    meanwhile): else 409. Blocking: run it in a thread."""
    pid = str(process.get("id"))
    if pid in schemas.TEMPLATED:
        return None
    up = store.user_process_code(db_url, pid)
    shown = (process.get("twinhub:owner"), str(process.get("version")))
    if up is None or shown != (up["owner"], str(up["version"])):
        raise BadRequest(f"process {pid!r} changed while it was submitted; submit it again", 409)
    return _fingerprint(up)


def runnable(db_url: str, row: dict[str, Any]) -> tuple[dict, str | None]:
    """The description and code (base64; None for a templated process) of job ``row``'s
    process: a user process's only while its owner, version and code are the ones fixed at
    submission (:func:`snapshot`), else :class:`ProcessChanged`. Blocking."""
    pid = row["process_id"]
    if pid in schemas.TEMPLATED:
        return schemas.TEMPLATED[pid], None
    fixed = (row.get("request") or {}).get("process")
    up = store.user_process_code(db_url, pid)
    if up is None:
        raise ProcessChanged("it was removed")
    if not isinstance(fixed, dict) or _fingerprint(up) != fixed:
        raise ProcessChanged(f"now version {up['version']} of {up['owner']}")
    return up["description"], base64.b64encode(up["code"]).decode("ascii")


async def check_lake(ctx: ProcessingContext, process: dict, inputs: dict) -> dict:
    """The lake items the inputs name exist (in one collection each, or the one the
    ``collection`` input names) and the time range is within ``max_time_range_days``
    (an open end bounded by the items' own extent). The inputs, with ``collection``
    filled in when the process takes one and the items gave it."""
    names = [n for n in process.get("twinhub:item_inputs") or () if inputs.get(n)]
    collection = inputs.get("collection") or None
    found = []
    for name in names:
        ids = inputs[name] if isinstance(inputs[name], list) else [inputs[name]]
        for item_id in ids:
            found.append(await _find_item(ctx, name, str(item_id), collection))
    colls = {f.get("collection") for f in found}
    takes = "collection" in (process.get("inputs") or {})
    if takes and not collection and len(colls) == 1 and None not in colls:
        inputs = {**inputs, "collection": colls.pop()}
    _check_range(ctx.settings, process, inputs, found)
    return inputs


async def _find_item(
    ctx: ProcessingContext, name: str, item_id: str, collection: str | None
) -> dict:
    """The STAC item ``item_id`` (input ``name``), asked of the STAC API straight with
    the service's token (every user may read the lake's items)."""
    hub = ctx.hub
    try:
        base = StacPart().api_url(ctx.rt)
    except (KeyError, PlatformError):
        base = ""
    if hub is None or not base:
        raise BadRequest(f"input {name!r}: the data lake is not running here", 503)
    if "," in item_id or not item_id.strip():
        raise BadRequest(f"input {name!r}: unknown item {item_id!r}", 400)
    try:
        if collection:
            url = f"{base}collections/{quote(collection, safe='')}/items/"
            r = await hub.get(url + quote(item_id, safe=""), timeout=20.0)
            features = [r.json()] if r.status_code == 200 else []
        else:
            r = await hub.get(f"{base}search", params={"ids": item_id, "limit": 10}, timeout=20.0)
            features = r.json().get("features", []) if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        raise BadRequest(f"input {name!r}: the data lake did not answer: {e}", 503) from None
    if r.status_code >= 500 or r.status_code in (401, 403):
        raise BadRequest(
            f"input {name!r}: the data lake refused looking {item_id!r} up ({r.status_code})",
            503,
        )
    features = [f for f in features if isinstance(f, dict) and f.get("id") == item_id]
    where = f" in collection {collection!r}" if collection else ""
    if not features:
        raise BadRequest(f"input {name!r}: unknown item {item_id!r}{where}", 400)
    colls = sorted({str(f.get("collection")) for f in features})
    if len(colls) > 1:
        raise BadRequest(
            f"input {name!r}: item {item_id!r} is in several collections "
            f"({', '.join(colls)}); name one with the input 'collection'",
            400,
        )
    return features[0]


def _check_range(
    settings: TwinhubProcessing, process: dict, inputs: dict, items: list[dict]
) -> None:
    """The job's time range within ``max_time_range_days``: its ``datetime`` input, an open
    end (or no ``datetime`` at all: every time step) bounded by the items' own extent
    (refused when an item has none)."""
    dt_name = process.get("twinhub:datetime_input")
    value = inputs.get(dt_name) if dt_name else None
    start, end = schemas.parse_datetime(value) if isinstance(value, str) else (None, None)
    starts, ends = [], []
    for item in items:
        p = item.get("properties") or {}
        starts.append(_when(p.get("start_datetime") or p.get("datetime")))
        ends.append(_when(p.get("end_datetime") or p.get("datetime")))
    # An open side is bounded by the items' extent; an item without a usable one (no
    # datetime, or one that does not parse) would leave the range unbounded: refused.
    for i, item in enumerate(items):
        if (start is None and starts[i] is None) or (end is None and ends[i] is None):
            ask = f"give {dt_name!r} with both ends" if dt_name else "it cannot be bounded"
            raise BadRequest(
                f"item {str(item.get('id'))[:256]!r} has no usable time extent (datetime or "
                f"start_datetime/end_datetime) to bound the job's time range: {ask}, "
                "e.g. 2020-01-01/2020-01-31",
                400,
            )
    if start is None and starts:
        start = min(starts)
    if end is None and ends:
        end = max(ends)
    limit = settings.max_time_range_days
    if start is not None and end is not None and end - start > timedelta(days=limit):
        days = (end - start).total_seconds() / 86400
        if isinstance(value, str):
            what = f"input {dt_name!r}: the time range"
        else:  # the job reads every time step of its items
            what = "the items' time range" + (f" (no {dt_name!r} given)" if dt_name else "")
        raise BadRequest(
            f"{what} spans {days:.0f} days; at most {limit:g} days (max_time_range_days)", 400
        )


def check_limits(settings: TwinhubProcessing, process: dict, inputs: dict) -> None:
    """What the schemas cannot bound: the platform's limits on points and grids."""
    points = inputs.get("points")
    if isinstance(points, list) and len(points) > settings.max_points:
        raise BadRequest(
            f"input 'points': {len(points)} points; at most {settings.max_points} (max_points)",
            400,
        )
    target = inputs.get("target")
    if process.get("id") == "regrid" and isinstance(target, dict):
        cells = schemas.target_cells(target)
        if cells > settings.max_target_cells:
            raise BadRequest(
                f"input 'target': the grid has {cells} cells; at most "
                f"{settings.max_target_cells} (max_target_cells)",
                400,
            )


def _when(value: Any) -> datetime | None:
    """A STAC datetime property, or None."""
    if not isinstance(value, str):
        return None
    try:
        return utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None

"""Admission of a job's inputs beyond their JSON Schemas: the lake items they name exist
(asked of the STAC API), the time range and the sizes are within the platform's limits.
Refusals are :class:`~twinhub.services.asgi.BadRequest` (400; 503 when the lake cannot be
asked)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from twinlab.processing import schemas

from ...errors import PlatformError
from ..asgi import BadRequest
from ..datalake import StacPart
from .config import TwinhubProcessing
from .context import ProcessingContext
from .store import utc


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
    dt_name = process.get("twinhub:datetime_input")
    value = inputs.get(dt_name) if dt_name else None
    if not isinstance(value, str):
        return
    start, end = schemas.parse_datetime(value)
    starts, ends = [], []
    for item in items:
        p = item.get("properties") or {}
        starts.append(_when(p.get("start_datetime") or p.get("datetime")))
        ends.append(_when(p.get("end_datetime") or p.get("datetime")))
    if start is None and starts and None not in starts:
        start = min(starts)
    if end is None and ends and None not in ends:
        end = max(ends)
    limit = settings.max_time_range_days
    if start is not None and end is not None and end - start > timedelta(days=limit):
        days = (end - start).total_seconds() / 86400
        raise BadRequest(
            f"input {dt_name!r}: the time range spans {days:.0f} days; at most "
            f"{limit:g} days (max_time_range_days)",
            400,
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

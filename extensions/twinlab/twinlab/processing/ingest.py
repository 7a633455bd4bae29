"""Ingestion of a job's outputs: their size, their STAC item in the user's collection.

The item (id = the job id) goes into the collection ``<prefix><user>`` (made on first use:
the STAC API's guard makes its creator the owner), with the user's token, so
``twinlab.datalake.search`` finds it and ``twinlab.datalake.open`` opens it. A collection of
that id owned by anyone else (``twinhub:owner``: made before the guard reserved the id) is
never published into.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

import httpx
import pystac

from twinlab.contract import FIELD_OWNER, FIELD_VARIABLE

from .schemas import MEDIA_CSV, MEDIA_JSON, MEDIA_NETCDF, MEDIA_ZARR

PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
GLOBAL_BBOX = [-180.0, -90.0, 180.0, 90.0]
_TITLES = {MEDIA_ZARR: "Zarr", MEDIA_NETCDF: "NetCDF", MEDIA_CSV: "CSV", MEDIA_JSON: "JSON"}


class IngestError(RuntimeError):
    """The STAC API refused the collection or the item (the message says why)."""


# -- outputs in the bucket --------------------------------------------------------------
def output_bytes(fs: Any, prefix: str) -> int:
    """Bytes stored under the job's output prefix (0 when nothing was written)."""
    if fs is None or not fs.exists(prefix):
        return 0
    return int(sum(info.get("size") or 0 for info in fs.find(prefix, detail=True).values()))


def remove_outputs(fs: Any, prefix: str) -> None:
    """Remove everything under the job's output prefix."""
    if fs is not None and fs.exists(prefix):
        fs.rm(prefix, recursive=True)


# -- the item ------------------------------------------------------------------------------
def _box_polygon(w: float, s: float, e: float, n: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def footprint(inputs: Mapping[str, Any]) -> tuple[dict, list[float]]:
    """(GeoJSON geometry, bbox) of what the job covered: its bbox, polygon or points
    input, else the globe."""
    if inputs.get("bbox"):
        w, s, e, n = (float(v) for v in inputs["bbox"])
        if w > e:  # across the antimeridian: STAC's bbox says so, the geometry is 2 boxes
            geom = {
                "type": "MultiPolygon",
                "coordinates": [
                    _box_polygon(w, s, 180.0, n)["coordinates"],
                    _box_polygon(-180.0, s, e, n)["coordinates"],
                ],
            }
            return geom, [w, s, e, n]
        return _box_polygon(w, s, e, n), [w, s, e, n]
    if inputs.get("polygon"):
        ring = [[_lon180(p[0]), float(p[1])] for p in inputs["polygon"]["coordinates"][0]]
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        geom = {"type": "Polygon", "coordinates": [ring]}
        return geom, [min(lons), min(lats), max(lons), max(lats)]
    if inputs.get("points"):
        pts = [[_lon180(p[0]), float(p[1])] for p in inputs["points"]]
        lons, lats = [p[0] for p in pts], [p[1] for p in pts]
        return {"type": "MultiPoint", "coordinates": pts}, [
            min(lons),
            min(lats),
            max(lons),
            max(lats),
        ]
    return _box_polygon(*GLOBAL_BBOX), list(GLOBAL_BBOX)


def _lon180(lon: float) -> float:
    lon = float(lon)
    return lon - 360.0 if lon > 180.0 else lon


def _utc(value: Any) -> _dt.datetime | None:
    """An aware UTC datetime of a datetime64, a datetime or an RFC 3339 string (NaT: None)."""
    import pandas as pd  # pandas comes with xarray: loaded when a job has times

    t = pd.Timestamp(value)
    if pd.isna(t):
        return None
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.to_pydatetime()


def build_item(
    spec: Mapping[str, Any],
    files: Mapping[str, Mapping[str, str]],
    *,
    sources: list[str],
    time_range: tuple[Any, Any] | None,
    finished: _dt.datetime | None = None,
) -> dict:
    """The STAC item of a job's outputs (a dict ready to POST)."""
    process = spec.get("process") or {}
    inputs = dict(spec.get("inputs") or {})
    geometry, bbox = footprint(inputs)
    finished = finished or _dt.datetime.now(_dt.UTC)
    start = end = None
    if time_range is not None:
        start, end = _utc(time_range[0]), _utc(time_range[1])
        if start is None or end is None:  # NaT: data without a time
            start = end = None
    props: dict[str, Any] = {
        "title": f"{process.get('title') or process.get('id')} ({spec['id']})",
        "processing:lineage": (
            f"twinhub processing job {spec['id']}: process {process.get('id')!r} version "
            f"{process.get('version')} run by {spec.get('owner')} on {len(sources)} lake "
            "item(s)"
        ),
        "processing:software": {"twinlab.processing": str(process.get("version") or "")},
        "twinhub:provenance": {
            "process": process.get("id"),
            "process_version": process.get("version"),
            "inputs": inputs,
            "job": spec["id"],
            "source_items": list(sources),
        },
        "created": finished.isoformat().replace("+00:00", "Z"),
    }
    variable = inputs.get("variable")
    if not variable and len(inputs.get("variables") or []) == 1:
        variable = inputs["variables"][0]
    if isinstance(variable, str):
        props["param"] = variable  # what twinlab.datalake.open reads by default
    # an interval when the data spans time; datetime its first instant (or the job's end)
    # even then, as the lake's own items: pgstac serves a null datetime as no key at all
    span = start is not None and end is not None and start != end
    dt = start or finished
    item = pystac.Item(
        id=spec["id"],
        geometry=geometry,
        bbox=bbox,
        datetime=dt,
        properties=props,
        start_datetime=start if span else None,
        end_datetime=end if span else None,
        collection=spec.get("collection"),
        stac_extensions=[PROCESSING_EXTENSION],
    )
    for name, f in files.items():
        asset = pystac.Asset(
            href=f["href"],
            media_type=f.get("type"),
            roles=["data"],
            title=f"{name} ({_TITLES.get(f.get('type') or '', f.get('type'))})",
        )
        if isinstance(variable, str):
            asset.extra_fields[FIELD_VARIABLE] = variable
        item.add_asset(name, asset)
    out = item.to_dict(include_self_link=False, transform_hrefs=False)
    out["links"] = [link for link in out.get("links", []) if link.get("rel") != "collection"]
    return out


def _iso(t: _dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


# -- the STAC API ------------------------------------------------------------------------------
def collection_body(collection_id: str, owner: str) -> dict:
    """A new user collection for job outputs."""
    coll = pystac.Collection(
        id=collection_id,
        description=f"Outputs of {owner}'s processing jobs (twinhub processing service).",
        title=f"{owner}'s processing outputs",
        extent=pystac.Extent(
            pystac.SpatialExtent([list(GLOBAL_BBOX)]),
            pystac.TemporalExtent([[None, None]]),
        ),
        license="other",
        keywords=["processing", "user"],
    )
    return coll.to_dict(include_self_link=False, transform_hrefs=False)


def _refusal(r: httpx.Response, what: str) -> IngestError:
    try:
        detail = r.json().get("description") or r.json().get("detail") or r.text
    except ValueError:
        detail = r.text
    return IngestError(f"the STAC API refused {what} ({r.status_code}): {str(detail)[:300]}")


def _check_owner(r: httpx.Response, cid: str, owner: str) -> None:
    """Refuse a collection (its GET answer ``r``) that is not ``owner``'s own: its items
    would be someone else's to replace or delete, and the job's shown under their name."""
    try:
        found = r.json().get(FIELD_OWNER)
    except (ValueError, AttributeError):
        found = None
    if found != owner:
        whose = f"belongs to {found!r}" if found else "has no owner (the platform's)"
        raise IngestError(
            f"the collection {cid!r} {whose}, not to {owner!r}: outputs are not published "
            "there (an admin can remove or hand over that collection)"
        )


def publish(http: httpx.Client, stac_url: str, token: str, item: dict, owner: str) -> str:
    """Create the collection if missing (refusing one that exists but is not ``owner``'s),
    then POST the item (PUT when it exists, a job run again); returns the item's URL."""
    base = stac_url if stac_url.endswith("/") else stac_url + "/"
    headers = {"Authorization": f"token {token}"} if token else {}
    cid = item["collection"]
    r = http.get(f"{base}collections/{cid}", headers=headers)
    if r.status_code == 404:
        r = http.post(f"{base}collections", json=collection_body(cid, owner), headers=headers)
        if r.status_code == 409:  # made meanwhile (another job): whose is it?
            r = http.get(f"{base}collections/{cid}", headers=headers)
            if r.status_code >= 400:
                raise _refusal(r, f"reading the collection {cid!r}")
            _check_owner(r, cid, owner)
        elif r.status_code not in (200, 201):
            raise _refusal(r, f"the collection {cid!r}")
    elif r.status_code >= 400:
        raise _refusal(r, f"reading the collection {cid!r}")
    else:
        _check_owner(r, cid, owner)
    url = f"{base}collections/{cid}/items"
    r = http.post(url, json=item, headers=headers)
    if r.status_code == 409:
        r = http.put(f"{url}/{item['id']}", json=item, headers=headers)
    if r.status_code >= 400:
        raise _refusal(r, f"the item {item['id']!r}")
    return f"{url}/{item['id']}"

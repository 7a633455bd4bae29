"""Layers from STAC items, no data read (split from :mod:`.layers`, which re-exports these).

:class:`LayerInfo` is what the item alone says: variables (``cube:variables``, else
``param``), valid times (its ``cube:dimensions`` time: values, else extent and step, within
the item's datetimes; at most ``MAX_TIMES``), bbox, grid. Item lookups pick, among the
collections holding an id, the platform's (no ``twinhub:owner``), then the caller's own;
another user's collection never shadows them (an owner that cannot be looked up is never
guessed: 503 when it could change the pick; more than ``MAX_MATCHES`` matches: 422). Listings
name at most ``max_variables`` per item and skip (and log) any item that cannot
be parsed or checked: one bad item never fails a listing; they are built in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from twinlab.contract import FIELD_GRID, FIELD_OWNER, FIELD_VARIABLE, USER_COLLECTION_PREFIX

from ..asgi import BadRequest
from .access import Budget, Caller, Expiring, check_item, data_asset, lake_bucket, on_lake
from .context import TilesContext

log = logging.getLogger("twinhub.tiles.layers")

ITEM_ID = re.compile(r"[A-Za-z0-9._:-]{1,256}")
ITEM_ID_RULE = "item ids are one path segment of letters, digits and . _ : - (at most 256)"
#: Items per page when listing the lake (and when looking an id up).
PAGE = 200
#: Times one item may list (listings and capabilities; an opened layer has its data's).
MAX_TIMES = 10_000
#: Items looked at per layer listed at most (the rest of a large lake is left out).
SCAN = 10
#: Access checks (HEADs of the object store) of one listing at once.
CHECKS_AT_ONCE = 8
#: Object store checks (HEADs: one per bucket and caller) one listing may make; items of
#: buckets left unchecked are left out of it (a later listing checks them).
HEADS_PER_LISTING = 64
#: Pages of matches of one item id looked at, at most (every collection holding it).
MATCH_PAGES = 25
#: Matches of one id decided among at most (more: 422 naming the count).
MAX_MATCHES = MATCH_PAGES * PAGE
#: Years datetime64[ns] holds (and so the data's time axes): others are refused.
YEARS = (1678, 2261)
#: ``ctx.extras`` keys owned here.
ITEMS, LISTING = "layers.items", "layers.listing"
INFOS, OWNERS, CHOSEN = "layers.infos", "layers.owners", "layers.chosen"
_DURATION = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


@dataclass(frozen=True)
class LayerInfo:
    """One (item, variable), from the STAC item alone (no data read)."""

    item_id: str
    variable: str
    collection: str
    title: str
    units: str
    description: str
    #: The item's valid times, UTC-aware, ascending; () when timeless.
    times: tuple[datetime, ...]
    bbox: tuple[float, float, float, float]
    #: The item's ``twinhub:grid`` property ({} when it has none).
    grid: dict = field(hash=False)
    #: Anyone may view it: a public collection's item whose data is on the lake bucket
    #: (drives ``Cache-Control: public``).
    public: bool
    #: The data asset read: its key, href and format (zarr, netcdf, grib).
    asset: str = ""
    href: str = ""
    format: str = ""
    #: The item's ``updated`` (else ``created``): a change makes new cache keys.
    updated: str = ""

    @property
    def layer_id(self) -> str:
        return f"{self.item_id}/{self.variable}"


# -- parsing items --------------------------------------------------------------------------
def check_item_id(item_id: str) -> str:
    if not isinstance(item_id, str) or not ITEM_ID.fullmatch(item_id):
        raise BadRequest(f"bad item id {str(item_id)[:80]!r}: {ITEM_ID_RULE}", 400)
    return item_id


#: Characters XML 1.0 cannot hold (lxml raises): C0 controls but tab/LF/CR, surrogates,
#: U+FFFE and U+FFFF; also C1 controls and tab/LF/CR, written as spaces in one-line texts.
_NOT_XML = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def plain_text(text: Any, limit: int = 2000) -> str:
    """``text`` with only characters XML 1.0 allows (others, and control characters, as
    spaces: lxml raises on them), at most ``limit`` characters."""
    return _NOT_XML.sub(" ", str(text)[:limit])


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_duration(step: timedelta) -> str:
    """An ISO 8601 duration of days, hours, minutes, seconds (what :func:`parse_duration` reads)."""
    secs = step.total_seconds()
    days, rest = divmod(secs, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = "".join(f"{v:g}{u}" for v, u in ((int(hours), "H"), (int(minutes), "M"), (seconds, "S")) if v)  # fmt: skip
    if not days and not clock:
        return "PT0S"
    return (f"P{int(days)}D" if days else "P") + (f"T{clock}" if clock else "")


def time_runs(times: tuple[datetime, ...] | list[datetime]) -> list[tuple[datetime, int, timedelta]]:  # fmt: skip
    """``times`` (ascending) as runs of a constant step: ``(start, count, step)`` (a lone
    time: count 1, step 0). Documents beyond their time budget write these instead of
    every time (WMTS ``start/end/period``, ISO 8601 ``R<n>/<start>/<period>``)."""
    out: list[tuple[datetime, int, timedelta]] = []
    i, n = 0, len(times)
    while i < n:
        if i + 2 < n:
            step = times[i + 1] - times[i]
            j = i + 1
            while j + 1 < n and times[j + 1] - times[j] == step:
                j += 1
            if j - i >= 2:  # three or more times: one run
                out.append((times[i], j - i + 1, step))
                i = j + 1
                continue
        out.append((times[i], 1, timedelta(0)))
        i += 1
    return out


def parse_instant(text: str) -> datetime:
    """An ISO 8601 instant as a UTC-aware datetime (naive: UTC). ValueError if it is not,
    or if it is outside the years 1678-2261 (what the data's datetime64[ns] axes hold)."""
    try:
        t = datetime.fromisoformat(text.strip().replace("z", "Z"))
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-23:59 in UTC
        raise ValueError(f"{text[:64]!r} is outside the years {YEARS[0]}-{YEARS[1]}") from None
    if not YEARS[0] <= t.year <= YEARS[1]:
        raise ValueError(f"{text[:64]!r} is outside the years {YEARS[0]}-{YEARS[1]}")
    return t


def parse_duration(text: str) -> timedelta | None:
    """An ISO 8601 duration of weeks, days, hours, minutes, seconds; None otherwise."""
    m = _DURATION.fullmatch(str(text).strip().upper()[:100])
    if not m or not any(m.groupdict().values()):
        return None
    g = {k: float(v or 0) for k, v in m.groupdict().items()}
    try:
        step = timedelta(weeks=g["w"], days=g["d"], hours=g["h"], minutes=g["m"], seconds=g["s"])
    except OverflowError:  # P99999999999D: longer than any item
        return None
    return step if step.total_seconds() > 0 else None


def _time_dimension(props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    dims = props.get("cube:dimensions")
    if not isinstance(dims, Mapping):
        return None
    for name, d in dims.items():
        if isinstance(d, Mapping) and (d.get("type") == "temporal" or name == "time"):
            return d
    return None


def item_times(item: Mapping[str, Any]) -> tuple[datetime, ...]:
    """The item's valid times (see the module doc); () when it has no time dimension or
    names times that are not instants (of 1678-2261)."""
    props = item.get("properties") or {}
    dim = _time_dimension(props)
    if dim is None:
        return ()
    out: list[datetime] = []
    try:
        if isinstance(dim.get("values"), list):
            out = [parse_instant(str(v)) for v in dim["values"][:MAX_TIMES]]
        else:
            extent = dim.get("extent") or []
            start = parse_instant(str(extent[0])) if extent and extent[0] else None
            end = parse_instant(str(extent[-1])) if len(extent) > 1 and extent[-1] else start
            step = parse_duration(dim.get("step") or "")
            if start is not None and end is not None:
                if step is None or end <= start:
                    out = [start] if start == end else [start, end]
                else:  # by count, not by adding steps (no loop over 1e7 steps, no overflow)
                    n = min(int((end - start) / step) + 1, MAX_TIMES)
                    out = [start + k * step for k in range(n)]
    except (ValueError, TypeError, IndexError, OverflowError):
        return ()
    lo, hi = _item_range(props)
    return tuple(sorted({t for t in out if (lo is None or t >= lo) and (hi is None or t <= hi)}))


def _item_range(props: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The item's [start, end] (UTC-aware; None: open)."""

    def instant(key: str) -> datetime | None:
        v = props.get(key)
        try:
            return parse_instant(str(v)) if v else None
        except ValueError:
            return None

    start, end = instant("start_datetime"), instant("end_datetime")
    if start is None and end is None:
        start = end = instant("datetime")
    return start, end


def item_variables(item: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The item's variables and their ``cube:variables`` entries: the data ones (else its
    ``param``, else its data asset's ``twinhub:variable``)."""
    props = item.get("properties") or {}
    cube = props.get("cube:variables")
    out: dict[str, Mapping[str, Any]] = {}
    if isinstance(cube, Mapping):
        for name, v in cube.items():
            v = v if isinstance(v, Mapping) else {}
            if v.get("type", "data") == "data":
                out[str(name)] = v
    if not out:
        named = props.get("param")
        for a in (item.get("assets") or {}).values():
            if not named and isinstance(a, Mapping) and isinstance(a.get(FIELD_VARIABLE), str):
                named = a[FIELD_VARIABLE]
        if isinstance(named, str) and named:
            out[named] = {}
    return out


def _bbox(item: Mapping[str, Any]) -> tuple[float, float, float, float]:
    b = item.get("bbox")
    try:
        if isinstance(b, list) and len(b) in (4, 6):
            w, s, e, n = (b[0], b[1], b[2], b[3]) if len(b) == 4 else (b[0], b[1], b[3], b[4])
            return (float(w), float(s), float(e), float(n))
    except (TypeError, ValueError):
        pass
    return (-180.0, -90.0, 180.0, 90.0)


def layer_infos(
    item: Mapping[str, Any],
    public_collections: list[str] | tuple[str, ...],
    asset: tuple = (),
    lake: str | None = None,
) -> list[LayerInfo]:
    """Every layer of ``item`` (a STAC item as JSON); ``asset``: its chosen data asset
    ``(key, asset, format)`` if known; ``lake``: the lake bucket (public needs the data
    there, see :func:`.access.on_lake`)."""
    props = item.get("properties") or {}
    collection = str(item.get("collection") or "")
    times = item_times(item)
    grid = props.get(FIELD_GRID)
    name = plain_text(props.get("title") or item.get("id") or "", 300)
    key, a, kind = asset if asset else ("", {}, "")
    href = str(a.get("href") or "")
    public = collection in public_collections and lake is not None and on_lake(href, lake)
    out = []
    for var, meta in item_variables(item).items():
        out.append(
            LayerInfo(
                item_id=str(item.get("id") or ""),
                variable=var,
                collection=collection,
                title=plain_text(f"{name}: {meta.get('description') or var}", 500),
                units=plain_text(meta.get("unit") or "", 100),
                description=plain_text(
                    meta.get("description") or props.get("description") or ""
                ),  # fmt: skip
                times=times,
                bbox=_bbox(item),
                grid=dict(grid) if isinstance(grid, Mapping) else {},
                public=public,
                asset=key,
                href=href,
                format=kind,
                updated=str(props.get("updated") or props.get("created") or ""),
            )
        )
    return out


# -- the STAC API ---------------------------------------------------------------------------
async def _stac_get(ctx: TilesContext, path: str, params: list[tuple[str, str]]) -> dict:
    if ctx.stac is None:
        raise BadRequest("the tiles service is not started (no STAC client)", 503)
    try:
        r = await ctx.stac.get(path, params=params)
    except httpx.HTTPError as e:
        raise BadRequest(f"cannot reach the data lake's STAC API: {e}", 502) from None
    if r.status_code != 200:
        raise BadRequest(f"the data lake's STAC API answered {r.status_code} to {path}", 502)
    doc = r.json()
    return doc if isinstance(doc, dict) else {}


class OwnerUnknown(Exception):
    """A collection's owner could not be looked up (the STAC API failed): not an answer."""


async def _owner(ctx: TilesContext, collection: str) -> str | None:
    """The collection's ``twinhub:owner``: "" for the platform's (none), a user's name, or
    None when it is unknown (no such collection, or an answer about another id: ranked as
    another user's, never shadowing). Answers cached access_ttl; a failed lookup raises
    :class:`OwnerUnknown` and is not cached."""
    if collection.startswith(USER_COLLECTION_PREFIX):  # reserved for that user (datalake guard)
        return collection[len(USER_COLLECTION_PREFIX) :]
    cache: Expiring = ctx.extras.setdefault(OWNERS, Expiring(4096))
    known, owner = cache.get(collection)
    if known:
        return owner
    if ctx.stac is None:
        raise OwnerUnknown("no STAC client")
    try:
        r = await ctx.stac.get(f"collections/{quote(collection, safe='')}")
        doc = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as e:
        raise OwnerUnknown(f"{type(e).__name__}: {e}") from None
    if r.status_code == 404:
        owner = None
    elif not isinstance(doc, dict):
        raise OwnerUnknown(f"the STAC API answered {r.status_code}")
    elif doc.get("id") != collection:
        owner = None
    else:
        owner = str(doc.get(FIELD_OWNER) or "")
    cache.put(collection, owner, ctx.settings.access_ttl)
    return owner


async def _prefer(items: list[dict], ctx: TilesContext, caller: Caller) -> dict:
    """The item an id means when several collections hold it: the platform's (a collection
    without ``twinhub:owner``; a public one first), then the caller's own, then (never
    shadowing those) other users' collections; ties by collection id. Owners are looked up
    ``CHECKS_AT_ONCE`` at a time; a candidate whose owner cannot be looked up is never
    ranked: 503 unless a known candidate outranks whatever it could be."""
    if len(items) == 1:
        return items[0]
    public = set(ctx.settings.public_collections)
    gate = asyncio.Semaphore(CHECKS_AT_ONCE)
    cids = sorted({str(i.get("collection") or "") for i in items})

    async def owner(cid: str) -> Any:
        async with gate:
            try:
                return await _owner(ctx, cid)
            except OwnerUnknown as e:
                log.warning("owner of collection %.120r unknown: %s", cid, e)
                return e

    owners = dict(zip(cids, await asyncio.gather(*map(owner, cids)), strict=True))

    def rank(cid: str) -> tuple:
        o = owners[cid]
        who = 0 if o == "" else 1 if caller.name and o == caller.name else 2
        return (who, cid not in public, cid)

    known = [c for c in cids if not isinstance(owners[c], OwnerUnknown)]
    failed = [c for c in cids if isinstance(owners[c], OwnerUnknown)]
    best = min(known, key=rank, default=None)
    # a failed one could be the platform's: it must rank below the best known at its best
    if best is None or any((0, c not in public, c) < rank(best) for c in failed):
        item_id = items[0].get("id")
        raise BadRequest(
            f"cannot tell which collection owns {item_id!r} (the owner of "
            f"{', '.join(map(repr, failed[:5]))} could not be looked up); try again",
            503,
        )
    return next(i for i in items if str(i.get("collection") or "") == best)


async def get_item(
    ctx: TilesContext, item_id: str, caller: Caller | None = None, collection: str | None = None
) -> dict:
    """The lake's item ``item_id`` (lookups cached ``access_ttl``; of ``collection`` if
    given, e.g. a LayerInfo's, else as :func:`_prefer` picks for ``caller`` among every
    collection holding it, the choice cached per (id, caller)); 404: none; 422: more than
    ``MATCH_PAGES`` x ``PAGE`` collections hold it (no decision on a partial read)."""
    check_item_id(item_id)
    caller = caller or Caller(None)
    chosen: Expiring = ctx.extras.setdefault(CHOSEN, Expiring(4096))
    if collection is None:
        known, item = chosen.get((item_id, caller.name))
        if known:
            return item
    cache: Expiring = ctx.extras.setdefault(ITEMS, Expiring())
    known, found = cache.get(item_id)
    if not known:
        found = []
        params: list[tuple[str, str]] = [("ids", item_id), ("limit", str(PAGE)), ("sources", "local")]  # fmt: skip
        for _ in range(MATCH_PAGES):
            doc = await _stac_get(ctx, "search", params)
            found += [
                f
                for f in doc.get("features") or []
                if isinstance(f, dict) and f.get("id") == item_id
            ]
            nxt = next((lk for lk in doc.get("links") or [] if isinstance(lk, dict) and lk.get("rel") == "next"), {})  # fmt: skip
            params = parse_qsl(urlsplit(str(nxt.get("href") or "")).query, keep_blank_values=True)
            if not params:
                break
        if params or len(found) > MAX_MATCHES:  # more pages than are read: refused, not guessed
            matched = doc.get("numberMatched")
            count = matched if isinstance(matched, int) else f"more than {MAX_MATCHES}"
            found = BadRequest(
                f"{count} items have the id {item_id!r} (the limit is {MAX_MATCHES}): the "
                "service cannot tell which one is meant",
                422,
            )
        cache.put(item_id, found, ctx.settings.access_ttl)
    if isinstance(found, BadRequest):
        raise found
    if collection is not None:
        found = [f for f in found if f.get("collection") == collection]
    if not found:
        raise BadRequest(f"no item {item_id!r} in the data lake", 404)
    if collection is not None:
        return await _prefer(found, ctx, caller)
    item = await _prefer(found, ctx, caller)
    chosen.put((item_id, caller.name), item, ctx.settings.access_ttl)
    return item


async def _pages(ctx: TilesContext, caller: Caller) -> AsyncIterator[tuple[tuple, list[dict]]]:
    """The lake's items page by page with each page's query (only public collections' for
    anonymous callers), each page cached ``access_ttl``; the next page's query is asked of
    our own base URL (the ``next`` link names the public host)."""
    cache: Expiring = ctx.extras.setdefault(LISTING, Expiring(256))
    params = [("limit", str(PAGE)), ("sources", "local")]
    if caller.anonymous:
        if not ctx.settings.public_collections:
            return
        params.append(("collections", ",".join(ctx.settings.public_collections)))
    while params:
        known, doc = cache.get(tuple(params))
        if not known:
            doc = await _stac_get(ctx, "search", params)
            cache.put(tuple(params), doc, ctx.settings.access_ttl)
        yield tuple(params), [f for f in doc.get("features") or [] if isinstance(f, dict)]
        links = [lk for lk in doc.get("links") or [] if isinstance(lk, dict)]
        nxt = next((lk for lk in links if lk.get("rel") == "next"), {})
        params = parse_qsl(urlsplit(str(nxt.get("href") or "")).query, keep_blank_values=True)


def page_infos(
    items: list[dict],
    public_collections: list[str] | tuple[str, ...],
    lake: str,
    max_variables: int = 64,
) -> list[list[LayerInfo]]:
    """Blocking (run in a thread): each item's layers (its first ``max_variables``:
    TwinhubTiles.max_variables; the others are reached by layer id), [] for an item that
    names no data the service reads or cannot be parsed (logged: one bad item never fails
    a listing)."""
    out: list[list[LayerInfo]] = []
    for item in items:
        try:
            infos = layer_infos(item, public_collections, data_asset(item), lake)
            if len(infos) > max_variables:
                log.info("item %.80r lists %d of its %d variables (TwinhubTiles.max_variables)", item.get("id"), max_variables, len(infos))  # fmt: skip
            out.append(infos[:max_variables])
        except BadRequest:
            out.append([])
        except Exception as e:  # a crafted item: whatever it breaks, the others are listed
            log.warning("item %.80r skipped in listings: %s: %.200s", item.get("id"), type(e).__name__, e)  # fmt: skip
            out.append([])
    return out


async def list_layers(ctx: TilesContext, caller: Caller, limit: int) -> tuple[list[LayerInfo], bool]:  # fmt: skip
    """The layers ``caller`` may view, at most ``min(limit, max_layers)``; bool: some were
    left out. Items the caller may not view (or that cannot be checked: an invalid bucket,
    the store refusing), or holding no data the service reads, are skipped; at most
    ``SCAN`` x max_layers items are looked at. Pages' layers are parsed in a thread and
    kept ``access_ttl``; the object store's checks of a page's items run a few at once, at
    most ``HEADS_PER_LISTING`` (one per bucket; items left unchecked: truncated)."""
    limit = max(0, min(int(limit), ctx.settings.max_layers))
    out: list[LayerInfo] = []
    seen = 0
    gate = asyncio.Semaphore(CHECKS_AT_ONCE)
    parsed: Expiring = ctx.extras.setdefault(INFOS, Expiring(256))
    lake = lake_bucket(ctx)
    budget = Budget(HEADS_PER_LISTING)

    async def viewable(item: dict, infos: list[LayerInfo]) -> bool:
        if not infos:
            return False
        async with gate:
            try:
                await check_item(ctx, caller, item, budget=budget)
                return True
            except BadRequest as e:
                if e.status >= 500 and not budget.refused:
                    log.warning("item %.80r left out of a listing: %s", item.get("id"), e.message)
                return False
            except Exception as e:  # never the whole listing for one item
                log.warning("item %.80r left out of a listing: %s: %.200s", item.get("id"), type(e).__name__, e)  # fmt: skip
                return False

    async for key, items in _pages(ctx, caller):
        items = items[: max(0, SCAN * ctx.settings.max_layers - seen)]
        seen += len(items)
        known, per_item = parsed.get((key, len(items)))
        if not known:
            public = tuple(ctx.settings.public_collections)
            cap = ctx.settings.max_variables
            per_item = await asyncio.to_thread(page_infos, items, public, lake, cap)
            parsed.put((key, len(items)), per_item, ctx.settings.access_ttl)
        oks = await asyncio.gather(*map(viewable, items, per_item))
        for infos, ok in zip(per_item, oks, strict=True):
            if not ok:
                continue
            for info in infos:
                if len(out) >= limit:
                    return out, True
                out.append(info)
        if seen >= SCAN * ctx.settings.max_layers:
            return out, True
    return out, budget.refused > 0  # items left unchecked: some may be viewable


async def layer_info(
    ctx: TilesContext, caller: Caller, item_id: str, variable: str | None = None
) -> list[LayerInfo]:
    """The layers of item ``item_id`` (one: ``variable``'s), access-checked: 404 no such
    item or variable, 401 anonymous, 403 not the caller's to view."""
    item = await get_item(ctx, item_id, caller)
    chosen = await check_item(ctx, caller, item)
    try:
        infos = layer_infos(item, ctx.settings.public_collections, chosen, lake_bucket(ctx))
    except Exception as e:  # a crafted item: its own 422, nobody else's problem
        log.warning("item %.80r cannot be parsed: %s: %.200s", item_id, type(e).__name__, e)
        raise BadRequest(f"item {item_id!r} has metadata the service cannot read", 422) from None
    if not infos:
        raise BadRequest(f"item {item_id!r} names no variables (cube:variables or param)", 404)
    if variable is None:
        return infos
    picked = [i for i in infos if i.variable == variable]
    if not picked:
        names = ", ".join(i.variable for i in infos)
        raise BadRequest(f"item {item_id!r} has no variable {variable!r}; it has: {names}", 404)
    return picked


def time_index(layer_or_info: Any, time_: str | None) -> int:
    """The time step asked for (a Layer's or a LayerInfo's): None, "" or "default": 0 (the
    first valid time); else an ISO 8601 instant that must be one of the layer's times (400
    naming the valid range)."""
    info: LayerInfo = getattr(layer_or_info, "info", layer_or_info)
    if time_ is None or time_.strip().lower() in ("", "default"):
        return 0
    times = info.times
    if not times:
        raise BadRequest(
            f"layer {info.layer_id} has no time dimension: leave the time out (or 'default')"
        )
    try:
        t = parse_instant(time_)
    except ValueError as e:
        raise BadRequest(
            f"time {time_[:64]!r} is not an ISO 8601 instant of the years {YEARS[0]}-{YEARS[1]} "
            f"(e.g. {iso(times[0])}): {e}"
        ) from None
    try:
        return times.index(t)
    except ValueError:
        raise BadRequest(
            f"time {iso(t)} is not one of the {len(times)} valid times of layer "
            f"{info.layer_id} ({iso(times[0])} .. {iso(times[-1])})"
        ) from None

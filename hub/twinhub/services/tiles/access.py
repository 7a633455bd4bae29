"""Who may view an item's tiles, views and values (every route that reads data asks here).

The service reads data with the platform's own S3 keys, so it must decide first whether
the caller could read that data themselves:

- items of ``TwinhubTiles.public_collections`` whose data is on the lake bucket: anyone,
  logged in or not (data elsewhere follows the rules below: a collection named public must
  not open anyone's private bucket, whoever put items into it);
- anonymous callers: nothing else (401, ``WWW-Authenticate: token realm="jupyterhub"``);
- the item's data asset must be ``s3://<bucket>/<key>`` on the platform's object store
  (no other scheme, host or local path; no ``.``/``..`` key segments), else 403 naming why;
- on the lake bucket (``TwinhubObjectStore.lake_bucket``): any logged-in user;
- on any other bucket (a home bucket, a project's): the object store decides, with the
  CALLER's own S3 keys (:func:`twinhub.objectstore.get_user`): a HEAD of the asset's object
  (a Zarr store's ``zarr.json``, else ``.zgroup``) must succeed; no keys: 403 naming it;
- admins calling with an admin-scoped token (:func:`~..hubauth.acts_as_admin`): any item.

Decisions are kept ``TwinhubTiles.access_ttl`` seconds per (caller, bucket) (the store's
rule is per bucket; an absent object per (caller, href)); boto calls run in a thread, never
on the event loop.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twinlab.datalake.opening import data_format

from ...objectstore import client as s3_client
from ...objectstore import get_user
from ...objectstore import settings as store_settings
from ..asgi import BadRequest
from ..hubauth import acts_as_admin
from .context import TilesContext

#: ``ctx.extras`` keys owned here.
DECISIONS = "access.decisions"
CLIENTS = "access.clients"
LAKE = "access.lake_bucket"
LOCKS = "access.locks"
#: Access decisions kept at most (the oldest go first).
MAX_DECISIONS = 10_000
#: S3 clients kept (one per user's key pair).
MAX_CLIENTS = 256
_CLIENTS_LOCK = threading.Lock()
#: The data formats the service reads, in order of preference: Zarr reads chunk by chunk,
#: NetCDF by range, GRIB only as a whole copy.
PREFERRED = ("zarr", "netcdf", "grib")
#: S3 bucket names (3-63 of lower-case letters, digits, '.', '-'; a letter or digit at
#: each end): an item naming another is viewable by nobody but admins.
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
BUCKET_RULE = "3-63 lower-case letters, digits, '.' and '-', a letter or digit at each end"
#: A refusal of an anonymous caller carries the hub's challenge.
CHALLENGE = [(b"www-authenticate", b'token realm="jupyterhub"')]


@dataclass(frozen=True)
class Caller:
    """Who asks: a hub user (or service) by name, or anonymous (``name`` None)."""

    name: str | None
    admin: bool = False
    groups: frozenset[str] = frozenset()

    @property
    def anonymous(self) -> bool:
        return self.name is None


def caller_of(request: Any) -> Caller:
    """The caller of ``request`` from ``request.state.hub_user`` (hub auth's; None or
    absent: anonymous). ``admin`` only with a token that carries the admin scope."""
    state = request.scope.get("state") or {}
    user = state.get("hub_user")
    if not user:
        return Caller(None)
    return Caller(
        name=str(user.get("name") or ""),
        admin=acts_as_admin(user),
        groups=frozenset(str(g) for g in user.get("groups") or ()),
    )


def unauthenticated(what: str) -> BadRequest:
    """The 401 for an anonymous caller (with the hub's challenge)."""
    e = BadRequest(
        f"{what} needs a login: send 'Authorization: token <JupyterHub API token>' or log "
        "in with a browser",
        401,
    )
    e.headers = [*e.headers, *CHALLENGE]
    return e


# -- the item's data ------------------------------------------------------------------------
def data_assets(item: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], str]]:
    """``(key, asset, format)`` of the item's data assets the service reads, best first."""
    found: list[tuple[int, str, Mapping[str, Any], str]] = []
    for n, (key, asset) in enumerate((item.get("assets") or {}).items()):
        if not isinstance(asset, Mapping) or not isinstance(asset.get("href"), str):
            continue
        kind = data_format(asset["href"], asset.get("type"))
        if kind in PREFERRED:
            found.append((PREFERRED.index(kind) * 10_000 + n, str(key), asset, kind))
    return [(k, a, f) for _, k, a, f in sorted(found, key=lambda t: t[0])]


def data_asset(item: Mapping[str, Any]) -> tuple[str, Mapping[str, Any], str]:
    """The asset the service reads: Zarr, else NetCDF, else GRIB; 400 if none."""
    assets = data_assets(item)
    if not assets:
        have = ", ".join(
            f"{k} ({(a or {}).get('type') or 'no type'})"
            for k, a in (item.get("assets") or {}).items()
        )
        raise BadRequest(
            f"item {item.get('id')!r} has no Zarr, NetCDF or GRIB asset to draw (assets: "
            f"{have or 'none'})",
            400,
        )
    return assets[0]


def split_s3(href: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` href the service may read; 403 naming why not."""
    if not href.startswith("s3://"):
        scheme = href.split("://", 1)[0] if "://" in href else "a local path"
        raise BadRequest(
            f"the item's data ({href[:200]}) is not on the platform's object store "
            f"({scheme}): tiles are drawn only from s3:// objects",
            403,
        )
    bucket, _, key = href[len("s3://") :].partition("/")
    key = key.rstrip("/")
    if not bucket or not key:
        raise BadRequest(f"the item's data href {href[:200]!r} names no object", 403)
    if not BUCKET.fullmatch(bucket):  # (boto refuses it before asking: not a decision)
        raise BadRequest(
            f"the item's data href {href[:200]!r} names an invalid bucket: {BUCKET_RULE}", 403
        )
    segments = key.split("/")
    if {".", ".."} & set(segments) or "" in segments or "\\" in key:
        raise BadRequest(
            f"the item's data href {href[:200]!r} has an empty, '.' or '..' segment", 403
        )
    return bucket, key


def probe_keys(key: str, kind: str) -> list[str]:
    """The objects whose HEAD says the data can be read: a Zarr store's metadata (v3,
    then a v2 group or array), or the file itself."""
    if kind == "zarr":
        return [f"{key}/zarr.json", f"{key}/.zgroup", f"{key}/.zarray"]
    return [key]


def lake_bucket(ctx: TilesContext) -> str:
    """The lake bucket (``TwinhubObjectStore.lake_bucket``), looked up once."""
    lake = ctx.extras.get(LAKE)
    if lake is None:
        lake = ctx.extras.setdefault(LAKE, store_settings(ctx.rt).lake_bucket)
    return str(lake)


def on_lake(href: str, lake: str) -> bool:
    """Whether ``href`` is a valid object of the lake bucket (what a public collection's
    item must be to be served to anyone, and cached as public)."""
    try:
        return split_s3(href)[0] == lake
    except BadRequest:
        return False


# -- decisions ------------------------------------------------------------------------------
class Expiring:
    """A thread-safe map whose entries expire after their ttl; bounded (the oldest go
    first). ``get`` says whether the key is known (a kept None is an answer too)."""

    def __init__(self, size: int = 4096) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[Any, tuple[float, Any]] = OrderedDict()
        self.size = size

    def get(self, key: Any) -> tuple[bool, Any]:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] < time.monotonic():
                return False, None
            return True, hit[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        with self._lock:
            self._items[key] = (time.monotonic() + ttl, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _decisions(ctx: TilesContext) -> Expiring:
    return ctx.extras.setdefault(DECISIONS, Expiring(MAX_DECISIONS))


def _user_client(ctx: TilesContext, name: str) -> Any:
    """An S3 client with ``name``'s own keys (kept per key pair); 403 when they have none."""
    creds = get_user(ctx.rt, name)
    if creds is None or not creds.has_keys:
        raise BadRequest(
            f"{name!r} has no S3 keys of their own (none made yet, or the object store's "
            "provisioner hands out none): only the lake's and public items can be viewed",
            403,
        )
    with _CLIENTS_LOCK:  # (called from threads)
        clients: OrderedDict[str, Any] = ctx.extras.setdefault(CLIENTS, OrderedDict())
        c = clients.get(creds.access_key)
        if c is None:
            c = s3_client(ctx.rt, creds.access_key, creds.secret_key)
            clients[creds.access_key] = c
            while len(clients) > MAX_CLIENTS:
                clients.popitem(last=False)
        return c


def _status_of(error: Exception) -> int:
    response = getattr(error, "response", None) or {}
    try:
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    except (TypeError, ValueError):
        return 0


def can_read(c: Any, bucket: str, keys: list[str]) -> int:
    """HEAD each of ``keys`` with client ``c`` until one answers: 200, else the status of
    the last refusal (403 forbidden, 404 absent), 502 when the store cannot be reached."""
    # botocore loads with the first private item (the S3 client's own import cost)
    from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

    status = 404
    for key in keys:
        try:
            c.head_object(Bucket=bucket, Key=key)
            return 200
        except ClientError as e:
            status = _status_of(e) or 403
            if status not in (403, 404):
                return status
            if status == 403:
                return 403
        except ParamValidationError:  # a name boto refuses: nobody's to read
            return 403
        except BotoCoreError:
            return 502
    return status


def _decide_bucket(ctx: TilesContext, caller: Caller, bucket: str, key: str, kind: str) -> int:
    """Blocking (boto): the object store's answer to the caller's own keys reading the
    object (200, 403, 404, else an outage); 403 BadRequest when they have no keys."""
    assert caller.name is not None
    return can_read(_user_client(ctx, caller.name), bucket, probe_keys(key, kind))


def _refusal(caller: Caller, bucket: str, key: str, status: int) -> BadRequest | None:
    href = f"s3://{bucket}/{key}"
    if status == 200:
        return None
    if status == 403:
        return BadRequest(
            f"{caller.name!r} may not read {href} (bucket {bucket!r} is not theirs, nor of "
            "a project of theirs): the object store refused their keys",
            403,
        )
    if status == 404:
        return BadRequest(f"no data at {href} (or {caller.name!r} may not see it)", 404)
    return BadRequest(f"the object store answered {status} for {href}", 502)


class Budget:
    """Object store checks (HEADs) one request may still make (e.g. a listing's)."""

    def __init__(self, heads: int) -> None:
        self.heads = heads
        #: Checks refused for want of HEADs (their items are left unchecked).
        self.refused = 0

    def spend(self, what: str) -> None:
        if self.heads <= 0:
            self.refused += 1
            raise BadRequest(f"{what} not checked: this request's object store checks are spent", 503)  # fmt: skip
        self.heads -= 1


async def check_item(
    ctx: TilesContext,
    caller: Caller,
    item: Mapping[str, Any],
    *,
    blocking: Callable[..., Any] | None = None,
    budget: Budget | None = None,
) -> tuple[str, Mapping[str, Any], str]:
    """Whether ``caller`` may view ``item`` (a STAC item as JSON): returns its data asset
    ``(key, asset, format)``, else raises BadRequest (401, 403, 404; see the module doc).
    ``blocking(fn, *args)`` runs the object store's check (default: a thread).

    The object store's rule is per bucket (a home or project bucket is readable wholly or
    not at all): a read or a refusal decides the (caller, bucket), so one HEAD per bucket
    and caller (checks of one bucket wait for the first); only an absent object (404) is
    decided per href. A HEAD spends one of ``budget``'s (503 when none is left)."""
    collection = str(item.get("collection") or "")
    public = collection in ctx.settings.public_collections
    if caller.anonymous and not public:
        raise unauthenticated(f"item {item.get('id')!r} (collection {collection!r})")
    chosen = data_asset(item)
    href = str(chosen[1]["href"])
    bucket, key = split_s3(href)
    if bucket == lake_bucket(ctx) or caller.admin:
        return chosen
    if caller.anonymous:
        # whoever put the item there, a public collection never opens a private bucket
        raise BadRequest(
            f"item {item.get('id')!r} of public collection {collection!r} has its data "
            f"outside the lake bucket ({href[:200]}): only logged-in users who may read it "
            "can view it",
            403,
        )
    assert caller.name is not None
    decisions = _decisions(ctx)
    per_bucket, per_href = (caller.name, "bucket", bucket), (caller.name, href)
    locks: dict[tuple, list] = ctx.extras.setdefault(LOCKS, {})
    held = locks.setdefault(per_bucket, [asyncio.Lock(), 0])
    held[1] += 1
    try:
        async with held[0]:
            status = _known(decisions, per_bucket, per_href)
            if status is None:
                if budget is not None:
                    budget.spend(f"item {item.get('id')!r}")
                try:
                    status = await (blocking or asyncio.to_thread)(
                        _decide_bucket, ctx, caller, bucket, key, chosen[2]
                    )
                except BadRequest as e:  # no keys of their own: a refusal for every bucket
                    decisions.put(per_bucket, e, ctx.settings.access_ttl)
                    raise
                if status in (200, 403):
                    decisions.put(per_bucket, status, ctx.settings.access_ttl)
                elif status == 404:
                    decisions.put(per_href, status, ctx.settings.access_ttl)
                # else: an outage, not a decision: ask again next time
    finally:
        held[1] -= 1
        if held[1] == 0:
            locks.pop(per_bucket, None)
    if isinstance(status, BadRequest):
        raise status
    refusal = _refusal(caller, bucket, key, status)
    if refusal is not None:
        raise refusal
    return chosen


def _known(decisions: Expiring, *keys: Any) -> Any:
    for k in keys:
        known, value = decisions.get(k)
        if known:
            return value
    return None

"""REST API of the data lake page (twinlab.browse), in every user server.

Under ``<base_url>twinlab/api/``:

- ``lake/collections``, ``lake/search``, ``lake/items/<collection>/<item>``: the STAC
  service at ``$TWINHUB_STAC_URL`` asked with the server's ``$JUPYTERHUB_API_TOKEN``,
  through the notebooks' own client (:func:`twinlab.datalake.search.client`,
  :mod:`twinlab.datalake.pages`); search answers carry the federation's
  ``twinhub:sources``/``twinhub:warnings`` through;
- ``lake/quicklook`` (PNG of one field) and ``lake/code`` (the line that opens an item);
- ``storage/buckets|list|stat|presign`` (GET) and ``storage/upload?key=`` (PUT, home
  bucket only) with the user's own S3 keys (:mod:`twinlab.browse.storage`).

Every handler is authenticated like the rest of the server (token or hub cookie; PUT also
needs the ``_xsrf`` cookie echoed as ``X-XSRFToken`` when cookie-authenticated). Bad input
answers 4xx with ``{"message": ...}`` naming the problem.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import json
import re
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from twinlab.browse import storage as st
from twinlab.browse.storage import StorageError
from twinlab.contract import (
    FIELD_SOURCE,
    FIELD_SOURCES,
    FIELD_WARNINGS,
    LOCAL_SOURCE,
    check_datetime,
)
from twinlab.datalake import pages
from twinlab.datalake.config import DatalakeError, api_token, stac_url
from twinlab.datalake.freetext import FreeText
from twinlab.datalake.search import check_bbox, client

T = TypeVar("T")

#: Items per search page: default and most (beyond that, page with ``token``).
SEARCH_DEFAULT, SEARCH_MAX = 50, 1000
#: Free text on an API without item-search ``q``: at most this many items are scanned.
FREE_TEXT_SCAN = pages.FREE_TEXT_SCAN
#: Seconds to wait for the STAC service.
STAC_TIMEOUT = 60.0
#: Quick-looks drawn at once: each holds a field and a figure in memory, and a user server
#: has a core or two; more requests wait their turn rather than thrash.
QUICKLOOK_CONCURRENCY = 2
_quicklook_slots: asyncio.Semaphore | None = None
#: An id: 1..256 characters, no '/', no C0 or C1 control characters.
_ID = re.compile(r"^[^\x00-\x1f\x7f-\x9f/]{1,256}$")


def _check_id(value: str | None, what: str) -> str:
    if not value:
        raise web.HTTPError(400, f"{what} is required")
    if not _ID.match(value) or value in (".", ".."):
        raise web.HTTPError(400, f"{what} {value[:80]!r} is not a valid id")
    return value


@functools.lru_cache(maxsize=1)
def _api(url: str, token: str) -> Any:
    """The server's STAC client (the notebooks' :func:`client`), its landing page read once."""
    return client(url, token, timeout=STAC_TIMEOUT)


class LakeHandler(APIHandler):
    """Shared helpers: STAC requests, blocking work in threads, JSON answers."""

    def stac_base(self) -> tuple[str, str]:
        """The STAC API's root and the server's token; 503 when the server has none."""
        try:
            return stac_url(), api_token()
        except DatalakeError as e:
            raise web.HTTPError(503, str(e)) from None

    async def stac_call(self, fn: Callable[[Any, str], T], missing: str = "") -> T:
        """``fn(client, root)`` in a thread; the STAC service's errors as our answers (its
        404 with ``missing`` as message, its 400 as ours, anything else a 502)."""
        base, token = self.stac_base()
        try:
            api = await self.in_thread(_api, base, token)
            return await self.in_thread(fn, api, base)
        except pages.StacAnswerError as e:
            if e.status == 404 and missing:
                raise web.HTTPError(404, missing) from None
            if e.status is None:
                msg = f"cannot reach the STAC service at {base}: {e.detail}"
                raise web.HTTPError(502, msg) from None
            if e.status == 200:
                raise web.HTTPError(
                    502, f"the STAC service at {base} did not answer JSON"
                ) from None
            status = 400 if e.status == 400 else 502
            raise web.HTTPError(status, f"STAC service answered {e.status}: {e.detail}") from None
        except DatalakeError as e:  # the client could not open the API's landing page
            raise web.HTTPError(502, str(e)) from None

    async def stac(self, path: str, body: dict[str, Any] | None = None, missing: str = "") -> Any:
        """JSON from the STAC service; its 404 becomes ours (with ``missing`` as message)."""
        return await self.stac_call(
            lambda api, base: pages.read_json(api, base + path, body), missing=missing
        )

    async def item(self, collection: str, item: str) -> dict[str, Any]:
        """The item, of the lake or of a federated source (the federated STAC service
        resolves a remote collection's items at the same path)."""
        return await self.stac(
            f"collections/{quote(collection, safe='')}/items/{quote(item, safe='')}",
            missing=f"no item {item!r} in collection {collection!r}",
        )

    def arg(self, name: str, default: str = "") -> str:
        """A query argument as sent: tornado's get_argument would turn control characters
        into spaces, hiding them from the checks that must refuse them."""
        values = self.request.query_arguments.get(name)
        if not values:
            return default
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise web.HTTPError(400, f"{name} is not valid UTF-8") from None

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def send_json(self, doc: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(doc))


# ---- lake ------------------------------------------------------------------------------
class CollectionsHandler(LakeHandler):
    @web.authenticated
    async def get(self) -> None:
        self.xsrf_token  # noqa: B018  # sets the _xsrf cookie the page echoes for uploads
        doc = await self.stac("collections")
        out = [
            {
                "id": c.get("id"),
                "title": c.get("title") or c.get("id"),
                "description": c.get("description", ""),
                "extent": c.get("extent"),
                "source": c.get(FIELD_SOURCE, LOCAL_SOURCE),
            }
            for c in doc.get("collections", [])
        ]
        self.send_json({"collections": out})


def full_datetime(value: str) -> str:
    """``value`` with each date-only end made a full RFC 3339 timestamp (the STAC API
    takes only those): a start at the day's (month's, year's) first second, an end at its
    last one, as pystac-client expands them."""

    def expand(part: str, end: bool) -> str:
        m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", part.strip())
        if not m:
            return part
        year, month, day = int(m[1]), int(m[2] or (12 if end else 1)), m[3]
        last = calendar.monthrange(year, month)[1]
        d = int(day) if day else (last if end else 1)
        return f"{year:04d}-{month:02d}-{d:02d}T" + ("23:59:59Z" if end else "00:00:00Z")

    parts = value.split("/")
    if len(parts) == 1:
        single = parts[0]
        start, end = expand(single, False), expand(single, True)
        return single if start == single else f"{start}/{end}"
    return f"{expand(parts[0], False)}/{expand(parts[1], True)}"


class SearchHandler(LakeHandler):
    def _params(self) -> tuple[dict[str, Any], Any]:
        body: dict[str, Any] = {}
        raw_limit = self.arg("limit") or str(SEARCH_DEFAULT)
        try:
            limit = int(raw_limit)
        except ValueError:
            raise web.HTTPError(400, f"limit {raw_limit!r} is not an integer") from None
        if not 1 <= limit <= SEARCH_MAX:
            raise web.HTTPError(400, f"limit {limit} outside 1..{SEARCH_MAX}")
        body["limit"] = limit
        try:
            if bbox := self.arg("bbox"):
                body["bbox"] = check_bbox(bbox)
            if dt := self.arg("datetime"):
                check_datetime(dt)
                body["datetime"] = full_datetime(dt)
            q = self.arg("q").strip()
            text = FreeText.parse(q) if q else None
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None
        if cols := self.arg("collections"):
            body["collections"] = [_check_id(c.strip(), "collection") for c in cols.split(",")]
        if sources := self.arg("sources"):
            body["sources"] = [_check_id(s.strip(), "source") for s in sources.split(",")]
        if token := self.arg("token"):
            body["token"] = token
        if text is not None:
            body["q"] = q
        return body, text

    async def _check_collections(self, wanted: list[str]) -> None:
        doc = await self.stac("collections")
        known = {c.get("id") for c in doc.get("collections", [])}
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise web.HTTPError(404, f"unknown collection(s): {', '.join(unknown)}")

    @web.authenticated
    async def get(self) -> None:
        body, text = self._params()
        if body.get("collections") and not body.get("sources"):
            await self._check_collections(body["collections"])
        doc, features, next_token = await self.stac_call(
            lambda api, base: pages.search_page(api, base + "search", body, text, FREE_TEXT_SCAN)
        )
        answer = {
            "type": "FeatureCollection",
            "features": features,
            "next_token": next_token,
            "numberMatched": doc.get("numberMatched") if text is None else None,
        }
        for key in (FIELD_SOURCES, FIELD_WARNINGS):  # federated search, if present
            if key in doc:
                answer[key] = doc[key]
        self.send_json(answer)


class ItemHandler(LakeHandler):
    @web.authenticated
    async def get(self, collection: str, item: str) -> None:
        self.send_json(
            await self.item(_check_id(collection, "collection"), _check_id(item, "item"))
        )


class QuicklookHandler(LakeHandler):
    @web.authenticated
    async def get(self) -> None:
        # start-up cost: the quick-look's data stack (xarray, matplotlib) loads on first use
        from twinlab.browse.quicklook import (
            QuicklookError,
            QuicklookRefused,
            QuicklookTooLarge,
            quicklook,
        )

        collection = _check_id(self.arg("collection"), "collection")
        item = await self.item(collection, _check_id(self.arg("item"), "item"))
        asset = self.arg("asset") or None
        variable = self.arg("variable") or None
        time = self.arg("time") or None
        if asset is not None and asset not in item.get("assets", {}):
            raise web.HTTPError(404, f"item {item.get('id')!r} has no asset {asset!r}")
        global _quicklook_slots
        if _quicklook_slots is None:  # made on the server's event loop, on first use
            _quicklook_slots = asyncio.Semaphore(QUICKLOOK_CONCURRENCY)
        try:
            async with _quicklook_slots:
                png = await self.in_thread(quicklook, item, asset, variable, time)
        except QuicklookError as e:
            raise web.HTTPError(400, str(e)) from None
        except QuicklookRefused as e:  # data where the page must not read (see check_href)
            raise web.HTTPError(403, f"no quick-look: {e}") from None
        except QuicklookTooLarge as e:
            raise web.HTTPError(413, str(e)) from None
        except FileNotFoundError as e:
            raise web.HTTPError(404, f"the item's data is missing: {e}") from None
        except PermissionError as e:
            raise web.HTTPError(403, f"not allowed to read the item's data: {e}") from None
        except ValueError as e:
            raise web.HTTPError(422, f"cannot draw this item: {e}") from None
        except Exception as e:  # reading the data failed (a store or the cache answered
            # an error, a connection broke...): say so rather than "Unhandled error"
            self.log.warning(
                "quick-look of %s/%s failed", collection, item.get("id"), exc_info=True
            )
            raise web.HTTPError(
                502, f"cannot read the item's data: {type(e).__name__}: {e}"
            ) from None
        self.set_header("Cache-Control", "private, max-age=3600")
        self.finish(png, set_content_type="image/png")


def open_line(collection: str, item: str) -> str:
    """The one line of Python that opens ``item`` of ``collection`` in a notebook (the
    search spans every federated source by default: remote items open the same way)."""
    return (
        "import twinlab.datalake as dl; "
        f"ds = dl.open(dl.search(collections=[{collection!r}], ids=[{item!r}]).items[0])"
    )


class CodeHandler(LakeHandler):
    @web.authenticated
    async def get(self) -> None:
        collection = _check_id(self.arg("collection"), "collection")
        item = _check_id(self.arg("item"), "item")
        await self.item(collection, item)  # 404 for an item that is not there
        self.send_json({"code": open_line(collection, item)})


# ---- storage ---------------------------------------------------------------------------
class StorageHandler(LakeHandler):
    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await self.in_thread(fn, *args)
        except StorageError as e:
            raise web.HTTPError(e.status, e.message) from None

    def checked(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Input checks (they read $TWINHUB_STORAGE only: no thread needed)."""
        try:
            return fn(*args)
        except StorageError as e:
            raise web.HTTPError(e.status, e.message) from None


class BucketsHandler(StorageHandler):
    @web.authenticated
    async def get(self) -> None:
        self.xsrf_token  # noqa: B018  # sets the _xsrf cookie the page echoes for uploads
        self.send_json({"buckets": self.checked(st.buckets)})


class ListHandler(StorageHandler):
    @web.authenticated
    async def get(self) -> None:
        bucket = self.checked(st.check_bucket, self.arg("bucket"))
        prefix = self.checked(st.check_prefix, self.arg("prefix"))
        limit = self.checked(st.check_limit, self.arg("limit"))
        token = self.arg("token") or None
        self.send_json(await self.call(st.list_objects, bucket, prefix, limit, token))


class StatHandler(StorageHandler):
    @web.authenticated
    async def get(self) -> None:
        bucket = self.checked(st.check_bucket, self.arg("bucket"))
        key = self.checked(st.check_key, self.arg("key"))
        self.send_json(await self.call(st.stat, bucket, key))


class PresignHandler(StorageHandler):
    @web.authenticated
    async def get(self) -> None:
        bucket = self.checked(st.check_bucket, self.arg("bucket"))
        key = self.checked(st.check_key, self.arg("key"))
        self.send_json(await self.call(st.presign, bucket, key))


#: Upload bytes kept in memory before the spool file goes to disk.
SPOOL_IN_MEMORY = 8 << 20
#: A refused upload's body is read (and dropped) up to this many bytes before the 413: an
#: answer sent mid-body makes tornado close the connection, which the hub's proxy turns
#: into a 503 page; past this the connection is cut (jupyter_server's own max_body_size).
DRAIN_MAX = 512 << 20


@web.stream_request_body
class UploadHandler(StorageHandler):
    """``PUT storage/upload?key=K``: the body becomes ``K`` in the user's home bucket.

    The body is streamed, never whole in memory: ``prepare`` runs once the headers are in,
    before any of the body, so it does every check (who, XSRF, key, size) itself (a
    decorator on ``put`` would run only after the whole body); ``data_received`` counts
    and spools the bytes, dropping all of them once past the cap; ``put`` answers the
    refusal (bad key, over the cap), else sends the spool with the user's keys.

    Who and XSRF are answered at once, the body unread (tornado then closes the
    connection); the owner's bad requests are answered after the body, read and dropped:
    a connection closed mid-body reaches the browser as the hub proxy's 503 page.
    """

    spool: Any = None
    refusal: web.HTTPError | None = None
    body_read = False

    async def prepare(self) -> None:
        await super().prepare()  # jupyter_server: the user (403 if none) and the XSRF check
        if not self.current_user:
            raise web.HTTPError(403, "authentication required")
        self.check_xsrf_cookie()  # again, explicitly: a no-op for token-authenticated calls
        self.cap = st.upload_limit()
        self.received = 0
        self.request.connection.set_max_body_size(max(self.cap + 1, DRAIN_MAX))
        try:  # decided now, answered after the body (read and dropped: see DRAIN_MAX)
            self.key = self.checked(st.check_key, self.arg("key"))
            home = (b["name"] for b in self.checked(st.buckets) if b["kind"] == "home")
            self.home = next(home, "")
            if not self.home:
                raise web.HTTPError(503, "this server has no home bucket")
            length = self.request.headers.get("Content-Length")
            if length is not None and not length.isdigit():
                raise web.HTTPError(400, f"Content-Length {length[:40]!r} is not a number")
            if length is not None and int(length) > self.cap:
                raise web.HTTPError(
                    413, f"upload of {length} bytes is over the {self.cap} byte limit"
                )
        except web.HTTPError as e:
            self.refusal = e
            return
        # closed by put, on_finish or on_connection_close, whichever comes
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115

    def data_received(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.refusal is not None:
            return
        if self.received > self.cap:  # a body without (or beyond) its Content-Length
            msg = f"upload of more than {self.cap} bytes is over the {self.cap} byte limit"
            self.refusal = web.HTTPError(413, msg)
            self._close_spool()
            return
        self.spool.write(chunk)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if not self.body_read:
            # tornado closes the connection after an answer sent before the body is read,
            # but announces it only when it knew before the headers went out: without
            # this, the hub's proxy reuses the connection and its next request fails
            self.set_header("Connection", "close")
        super().write_error(status_code, **kwargs)

    def _close_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def on_finish(self) -> None:
        self._close_spool()

    def on_connection_close(self) -> None:
        self._close_spool()
        super().on_connection_close()

    async def put(self) -> None:
        self.body_read = True
        if self.refusal is not None:
            raise self.refusal
        ctype = self.request.headers.get("Content-Type", "")
        try:
            doc = await self.call(st.upload, self.home, self.key, self.spool, self.received, ctype)
        finally:
            self._close_spool()
        self.send_json(doc, status=201)


def handlers(base_url: str) -> list[tuple[str, type]]:
    """The routes, under the server's base URL."""
    lake = url_path_join(base_url, "twinlab/api/lake")
    store = url_path_join(base_url, "twinlab/api/storage")
    return [
        (lake + "/collections", CollectionsHandler),
        (lake + "/search", SearchHandler),
        (lake + "/items/([^/]+)/([^/]+)", ItemHandler),
        (lake + "/quicklook", QuicklookHandler),
        (lake + "/code", CodeHandler),
        (store + "/buckets", BucketsHandler),
        (store + "/list", ListHandler),
        (store + "/stat", StatHandler),
        (store + "/presign", PresignHandler),
        (store + "/upload", UploadHandler),
    ]

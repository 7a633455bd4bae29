"""The rolling cache's storage: objects on disk, an SQLite index, LRU eviction, single flight.

Layout under the cache directory (0700, only the cache service reads it)::

    index.sqlite            objects (key, size, fetched, last access) and the counters
    objects/ab/<sha256>     one file per cached object, named by the hash of its key
    objects/ab/<sha256>.json  its metadata (key, size, type, ETag): the index can be rebuilt
    tmp/                    downloads in progress; emptied at every start

An object becomes visible only once complete: it is downloaded into ``tmp/``, fsynced, its
metadata written, then renamed into ``objects/`` (atomic on one file system) and indexed.
A fetch that dies halfway (upstream cut, the service killed) leaves at most a file in
``tmp/``, which no reader ever looks up and the next start deletes.

N concurrent requests for one key share one :class:`Flight`: one upstream fetch, written to
its temporary file, which every requester (the first included) reads as it grows.  The fetch
runs as its own task, so a requester that hangs up does not cut the others off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("twinhub.cache")

INDEX = "index.sqlite"
#: hits: requests served without a fetch of their own (``joined``: of those, the ones that
#: read a download another request started); misses: requests that started a fetch.
COUNTERS = (
    "hits",
    "joined",
    "misses",
    "evictions",
    "expired",
    "errors",
    "bytes_served",
    "bytes_fetched",
)
#: Bytes per read when serving a file.
READ_BLOCK = 1 << 20
#: Readers of a download are woken after this many new bytes (or 50 ms).
NOTIFY_BYTES = 1 << 20
#: Seconds a source's 404 is remembered: a Zarr v3 open probes for v2 metadata files
#: (.zgroup, .zattrs, .zmetadata) every time, and many readers open the same store.
ABSENT_SECONDS = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT,
    etag TEXT,
    last_modified TEXT,
    fetched REAL NOT NULL,
    accessed REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_accessed ON objects (accessed);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class CacheError(RuntimeError):
    """An upstream fetch failed; ``status`` is the HTTP status the cache answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TooLarge(CacheError):
    """The object is larger than the biggest the cache keeps (``max_object``)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            413,
            f"the asset is {size / 1e9:.2f} GB, more than the cache keeps "
            f"(TwinhubCache.max_object_gb = {limit / 1e9:g})",
        )
        self.size = size


@dataclass(frozen=True)
class Meta:
    """What is known of an object before its bytes: from the upstream's headers."""

    size: int | None
    content_type: str = "application/octet-stream"
    etag: str = ""
    last_modified: str = ""


@dataclass(frozen=True)
class Entry:
    """A complete object in the cache."""

    key: str
    digest: str
    size: int
    content_type: str
    etag: str
    last_modified: str
    fetched: float
    accessed: float

    @property
    def meta(self) -> Meta:
        return Meta(self.size, self.content_type, self.etag, self.last_modified)


class Upstream:
    """One upstream response: its metadata and its body, chunk by chunk (see Fetch)."""

    def __init__(
        self, meta: Meta, chunks: AsyncIterator[bytes], status: int = 200, content_range: str = ""
    ) -> None:
        self.meta = meta
        self.chunks = chunks
        # Only for pass-through of objects too large to keep (a 206 to a forwarded Range).
        self.status = status
        self.content_range = content_range


#: Opens the upstream response of one key; raises CacheError to refuse (404, 502, ...).
Fetch = Callable[[], AbstractAsyncContextManager[Upstream]]


@dataclass(eq=False)
class Flight:
    """One upstream fetch in progress, shared by every requester of its key."""

    key: str
    tmp: Path
    meta: asyncio.Future[Meta]
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    rfd: int = -1  # a read descriptor of ``tmp``, dup'ed by each reader
    written: int = 0
    done: bool = False
    error: BaseException | None = None
    task: asyncio.Task | None = None


@dataclass
class Handle:
    """What a requester reads: a complete object (hit) or a flight (miss).

    Holds its own descriptor of the file, opened when the handle was made: an eviction or
    the flight's rename afterwards does not affect it.  :meth:`read` closes it; call
    :meth:`close` when not reading (HEAD).
    """

    meta: Meta
    hit: bool
    fd: int
    flight: Flight | None = None  # the download (miss)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    async def read(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` (``end`` None: to the end); from a flight, as they arrive.

        Raises CacheError if the flight fails: a reader never gets a silently short body.
        """
        try:
            if self.flight is None:
                stop = self.meta.size if end is None else end
                assert stop is not None
                pos = start
                while pos < stop:
                    block = os.pread(self.fd, min(READ_BLOCK, stop - pos), pos)
                    if not block:
                        raise CacheError(500, "cached object shorter than its index says")
                    pos += len(block)
                    yield block
                return
            fl = self.flight
            pos = start
            while end is None or pos < end:
                if not (fl.written > pos or fl.done):
                    async with fl.cond:
                        await fl.cond.wait_for(lambda p=pos: fl.written > p or fl.done)
                if fl.error is not None:
                    raise _as_cache_error(fl.error)
                avail = fl.written if end is None else min(fl.written, end)
                if pos >= avail:
                    if fl.done:
                        if end is not None and pos < end:
                            raise CacheError(502, "the upstream object is shorter than asked")
                        return
                    continue
                while pos < avail:
                    block = os.pread(self.fd, min(READ_BLOCK, avail - pos), pos)
                    if not block:
                        raise CacheError(502, "download vanished while reading")
                    pos += len(block)
                    yield block
        finally:
            self.close()


def _as_cache_error(e: BaseException) -> CacheError:
    if isinstance(e, CacheError):
        return e
    if isinstance(e, asyncio.CancelledError):
        return CacheError(503, "the download was cancelled (the cache is stopping)")
    return CacheError(502, f"download failed: {type(e).__name__}: {e}")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class CacheStore:
    """A size-bounded, LRU, optionally age-limited object cache in ``directory``.

    ``max_size`` and ``max_object`` in bytes, ``max_age`` in seconds (0: objects never
    expire).  Used from one event loop (the cache service); the index is SQLite so that
    ``twinhub status`` can read it from another process (:func:`read_stats`).
    """

    def __init__(
        self,
        directory: str | Path,
        max_size: int,
        max_age: float = 0,
        max_object: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_size <= 0:
            raise ValueError(f"cache max_size must be positive, got {max_size}")
        self.dir = Path(directory)
        self.max_size = int(max_size)
        self.max_age = float(max_age)
        self.max_object = min(int(max_object or max_size), self.max_size)
        self.clock = clock
        self.objects_dir = self.dir / "objects"
        self.tmp_dir = self.dir / "tmp"
        self._flights: dict[str, Flight] = {}
        self._absent: dict[str, tuple[float, CacheError]] = {}  # key -> (until, the 404)
        self._reserved = 0  # bytes announced by downloads in progress
        self.size = 0
        self.count = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._db = self._open_index()
        self._recover()

    # -- start-up ----------------------------------------------------------------------
    def _open_index(self) -> sqlite3.Connection:
        for d in (self.dir, self.objects_dir, self.tmp_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        path = self.dir / INDEX
        try:
            db = self._connect(path)
            db.execute("SELECT count(*) FROM objects").fetchone()
            return db
        except sqlite3.DatabaseError as e:
            # A damaged index loses nothing: objects carry their metadata (rebuilt below).
            log.warning("cache index %s unreadable (%s): rebuilding it from the objects", path, e)
            with contextlib.suppress(NameError):
                db.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return self._connect(path)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        return db

    def _recover(self) -> None:
        """Make the index and the files agree; drop partial downloads; apply the limits."""
        for f in self.tmp_dir.iterdir():
            f.unlink(missing_ok=True)
        files: dict[str, int] = {}
        for sub in self.objects_dir.iterdir():
            if not sub.is_dir():
                sub.unlink(missing_ok=True)
                continue
            for f in sub.iterdir():
                if not f.name.endswith(".json"):
                    files[f.name] = f.stat().st_size
        rows = self._db.execute("SELECT key, digest, size FROM objects").fetchall()
        indexed = set()
        for key, dg, size in rows:
            if files.get(dg) != size or not self._meta_path(dg).is_file() or dg != digest(key):
                self._delete(key, dg)
            else:
                indexed.add(dg)
        # Objects renamed into place whose index row was not written (killed in between).
        for dg, size in files.items():
            if dg in indexed:
                continue
            try:
                meta = json.loads(self._meta_path(dg).read_text())
                ok = meta["size"] == size and digest(meta["key"]) == dg
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if ok:
                self._index(meta["key"], dg, meta, meta.get("fetched", self.clock()))
            else:
                self._remove_files(dg)
        for name, value in self._db.execute("SELECT name, value FROM counters"):
            if name in self.counters:
                self.counters[name] = int(value)
        self._refresh_totals()
        self.expire()
        self._evict_to(self.max_size)

    def _refresh_totals(self) -> None:
        n, total = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM objects"
        ).fetchone()
        self.count, self.size = int(n), int(total)

    # -- paths -------------------------------------------------------------------------
    def _object_path(self, dg: str) -> Path:
        return self.objects_dir / dg[:2] / dg

    def _meta_path(self, dg: str) -> Path:
        return self.objects_dir / dg[:2] / f"{dg}.json"

    # -- counters ----------------------------------------------------------------------
    def count_event(self, **deltas: int) -> None:
        """Add to counters (kept in the index too: they survive restarts)."""
        for name, d in deltas.items():
            self.counters[name] += d
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, d),
            )

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "size": self.size,
            "max_size": self.max_size,
            "objects": self.count,
            "downloading": len(self._flights),
        }

    # -- lookups -----------------------------------------------------------------------
    def entry(self, key: str) -> Entry | None:
        row = self._db.execute(
            "SELECT key, digest, size, content_type, etag, last_modified, fetched, accessed "
            "FROM objects WHERE key = ?",
            (key,),
        ).fetchone()
        return Entry(*row) if row else None

    def _expired(self, e: Entry, now: float) -> bool:
        return self.max_age > 0 and now - e.fetched > self.max_age

    def lookup(self, key: str) -> Entry | None:
        """The complete, fresh object for ``key`` (its last access updated), else None."""
        e = self.entry(key)
        if e is None:
            return None
        now = self.clock()
        if self._expired(e, now):
            self._delete(key, e.digest)
            self.count_event(expired=1)
            return None
        if not self._object_path(e.digest).is_file():  # removed behind our back
            self._delete(key, e.digest)
            return None
        self._db.execute("UPDATE objects SET accessed = ? WHERE key = ?", (now, key))
        return e

    async def get(self, key: str, fetch: Fetch) -> Handle:
        """A handle on ``key``: from the cache (a hit), else from the one flight fetching it.

        Raises CacheError when the upstream refuses or fails before sending any byte.
        """
        # No await between finding an object (or a flight) and opening its file: nothing
        # can evict or rename it in between (one event loop).
        absent = self._absent.get(key)
        if absent is not None:
            if absent[0] > time.monotonic():
                raise absent[1]
            del self._absent[key]
        e = self.lookup(key)
        if e is not None:
            self.count_event(hits=1)
            fd = os.open(self._object_path(e.digest), os.O_RDONLY)
            return Handle(meta=e.meta, hit=True, fd=fd)
        fl = self._flights.get(key)
        if fl is None:
            self.count_event(misses=1)
            fl = self._start(key, fetch)
        else:
            self.count_event(hits=1, joined=1)
        fd = os.dup(fl.rfd)
        try:
            meta = await asyncio.shield(fl.meta)
        except BaseException:
            os.close(fd)
            raise
        return Handle(meta=meta, hit=False, fd=fd, flight=fl)

    # -- fetching ----------------------------------------------------------------------
    def _start(self, key: str, fetch: Fetch) -> Flight:
        dg = digest(key)
        tmp = self.tmp_dir / f"{dg}.{os.getpid()}.{time.monotonic_ns()}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        fl = Flight(key=key, tmp=tmp, meta=asyncio.get_running_loop().create_future())
        fl.rfd = os.open(tmp, os.O_RDONLY)
        self._flights[key] = fl
        fl.task = asyncio.create_task(self._run(fl, fetch), name=f"cache-fetch-{dg[:12]}")
        return fl

    async def _run(self, fl: Flight, fetch: Fetch) -> None:
        reserved = 0
        try:
            async with fetch() as up:
                meta = up.meta
                if meta.size is not None:
                    if meta.size > self.max_object:
                        raise TooLarge(meta.size, self.max_object)
                    reserved = meta.size
                    self._reserved += reserved
                    self._evict_to(self.max_size - self._reserved)
                fl.meta.set_result(meta)
                fd = os.open(fl.tmp, os.O_WRONLY)
                try:
                    notified, last = 0, time.monotonic()
                    async for chunk in up.chunks:
                        # unbuffered writes: readers pread the file as it grows
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                        fl.written += len(chunk)
                        if fl.written > self.max_object:
                            raise TooLarge(fl.written, self.max_object)
                        # wake readers per MiB or 50 ms, not per network read (64 KiB):
                        # waking them is most of the cost of a fast transfer
                        now = time.monotonic()
                        if fl.written - notified >= NOTIFY_BYTES or now - last >= 0.05:
                            notified, last = fl.written, now
                            async with fl.cond:
                                fl.cond.notify_all()
                    async with fl.cond:
                        fl.cond.notify_all()
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if meta.size is not None and fl.written != meta.size:
                    raise CacheError(
                        502, f"upstream sent {fl.written} bytes of the {meta.size} it announced"
                    )
                self._commit(fl, meta)
        except BaseException as e:
            fl.error = e
            if isinstance(e, CacheError) and e.status == 404:
                if len(self._absent) > 10_000:  # bounded: forget the oldest
                    self._absent.pop(next(iter(self._absent)))
                self._absent[fl.key] = (time.monotonic() + ABSENT_SECONDS, e)
            if not fl.meta.done():
                fl.meta.set_exception(_as_cache_error(e))
                fl.meta.exception()  # retrieved: no "never retrieved" warning if nobody waits
            self.count_event(errors=1)
            fl.tmp.unlink(missing_ok=True)
            if not isinstance(e, CacheError | Exception):
                raise  # cancellation: let it through once the flight is marked failed
        finally:
            self.count_event(bytes_fetched=fl.written)
            self._reserved -= reserved
            self._flights.pop(fl.key, None)
            os.close(fl.rfd)
            fl.done = True
            async with fl.cond:
                fl.cond.notify_all()

    def _commit(self, fl: Flight, meta: Meta) -> None:
        dg = digest(fl.key)
        now = self.clock()
        doc = {
            "key": fl.key,
            "size": fl.written,
            "content_type": meta.content_type,
            "etag": meta.etag,
            "last_modified": meta.last_modified,
            "fetched": now,
        }
        target = self._object_path(dg)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        old = self.entry(fl.key)
        if old is not None:  # an expired copy being replaced
            self._delete(fl.key, old.digest)
        side = target.with_name(f"{dg}.json.part")
        side.write_text(json.dumps(doc))
        os.replace(side, self._meta_path(dg))
        os.replace(fl.tmp, target)  # from here on the object exists, complete
        self._index(fl.key, dg, doc, now)
        self._evict_to(self.max_size)

    def _index(self, key: str, dg: str, doc: dict, when: float) -> None:
        old = self._db.execute("SELECT size FROM objects WHERE key = ?", (key,)).fetchone()
        self._db.execute(
            "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                dg,
                int(doc["size"]),
                doc.get("content_type") or "application/octet-stream",
                doc.get("etag") or "",
                doc.get("last_modified") or "",
                float(doc.get("fetched", when)),
                when,
            ),
        )
        # kept up to date here, not summed again: eviction deletes many rows in a row
        self.size += int(doc["size"]) - (old[0] if old else 0)
        self.count += 0 if old else 1

    # -- removal -------------------------------------------------------------------------
    def _remove_files(self, dg: str) -> None:
        self._object_path(dg).unlink(missing_ok=True)
        self._meta_path(dg).unlink(missing_ok=True)

    def _delete(self, key: str, dg: str) -> None:
        # Readers holding the file open keep reading it (POSIX): no need to wait for them.
        # no DELETE ... RETURNING: a process may have loaded an older libsqlite3 first
        # (pyproj's wheel bundles one), and RETURNING needs SQLite 3.35
        row = self._db.execute("SELECT size FROM objects WHERE key = ?", (key,)).fetchone()
        self._db.execute("DELETE FROM objects WHERE key = ?", (key,))
        self._remove_files(dg)
        if row is not None:
            self.size -= row[0]
            self.count -= 1

    def _evict_to(self, limit: int) -> int:
        """Evict least recently used objects until the total is at most ``limit``."""
        evicted = 0
        while self.size > max(limit, 0):
            row = self._db.execute(
                "SELECT key, digest FROM objects ORDER BY accessed, key LIMIT 1"
            ).fetchone()
            if row is None:
                break
            self._delete(*row)
            evicted += 1
        if evicted:
            self.count_event(evictions=evicted)
        return evicted

    def expire(self) -> int:
        """Remove objects fetched more than ``max_age`` seconds ago; returns how many."""
        if self.max_age <= 0:
            return 0
        cutoff = self.clock() - self.max_age
        rows = self._db.execute(
            "SELECT key, digest FROM objects WHERE fetched < ?", (cutoff,)
        ).fetchall()
        for key, dg in rows:
            self._delete(key, dg)
        if rows:
            self.count_event(expired=len(rows))
        return len(rows)

    async def close(self) -> None:
        """Cancel downloads in progress (their partial files go) and close the index."""
        tasks = [fl.task for fl in self._flights.values() if fl.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        self._db.close()


def read_stats(directory: str | Path) -> dict[str, Any] | None:
    """Counters, size and object count from a cache's index, read-only (another process);
    None when there is no index yet."""
    path = Path(directory) / INDEX
    if not path.is_file():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
        for name, value in db.execute("SELECT name, value FROM counters"):
            out[name] = int(value)
        n, total = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects").fetchone()
        out.update(objects=int(n), size=int(total))
        return out
    finally:
        db.close()

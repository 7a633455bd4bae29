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
runs as its own task, so a requester that hangs up does not cut the others off; when the last
one hangs up before the end, the fetch is cancelled.

Limits, so that one user cannot fill the disk or empty the cache: at most ``max_flights``
downloads at once, ``max_user_flights`` started by one user (a new miss beyond waits up to
``admit_wait`` seconds for one to end, then is answered 503 or 429), and the
downloads' sizes together (an unknown size counts as ``max_object``) at most
``flight_budget`` (503).  Room for a download is made as its bytes are announced (or
arrive, for an unknown size), so the objects and the downloads together stay within
``max_size``, and downloads never evict more than the budget's worth.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .flight import (
    Busy,
    CacheError,
    Entry,
    Fetch,
    Flight,
    Handle,
    Meta,
    TooLarge,
    Upstream,
    as_cache_error,
)
from .index import COUNTERS, INDEX, connect_index, read_stats

log = logging.getLogger("twinhub.cache")

#: Readers of a download are woken after this many new bytes (or 50 ms).
NOTIFY_BYTES = 1 << 20
#: Seconds a source's 404 is remembered: a Zarr v3 open probes for v2 metadata files
#: (.zgroup, .zattrs, .zmetadata) every time, and many readers open the same store.
ABSENT_SECONDS = 60.0
#: Seconds an object found too large while downloading (no size announced) is remembered:
#: it is then streamed through uncached instead of being fetched (and cut) at every request.
TOO_LARGE_SECONDS = 3600.0
#: Refusals remembered at most (the oldest are forgotten first).
MAX_REFUSALS = 10_000


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
        max_flights: int = 8,
        max_user_flights: int = 4,
        flight_budget: int | None = None,
        admit_wait: float = 30.0,
    ) -> None:
        if max_size <= 0:
            raise ValueError(f"cache max_size must be positive, got {max_size}")
        if max_flights < 1 or max_user_flights < 1:
            raise ValueError(
                f"cache download limits must be at least 1, got max_flights={max_flights}, "
                f"max_user_flights={max_user_flights}"
            )
        self.dir = Path(directory)
        self.max_size = int(max_size)
        self.max_age = float(max_age)
        self.max_object = min(int(max_object or max_size), self.max_size)
        self.max_flights = int(max_flights)
        self.max_user_flights = int(max_user_flights)
        self.admit_wait = float(admit_wait)  # seconds a new miss waits at a limit
        self._slot_freed = asyncio.Event()
        # half the cache by default, so that downloads never evict the other half; at least
        # one object of the largest size kept, at most the whole cache
        budget = flight_budget or max(self.max_size // 2, self.max_object)
        self.flight_budget = min(max(int(budget), self.max_object), self.max_size)
        self.clock = clock
        self.objects_dir = self.dir / "objects"
        self.tmp_dir = self.dir / "tmp"
        self._flights: dict[str, Flight] = {}
        # key -> (until, error): a source's 404s and objects found too large, in memory
        self._refused: dict[str, tuple[float, CacheError]] = {}
        self._reserved = 0  # room made in the cache for downloads in progress (bytes)
        self._budget_used = 0  # the downloads' shares of flight_budget
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
            db = connect_index(path)
            db.execute("SELECT count(*) FROM objects").fetchone()
            return db
        except sqlite3.DatabaseError as e:
            # A damaged index loses nothing: objects carry their metadata (rebuilt below).
            log.warning("cache index %s unreadable (%s): rebuilding it from the objects", path, e)
            with contextlib.suppress(NameError):
                db.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return connect_index(path)

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

    def has(self, key: str) -> bool:
        """Whether a complete, fresh object is held for ``key`` (nothing updated)."""
        e = self.entry(key)
        return e is not None and not self._expired(e, self.clock())

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

    def refusal(self, key: str) -> CacheError | None:
        """The remembered refusal of ``key`` (a source's 404, TooLarge), if still valid."""
        refused = self._refused.get(key)
        if refused is None:
            return None
        if refused[0] > time.monotonic():
            return refused[1]
        del self._refused[key]
        return None

    def _remember(self, key: str, e: CacheError, seconds: float) -> None:
        if len(self._refused) >= MAX_REFUSALS:  # bounded: forget the oldest
            self._refused.pop(next(iter(self._refused)))
        self._refused[key] = (time.monotonic() + seconds, e)

    async def get(self, key: str, fetch: Fetch, user: str = "") -> Handle:
        """A handle on ``key``: from the cache (a hit), else from the one flight fetching it
        (started for ``user`` when there is none, within the limits).

        Raises CacheError when the upstream refuses or fails before sending any byte, Busy
        (503/429) when a new download would exceed a limit, TooLarge for an object over
        ``max_object`` (the caller streams it through).
        """
        deadline = time.monotonic() + self.admit_wait
        while True:
            # No await between finding an object (or a flight) and opening its file:
            # nothing can evict or rename it in between (one event loop).
            refused = self.refusal(key)
            if refused is not None:
                raise refused
            e = self.lookup(key)
            if e is not None:
                self.count_event(hits=1)
                fd = os.open(self._object_path(e.digest), os.O_RDONLY)
                return Handle(meta=e.meta, hit=True, fd=fd)
            fl = self._flights.get(key)
            if fl is not None:
                self.count_event(hits=1, joined=1)
                break
            busy = self._admit(user)
            if busy is None:
                fl = self._start(key, fetch, user)
                self.count_event(misses=1)
                break
            # at a limit: wait a while for a download to end (parallel chunk reads of one
            # user queue up rather than fail), then look again: it may be cached by now
            try:
                await asyncio.wait_for(self._slot_freed.wait(), deadline - time.monotonic())
            except TimeoutError:
                raise busy from None
        fl.readers += 1  # a requester waiting for the headers counts as a reader
        fd = os.dup(fl.rfd)
        try:
            meta = await asyncio.shield(fl.meta)
        except BaseException:
            os.close(fd)
            self._release(fl, False)
            raise
        return Handle(
            meta=meta,
            hit=False,
            fd=fd,
            flight=fl,
            release=lambda complete, fl=fl: self._release(fl, complete),
        )

    def _admit(self, user: str) -> Busy | None:
        """Why a new download for ``user`` cannot start now (None: it can)."""
        if len(self._flights) >= self.max_flights:
            return Busy(
                503,
                f"the cache is busy: {len(self._flights)} downloads in progress, the most it "
                "runs at once; try again shortly",
            )
        mine = sum(1 for f in self._flights.values() if f.owner == user)
        if mine >= self.max_user_flights:
            return Busy(
                429,
                f"{user or 'this user'} already has {mine} downloads in progress through the "
                f"cache, the most one user may start at once; try again when one is done",
            )
        return None

    def _free_slot(self) -> None:
        """A download ended or was given up: wake the requests waiting for a slot."""
        self._slot_freed.set()
        self._slot_freed = asyncio.Event()

    def _release(self, fl: Flight, complete: bool) -> None:
        """A reader left ``fl``; the last one leaving before the end, having not read all it
        asked for (it hung up), cancels the download: nobody wants its bytes now."""
        fl.readers -= 1
        finished = fl.done or fl.error is not None or fl.task is None or fl.task.done()
        if fl.readers > 0 or complete or finished:
            return
        fl.abandoned = True
        if self._flights.get(fl.key) is fl:  # the next request starts afresh, not joins it
            del self._flights[fl.key]
            self._free_slot()
        fl.task.cancel()

    # -- fetching ----------------------------------------------------------------------
    def _start(self, key: str, fetch: Fetch, user: str) -> Flight:
        dg = digest(key)
        tmp = self.tmp_dir / f"{dg}.{os.getpid()}.{time.monotonic_ns()}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        fl = Flight(key=key, tmp=tmp, meta=asyncio.get_running_loop().create_future(), owner=user)
        fl.rfd = os.open(tmp, os.O_RDONLY)
        self._flights[key] = fl
        fl.task = asyncio.create_task(self._run(fl, fetch), name=f"cache-fetch-{dg[:12]}")
        return fl

    def _reserve(self, fl: Flight, n: int) -> None:
        """Make room for ``n`` more bytes of ``fl``: objects + downloads within max_size.
        Downloads hold at most flight_budget, so this never evicts more than that."""
        fl.reserved += n
        self._reserved += n
        if self.size + self._reserved > self.max_size:
            self._evict_to(self.max_size - self._reserved)

    async def _run(self, fl: Flight, fetch: Fetch) -> None:
        try:
            async with fetch() as up:
                meta = up.meta
                if meta.size is not None and meta.size > self.max_object:
                    raise TooLarge(meta.size, self.max_object)
                share = self.max_object if meta.size is None else meta.size
                if self._budget_used + share > self.flight_budget:
                    raise Busy(
                        503,
                        f"the cache is busy: downloads in progress hold "
                        f"{self._budget_used / 1e9:.3f} GB of the {self.flight_budget / 1e9:g} "
                        f"GB they may use (an unknown size counts as "
                        f"{self.max_object / 1e9:g} GB); try again shortly",
                    )
                fl.budget = share
                self._budget_used += share
                if meta.size is not None:
                    self._reserve(fl, meta.size)
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
                        if meta.size is None:
                            self._reserve(fl, len(chunk))  # room as the bytes arrive
                        elif fl.written > meta.size:
                            raise CacheError(
                                502, f"upstream sent more than the {meta.size} bytes it announced"
                            )
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
                self._remember(fl.key, e, ABSENT_SECONDS)
            elif isinstance(e, TooLarge):
                # found out mid-body when no size was announced (its readers were cut): from
                # now on streamed through at once, not fetched (and cut) at every request
                self._remember(fl.key, e, TOO_LARGE_SECONDS)
            if not fl.meta.done():
                fl.meta.set_exception(as_cache_error(e, fl))
                fl.meta.exception()  # retrieved: no "never retrieved" warning if nobody waits
            if fl.abandoned:
                self.count_event(cancelled=1)
            elif not isinstance(e, Busy):
                self.count_event(errors=1)
            fl.tmp.unlink(missing_ok=True)
            if not isinstance(e, CacheError | Exception):
                raise  # cancellation: let it through once the flight is marked failed
        finally:
            self.count_event(bytes_fetched=fl.written)
            self._reserved -= fl.reserved
            self._budget_used -= fl.budget
            if self._flights.get(fl.key) is fl:
                del self._flights[fl.key]
            self._free_slot()  # also when only the budget was taken
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
        # its bytes move from the downloads' room to the objects' size
        self._reserved -= fl.reserved
        fl.reserved = 0
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


__all__ = [
    "Busy",
    "CacheError",
    "CacheStore",
    "Entry",
    "Fetch",
    "Handle",
    "Meta",
    "TooLarge",
    "Upstream",
    "read_stats",
]

"""What the cache's store hands around: errors, object metadata, downloads in flight and the
handles requesters read through (split from :mod:`.store` to keep each module small).

A :class:`Flight` counts its readers: when the last one leaves before the download is
complete without having read all it asked for (the client hung up), the store cancels the
download (:meth:`.store.CacheStore._release`), so that nobody's abandoned request keeps
filling the disk.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

#: Bytes per read when serving a file.
READ_BLOCK = 1 << 20


class CacheError(RuntimeError):
    """An upstream fetch failed; ``status`` is the HTTP status the cache answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Busy(CacheError):
    """A new download was refused by a limit (503: the cache's, 429: the user's share)."""


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
    owner: str = ""  # the user whose request started it (per-user limit)
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    rfd: int = -1  # a read descriptor of ``tmp``, dup'ed by each reader
    written: int = 0
    readers: int = 0  # handles (and requesters waiting for the headers) not yet released
    reserved: int = 0  # bytes of room made for it in the cache (known size, or written)
    budget: int = 0  # its share of the in-flight budget (known size, else max_object)
    abandoned: bool = False  # cancelled because every reader hung up
    done: bool = False
    error: BaseException | None = None
    task: asyncio.Task | None = None


@dataclass
class Handle:
    """What a requester reads: a complete object (hit) or a flight (miss).

    Holds its own descriptor of the file, opened when the handle was made: an eviction or
    the flight's rename afterwards does not affect it.  :meth:`read` closes it; call
    :meth:`close` when not reading (HEAD), :meth:`abandon` when the client hung up.
    """

    meta: Meta
    hit: bool
    fd: int
    flight: Flight | None = None  # the download (miss)
    # called once with "read all it asked for" when this reader leaves a flight
    release: Callable[[bool], None] | None = None
    complete: bool = False

    def abandon(self) -> None:
        """The client hung up: leave the flight now (the last to leave cancels it).  The
        descriptor stays open for :meth:`read`, which may be suspended, to close."""
        self._leave()

    def _leave(self) -> None:
        if self.release is not None:
            release, self.release = self.release, None
            release(self.complete)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._leave()

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
                self.complete = True
                return
            fl = self.flight
            pos = start
            while end is None or pos < end:
                if not (fl.written > pos or fl.done):
                    async with fl.cond:
                        await fl.cond.wait_for(lambda p=pos: fl.written > p or fl.done)
                if fl.error is not None:
                    raise as_cache_error(fl.error, fl)
                avail = fl.written if end is None else min(fl.written, end)
                if pos >= avail:
                    if fl.done:
                        if end is not None and pos < end:
                            raise CacheError(502, "the upstream object is shorter than asked")
                        break
                    continue
                while pos < avail:
                    block = os.pread(self.fd, min(READ_BLOCK, avail - pos), pos)
                    if not block:
                        raise CacheError(502, "download vanished while reading")
                    pos += len(block)
                    yield block
            self.complete = True
        finally:
            self.close()


def as_cache_error(e: BaseException, fl: Flight | None = None) -> CacheError:
    """What a requester of a failed flight is told."""
    if isinstance(e, CacheError):
        return e
    if isinstance(e, asyncio.CancelledError):
        if fl is not None and fl.abandoned:
            return CacheError(503, "the download was cancelled: every reader hung up")
        return CacheError(503, "the download was cancelled (the cache is stopping)")
    if isinstance(e, OSError):  # ENOSPC and the like: the cache's disk, not the source
        return CacheError(500, f"the cache could not store the download: {e.strerror or e}")
    return CacheError(502, f"download failed: {type(e).__name__}: {e}")

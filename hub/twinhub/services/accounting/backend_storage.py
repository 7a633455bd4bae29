"""Storage readings: the size of every project bucket, home bucket and home directory.

Sampled every ``TwinhubAccounting.storage_interval`` seconds in threads of their own (listing
a big bucket takes seconds: the meter's tick, which reads CPU counters, never waits for it);
each tick then hands the store the latest size as a gauge (GiB), so the store charges it for
exactly the time between two ticks whatever the sampling period.

=====================  ===================  =========  ==============  ========================
what                   source_id            user       project         method
=====================  ===================  =========  ==============  ========================
project bucket         ``bucket:<bucket>``  ``""``     the project     ``s3-list``
home bucket            ``bucket:<bucket>``  its user   None            ``s3-list``
home directory         ``home:<user>``      its user   None            ``du``
=====================  ===================  =========  ==============  ========================

- A project bucket belongs to the project, not to whoever wrote into it (S3 keeps no
  writer per object): its user is ``""``, so it counts in the project's totals and against
  its ``storage_gb`` budget, and in no member's own usage.
- Home buckets and home directories are shown to their user and held against no budget
  (project None).
- Bucket sizes are the sum of the objects' sizes as S3 lists them (``list_objects_v2``,
  1000 per request, with the platform's admin key): exact for what is listed; unfinished
  multipart uploads are not counted. A sample lists at most ``storage_max_objects`` objects
  of a bucket: a bigger one is listed over several samples, each going on after the last
  key the previous one listed (``StartAfter``), and its size becomes known when a listing
  reaches the end. Until then it is recorded at its last complete size, or at the partial
  sum so far if that is more (a lower bound either way, logged): a listing cut off is never
  taken as the size, so objects placed after the first ``storage_max_objects`` keys count.
- Home directories are walked like ``du -x`` (allocated blocks, hard links once, other file
  systems not entered) by :mod:`.storage_walk`, which never follows a symbolic link, also one
  swapped in while walking; in a child process as the home's user (it reads only what that
  user can read), at most ``storage_max_files`` entries and ``storage_walk_timeout`` seconds
  (a lower bound beyond, logged); a child stuck past that (a hung file system) is killed and
  the home keeps its last size.
- Buckets and homes are sampled in two threads: a slow home never delays the buckets (whose
  sizes the storage budgets and the freeze of over-budget buckets depend on), nor the reverse.
- A bucket that cannot be listed (the store restarting) keeps its last size until the next
  sample, which then comes after 30 s rather than ``storage_interval``; one never sampled
  gives no reading.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pwd
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from ...objectstore import seaweed
from ...objectstore.connection import admin_client, has_admin_keys
from ...objectstore.credentials import all_users
from ...objectstore.memberships import project_bucket_name, project_names
from ...objectstore.options import settings as store_settings
from ...process.runtime import Runtime
from ...spawn.os_accounts import recorded_accounts
from . import storage_walk
from .config import TwinhubAccounting
from .readings import STORAGE, STORAGE_SOURCE, Reading, Source

log = logging.getLogger("twinhub.accounting.storage")

GIB = 2**30
PAGE = 1000  # objects per list_objects_v2 request (S3's maximum)
#: Seconds before a sample that failed somewhere is tried again (e.g. the object store was
#: still starting when the service's first sample ran), if storage_interval is longer.
RETRY_AFTER = 30.0
#: Seconds a home's walk may run past storage_walk_timeout (its own bound) before it is
#: taken for stuck in the kernel (a hung file system) and killed.
KILL_MARGIN = 10.0
BUCKETS, HOMES = "buckets", "homes"


@dataclass(frozen=True)
class Size:
    """One sampled size: bytes counted, whether it is a lower bound (and why, for the log)."""

    bytes: int
    truncated: bool = False
    why: str = ""


@dataclass(frozen=True)
class Listing:
    """One sample's listing of a bucket: the sizes summed, the objects listed, and the last
    key listed when it stopped at the bound (None: it reached the end)."""

    bytes: int
    objects: int
    cut_after: str | None = None


@dataclass(frozen=True)
class _Scan:
    """A bucket's listing cut off at the bound, to go on at the next sample."""

    after: str  # the last key listed so far
    bytes: int  # the sizes of the keys up to it
    objects: int


class Home(NamedTuple):
    path: str
    uid: int
    gid: int


def list_bucket(s3: Any, bucket: str, max_objects: int, start_after: str = "") -> Listing:
    """Sum of the sizes of ``bucket``'s objects after ``start_after`` (key order), listing at
    most ``max_objects`` of them."""
    total = count = 0
    last = ""
    token: str | None = None
    while True:
        kw: dict[str, Any] = {"Bucket": bucket, "MaxKeys": min(PAGE, max_objects - count)}
        if token:
            kw["ContinuationToken"] = token
        elif start_after:
            kw["StartAfter"] = start_after
        page = s3.list_objects_v2(**kw)
        for obj in page.get("Contents", []):
            total += int(obj.get("Size", 0))
            count += 1
            last = obj["Key"]
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        if token is None:
            return Listing(total, count)
        if count >= max_objects:
            return Listing(total, count, cut_after=last)


def tree_size(root: str | Path, max_entries: int, seconds: float | None = None) -> Size:
    """Allocated bytes under ``root`` walked in this process (:func:`.storage_walk.tree_size`)."""
    return _size_of(storage_walk.tree_size(root, max_entries, seconds))


def _size_of(w: storage_walk.Walk) -> Size:
    why = []
    if w.truncated:
        why.append("stopped at storage_max_files / storage_walk_timeout")
    if w.unreadable:
        why.append(f"{w.unreadable} directories unreadable to its user")
    if w.swapped:
        why.append(f"{w.swapped} directories replaced while walked, not entered")
    return Size(w.bytes, bool(why), "; ".join(why))


@functools.cache  # the walker's code does not change while the service runs
def _walk_source() -> str:
    return Path(storage_walk.__file__).read_text(encoding="utf-8")


def measure_home(home: Home, max_entries: int, seconds: float) -> Size | None:
    """The size of ``home``, walked in a child process as the home's user (when this one is
    root): only what that user may read is read, and a walk that hangs is killed after
    ``seconds`` + :data:`KILL_MARGIN`. None: the walk failed or was killed."""
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0 and home.uid != 0:
        as_user = {"user": home.uid, "group": home.gid, "extra_groups": []}
    # -I -S: no site-packages, environment or working directory of ours; the walk is
    # stdlib only and given as source, so the user needs to read no file of the platform's.
    cmd = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        _walk_source(),
        home.path,
        str(max_entries),
        str(seconds),
    ]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env={},
            start_new_session=True,
            **as_user,
        )
    except OSError as e:
        log.warning("%s: cannot start its walk: %s", home.path, e)
        return None
    try:
        out, err = proc.communicate(timeout=seconds + KILL_MARGIN)
    except subprocess.TimeoutExpired:
        proc.kill()
        # Unkillable in the kernel for now: Popen reaps it later, when it ends.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        log.warning(
            "%s: walk still running after %.0f s (a hung file system?): killed, the last "
            "size stands",
            home.path,
            seconds + KILL_MARGIN,
        )
        return None
    try:
        if proc.returncode != 0:
            raise ValueError(f"exit status {proc.returncode}")
        return _size_of(storage_walk.Walk(**json.loads(out)))
    except (ValueError, TypeError) as e:
        log.warning("%s: walk failed (%s): %s", home.path, e, err.decode(errors="replace")[-500:])
        return None


def home_dirs(rt: Runtime) -> dict[str, Home]:
    """{platform user: home directory} of the OS accounts twinhub made for its users
    (multi-user mode; the registry the spawner keeps in the state directory)."""
    out = {}
    for os_name, acc in recorded_accounts(rt.state_dir).items():
        try:
            pw = pwd.getpwnam(os_name)
        except KeyError:  # the account was removed; its record stays until purged
            continue
        if pw.pw_uid == acc.get("uid"):  # never someone else's account of the same name
            out[acc["platform_user"]] = Home(pw.pw_dir, pw.pw_uid, pw.pw_gid)
    return out


class StorageBackend:
    """A meter backend (:class:`~.meter.MeterBackend`) for storage, see the module doc."""

    name = "storage"

    def __init__(
        self,
        rt: Runtime,
        settings: TwinhubAccounting,
        s3: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rt, self.settings, self.clock = rt, settings, clock
        self._s3 = s3 or (lambda: admin_client(rt))
        self._sizes: dict[str, tuple[Source, float, str]] = {}  # source_id -> (source, GiB, method)
        self._lock = threading.Lock()
        # Per kind (buckets, homes): when its last sample started, its thread, and whether
        # some source of its last sample could not be measured.
        self._sampled_at: dict[str, float | None] = {BUCKETS: None, HOMES: None}
        self._threads: dict[str, threading.Thread | None] = {BUCKETS: None, HOMES: None}
        self._failed = {BUCKETS: False, HOMES: False}
        self._scans: dict[str, _Scan] = {}  # bucket -> its listing cut off, to go on with
        self._complete: dict[str, int] = {}  # bucket -> bytes of its last complete listing
        #: Sources whose last size is a lower bound (see the module doc).
        self.truncated: set[str] = set()

    # -- the meter's side ----------------------------------------------------------------
    def read(self, sources: Sequence[Any], now: datetime) -> list[Reading]:
        """The latest size of every storage source, as of ``now``; starts a new sample of
        buckets, of homes, in the background when the last is ``storage_interval`` old
        (``sources``: the meter's charge-file sources, not storage's: ignored)."""
        for kind in (BUCKETS, HOMES):
            last, thread = self._sampled_at[kind], self._threads[kind]
            due = last is None or self.clock() - last >= self.settings.storage_interval
            if due and (thread is None or not thread.is_alive()):
                self._sampled_at[kind] = self.clock()
                self._threads[kind] = threading.Thread(
                    target=self._sample_logged,
                    args=(kind,),
                    name=f"accounting-{kind}",
                    daemon=True,
                )
                self._threads[kind].start()  # type: ignore[union-attr]
        with self._lock:
            sizes = list(self._sizes.values())
        return [Reading(src, STORAGE, "gauge", gib, method, now) for src, gib, method in sizes]

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the samples in progress (tests, and a clean stop)."""
        for thread in self._threads.values():
            if thread is not None:
                thread.join(timeout)

    # -- sampling --------------------------------------------------------------------------
    def _sample_logged(self, kind: str) -> None:
        try:
            self._sample(kind)
            complete = not self._failed[kind]
        except Exception:
            log.exception("storage sample of %s failed", kind)
            complete = False
        last = self._sampled_at[kind]
        if not complete and last is not None:  # try again sooner
            wait = min(self.settings.storage_interval, RETRY_AFTER)
            self._sampled_at[kind] = last - (self.settings.storage_interval - wait)

    def sample(self) -> dict[str, float]:
        """Measure every storage source now (buckets, then homes, in this thread); returns
        {source_id: GiB} of this sample."""
        return {**self._sample(BUCKETS), **self._sample(HOMES)}

    def _sample(self, kind: str) -> dict[str, float]:
        t0 = time.monotonic()
        self._failed[kind] = False
        measured: dict[str, tuple[Source, Size | None, str]] = {}
        if kind == BUCKETS:
            buckets = self._buckets()
            s3 = self._s3() if buckets else None  # one client per sample (~50 ms to make)
            for source, bucket in buckets:
                measured[source.source_id] = (source, self._bucket_size(s3, bucket), "s3-list")
            listed = {bucket for _, bucket in buckets}
            for gone in (set(self._scans) | set(self._complete)) - listed:
                self._scans.pop(gone, None)
                self._complete.pop(gone, None)
        else:
            s = self.settings
            for user, home in home_dirs(self.rt).items():
                source = Source(f"home:{user}", user, None, STORAGE_SOURCE, home.path)
                size = measure_home(home, s.storage_max_files, s.storage_walk_timeout)
                measured[source.source_id] = (source, size, "du")
        prefix = "bucket:" if kind == BUCKETS else "home:"
        out = {}
        with self._lock:
            for sid, (source, size, method) in measured.items():
                if size is None:  # unreadable now: the last size stands
                    self._failed[kind] |= kind == BUCKETS  # a hung home is not retried sooner
                    continue
                if size.truncated:
                    self.truncated.add(sid)
                    log.warning("%s: %d B is a lower bound: %s", sid, size.bytes, size.why)
                else:
                    self.truncated.discard(sid)
                self._sizes[sid] = (source, size.bytes / GIB, method)
                out[sid] = size.bytes / GIB
            for sid in [k for k in self._sizes if k.startswith(prefix) and k not in measured]:
                del self._sizes[sid]  # project or user gone
                self.truncated.discard(sid)
        log.info("storage sampled: %d %s in %.2f s", len(out), kind, time.monotonic() - t0)
        return out

    def _buckets(self) -> list[tuple[Source, str]]:
        store = store_settings(self.rt)
        if not store.enabled or not has_admin_keys(self.rt):
            return []
        if store.embedded and seaweed.PORT_KEYS["s3"] not in self.rt.ports:
            return []  # this platform runs no object store
        out = []
        for project in project_names(self.rt):
            bucket = project_bucket_name(project)
            out.append((Source(f"bucket:{bucket}", "", project, STORAGE_SOURCE, bucket), bucket))
        for creds in all_users(self.rt):
            b = creds.home_bucket
            out.append((Source(f"bucket:{b}", creds.user, None, STORAGE_SOURCE, b), b))
        return out

    def _bucket_size(self, s3: Any, bucket: str) -> Size | None:
        """This sample's size of ``bucket``: its listing goes on where the last one was cut
        off; a listing not at its end gives the last complete size or the partial sum so far,
        whichever is more, as a lower bound (see the module doc)."""
        limit = self.settings.storage_max_objects
        scan = self._scans.get(bucket)
        try:
            got = list_bucket(s3, bucket, limit, scan.after if scan else "")
        except Exception as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":  # not made yet (a user who never spawned)
                self._scans.pop(bucket, None)
                self._complete[bucket] = 0
                return Size(0)
            log.warning("cannot list bucket %s: %s", bucket, e)
            return None
        total = got.bytes + (scan.bytes if scan else 0)
        if got.cut_after is None:
            self._scans.pop(bucket, None)
            self._complete[bucket] = total
            return Size(total)
        objects = got.objects + (scan.objects if scan else 0)
        self._scans[bucket] = _Scan(got.cut_after, total, objects)
        last = self._complete.get(bucket)
        why = (
            f"listing cut off after {objects} objects (storage_max_objects {limit} per "
            f"sample), going on after key {got.cut_after!r} at the next sample; recorded at "
            f"the more of its partial sum {total} B and its last complete size "
            f"{'none yet' if last is None else f'{last} B'}"
        )
        return Size(max(total, last or 0), truncated=True, why=why)

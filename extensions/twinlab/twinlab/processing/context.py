"""What a running job holds: its reports to the service and the ``JobContext`` given to
process functions (data in, progress out, output files under the job's prefix).

The runner (:mod:`.runner`) runs as the job's user; everything here uses that user's
credentials: the minted hub token for the STAC API, the user's S3 keys for outputs.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import tempfile
import threading
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import fsspec
import httpx
import numpy as np
import pandas as pd

from twinlab.datalake import open_item, search
from twinlab.datalake.config import s3_options
from twinlab.datalake.items import select_valid_times

from .schemas import MEDIA_CSV, MEDIA_JSON, MEDIA_NETCDF, MEDIA_ZARR, parse_datetime

log = logging.getLogger("twinlab.processing")

#: Header carrying the job's secret on the runner's calls to the service.
SECRET_HEADER = "X-Twinhub-Job-Secret"
#: Events per report and bytes of one report, at most (the service's limits).
MAX_EVENTS = 200
MAX_REPORT_BYTES = 1024 * 1024
#: Encoding kept from the source when writing Zarr (what the values mean, not how they
#: were stored).
_KEPT_ENCODING = frozenset(
    {"dtype", "_FillValue", "units", "calendar", "scale_factor", "add_offset"}
)
#: Characters of one log line kept (a traceback is split into lines before).
MAX_LOG_TEXT = 4000


def now() -> str:
    """The current time, RFC 3339 UTC with ``Z``."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobStopped(Exception):
    """The service asked the job to stop (dismissed, or failed by the service)."""


class ServiceLost(Exception):
    """The service stayed unreachable for longer than the report timeout."""


class Reporter:
    """Sends the job's events to the service from a thread, in batches.

    Events wait at most ``interval`` seconds; an empty report goes every ``heartbeat``
    seconds so that a dismissal reaches a job that is busy computing. A failed send keeps
    the events and retries each ``retry`` seconds; after ``report_timeout`` seconds without
    an answer :attr:`lost` is set. An answer with ``"stop": true`` (or 410: the job is over)
    sets :attr:`stop`.
    """

    def __init__(
        self,
        base_url: str,
        job_id: str,
        secret: str,
        *,
        report_timeout: float = 600.0,
        interval: float = 0.5,
        heartbeat: float = 3.0,
        retry: float = 1.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/internal/jobs/{job_id}/events"
        self.headers = {SECRET_HEADER: secret}
        self.report_timeout = report_timeout
        self.interval, self.heartbeat, self.retry = interval, heartbeat, retry
        self.client = client or httpx.Client(timeout=10.0)
        self.stop = threading.Event()  # the service said stop
        self.lost = threading.Event()  # the service did not answer for report_timeout
        self.status: str | None = None
        self.stop_reason = ""
        self._queue: deque[dict] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="job-reporter", daemon=True)

    def start(self) -> Reporter:
        self._thread.start()
        return self

    def emit(self, kind: str, **fields: Any) -> None:
        """Queue one event (``type`` ``kind``, stamped with the time)."""
        try:  # the service refuses NaN and anything that is not JSON
            event = {"type": kind, "at": now(), **to_json_value(fields)}
        except TypeError:
            event = {"type": kind, "at": now(), **json.loads(json.dumps(fields, default=str))}
        with self._lock:
            self._queue.append(event)
            self._idle.clear()
        if kind in ("done", "failed"):
            self._wake.set()

    def flush(self, timeout: float) -> bool:
        """Wait until every queued event was accepted (True) or ``timeout`` passed."""
        self._wake.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(0.05) and not self._queue:
                return True
            if self.lost.is_set() or not self._thread.is_alive():
                return False
        return not self._queue

    def close(self, timeout: float = 10.0) -> bool:
        """Flush, then end the thread; True when everything was delivered."""
        delivered = self.flush(timeout)
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=2.0)
        return delivered

    # -- the thread -------------------------------------------------------------------------
    def _batch(self) -> list[dict]:
        with self._lock:
            batch: list[dict] = []
            size = 20
            for event in self._queue:
                n = len(json.dumps(event, default=str)) + 1
                if len(batch) >= MAX_EVENTS or (batch and size + n > MAX_REPORT_BYTES):
                    break
                batch.append(event)
                size += n
            return batch

    def _run(self) -> None:
        last_sent = time.monotonic()
        while not self._closing.is_set() or self._queue:
            if self._closing.is_set() and (self.lost.is_set() or self.stop.is_set()):
                return
            self._wake.wait(self.interval)
            self._wake.clear()
            batch = self._batch()
            if not batch and time.monotonic() - last_sent < self.heartbeat:
                continue
            if self._send(batch):
                last_sent = time.monotonic()
                with self._lock:
                    for _ in batch:
                        self._queue.popleft()
                    if not self._queue:
                        self._idle.set()
            elif time.monotonic() - self._last_ok > self.report_timeout:
                self.lost.set()
                self._idle.set()
                return
            else:
                time.sleep(self.retry)

    def _send(self, batch: list[dict]) -> bool:
        try:
            r = self.client.post(self.url, json={"events": batch}, headers=self.headers)
        except httpx.HTTPError as err:
            log.warning("report failed (%s); retrying", err)
            return False
        if r.status_code == 410:  # the job ended (dismissed, or failed by the service)
            self._last_ok = time.monotonic()
            self.stop_reason = "the job already ended"
            self.stop.set()
            return True
        if r.status_code in (401, 403, 404):  # not ours to report any more: stop the work
            self.stop_reason = f"the service refused the report ({r.status_code})"
            self.stop.set()
            return True
        if r.status_code in (400, 413):  # a bad report: sending it again cannot help
            self._refused(batch, r)
            return True
        if r.status_code >= 400:  # 5xx, a proxy without the service behind it: retry
            log.warning("report answered %s; retrying", r.status_code)
            return False
        self._last_ok = time.monotonic()
        try:
            answer = r.json()
        except ValueError:
            answer = {}
        self.status = answer.get("status", self.status)
        if answer.get("stop"):
            self.stop_reason = f"the service stopped the job ({self.status})"
            self.stop.set()
        return True

    def _refused(self, batch: list[dict], r: httpx.Response) -> None:
        """Drop a report the service refused; an ending event in it becomes a failure
        (else the job would wait for its wall time)."""
        try:
            why = str(r.json().get("description") or r.text)
        except ValueError:
            why = r.text
        log.error("the service refused a report (%s): %s", r.status_code, why[:500])
        if any(e["type"] in ("done", "failed") for e in batch):
            event = {"type": "failed", "at": now(), "reason": f"report refused: {why[:500]}"}
            with self._lock:
                self._queue.insert(len(batch), event)  # right after the refused batch


class JobContext:
    """What a process function gets as ``ctx``: the job's spec, data and reporting.

    ``client``: the Dask client of the job's cluster (None for processes without one).
    ``fs``/``prefix``: the filesystem and path of the job's output prefix.
    """

    def __init__(self, spec: dict, reporter: Reporter, *, client: Any = None) -> None:
        self.spec = spec
        self.id: str = spec["id"]
        self.inputs: dict = spec.get("inputs") or {}
        self.process: dict = spec.get("process") or {}
        self.limits: dict = spec.get("limits") or {}
        self.reporter = reporter
        self.client = client
        prefix = spec.get("output_prefix") or ""
        # a local prefix (tests, a laptop) needs its folders made; S3 has none to make
        opts = s3_options() if prefix.startswith("s3://") else {"auto_mkdir": True}
        self.fs, self.prefix = fsspec.core.url_to_fs(prefix, **opts) if prefix else (None, "")
        self.output_prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.current_stage: str | None = None
        self.data: dict[str, Any] = {}  # fetched datasets by input name
        self.items: dict[str, Any] = {}  # their STAC items by input name
        self.sources: list[str] = []  # self hrefs of the STAC items read
        self.files: dict[str, dict] = {}  # output name -> {"href", "type"}
        self.time_range: tuple[Any, Any] | None = None  # (first, last) time of the data

    # -- reporting ----------------------------------------------------------------------
    def stage(self, name: str) -> None:
        self.check_stop()
        self.current_stage = name
        self.reporter.emit("stage", stage=name)

    def progress(self, pct: float, message: str = "") -> None:
        """Progress (0-100) within the current stage."""
        self.check_stop()
        self.reporter.emit("progress", progress=max(0.0, min(100.0, float(pct))), message=message)

    def log(self, text: str, level: str = "info") -> None:
        for line in str(text).splitlines() or [""]:
            self.reporter.emit("log", level=level, text=line[:MAX_LOG_TEXT])

    def check_stop(self) -> None:
        """Raise :class:`JobStopped`/:class:`ServiceLost` when the job must end now."""
        if self.reporter.stop.is_set():
            raise JobStopped(self.reporter.stop_reason or "stopped by the service")
        if self.reporter.lost.is_set():
            raise ServiceLost("the processing service stayed unreachable")

    # -- data in ------------------------------------------------------------------------
    def open_item(
        self, item_id: str, collection: str | None = None, variable: str | None = None
    ) -> tuple[Any, Any]:
        """(pystac item, lazy xarray Dataset) of a lake item, read with the job's token."""
        found = search(collections=[collection] if collection else None, ids=[item_id], max_items=2)
        items = list(found.items)
        if not items:
            where = f" in collection {collection!r}" if collection else ""
            raise LookupError(f"no STAC item {item_id!r}{where} in the data lake")
        if len(items) > 1:
            cols = ", ".join(sorted(str(i.collection_id) for i in items))
            raise LookupError(
                f"item {item_id!r} is in several collections ({cols}): give the 'collection' input"
            )
        item = items[0]
        href = item.get_self_href() or f"{item.collection_id}/{item.id}"
        if href not in self.sources:
            self.sources.append(href)
        return item, open_item(item, variable)

    def select_time(self, ds: Any, datetime: str | None) -> Any:
        """``ds`` within the STAC ``datetime`` (instant or interval), with a time
        dimension named like its time coordinate; at most ``limits.max_time_steps`` steps."""
        if datetime:
            start, end = parse_datetime(datetime)

            def naive(t: _dt.datetime | None) -> Any:
                return None if t is None else np.datetime64(t.replace(tzinfo=None), "ns")

            ds = select_valid_times(ds, naive(start), naive(end), what="the item")
        name = time_name(ds)
        if name is not None and ds[name].ndim == 0:  # one step: give it its dimension
            ds = ds.expand_dims(name)
        elif name is not None and ds[name].dims != (name,):  # GRIB: valid_time on "time"
            ds = ds.swap_dims({ds[name].dims[0]: name})
        if name is not None:
            steps = int(ds.sizes[name])
            most = int(self.limits.get("max_time_steps") or 0)
            if most and steps > most:
                raise ValueError(
                    f"the time range holds {steps} time steps; a job may read {most} at most"
                )
            values = ds[name].values
            if steps:
                self.time_range = (values.min(), values.max())
        return ds

    # -- data out -----------------------------------------------------------------------
    def _path(self, filename: str) -> tuple[str, str]:
        if "/" in filename or filename.startswith("."):
            raise ValueError(f"output file name {filename!r} must be a plain name")
        if self.fs is None:
            raise RuntimeError("this job has no output prefix")
        path = f"{self.prefix.rstrip('/')}/{filename}"
        return path, self.output_prefix + filename

    def _record(self, name: str, href: str, media_type: str) -> str:
        self.files[name] = {"href": href, "type": media_type}
        return href

    # Each writer stores ``<name>.<ext>`` under the prefix and records it as the output
    # ``output`` (default: ``name``) of the results: {"href": s3://..., "type": media type}.
    def write_bytes(self, filename: str, data: bytes, media_type: str, output: str) -> str:
        path, href = self._path(filename)
        with self.fs.open(path, "wb") as f:
            f.write(data)
        return self._record(output, href, media_type)

    def write_json(self, name: str, obj: Any, *, output: str | None = None) -> str:
        data = json.dumps(to_json_value(obj)).encode()
        return self.write_bytes(f"{name}.json", data, MEDIA_JSON, output or name)

    def write_csv(self, name: str, obj: Any, *, output: str | None = None) -> str:
        """A pandas DataFrame (or CSV text) as ``<name>.csv``."""
        text = obj if isinstance(obj, str) else obj.to_csv(index=False)
        return self.write_bytes(f"{name}.csv", text.encode(), MEDIA_CSV, output or name)

    def write_netcdf(self, name: str, obj: Any, *, output: str | None = None) -> str:
        """An xarray Dataset/DataArray as ``<name>.nc`` (computed here: keep it small)."""
        ds = obj.to_dataset(name=obj.name or name) if hasattr(obj, "to_dataset") else obj
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "out.nc"
            ds.load().to_netcdf(local, engine="h5netcdf")
            data = local.read_bytes()
        return self.write_bytes(f"{name}.nc", data, MEDIA_NETCDF, output or name)

    def write_zarr(
        self,
        name: str,
        obj: Any,
        *,
        output: str | None = None,
        start: float = 0.0,
        end: float = 100.0,
    ) -> str:
        """An xarray object as ``<name>.zarr``, written by the cluster's workers; progress
        from ``start`` to ``end`` as chunks are stored."""
        ds = obj.to_dataset(name=obj.name or name) if hasattr(obj, "to_dataset") else obj
        path, href = self._path(f"{name}.zarr")
        ds = ds.copy()
        for v in ds.variables.values():  # the source's chunks and codecs need not fit here
            v.encoding = {k: x for k, x in v.encoding.items() if k in _KEPT_ENCODING}
        target = href if href.startswith("s3://") else path
        opts = {"storage_options": s3_options()} if href.startswith("s3://") else {}
        with warnings.catch_warnings():
            # consolidated metadata, as the lake's own stores have it (zarr 3 warns it is
            # not in the v3 spec yet; twinlab's opener reads both)
            warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
            delayed = ds.to_zarr(target, mode="w", compute=False, consolidated=True, **opts)
        self.compute(delayed, start=start, end=end, message=f"writing {name}.zarr")
        return self._record(output or name, href, MEDIA_ZARR)

    # -- computation ----------------------------------------------------------------------
    def compute(
        self, obj: Any, *, start: float = 0.0, end: float = 100.0, message: str = "computing"
    ) -> Any:
        """Compute a Dask collection (or xarray object) on the job's cluster, reporting
        progress from ``start`` to ``end`` as its chunks complete; returns the result."""
        # start-up cost: Dask loads with the first computation (echo needs none)
        import dask

        if self.client is None:
            self.progress(start, message)
            out = dask.compute(obj)[0]
            self.progress(end, message)
            return out
        # start-up cost: only jobs with a cluster need the distributed client's helpers
        from distributed import as_completed, futures_of

        persisted = self.client.persist(obj)
        futures = futures_of(persisted)
        total = max(1, len(futures))
        self.progress(start, message)
        last = time.monotonic()
        for done, _ in enumerate(as_completed(futures), start=1):
            if time.monotonic() - last > 0.25 or done == total:
                last = time.monotonic()
                self.progress(start + (end - start) * done / total, message)
        return dask.compute(persisted)[0] if futures else persisted


def time_name(ds: Any) -> str | None:
    """The time coordinate of ``ds`` (GRIB: ``valid_time``), or None."""
    for name in ("valid_time", "time"):
        if name in ds.coords and ds[name].ndim <= 1:
            return name
    return None


def iso_times(values: Any) -> list[str]:
    """datetime64 values as RFC 3339 UTC strings."""
    return [pd.Timestamp(v).strftime("%Y-%m-%dT%H:%M:%SZ") for v in values]


def to_json_value(obj: Any) -> Any:
    """``obj`` as plain JSON types (NumPy values converted, NaN/inf -> None), or TypeError."""
    if hasattr(obj, "tolist") and not isinstance(obj, str):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | int | bool):
        return obj
    if isinstance(obj, dict):
        return {str(k): to_json_value(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json_value(v) for v in obj]
    if isinstance(obj, _dt.datetime | _dt.date):
        return obj.isoformat()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


__all__ = [
    "JobContext",
    "JobStopped",
    "Reporter",
    "ServiceLost",
    "iso_times",
    "now",
    "time_name",
    "to_json_value",
]

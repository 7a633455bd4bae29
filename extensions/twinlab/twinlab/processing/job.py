"""Jobs of the processing service from a notebook: run a process, follow it, open its results.

>>> job = execute("zonal-mean", {"item": "...", "variable": "2t"})
>>> job.watch()              # a progress bar (a widget in a notebook, a line in a terminal)
>>> series = job.result()    # inline outputs as Python objects, files opened lazily

A :class:`Job` reads the service afresh on every look at a running job's ``status`` (its
``stage`` and ``progress`` come with that look when read within a second of it); once the
job has ended its state no longer changes and is kept.
"""

from __future__ import annotations

import html
import json
import sys
import time
from typing import Any, Final
from urllib.parse import urlsplit

from twinlab import datalake
from twinlab.datalake.config import s3_options

from .client import Client, ProcessingError, default_client, quote_id

__all__ = ["Job", "execute", "job", "jobs", "open_output"]

#: OGC statuses after which a job changes no more.
FINISHED: Final = ("successful", "failed", "dismissed")
#: Seconds between two looks at a running job: from the first to the last (a long job is
#: not polled ten times a second for hours).
POLL_FIRST, POLL_LAST = 0.2, 2.0
#: Seconds a look at a job's status serves its stage and progress too.
FRESH: Final = 1.0
#: Log lines asked for per request.
LOG_PAGE: Final = 1000
#: Output media types (and suffixes) opened as data; anything else is handed back as its
#: ``{"href", "type"}`` link.
ZARR_TYPES = ("application/vnd+zarr", "application/x-zarr", "application/zarr")
NETCDF_TYPES = ("application/netcdf", "application/x-netcdf", "application/x-hdf5")
CSV_TYPES = ("text/csv",)
JSON_TYPES = ("application/json", "application/geo+json")


class Job:
    """One job of the processing service (yours, or any as an admin).

    ``id``; ``status`` (OGC: accepted, running, successful, failed, dismissed), ``stage``
    (queued, scheduling, fetching, processing, ingesting, finished), ``progress`` (0..100)
    and ``message``, read afresh while the job runs; :meth:`wait`, :meth:`watch`,
    :meth:`logs`, :meth:`result`, :meth:`dismiss`, :attr:`item`.
    """

    def __init__(
        self, job_id: str, client: Client | None = None, doc: dict[str, Any] | None = None
    ) -> None:
        if not isinstance(job_id, str) or not job_id or "/" in job_id:
            raise ProcessingError(f"not a job id: {job_id!r}")
        self.id = job_id
        self.client = client or default_client()
        self._doc: dict[str, Any] = dict(doc or {})
        self._read_at = time.monotonic() if doc else -FRESH

    # -- state ------------------------------------------------------------------------------
    def refresh(self) -> dict[str, Any]:
        """The job's status document, read now (OGC statusInfo plus ``stage``, ``stages``,
        ``owner``, ``project``, ``attempt``)."""
        doc = self.client.get_json(f"jobs/{self.id}")
        if not isinstance(doc, dict) or doc.get("jobID") != self.id:
            raise ProcessingError(f"the service answered no status document for job {self.id}")
        self._doc, self._read_at = doc, time.monotonic()
        return doc

    @property
    def info(self) -> dict[str, Any]:
        """The status document: read afresh unless the job has ended."""
        if self._doc.get("status") in FINISHED:
            return self._doc
        return self.refresh()

    def _recent(self) -> dict[str, Any]:
        """The document of a look less than :data:`FRESH` seconds old, else a new look: the
        stage and progress read right after ``status`` belong to the same moment."""
        if self._doc.get("status") in FINISHED or time.monotonic() - self._read_at < FRESH:
            return self._doc
        return self.refresh()

    @property
    def status(self) -> str:
        """accepted, running, successful, failed or dismissed (read now)."""
        return str(self.info.get("status", ""))

    @property
    def stage(self) -> str:
        """queued, scheduling, fetching, processing, ingesting or finished."""
        return str(self._recent().get("stage", ""))

    @property
    def progress(self) -> int:
        """Overall progress, 0..100."""
        return int(self._recent().get("progress") or 0)

    @property
    def message(self) -> str:
        return str(self._recent().get("message") or "")

    @property
    def process_id(self) -> str:
        return str((self._doc or self.info).get("processID", ""))

    @property
    def done(self) -> bool:
        """True once the job has ended (successful, failed or dismissed)."""
        return self.status in FINISHED

    def wait(self, timeout: float | None = None) -> Job:
        """Wait until the job ends (``timeout`` seconds at most: then ``TimeoutError``)."""
        for _ in self._follow(timeout):
            pass
        return self

    def _follow(self, timeout: float | None) -> Any:
        """Yields the status document at each look until the job ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_FIRST
        while True:
            doc = self.refresh()
            yield doc
            if doc.get("status") in FINISHED:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"job {self.id} still {doc.get('status')} ({doc.get('stage')}) after "
                    f"{timeout:g} s"
                )
            wait = pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(wait)
            pause = min(POLL_LAST, pause * 1.5)

    # -- progress display -------------------------------------------------------------------
    def watch(self, timeout: float | None = None) -> Job:
        """Show the job's progress until it ends: a widget bar in a notebook (when
        ipywidgets is there), else a line rewritten in place on stderr."""
        widgets = _widgets() if _in_kernel() else None
        if widgets is not None:
            from IPython.display import display  # in a kernel: IPython is loaded

            bar = widgets.IntProgress(min=0, max=100, description=self.id[:8])
            label = widgets.HTML()
            display(widgets.HBox([bar, label]))
            for doc in self._follow(timeout):
                bar.value = int(doc.get("progress") or 0)
                bar.bar_style = _BAR_STYLES.get(str(doc.get("status")), "info")
                label.value = html.escape(_summary(doc))
            return self
        try:
            for doc in self._follow(timeout):
                sys.stderr.write("\r" + progress_line(doc))
                sys.stderr.flush()
        finally:
            sys.stderr.write("\n")
        return self

    def _repr_html_(self) -> str:
        doc = self.info
        pct = int(doc.get("progress") or 0)
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(s.get('started', '')))}</td>"
            f"<td>{html.escape(str(s.get('finished', '')))}</td>"
            f"<td>{int(s.get('progress') or 0)} %</td></tr>"
            for name, s in (doc.get("stages") or {}).items()
            if isinstance(s, dict)
        )
        table = (
            "<table><tr><th>stage</th><th>started</th><th>finished</th><th>progress</th></tr>"
            f"{rows}</table>"
            if rows
            else ""
        )
        return (
            f"<div><b>job {html.escape(self.id)}</b> "
            f"({html.escape(str(doc.get('processID', '')))}): "
            f"{html.escape(str(doc.get('status', '')))}, {html.escape(str(doc.get('stage', '')))}"
            f"<br><progress value='{pct}' max='100'></progress> {pct} %"
            f" {html.escape(str(doc.get('message') or ''))}{table}</div>"
        )

    def __repr__(self) -> str:
        doc = self._doc
        if not doc:
            return f"<Job {self.id}>"
        return (
            f"<Job {self.id} {doc.get('processID', '')}: {doc.get('status', '')}, "
            f"{doc.get('stage', '')} {int(doc.get('progress') or 0)} %>"
        )

    # -- logs, results, dismissal -----------------------------------------------------------
    def log_lines(self, after: int = 0) -> list[dict[str, Any]]:
        """The log as records ``{"id", "at", "stage", "level", "source", "text"}`` after
        line id ``after``."""
        lines: list[dict[str, Any]] = []
        while True:
            doc = self.client.get_json(f"jobs/{self.id}/logs", after=after, limit=LOG_PAGE)
            page = doc.get("lines") if isinstance(doc, dict) else None
            if not isinstance(page, list):
                raise ProcessingError(f"the service's log of job {self.id} has no 'lines' list")
            lines.extend(page)
            if len(page) < LOG_PAGE or not page:
                return lines
            after = int(page[-1]["id"])

    def logs(self, after: int = 0) -> str:
        """The log as text, one line per record: time, stage, level, text."""
        return "".join(
            f"{r.get('at', '')} {r.get('stage', ''):<10} {r.get('level', ''):<7} "
            f"{r.get('text', '')}\n"
            for r in self.log_lines(after)
        )

    def results(self) -> dict[str, Any]:
        """The OGC results document as the service answers it (links, not data)."""
        doc = self.client.get_json(f"jobs/{self.id}/results")
        if not isinstance(doc, dict):
            raise ProcessingError(f"the service's results of job {self.id} are not an object")
        return doc

    def result(self, timeout: float | None = None) -> Any:
        """The job's outputs, once it has ended (waits ``timeout`` seconds at most).

        Inline outputs as Python objects; files opened lazily: Zarr and NetCDF as xarray
        Datasets (from your bucket, with your keys), CSV as a pandas DataFrame, JSON parsed.
        A dict by output name, or the output itself when the process has one (its STAC
        item aside: :attr:`item`). A failed or dismissed
        job raises :class:`ProcessingError` with its reason.
        """
        self.wait(timeout)
        doc = self._doc
        if doc.get("status") != "successful":
            raise ProcessingError(
                f"job {self.id} {doc.get('status')}: {doc.get('message') or 'no reason given'}"
            )
        outputs = {k: open_output(v) for k, v in self.results().items() if k != "item"}
        declared = self._declared_outputs()
        if declared is not None and len(declared) == 1:
            return outputs.get(declared[0])
        if declared is None and len(outputs) == 1:
            return next(iter(outputs.values()))
        return outputs

    def _declared_outputs(self) -> list[str] | None:
        """The process's outputs but its STAC item (None when it is no longer described:
        a user process removed since)."""
        try:
            desc = self.client.describe(self.process_id)
        except ProcessingError:
            return None
        return [k for k in desc.get("outputs") or {} if k != "item"]

    def dismiss(self) -> Job:
        """Stop the job (its cluster stopped, partial outputs removed) or, once ended,
        remove it from your job list."""
        resp = self.client.request("DELETE", f"jobs/{self.id}")
        try:
            doc = resp.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("jobID") == self.id:
            self._doc = doc
        return self

    @property
    def item(self) -> Any:
        """The STAC item the job's outputs were ingested as (a ``pystac.Item``, found with
        :func:`twinlab.datalake.search`); None for a job that ingests nothing (``echo``)."""
        link = self.results().get("item")
        href = link.get("href") if isinstance(link, dict) else None
        if not href:
            return None
        collection, item_id = _item_path(href, self.id)
        found = datalake.search(
            collections=[collection] if collection else None, ids=[item_id], max_items=2
        )
        if not found.items:
            raise ProcessingError(f"job {self.id}'s item {href} is not in the data lake")
        return found.items[0]


_BAR_STYLES = {"successful": "success", "failed": "danger", "dismissed": "warning"}


def _summary(doc: dict[str, Any]) -> str:
    text = f"{doc.get('status', '')} · {doc.get('stage', '')} · {int(doc.get('progress') or 0)} %"
    return text + (f" · {doc['message']}" if doc.get("message") else "")


def progress_line(doc: dict[str, Any], width: int = 24) -> str:
    """A terminal progress line: ``<id> [#####-----]  45 % running processing: message``."""
    pct = max(0, min(100, int(doc.get("progress") or 0)))
    filled = round(width * pct / 100)
    message = str(doc.get("message") or "")[:60]
    return (
        f"{str(doc.get('jobID', ''))[:8]} [{'#' * filled}{'-' * (width - filled)}] {pct:3d} % "
        f"{doc.get('status', '')} {doc.get('stage', '')}: {message}"
    ).ljust(width + 90)


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (where a widget can be shown)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


def _widgets() -> Any:
    try:
        import ipywidgets  # start-up cost: only when watching a job in a notebook
    except ImportError:
        return None
    return ipywidgets


def _item_path(href: str, job_id: str) -> tuple[str, str]:
    """(collection, item id) of a STAC item URL ``.../collections/<c>/items/<id>``."""
    parts = urlsplit(href).path.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "items" and parts[-4] == "collections":
        return parts[-3], parts[-1]
    return "", job_id


def _media_kind(href: str, media_type: str) -> str:
    media = media_type.split(";")[0].strip().lower()
    name = href.rstrip("/").lower()
    if media in ZARR_TYPES or name.endswith(".zarr"):
        return "zarr"
    if media in NETCDF_TYPES or name.endswith((".nc", ".nc4", ".netcdf")):
        return "netcdf"
    if media in CSV_TYPES or name.endswith(".csv"):
        return "csv"
    if media in JSON_TYPES or name.endswith((".json", ".geojson")):
        return "json"
    return ""


def open_output(value: Any) -> Any:
    """One output of a results document as data: an inline value as it is (an OGC qualified
    value ``{"value": ...}`` unwrapped), a file link opened lazily by its type or suffix
    (Zarr, NetCDF -> xarray; CSV -> pandas; JSON -> parsed); an unknown kind of file stays
    its ``{"href", "type"}`` link."""
    if not isinstance(value, dict):
        return value
    if "href" not in value:
        qualified = "value" in value and set(value) <= {"value", "mediaType", "encoding", "schema"}
        return value["value"] if qualified else value
    href, media = str(value["href"]), str(value.get("type") or "")
    kind = _media_kind(href, media)
    if kind in ("zarr", "netcdf"):
        return datalake.open_href(href, engine="zarr" if kind == "zarr" else None)
    if kind in ("csv", "json"):
        import fsspec  # start-up cost: loaded on first use

        opts = s3_options() if href.startswith("s3://") else {}
        if kind == "csv":
            import pandas as pd  # start-up cost: loaded on first use

            return pd.read_csv(href, storage_options=opts or None)
        with fsspec.open(href, "rt", **opts) as f:
            return json.load(f)
    return value


# -- the module's functions -------------------------------------------------------------------
def execute(
    process_id: str,
    inputs: dict[str, Any] | None = None,
    wait: bool = False,
    project: str | None = None,
    *,
    timeout: float | None = None,
    client: Client | None = None,
) -> Job:
    """Run a process as a job of yours and return the :class:`Job` (at once, or once it has
    ended with ``wait=True``). ``project``: the project its cluster is charged to (default:
    your first project). Refusals (bad inputs, limits) raise :class:`ProcessingError`."""
    if inputs is not None and not isinstance(inputs, dict):
        raise ProcessingError(f"inputs must be a dict by input name, got {type(inputs).__name__}")
    client = client or default_client()
    body: dict[str, Any] = {"inputs": inputs or {}}
    if project is not None:
        body["project"] = project
    resp = client.request(
        "POST",
        f"processes/{quote_id(process_id)}/execution",
        json=body,
        headers={"Prefer": "respond-async"},
    )
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("jobID"), str):
        found = Job(doc["jobID"], client, doc)
    elif resp.headers.get("Location"):
        found = Job(urlsplit(resp.headers["Location"]).path.rstrip("/").rsplit("/", 1)[-1], client)
    else:
        raise ProcessingError(f"the service answered no job for {process_id} ({resp.status_code})")
    return found.wait(timeout) if wait else found


def jobs(
    status: str | list[str] | None = None,
    process: str | list[str] | None = None,
    limit: int = 100,
    *,
    client: Client | None = None,
) -> list[Job]:
    """Your jobs (newest first), optionally of these statuses / processes."""
    client = client or default_client()
    joined = {
        "status": ",".join([status] if isinstance(status, str) else status) if status else None,
        "processID": (
            ",".join([process] if isinstance(process, str) else process) if process else None
        ),
    }
    doc = client.get_json("jobs", limit=limit, **joined)
    found = doc.get("jobs") if isinstance(doc, dict) else None
    if not isinstance(found, list):
        raise ProcessingError("the service's job list has no 'jobs' list")
    return [Job(d["jobID"], client, d) for d in found if isinstance(d, dict) and d.get("jobID")]


def job(job_id: str, *, client: Client | None = None) -> Job:
    """The job ``job_id`` (read now: an unknown id, or someone else's, raises
    :class:`ProcessingError`)."""
    found = Job(job_id, client)
    found.refresh()
    return found

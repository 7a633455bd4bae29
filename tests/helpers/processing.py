"""What the processing service's platform tests share (issue 16).

Every helper talks to the real platform: the service's HTTP API through the proxy, the
platform's database (``processing_jobs``), the process table (runners, Dask workers), the
Dask Gateway's API and the object store. Nothing here is a fake.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import psutil
import requests

from twinhub.process.runtime import Runtime

SERVICE = "services/processing/"
TERMINAL = ("successful", "failed", "dismissed")
#: The stages a job goes through, in order (the contract: common.md / issue 16).
STAGES = ("queued", "scheduling", "fetching", "processing", "ingesting", "finished")
RUNNER_MODULE = "twinlab.processing.runner"
OGC_EXC = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"


def user_prefix() -> str:
    """The OS account prefix the test platforms use (``twin-`` unless the session set one)."""
    return os.environ.get("TWINHUB_TEST_USER_PREFIX") or "twin-"


# -- HTTP ---------------------------------------------------------------------------------
def call(p, method: str, path: str, user: str | None = None, **kw) -> requests.Response:
    """``method`` on ``/services/processing/<path>`` with ``user``'s token (none: anonymous)."""
    headers = kw.pop("headers", {})
    if user:
        headers.setdefault("Authorization", f"token {p.token(user)}")
    kw.setdefault("timeout", 60)
    kw.setdefault("allow_redirects", False)
    return requests.request(method, p.url + SERVICE + path, headers=headers, **kw)


def execute(
    p, user: str, process: str, inputs: dict, *, asynchronous: bool = True, **body: Any
) -> requests.Response:
    """POST an execute request (``Prefer: respond-async`` unless ``asynchronous`` is False)."""
    headers = {"Prefer": "respond-async"} if asynchronous else {}
    return call(
        p,
        "POST",
        f"processes/{process}/execution",
        user,
        json={"inputs": inputs, **body},
        headers=headers,
        timeout=400,
    )


def submit(p, user: str, process: str, inputs: dict, **body: Any) -> str:
    """Submit asynchronously; the new job's id (asserting the contract's 201 + Location)."""
    r = execute(p, user, process, inputs, **body)
    assert r.status_code == 201, f"{process}: {r.status_code} {r.text[:500]}"
    job_id = r.json()["jobID"]
    assert r.headers["Location"].endswith(f"/services/processing/jobs/{job_id}"), r.headers
    return job_id


def status(p, user: str, job_id: str) -> dict:
    r = call(p, "GET", f"jobs/{job_id}", user)
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(
    p,
    user: str,
    job_id: str,
    *,
    timeout: float = 300,
    until: tuple[str, ...] = TERMINAL,
    stage: str | None = None,
    interval: float = 0.2,
) -> tuple[dict, list[dict]]:
    """Poll the job until its status is one of ``until`` (or, with ``stage``, until it
    reaches that stage); returns the last status document and every distinct one seen."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    doc: dict = {}
    while time.monotonic() < deadline:
        doc = status(p, user, job_id)
        key = (doc.get("status"), doc.get("stage"), doc.get("progress"))
        if not seen or key != (seen[-1].get("status"), seen[-1].get("stage"),
                               seen[-1].get("progress")):  # fmt: skip
            seen.append({**doc, "_seen_at": time.time()})
        if stage is not None and (doc.get("stage") == stage or doc.get("status") in TERMINAL):
            return doc, seen
        if stage is None and doc.get("status") in until:
            return doc, seen
        time.sleep(interval)
    raise AssertionError(f"job {job_id} not {stage or until} after {timeout} s: {doc}")


def job_ids(p, user: str) -> set[str]:
    """Every job id ``user`` sees in the job list (every page)."""
    r = call(p, "GET", "jobs?limit=1000", user)
    assert r.status_code == 200, r.text
    return {j["jobID"] for j in r.json()["jobs"]}


def logs_text(p, user: str, job_id: str) -> str:
    r = call(p, "GET", f"jobs/{job_id}/logs", user)
    assert r.status_code == 200, r.text
    return "\n".join(line["text"] for line in r.json()["lines"])


def register(
    p, user: str, fn, *, pid: str, inputs: dict, outputs: dict, **extra
) -> requests.Response:
    """Register ``fn`` (pickled by value, as twinlab.processing.register does) as ``pid``."""
    import cloudpickle

    # the test module is not importable by the runner (the user's account): by value
    cloudpickle.register_pickle_by_value(sys.modules[fn.__module__])
    code = base64.b64encode(cloudpickle.dumps(fn)).decode()
    body = {
        "id": pid,
        "title": pid,
        "description": f"test process {pid}",
        "inputs": inputs,
        "outputs": outputs,
        "visibility": "private",
        "code": code,
        **extra,
    }
    return call(p, "POST", "processes", user, json=body)


@contextmanager
def owslib_processes(p, user: str):
    """OWSLib's OGC API - Processes client on the service with ``user``'s token header.

    OWSLib's API class keeps its default headers in a module-level dict and updates it with
    the caller's: restored afterwards, so a token never leaks into another client."""
    import owslib.ogcapi as ogcapi
    from owslib.ogcapi.processes import Processes

    saved = dict(ogcapi.REQUEST_HEADERS)
    try:
        client = Processes(p.url + SERVICE, headers={"Authorization": f"token {p.token(user)}"})
        client.headers = dict(client.headers)
        yield client
    finally:
        ogcapi.REQUEST_HEADERS.clear()
        ogcapi.REQUEST_HEADERS.update(saved)


def absolute(p, href: str) -> str:
    return urljoin(p.url, href)


# -- the platform's database ----------------------------------------------------------------
def job_rows(p, **where: Any) -> list[dict]:
    """Rows of ``processing_jobs`` (as dicts), filtered by column equality."""
    import sqlalchemy as sa

    from twinhub.db.models import ProcessingJob
    from twinhub.db.schema import session

    with session(Runtime.load(p.state).db_url) as s:
        q = sa.select(ProcessingJob)
        for col, value in where.items():
            q = q.where(getattr(ProcessingJob, col) == value)
        return [
            {c.name: getattr(row, c.name) for c in ProcessingJob.__table__.columns}
            for row in s.scalars(q)
        ]


def job_row(p, job_id: str) -> dict:
    rows = job_rows(p, id=job_id)
    assert rows, f"no job {job_id} in processing_jobs"
    return rows[0]


def count_jobs(p) -> int:
    return len(job_rows(p))


def set_job_limit(p, job_id: str, **values: Any) -> None:
    """Change a stored job's limits (``wall_time``): the row is what the service enforces,
    so a test may shorten one job's limit without a platform of its own."""
    import sqlalchemy as sa

    from twinhub.db.models import ProcessingJob
    from twinhub.db.schema import session

    with session(Runtime.load(p.state).db_url) as s:
        s.execute(sa.update(ProcessingJob).where(ProcessingJob.id == job_id).values(**values))


# -- processes: runners, Dask workers, components --------------------------------------------
def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.Error, OSError):
        return {}


def runner_processes(job_id: str | None = None) -> list[psutil.Process]:
    """Live runner processes (``python -m twinlab.processing.runner``), of one job or all."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if RUNNER_MODULE not in cmd:
            continue
        env = _environ(proc)
        if "TWINHUB_JOB_ID" in env and (job_id is None or env["TWINHUB_JOB_ID"] == job_id):
            found.append(proc)
    return found


class RunnerWatch:
    """Samples the process table every 0.1 s from a thread: per job id, the runners seen
    (pid, OS account, cwd) — a job's runner may live only seconds."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[int, dict]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RunnerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in runner_processes():
                env = _environ(proc)
                jid = env.get("TWINHUB_JOB_ID", "")
                try:
                    info = {"user": proc.username(), "uids": proc.uids().real, "cwd": proc.cwd(),
                            "env_user": env.get("USER", ""), "has_secret": bool(env.get("TWINHUB_JOB_SECRET"))}  # fmt: skip
                except psutil.Error:
                    continue
                self.seen.setdefault(jid, {})[proc.pid] = info
            self._stop.wait(0.1)


def components(p) -> dict[str, dict]:
    return json.loads((Path(p.state) / "run" / "components.json").read_text())


def cluster_processes(name: str) -> list[psutil.Process]:
    """Scheduler and workers of one Dask Gateway cluster (tagged by dask-gateway's env)."""
    found = []
    for proc in psutil.process_iter():
        if _environ(proc).get("DASK_GATEWAY_CLUSTER_NAME") == name:
            found.append(proc)
    return found


def cluster_workers(name: str) -> list[psutil.Process]:
    out = []
    for proc in cluster_processes(name):
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "worker" in cmd and "scheduler" not in cmd:
            out.append(proc)
    return out


def gateway_clusters(p, user: str) -> list[dict]:
    """``user``'s clusters the Dask Gateway reports as pending or running."""
    r = requests.get(
        p.url + "services/dask-gateway/api/v1/clusters/",
        params={"status": "PENDING,RUNNING"},
        headers={"Authorization": f"jupyterhub {p.token(user)}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    return list(doc.values()) if isinstance(doc, dict) else doc


# -- the object store ---------------------------------------------------------------------------
def split_s3(href: str) -> tuple[str, str]:
    assert href.startswith("s3://"), href
    bucket, _, key = href[5:].partition("/")
    return bucket, key


def objects_under(p, prefix_href: str) -> list[str]:
    """Keys under an ``s3://bucket/prefix/`` (read with the object store's admin keys)."""
    from twinhub.objectstore.connection import admin_client

    bucket, prefix = split_s3(prefix_href)
    c = admin_client(Runtime.load(p.state))
    keys: list[str] = []
    token = None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kw["ContinuationToken"] = token
        try:
            page = c.list_objects_v2(**kw)
        except c.exceptions.NoSuchBucket:
            return []
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def wait_until(check, timeout: float, what: str, interval: float = 0.25):
    """Call ``check()`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)


# -- the sample data ------------------------------------------------------------------------
def healpix_item(p, variable: str = "2t") -> dict:
    """The seeded item of ``variable`` on the nested HEALPix H128 grid, first day, as the
    STAC API serves it (found by its grid property, not by a name pattern)."""
    r = requests.post(
        p.url + "services/stac/search",
        json={"collections": ["climate-dt"], "limit": 200,
              "filter-lang": "cql2-json",
              "filter": {"op": "=", "args": [{"property": "param"}, variable]}},
        headers={"Authorization": f"token {p.token('admin')}"},
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    items = [
        i
        for i in r.json()["features"]
        if i["properties"].get("twinhub:grid", {}).get("grid_type") == "healpix"
        and i["properties"].get("resolution") == "standard"
    ]
    assert items, "no seeded HEALPix item"
    return min(items, key=lambda i: i["properties"]["start_datetime"])

"""The processing service's HTTP face (app.py, api.py) in process, on a real database
(SQLite and PostgreSQL), through the real request limits, hub auth, FastAPI routes, job
manager and the runners' report endpoints.

Fakes, for what cannot run in a unit test: ``FakeHubAuth`` (the hub's token check: a table
of token -> user model), ``fake_hub`` (the hub's REST API: users' admin flag and groups)
and ``FakeBackend`` (the job backend: it records the runner it would start and its secret;
tests then play the runner over the real ``internal/`` report endpoints).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import pickle
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from jupyterhub.services.auth import HubOAuth
from traitlets.config import Config

from twinhub import db
from twinhub.db.models import ProcessingJob
from twinhub.process.runtime import Runtime
from twinhub.services.hubauth import xsrf_token
from twinhub.services.processing.api import CONFORMANCE
from twinhub.services.processing.app import create_app
from twinhub.services.processing.config import TwinhubProcessing
from twinhub.services.processing.context import ProcessingContext
from twinhub.services.processing.jobs import JobManager
from twinhub.services.processing.openapi import OPENAPI_MEDIA

pytestmark = pytest.mark.anyio

PREFIX = "/services/processing/"
ACCESS = "access:services!service=processing"
SERVICE_TOKEN = "processing-service-token"
COOKIE = "twinhub-services-processing-token"
OGC_EXC = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
SECRET_HEADER = "X-Twinhub-Job-Secret"

#: The hub's user models (fake_hub answers these).
USERS = {
    "alice": {"name": "alice", "admin": False, "groups": ["lab"]},
    "bob": {"name": "bob", "admin": False, "groups": []},
    "carol": {"name": "carol", "admin": False, "groups": ["lab", "not-a-project"]},
    "root": {"name": "root", "admin": True, "groups": []},
}
#: token -> the hub's model of the token (FakeHubAuth answers these).
TOKENS = {
    "alice-token": {"name": "alice", "kind": "user", "scopes": [ACCESS]},
    "bob-token": {"name": "bob", "kind": "user", "scopes": [ACCESS]},
    "carol-token": {"name": "carol", "kind": "user", "scopes": [ACCESS]},
    "root-token": {
        "name": "root",
        "kind": "user",
        "admin": True,
        "scopes": [ACCESS, "admin:users", "read:metrics"],
    },
    # root through a browser: the sign-on token carries only the access scope
    "root-browser": {"name": "root", "kind": "user", "admin": True, "scopes": [ACCESS]},
    "svc-token": {"name": "stac", "kind": "service", "scopes": [ACCESS]},
}


class FakeHubAuth(HubOAuth):
    """Fake of the hub's token check (no hub in unit tests): :data:`TOKENS` only."""

    async def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        model = TOKENS.get(token)
        return copy.deepcopy(model) if model else None


def fake_hub(request: httpx.Request) -> httpx.Response:
    """Fake of the hub's REST API: ``GET users/<name>`` from :data:`USERS`."""
    path = request.url.path
    if path.startswith("/hub/api/users/"):
        user = USERS.get(path.rsplit("/", 1)[1])
        return httpx.Response(200, json=user) if user else httpx.Response(404)
    return httpx.Response(404)


class FakeBackend:
    """Fake of the job backend: no runner process; it records each start (job, secret),
    says a runner is alive until stopped (or :meth:`kill`-ed), and has no output."""

    def __init__(self) -> None:
        self.started: dict[str, str] = {}
        self.stopped: list[str] = []
        self.on_start: Any = None
        self._runs = 0
        self._current: dict[str, int] = {}
        self._dead: set[int] = set()

    async def start(self, job: dict, secret: str) -> dict:
        self._runs += 1
        self.started[job["id"]] = secret
        self._current[job["id"]] = self._runs
        if self.on_start is not None:
            self.on_start(job["id"], secret)
        return {"kind": "fake", "job": job["id"], "run": self._runs, "token_id": ""}

    def kill(self, job_id: str) -> None:
        """The job's current runner dies (as with the machine it ran on)."""
        self._dead.add(self._current[job_id])

    def alive(self, handle: dict) -> bool:
        return handle["run"] not in self._dead

    async def stop(self, handle: dict, grace: float = 3.0) -> None:
        self._dead.add(handle["run"])
        self.stopped.append(handle["job"])

    def output_tail(self, handle: dict, max_bytes: int = 4096) -> str:
        return ""


@dataclass
class Service:
    client: httpx.AsyncClient
    ctx: ProcessingContext
    manager: JobManager
    backend: FakeBackend
    tasks: list = field(default_factory=list)

    async def call(self, method: str, path: str, token: str | None = "alice-token", **kw):
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"token {token}"
        return await self.client.request(method, PREFIX + path, headers=headers, **kw)

    async def submit(self, process="echo", inputs=None, token="alice-token", **body) -> dict:
        r = await self.call(
            "POST",
            f"processes/{process}/execution",
            token,
            json={"inputs": inputs if inputs is not None else {"stringInput": "hi"}, **body},
            headers={"Prefer": "respond-async"},
        )
        assert r.status_code == 201, r.text
        return r.json()

    async def start_queued(self) -> None:
        """One turn of the job loop: queued jobs start (the fake backend records them)."""
        await self.manager.tick()
        for t in list(self.manager._tasks):
            await t

    async def report(self, job_id: str, events: list[dict], secret: str | None = None):
        """Play the runner: POST events to the internal endpoint (no hub token)."""
        secret = secret if secret is not None else self.backend.started[job_id]
        for ev in events:
            ev.setdefault("at", "2026-01-01T00:00:00Z")
        return await self.client.post(
            f"{PREFIX}internal/jobs/{job_id}/events",
            headers={SECRET_HEADER: secret},
            json={"events": events},
        )


RUN_EVENTS = [
    {"type": "stage", "stage": "fetching"},
    {"type": "progress", "progress": 50, "message": "half the items"},
    {"type": "log", "level": "info", "text": "read 2 items"},
    {"type": "stage", "stage": "processing"},
    {"type": "stage", "stage": "ingesting"},
]


def done(results: dict) -> dict:
    return {"type": "done", "results": results, "output_bytes": 0, "stac_item": ""}


def processing_config(db_url: str, **settings: Any) -> Config:
    return Config(
        {
            "Twinhub": {"db_url": db_url},
            "TwinhubFace": {"platform_name": "Blue Twin"},
            "TwinhubProjects": {"projects": {"lab": {}, "other": {}}},
            "TwinhubAccounting": {"enabled": False},
            "TwinhubProcessing": {
                "sync_wait": 1.0,
                "max_user_processes": 2,
                "max_code_bytes": 2048,
                **settings,
            },
        }
    )


@pytest.fixture
def processing_settings() -> dict:
    """Overridden by tests that need other TwinhubProcessing values."""
    return {}


def make_app(db_url: str, tmp_path: Path, settings: dict, *, background: bool = False):
    """The service app over ``db_url``, the hub and the backend faked: (app, ctx,
    manager, backend)."""
    rt = Runtime(
        state_dir=tmp_path,
        config=processing_config(db_url, **settings),
        ports={"public": 8000},
        mode="multi-user",
    )
    ctx = ProcessingContext(
        rt=rt,
        settings=TwinhubProcessing(config=rt.config),
        db_url=db_url,
        hub_api="http://hub.test/hub/api",
        token=SERVICE_TOKEN,
        prefix=PREFIX,
    )
    ctx.hub = httpx.AsyncClient(transport=httpx.MockTransport(fake_hub))
    backend = FakeBackend()
    ctx.backend = backend
    manager = JobManager(ctx)
    auth = FakeHubAuth(
        api_token=SERVICE_TOKEN,
        api_url="http://hub.test/hub/api",
        oauth_client_id="service-processing",
        oauth_redirect_uri="http://twin.test/services/processing/oauth_callback",
        oauth_authorization_url="/hub/api/oauth2/authorize",
        access_scopes={ACCESS},
    )
    app = create_app(ctx=ctx, hub_auth=auth, background=background, manager=manager)
    return app, ctx, manager, backend


@pytest.fixture
async def service(twinhub_db: str, tmp_path: Path, processing_settings: dict):
    """The service app (no lifespan: no job loop; tests turn it) over a real database."""
    app, ctx, manager, backend = make_app(twinhub_db, tmp_path, processing_settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://twin.test"
    ) as client:
        svc = Service(client, ctx, manager, backend)
        yield svc
        for t in svc.tasks:
            t.cancel()
        await asyncio.gather(*svc.tasks, return_exceptions=True)
    await ctx.hub.aclose()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def count(url: str, model) -> int:
    with db.session(url) as s:
        return s.query(model).count()


def rels(doc: dict) -> dict[str, dict]:
    return {link["rel"]: link for link in doc["links"]}


def code_b64(obj: Any = "fn") -> str:
    """A pickle as twinlab.processing.register sends it (the service never unpickles it)."""
    return base64.b64encode(pickle.dumps(obj, protocol=4)).decode()


def deploy_body(pid: str = "my-proc", **more: Any) -> dict:
    return {
        "id": pid,
        "title": "Mine",
        "description": "doubles x",
        "inputs": {"x": {"schema": {"type": "number"}}},
        "outputs": {"y": {"schema": {"type": "number"}}},
        "code": code_b64(),
        **more,
    }


# -- landing, conformance, negotiation, auth ----------------------------------------------------
async def test_landing_is_json_by_default_with_ogc_links(service):
    r = await service.call("GET", "")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    links = rels(r.json())
    assert links["service-desc"]["type"] == OPENAPI_MEDIA
    assert links["service-desc"]["href"] == "http://twin.test/services/processing/api"
    assert links["service-doc"]["type"] == "text/html"
    assert links[REL + "conformance"]["href"].endswith("/conformance")
    assert links[REL + "processes"]["href"].endswith("/processes")
    assert links[REL + "job-list"]["href"].endswith("/jobs")
    assert links["self"]["type"] == "application/json"
    assert links["alternate"]["type"] == "text/html"
    # the proxy's forwarded host and scheme are what links carry
    r = await service.call(
        "GET", "", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "twin.example.org"}
    )
    assert rels(r.json())["self"]["href"] == "https://twin.example.org/services/processing/"


async def test_negotiation_f_and_accept(service):
    r = await service.call("GET", "", headers={"Accept": "text/html,*/*;q=0.8"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    r = await service.call("GET", "?f=json", headers={"Accept": "text/html"})
    assert r.headers["content-type"].startswith("application/json")
    r = await service.call("GET", "", headers={"Accept": "application/json, text/html;q=0.5"})
    assert r.headers["content-type"].startswith("application/json")
    r = await service.call("GET", "", headers={"Accept": "*/*"})
    assert r.headers["content-type"].startswith("application/json")
    r = await service.call("GET", "processes?f=xml")
    assert r.status_code == 400
    assert r.json()["code"] == 400 and "unknown f='xml'" in r.json()["description"]


async def test_conformance_lists_the_classes(service):
    r = await service.call("GET", "conformance")
    assert r.status_code == 200
    conf = r.json()["conformsTo"]
    base = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/"
    for c in ("core", "ogc-process-description", "json", "html", "oas30", "job-list", "dismiss"):
        assert base + c in conf
    assert conf == list(CONFORMANCE)


async def test_every_api_path_needs_a_user(service):
    for path in ("", "processes", "jobs", "processes/echo", "api"):
        r = await service.call("GET", path, token=None)
        assert r.status_code == 401, path
        assert r.json()["code"] == 401
    r = await service.call("GET", "processes", token="nobody")
    assert r.status_code == 401
    r = await service.call("GET", "processes", token="svc-token")
    assert r.status_code == 403 and "not a user" in r.json()["description"]
    r = await service.call("POST", "processes/echo/execution", token=None, json={"inputs": {}})
    assert r.status_code == 401
    assert count(service.ctx.db_url, ProcessingJob) == 0
    r = await service.call("GET", "health", token=None)
    assert r.status_code == 200 and r.json()["status"] == "ok"


async def test_metrics_need_read_metrics(service):
    await service.submit()
    r = await service.call("GET", "metrics", token=None)
    assert r.status_code == 401
    r = await service.call("GET", "metrics", token="alice-token")
    assert r.status_code == 403
    r = await service.call("GET", "metrics", token="root-token")
    assert r.status_code == 200
    assert 'twinhub_processing_jobs{stage="queued",status="accepted"} 1.0' in r.text
    assert "twinhub_processing_submissions_total" in r.text


# -- processes ----------------------------------------------------------------------------------
async def test_process_list_and_paging(service):
    r = await service.call("GET", "processes")
    assert r.status_code == 200
    doc = r.json()
    ids = [p["id"] for p in doc["processes"]]
    assert ids[:6] == ["echo", "regrid", "zonal-mean", "area-mean", "climatology", "point-series"]
    for p in doc["processes"]:
        assert "inputs" not in p and "outputs" not in p
        assert {"id", "version", "jobControlOptions", "outputTransmission"} <= set(p)
        links = rels(p)
        assert links["self"]["href"] == f"http://twin.test{PREFIX}processes/{p['id']}"
        assert links[REL + "execute"]["href"].endswith(f"processes/{p['id']}/execution")
    assert "next" not in rels(doc)
    r = await service.call("GET", "processes?limit=2")
    doc = r.json()
    assert [p["id"] for p in doc["processes"]] == ["echo", "regrid"]
    nxt = rels(doc)["next"]["href"]
    assert "offset=2" in nxt
    r = await service.client.get(nxt, headers={"Authorization": "token alice-token"})
    assert [p["id"] for p in r.json()["processes"]] == ["zonal-mean", "area-mean"]
    for bad in ("0", "1001", "x", "-1"):
        r = await service.call("GET", f"processes?limit={bad}")
        assert r.status_code == 400 and "limit" in r.json()["description"], bad


async def test_process_description_and_no_such_process(service):
    r = await service.call("GET", "processes/zonal-mean")
    assert r.status_code == 200
    d = r.json()
    assert d["id"] == "zonal-mean"
    assert {"item", "variable", "datetime"} <= set(d["inputs"])
    assert "zonal_mean" in d["outputs"]
    assert rels(d)[REL + "execute"]["href"].endswith("processes/zonal-mean/execution")
    for pid in ("nope", "UPPER", "a" * 200):
        r = await service.call("GET", f"processes/{pid}")
        assert r.status_code == 404, pid
        body = r.json()
        assert body["type"] == OGC_EXC + "no-such-process"
        assert body["code"] == 404 and body["status"] == 404 and body["description"]


# -- execution ----------------------------------------------------------------------------------
async def test_async_execution_location_and_status(service):
    r = await service.call(
        "POST",
        "processes/echo/execution",
        json={"inputs": {"stringInput": "hello", "integerInput": 3}},
        headers={"Prefer": "respond-async"},
    )
    assert r.status_code == 201
    doc = r.json()
    job_id = doc["jobID"]
    assert r.headers["location"] == f"/services/processing/jobs/{job_id}"
    assert r.headers["preference-applied"] == "respond-async"
    assert doc["status"] == "accepted" and doc["type"] == "process"
    assert doc["processID"] == "echo" and doc["stage"] == "queued"
    assert doc["owner"] == "alice" and doc["project"] == "lab"
    r = await service.call("GET", f"jobs/{job_id}")
    assert r.status_code == 200 and r.json()["jobID"] == job_id
    assert rels(r.json())["self"]["href"] == f"http://twin.test{PREFIX}jobs/{job_id}"
    # results while queued: not ready
    r = await service.call("GET", f"jobs/{job_id}/results")
    assert r.status_code == 404
    assert r.json()["type"] == OGC_EXC + "result-not-ready"


async def test_job_runs_through_the_report_endpoints(service):
    job = await service.submit(inputs={"stringInput": "hi", "arrayInput": [1, 2]})
    jid = job["jobID"]
    await service.start_queued()
    assert jid in service.backend.started
    # a wrong secret is refused by the report endpoint (no hub credentials involved)
    r = await service.report(jid, [{"type": "log", "level": "info", "text": "x"}], "wrong")
    assert r.status_code == 401
    r = await service.report(jid, [dict(e) for e in RUN_EVENTS])
    assert r.status_code == 200 and r.json() == {"status": "running", "stop": False}
    doc = (await service.call("GET", f"jobs/{jid}")).json()
    assert doc["status"] == "running" and doc["stage"] == "ingesting"
    assert 90 <= doc["progress"] < 100
    assert doc["stages"]["fetching"]["finished"]
    r = await service.report(jid, [done({"stringInput": "hi", "arrayInput": [1, 2]})])
    assert r.status_code == 200 and r.json()["stop"] is True
    doc = (await service.call("GET", f"jobs/{jid}")).json()
    assert doc["status"] == "successful" and doc["progress"] == 100
    assert rels(doc)[REL + "results"]["href"].endswith(f"jobs/{jid}/results")
    r = await service.call("GET", f"jobs/{jid}/results")
    assert r.status_code == 200
    assert r.json() == {"stringInput": "hi", "arrayInput": [1, 2]}
    # logs: JSON lines, paging with after, and plain text
    lines = (await service.call("GET", f"jobs/{jid}/logs")).json()["lines"]
    assert any(ln["text"] == "read 2 items" and ln["stage"] == "fetching" for ln in lines)
    assert {"id", "at", "stage", "level", "source", "text"} <= set(lines[0])
    later = (await service.call("GET", f"jobs/{jid}/logs?after={lines[0]['id']}")).json()
    assert later["lines"] == lines[1:]
    r = await service.call("GET", f"jobs/{jid}/logs?f=text")
    assert r.headers["content-type"].startswith("text/plain") and "read 2 items" in r.text
    r = await service.call("GET", f"jobs/{jid}/logs?limit=0")
    assert r.status_code == 400


async def test_failed_job_results_are_an_exception(service):
    jid = (await service.submit())["jobID"]
    await service.start_queued()
    await service.report(jid, [{"type": "failed", "reason": "the lake went away"}])
    doc = (await service.call("GET", f"jobs/{jid}")).json()
    assert doc["status"] == "failed" and "the lake went away" in doc["message"]
    r = await service.call("GET", f"jobs/{jid}/results")
    assert r.status_code == 500
    assert r.json()["type"] == OGC_EXC + "job-results-failed"
    assert "the lake went away" in r.json()["description"]


def play_runner(service: Service, events: list[dict]) -> None:
    """The fake backend, on each start, reports ``events`` as the runner would."""

    def on_start(job_id: str, secret: str) -> None:
        async def run() -> None:
            await asyncio.sleep(0.05)
            await service.report(job_id, [dict(e) for e in events], secret)

        service.tasks.append(asyncio.create_task(run()))

    service.backend.on_start = on_start


async def test_sync_execution_answers_results(service):
    play_runner(service, [*RUN_EVENTS, done({"stringInput": "sync", "item": {"href": "x"}})])
    service.tasks.append(asyncio.create_task(service.manager.run()))
    r = await service.call(
        "POST", "processes/echo/execution", json={"inputs": {"stringInput": "sync"}}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"stringInput": "sync", "item": {"href": "x"}}
    monitor = re.fullmatch(
        r'<(http://twin\.test/services/processing/jobs/\w+)>; rel="monitor"', r.headers["link"]
    )
    status = await service.client.get(
        monitor.group(1), headers={"Authorization": "token alice-token"}
    )
    assert status.json()["status"] == "successful"
    # outputs selection, and the raw answer of one output
    r = await service.call(
        "POST",
        "processes/echo/execution",
        json={
            "inputs": {"stringInput": "sync"},
            "outputs": {"stringInput": {}},
            "response": "raw",
        },
    )
    assert r.status_code == 200 and r.text == "sync"
    assert r.headers["content-type"].startswith("text/plain")


async def test_sync_execution_failed_is_500(service):
    play_runner(service, [{"type": "failed", "reason": "boom"}])
    service.tasks.append(asyncio.create_task(service.manager.run()))
    r = await service.call(
        "POST", "processes/echo/execution", json={"inputs": {"stringInput": "x"}}
    )
    assert r.status_code == 500
    body = r.json()
    assert body["code"] == 500 and "boom" in body["description"]
    assert body["type"] == OGC_EXC + "job-results-failed"
    assert r.headers["location"].startswith("/services/processing/jobs/")


async def test_sync_execution_past_sync_wait_answers_as_async(service):
    # no job loop runs: the job stays queued past sync_wait (1 s)
    r = await service.call(
        "POST", "processes/echo/execution", json={"inputs": {"stringInput": "slow"}}
    )
    assert r.status_code == 201
    assert r.json()["status"] == "accepted"
    assert r.headers["location"] == f"/services/processing/jobs/{r.json()['jobID']}"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("not json", "not valid JSON"),
        ([1, 2], "JSON object"),
        ({"inputs": [1]}, "'inputs' must be an object"),
        ({"inputs": {}, "subscriber": {}}, "unknown key(s) ['subscriber']"),
        ({"inputs": {"stringInput": "a"}, "outputs": {"nope": {}}}, "not an output of 'echo'"),
        ({"inputs": {"stringInput": "a"}, "response": "multipart"}, "'response'"),
        ({"inputs": {"stringInput": "a"}, "response": "raw"}, "exactly one"),
        ({"inputs": {"stringInput": 5}}, "stringInput"),
        ({"inputs": {}}, "stringInput"),
        ({"inputs": {"stringInput": "a", "pause": 99}}, "pause"),
        ({"inputs": {"stringInput": "a"}, "project": 7}, "'project'"),
        ('{"inputs": {"stringInput": "a", "doubleInput": NaN}}', "NaN is not a JSON number"),
        ('{"inputs": {"stringInput": "a", "doubleInput": -Infinity}}', "Infinity"),
        ('{"inputs": {"stringInput": "a", "doubleInput": 1e999}}', "too large"),
    ],
)
async def test_bad_execute_requests_store_nothing(service, body, needle):
    kw = {"content": body} if isinstance(body, str) else {"json": body}
    r = await service.call("POST", "processes/echo/execution", **kw)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 400 and needle in r.json()["description"]
    assert count(service.ctx.db_url, ProcessingJob) == 0


async def test_execute_bodies_past_max_input_bytes_are_413(service):
    limit = service.ctx.settings.max_input_bytes
    assert limit == 1024**2  # the default
    big = {"inputs": {"stringInput": "a" * limit}}  # under the request limits' own cap
    r = await service.call(
        "POST", "processes/echo/execution", json=big, headers={"Prefer": "respond-async"}
    )
    assert r.status_code == 413, r.text
    assert f"at most {limit}" in r.json()["description"]
    assert "max_input_bytes" in r.json()["description"]
    assert count(service.ctx.db_url, ProcessingJob) == 0
    fits = {"inputs": {"stringInput": "a" * (limit - 100)}}
    r = await service.call(
        "POST", "processes/echo/execution", json=fits, headers={"Prefer": "respond-async"}
    )
    assert r.status_code == 201, r.text


async def test_execute_checks_process_and_project(service):
    r = await service.call("POST", "processes/nope/execution", json={"inputs": {}})
    assert r.status_code == 404 and r.json()["type"] == OGC_EXC + "no-such-process"
    r = await service.call(
        "POST",
        "processes/echo/execution",
        json={"inputs": {"stringInput": "a"}, "project": "other"},
    )
    assert r.status_code == 403 and "other" in r.json()["description"]
    r = await service.call(
        "POST", "processes/zonal-mean/execution", json={"inputs": {"variable": "tas"}}
    )
    assert r.status_code == 400 and "item" in r.json()["description"]
    assert count(service.ctx.db_url, ProcessingJob) == 0


# -- jobs: who sees what --------------------------------------------------------------------------
async def test_jobs_are_their_owners(service):
    a = (await service.submit(token="alice-token"))["jobID"]
    b = (await service.submit(token="bob-token"))["jobID"]
    mine = (await service.call("GET", "jobs")).json()
    assert [j["jobID"] for j in mine["jobs"]] == [a]
    assert rels(mine)["self"]["type"] == "application/json"
    for method, path in (
        ("GET", f"jobs/{b}"),
        ("GET", f"jobs/{b}/results"),
        ("GET", f"jobs/{b}/logs"),
        ("DELETE", f"jobs/{b}"),
    ):
        r = await service.call(method, path, token="alice-token")
        assert r.status_code == 404, (method, path)
        assert r.json()["type"] == OGC_EXC + "no-such-job"
    # bob's job is untouched
    assert (await service.call("GET", f"jobs/{b}", token="bob-token")).json()[
        "status"
    ] == "accepted"
    every = (await service.call("GET", "jobs", token="root-token")).json()["jobs"]
    assert {j["jobID"] for j in every} == {a, b}
    assert (await service.call("GET", f"jobs/{a}", token="root-token")).status_code == 200
    # root through a browser's token acts as the plain user root
    every = (await service.call("GET", "jobs", token="root-browser")).json()["jobs"]
    assert every == []
    r = await service.call("GET", "jobs/not-a-job")
    assert r.status_code == 404 and r.json()["type"] == OGC_EXC + "no-such-job"


async def test_job_list_filters_and_paging(service):
    ids = [(await service.submit())["jobID"] for _ in range(3)]
    r = await service.call("GET", "jobs?limit=2")
    doc = r.json()
    assert len(doc["jobs"]) == 2 and "next" in rels(doc)
    nxt = rels(doc)["next"]["href"]
    rest = (await service.client.get(nxt, headers={"Authorization": "token alice-token"})).json()
    assert {j["jobID"] for j in doc["jobs"] + rest["jobs"]} == set(ids)
    assert (await service.call("GET", "jobs?status=accepted")).json()["jobs"]
    assert (await service.call("GET", "jobs?status=successful,failed")).json()["jobs"] == []
    assert len((await service.call("GET", "jobs?processID=echo")).json()["jobs"]) == 3
    assert (await service.call("GET", "jobs?processID=regrid")).json()["jobs"] == []
    assert len((await service.call("GET", "jobs?type=process")).json()["jobs"]) == 3
    assert (await service.call("GET", "jobs?type=openeo")).json()["jobs"] == []
    r = await service.call("GET", "jobs?status=done")
    assert r.status_code == 400 and "unknown status 'done'" in r.json()["description"]


async def test_dismiss_a_queued_and_a_running_job(service):
    queued = (await service.submit())["jobID"]
    r = await service.call("DELETE", f"jobs/{queued}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "dismissed"
    running = (await service.submit())["jobID"]
    await service.start_queued()
    r = await service.call("DELETE", f"jobs/{running}", token="bob-token")
    assert r.status_code == 404
    r = await service.call("DELETE", f"jobs/{running}")
    assert r.status_code == 200 and r.json()["status"] == "dismissed"
    assert running in service.backend.stopped
    # the runner's next report is told to stop
    r = await service.report(running, [{"type": "log", "level": "info", "text": "late"}])
    assert r.json()["stop"] is True
    r = await service.call("GET", f"jobs/{running}/results")
    assert r.status_code in (404, 410)


async def test_browser_session_may_execute_with_the_pages_xsrf_value(service):
    cookie = "alice-token"
    body = json.dumps({"inputs": {"stringInput": "page"}})
    headers = {"Cookie": f"{COOKIE}={cookie}", "Content-Type": "application/json"}
    r = await service.client.post(
        PREFIX + "processes/echo/execution", content=body, headers=headers
    )
    assert r.status_code == 403  # no XSRF value: refused by hub auth
    headers["X-Twinhub-XSRF"] = xsrf_token(SERVICE_TOKEN, cookie)
    headers["Prefer"] = "respond-async"
    r = await service.client.post(
        PREFIX + "processes/echo/execution", content=body, headers=headers
    )
    assert r.status_code == 201 and r.json()["owner"] == "alice"


@contextlib.asynccontextmanager
async def lifespan(app):
    """Run the app's ASGI lifespan (startup before, shutdown after), as uvicorn does."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


async def test_lifespan_recovers_then_runs_the_job_loop(twinhub_db, tmp_path):
    app, ctx, manager, backend = make_app(twinhub_db, tmp_path, {}, background=True)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://twin.test"
    ) as client:
        svc = Service(client, ctx, manager, backend)
        lost = (await svc.submit())["jobID"]
        await svc.start_queued()
        old_secret = backend.started.pop(lost)
        backend.kill(lost)  # its runner died with the previous service process
        queued = (await svc.submit())["jobID"]  # accepted before the restart
        async with lifespan(app):
            # recovery runs the lost job again; the loop starts it and the queued one
            for _ in range(100):
                if {lost, queued} <= set(backend.started):
                    break
                await asyncio.sleep(0.05)
            assert {lost, queued} <= set(backend.started)
            assert backend.started[lost] != old_secret  # a new runner, a new secret
            doc = (await svc.call("GET", f"jobs/{lost}")).json()
            assert doc["status"] == "running" and doc["attempt"] == 2
        # after shutdown the loop is gone: a new job stays queued
        third = await svc.submit()
        await asyncio.sleep(0.3)
        assert third["jobID"] not in backend.started
    await ctx.hub.aclose()


async def test_only_real_internal_paths_skip_hub_auth(twinhub_db, tmp_path):
    app, ctx, _manager, _backend = make_app(twinhub_db, tmp_path, {})

    async def get(path: str) -> tuple[int, dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg: dict) -> None:
            sent.append(msg)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"host", b"twin.test")],
            "client": ("127.0.0.1", 1),
            "server": ("twin.test", 80),
        }
        await app(scope, receive, send)
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return sent[0]["status"], json.loads(body)

    # a report path: the job's secret decides (no such job here: the same 401 as a wrong
    # secret, no job-id oracle), not the hub
    status, body = await get(PREFIX + "internal/jobs/0123")
    assert status == 401 and "bad job secret" in body["description"]
    # dot segments never make a path internal: hub auth answers
    for path in ("internal/../processes", "internal/./jobs/x", "internal/%2e%2e/processes"):
        status, body = await get(PREFIX + path.replace("%2e", "."))
        assert status == 401 and "authentication required" in body["description"], path
    await ctx.hub.aclose()


def test_owslib_client_lists_describes_and_executes(twinhub_db, tmp_path):
    """OWSLib's OGC API - Processes client against the app served by uvicorn (the job loop
    does not run: the job stays accepted)."""
    from owslib.ogcapi.processes import Processes  # (its import is slow: here only)

    app, ctx, _manager, _backend = make_app(twinhub_db, tmp_path, {})
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        # OWSLib keeps its headers in a module-level dict: a copy for this client
        client = Processes(
            f"http://127.0.0.1:{port}{PREFIX}", headers={"Authorization": "token alice-token"}
        )
        client.headers = dict(client.headers)
        ids = [p["id"] for p in client.processes()]
        assert {"echo", "zonal-mean"} <= set(ids)
        assert "item" in client.process("zonal-mean")["inputs"]
        doc = client.execute("echo", {"stringInput": "owslib"}, async_=True)
        assert doc["status"] == "accepted" and doc["processID"] == "echo"
        assert client.response_headers["Location"] == f"{PREFIX}jobs/{doc['jobID']}"
    finally:
        server.should_exit = True
        thread.join(10)

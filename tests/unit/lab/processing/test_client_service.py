"""twinlab.processing's notebook API against the *real* processing service app.

The service (``create_app``: request limits, hub auth, the OGC routes, the catalogue, the
job manager and its loop, the runners' ``internal/`` endpoints, a real SQLite database) is
served by uvicorn on loopback; the client talks to it over real HTTP. Fakes, for what
cannot run in a unit test, each named so:

- ``FakeHubAuth`` / ``fake_hub``: the hub's token check and its users' models;
- ``PlayedRunner``: the job backend. Instead of starting ``python -m
  twinlab.processing.runner`` as an OS account (tests/integration does), it plays the
  runner over the real ``internal/`` endpoints: reads the job's spec, reports the stages,
  and for a registered process unpickles the code the service stored and calls it;
- the gateway, object-store and token edges of ending a job (recorded, not done).

What this checks that the fake service of test_client.py cannot: the request and answer
shapes the client relies on are the real service's.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import pytest
import requests
import uvicorn
from jupyterhub.services.auth import HubOAuth
from traitlets.config import Config

from tests.helpers.platform import free_port
from twinhub import db
from twinhub.process.runtime import Runtime
from twinhub.services.processing import hubtokens, outputs
from twinhub.services.processing.app import create_app
from twinhub.services.processing.config import TwinhubProcessing
from twinhub.services.processing.context import ProcessingContext
from twinhub.services.processing.jobs import JobManager
from twinlab import processing as tp

PREFIX = "/services/processing/"
ACCESS = "access:services!service=processing"
SERVICE_TOKEN = "processing-service-token"
SECRET_HEADER = "X-Twinhub-Job-Secret"
USERS = {
    "alice": {"name": "alice", "admin": False, "groups": ["lab"]},
    "bob": {"name": "bob", "admin": False, "groups": []},
}
TOKENS = {
    "alice-token": {"name": "alice", "kind": "user", "scopes": [ACCESS]},
    "bob-token": {"name": "bob", "kind": "user", "scopes": [ACCESS]},
}


class FakeHubAuth(HubOAuth):
    """Fake of the hub's token check: :data:`TOKENS` only."""

    async def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        model = TOKENS.get(token)
        return copy.deepcopy(model) if model else None


def fake_hub(request: httpx.Request) -> httpx.Response:
    """Fake of the hub's REST API: ``GET users/<name>`` from :data:`USERS`."""
    user = USERS.get(request.url.path.rsplit("/", 1)[1])
    return httpx.Response(200, json=user) if user else httpx.Response(404)


class PlayedRunner:
    """Fake job backend that plays each job's runner in a thread, over HTTP."""

    def __init__(self) -> None:
        self.base = ""
        self.stopped: set[str] = set()
        self.exited: set[str] = set()
        self.specs: dict[str, dict] = {}

    async def start(self, job: dict, secret: str) -> dict:
        threading.Thread(target=self._play, args=(job["id"], secret), daemon=True).start()
        return {"kind": "fake", "job": job["id"], "token_id": ""}

    def alive(self, handle: dict) -> bool:
        return handle["job"] not in self.exited and handle["job"] not in self.stopped

    async def stop(self, handle: dict, grace: float = 3.0) -> None:
        self.stopped.add(handle["job"])

    def output_tail(self, handle: dict, max_bytes: int = 4096) -> str:
        return ""

    def _report(self, job_id: str, secret: str, *events: dict) -> dict:
        at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        r = requests.post(
            f"{self.base}internal/jobs/{job_id}/events",
            headers={SECRET_HEADER: secret},
            json={"events": [{"at": at, **e} for e in events]},
            timeout=30,
        )
        return r.json()

    def _play(self, job_id: str, secret: str) -> None:
        try:
            r = requests.get(
                f"{self.base}internal/jobs/{job_id}", headers={SECRET_HEADER: secret}, timeout=30
            )
            spec = self.specs[job_id] = r.json()
            for stage in ("scheduling", "fetching", "processing"):
                self._report(job_id, secret, {"type": "stage", "stage": stage})
            self._report(job_id, secret, {"type": "log", "level": "info", "text": "played"})
            inputs = spec["inputs"]
            if spec.get("code"):
                fn = cloudpickle.loads(base64.b64decode(spec["code"]))
                out = fn(**inputs)
                results = out if isinstance(out, dict) else {"result": out}
            else:  # echo: a pause keeps it in processing (until dismissed)
                deadline = time.monotonic() + float(inputs.get("pause") or 0)
                while time.monotonic() < deadline:
                    answer = self._report(
                        job_id, secret, {"type": "progress", "progress": 10, "message": "zz"}
                    )
                    if answer.get("stop"):
                        return
                    time.sleep(0.2)
                results = {k: v for k, v in inputs.items() if k != "pause"}
            self._report(job_id, secret, {"type": "stage", "stage": "ingesting"})
            done = {"type": "done", "results": results, "output_bytes": 0, "stac_item": ""}
            self._report(job_id, secret, done)
        finally:
            self.exited.add(job_id)


class Released:
    """Fakes of the gateway / object-store / token edges of ending a job: recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def stop_job_cluster(
        self, ctx: Any, user: str, cluster: str, wait: float = 0, *, job: str = ""
    ) -> bool:
        self.calls.append(("cluster", user, cluster))
        return True

    async def remove(self, rt: Any, user: str, prefix: str) -> int:
        self.calls.append(("remove", user, prefix))
        return 0

    async def revoke(self, ctx: Any, user: str, token_id: str) -> bool:
        self.calls.append(("revoke", user, token_id))
        return True


@pytest.fixture
def service(tmp_path: Path, monkeypatch) -> Iterator[tuple[str, PlayedRunner]]:
    """The real app on loopback (uvicorn, its own event loop in a thread, the job loop
    beside it); its root URL and the played runner."""
    released = Released()
    monkeypatch.setattr(hubtokens, "stop_job_cluster", released.stop_job_cluster)
    monkeypatch.setattr(hubtokens, "revoke", released.revoke)
    monkeypatch.setattr(outputs, "remove", released.remove)
    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    cfg = Config(
        {
            "Twinhub": {"db_url": url},
            "TwinhubProjects": {"projects": {"lab": {}}},
            "TwinhubAccounting": {"enabled": False},
            "TwinhubProcessing": {"poll_interval": 1.0, "sync_wait": 5.0},
        }
    )
    rt = Runtime(state_dir=tmp_path, config=cfg, ports={"public": 8000}, mode="multi-user")
    ctx = ProcessingContext(
        rt=rt,
        settings=TwinhubProcessing(config=cfg),
        db_url=url,
        hub_api="http://hub.test/hub/api",
        token=SERVICE_TOKEN,
        prefix=PREFIX,
    )
    runner = PlayedRunner()
    ctx.backend = runner
    manager = JobManager(ctx)
    auth = FakeHubAuth(
        api_token=SERVICE_TOKEN,
        api_url="http://hub.test/hub/api",
        oauth_client_id="service-processing",
        oauth_redirect_uri="http://twin.test/services/processing/oauth_callback",
        oauth_authorization_url="/hub/api/oauth2/authorize",
        access_scopes={ACCESS},
    )
    app = create_app(ctx=ctx, hub_auth=auth, background=False, manager=manager)
    port = free_port()
    runner.base = f"http://127.0.0.1:{port}{PREFIX}"
    # lifespan off: the context's hub client stays the fake one set below
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )

    async def main() -> None:
        ctx.hub = httpx.AsyncClient(transport=httpx.MockTransport(fake_hub))
        jobs = asyncio.create_task(manager.run())
        try:
            await server.serve()
        finally:
            jobs.cancel()
            await asyncio.gather(jobs, return_exceptions=True)
            await manager.drain()
            await ctx.hub.aclose()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    yield runner.base, runner
    server.should_exit = True
    thread.join(30)


def test_echo_through_the_real_service(service) -> None:
    base, runner = service
    alice = tp.Client(base, token="alice-token")
    assert "echo" in [p["id"] for p in alice.processes()]
    assert "stringInput" in alice.describe("echo")["inputs"]
    job = tp.execute("echo", {"stringInput": "hi", "integerInput": 2}, client=alice)
    assert job.wait(timeout=60).status == "successful"
    info = job.info
    assert info["stage"] == "finished" and job.progress == 100 and info["owner"] == "alice"
    started = [info["stages"][s]["started"] for s in ("scheduling", "fetching", "processing")]
    assert started == sorted(started)
    assert job.result() == {"stringInput": "hi", "integerInput": 2}
    assert "played" in job.logs()
    assert [j.id for j in tp.jobs(client=alice)] == [job.id]
    assert [j.id for j in tp.jobs(status="failed", client=alice)] == []
    with pytest.raises(tp.ProcessingError) as e:
        tp.execute("echo", {"stringInput": "a", "integerInput": "two"}, client=alice)
    assert e.value.status == 400 and "integerInput" in str(e.value)


def test_others_jobs_and_dismissal_through_the_real_service(service) -> None:
    base, runner = service
    alice = tp.Client(base, token="alice-token")
    bob = tp.Client(base, token="bob-token")
    job = tp.execute("echo", {"stringInput": "slow", "pause": 60}, client=alice)
    deadline = time.monotonic() + 30
    while job.stage != "processing":
        assert time.monotonic() < deadline, job.info
        time.sleep(0.1)
    for call in (lambda: tp.job(job.id, client=bob), lambda: tp.Job(job.id, bob).dismiss()):
        with pytest.raises(tp.ProcessingError) as e:
            call()
        assert e.value.status == 404
    assert tp.jobs(client=bob) == []
    job.dismiss()
    assert job.status == "dismissed" and job.id in runner.stopped
    with pytest.raises(tp.ProcessingError, match="dismissed"):
        job.result()


def _triple(x: float, label: str = "x3") -> dict:
    """Triple x."""
    return {"result": {"value": 3 * x, "label": label}}


def test_a_registered_function_runs_and_stays_private(service) -> None:
    base, runner = service
    alice = tp.Client(base, token="alice-token")
    bob = tp.Client(base, token="bob-token")
    desc = alice.register(_triple, id="triple")
    assert desc["id"] == "triple" and set(desc["inputs"]) == {"x", "label"}
    assert desc["inputs"]["x"]["minOccurs"] == 1 and desc["inputs"]["label"]["minOccurs"] == 0
    assert desc["title"] == "Triple x."
    job = tp.execute("triple", {"x": 2.5}, client=alice).wait(timeout=60)
    assert job.status == "successful", job.message
    # the code the service stored and handed to the runner is the function, by value
    assert job.result() == {"value": 7.5, "label": "x3"}
    assert "triple" not in [p["id"] for p in bob.processes()]
    with pytest.raises(tp.ProcessingError) as e:
        bob.describe("triple")
    assert e.value.status == 404
    with pytest.raises(tp.ProcessingError) as e:
        tp.execute("triple", {"x": 1.0}, client=bob)
    assert e.value.status == 404
    with pytest.raises(tp.ProcessingError) as e:
        alice.register(_triple, id="shared", project="not-mine")
    assert e.value.status == 403
    shared = alice.register(_triple, id="shared", project="lab")
    assert shared["id"] == "shared"
    alice.unregister("triple")
    assert "triple" not in [p["id"] for p in alice.processes()]

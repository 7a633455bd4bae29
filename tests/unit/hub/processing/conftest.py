"""Shared fixtures of the processing service's unit tests: a processing context over a real,
migrated database (``twinhub_db``: SQLite and PostgreSQL), and the fakes of what cannot run
in a unit test, each named so:

- :class:`FakeStac`: the data lake's STAC API (an ASGI app served to the context's hub
  client through httpx's ASGITransport): items by collection, the ``ids`` search;
- :class:`FakeBackend`: the job backend (the real one, backend.py, starts OS processes and
  pods: tests/integration): records starts (with the token it was given) and stops;
  runners "live" until stopped or :meth:`FakeBackend.die` is called;
- :class:`FakeRelease` (fixture ``released``): the hub and gateway edges of a job's tokens
  and clusters and the object store's (minting and revoking a token, stopping clusters,
  removing outputs), recorded instead.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from traitlets.config import Config

from twinhub.process.runtime import Runtime
from twinhub.services.processing import hubtokens, outputs
from twinhub.services.processing.config import TwinhubProcessing
from twinhub.services.processing.context import ProcessingContext
from twinhub.services.processing.model import Caller

PREFIX = "/services/processing/"
SERVICE_TOKEN = "processing-service-token"
STAC_PORT = 9
GATEWAY_PORT = 9
ALICE = Caller(name="alice", admin=False, groups=frozenset(), projects=())
BOB = Caller(name="bob", admin=False, groups=frozenset({"ocean-lab"}), projects=("ocean-lab",))
ROOT = Caller(name="root", admin=True, groups=frozenset(), projects=())


class FakeStac:
    """A fake of the STAC API's item reads (what admission asks): ``items`` maps
    (collection, item id) to a feature; ``auth`` records each request's Authorization."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.auth: list[str] = []
        self.app = FastAPI()
        base = "/services/stac"

        @self.app.get(base + "/search")
        async def search(ids: str = "", limit: int = 10) -> Any:
            return {"type": "FeatureCollection", "features": self._search(ids)[:limit]}

        @self.app.get(base + "/collections/{cid}/items/{iid}")
        async def item(cid: str, iid: str) -> Any:
            feature = self.items.get((cid, iid))
            if feature is None:
                return JSONResponse({"code": 404, "description": "no item"}, status_code=404)
            return feature

        @self.app.middleware("http")
        async def record(request: Any, call_next: Any) -> Any:
            self.auth.append(request.headers.get("authorization", ""))
            return await call_next(request)

    def _search(self, ids: str) -> list[dict[str, Any]]:
        wanted = set(ids.split(","))
        return [f for (_, iid), f in self.items.items() if iid in wanted]

    def add(
        self, collection: str, item_id: str, start: str | None = None, end: str | None = None
    ) -> dict[str, Any]:
        props: dict[str, Any] = {"datetime": start if start and not end else None}
        if end:
            props.update(start_datetime=start, end_datetime=end)
        feature = {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": item_id,
            "collection": collection,
            "geometry": None,
            "properties": props,
            "assets": {},
            "links": [],
        }
        self.items[(collection, item_id)] = feature
        return feature


class FakeBackend:
    """A fake of the job backend (P2's LocalJobBackend starts OS processes; integration
    tests run it): handles are ``{"kind": "fake", "pid", "token_id"}``."""

    def __init__(self) -> None:
        self.started: list[tuple[dict[str, Any], str]] = []
        #: The (token, token id) each start was given.
        self.tokens: list[tuple[str, str]] = []
        self.stopped: list[int] = []
        #: Handles whose files cleanup() removed.
        self.cleaned: list[int] = []
        self.live: set[int] = set()
        #: pid -> job id of every runner started.
        self.jobs: dict[int, str] = {}
        self.fail: str | None = None
        #: Awaited with (job, secret) inside start(), once the runner "runs".
        self.on_start: Any = None
        self.tail = "starting\nTraceback (most recent call last):\nMemoryError: out of memory\n"
        self._pids = itertools.count(1000)

    async def start(
        self, job: dict[str, Any], secret: str, token: tuple[str, str]
    ) -> dict[str, Any]:
        self.tokens.append(token)
        if self.fail:
            raise RuntimeError(self.fail)
        pid = next(self._pids)
        self.started.append((job, secret))
        self.jobs[pid] = job["id"]
        self.live.add(pid)
        if self.on_start is not None:  # what a quick runner does before start() returns
            await self.on_start(job, secret)
        return {"kind": "fake", "pid": pid}

    def alive(self, handle: dict[str, Any]) -> bool:
        return handle["pid"] in self.live

    async def stop(self, handle: dict[str, Any], grace: float = 3.0) -> None:
        self.stopped.append(handle["pid"])
        self.live.discard(handle["pid"])

    def output_tail(self, handle: dict[str, Any], max_bytes: int = 4096) -> str:
        return self.tail

    def cleanup(self, handle: dict[str, Any]) -> None:
        self.cleaned.append(handle["pid"])

    def die(self, job_id: str) -> None:
        """The runner of ``job_id`` ends (as a killed process would)."""
        self.live -= {p for p, jid in self.jobs.items() if jid == job_id}


class FakeRelease:
    """Fakes of the hub, gateway and object-store edges: ``minted`` tokens (user, seconds,
    note; ids ``tok-1``, ``tok-2``...), ``clusters`` stopped, ``removed`` output prefixes,
    ``revoked`` token ids (each with its user). ``job_clusters``: the clusters the gateway
    has per job id (what :func:`hubtokens.stop_job_clusters` finds and stops)."""

    def __init__(self) -> None:
        self.minted: list[tuple[str, int, str]] = []
        self.clusters: list[tuple[str, str]] = []
        self.job_clusters: dict[str, list[str]] = {}
        self.removed: list[tuple[str, str]] = []
        self.revoked: list[tuple[str, str]] = []
        self.fail_cluster = False
        self.fail_mint = ""

    async def mint(
        self, ctx: Any, user: str, expires_in: int, note: str = "", scopes: Any = ()
    ) -> tuple[str, str]:
        if self.fail_mint:
            raise hubtokens.HubTokenError(self.fail_mint)
        self.minted.append((user, expires_in, note))
        return f"secret-token-{len(self.minted)}", f"tok-{len(self.minted)}"

    async def stop_job_clusters(self, ctx: Any, user: str, job_id: str, wait: float = 0) -> list:
        if self.fail_cluster:
            raise RuntimeError("gateway unreachable")
        names = self.job_clusters.pop(job_id, [])
        self.clusters += [(user, n) for n in names]
        return names

    async def stop_job_cluster(
        self, ctx: Any, user: str, cluster: str, wait: float = 0, *, job: str
    ) -> bool:
        if self.fail_cluster:
            raise RuntimeError("gateway unreachable")
        self.clusters.append((user, cluster))
        return True

    async def remove(self, rt: Any, user: str, prefix: str) -> int:
        self.removed.append((user, prefix))
        return 1

    async def revoke(self, ctx: Any, user: str, token_id: str) -> bool:
        self.revoked.append((user, token_id))
        return True


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> FakeRelease:
    fake = FakeRelease()
    monkeypatch.setattr(hubtokens, "mint", fake.mint)
    monkeypatch.setattr(hubtokens, "stop_job_cluster", fake.stop_job_cluster)
    monkeypatch.setattr(hubtokens, "stop_job_clusters", fake.stop_job_clusters)
    monkeypatch.setattr(hubtokens, "revoke", fake.revoke)
    monkeypatch.setattr(outputs, "remove", fake.remove)
    return fake


@pytest.fixture
def fake_stac() -> FakeStac:
    stac = FakeStac()
    stac.add("lake", "healpix-t2m", "2020-01-01T00:00:00Z", "2020-12-31T00:00:00Z")
    stac.add("lake", "dup")
    stac.add("other", "dup")
    return stac


@pytest.fixture
def fake_backend() -> FakeBackend:
    return FakeBackend()


def make_ctx(
    db_url: str, state_dir: Path, stac: FakeStac | None, backend: Any, **settings: Any
) -> ProcessingContext:
    """A processing context over ``db_url`` (multi-user, project ``ocean-lab``), its hub
    client answered by ``stac``; ``settings``: ``c.TwinhubProcessing`` traits."""
    cfg = Config()
    cfg.Twinhub.db_url = db_url
    cfg.TwinhubProjects.projects = {"ocean-lab": {"profiles": []}}
    for k, v in settings.items():
        setattr(cfg.TwinhubProcessing, k, v)
    rt = Runtime(
        state_dir=state_dir,
        config=cfg,
        mode="multi-user",
        ports={"public": 9, "stac": STAC_PORT, "dask-gateway": GATEWAY_PORT},
    )
    hub = None
    if stac is not None:
        hub = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=stac.app),
            headers={"Authorization": f"token {SERVICE_TOKEN}"},
        )
    return ProcessingContext(
        rt=rt,
        settings=TwinhubProcessing(config=cfg),
        db_url=db_url,
        hub_api="http://127.0.0.1:9/hub/api",
        token=SERVICE_TOKEN,
        prefix=PREFIX,
        internal_url=f"http://127.0.0.1:9{PREFIX}",
        hub=hub,
        backend=backend,
    )


@pytest.fixture
def proc_ctx(twinhub_db: str, tmp_path: Path, fake_stac, fake_backend, released):
    """A processing context over the real database (SQLite, then PostgreSQL) with the fake
    STAC, backend and release edges; short loop intervals."""
    return make_ctx(twinhub_db, tmp_path, fake_stac, fake_backend, poll_interval=1.0)

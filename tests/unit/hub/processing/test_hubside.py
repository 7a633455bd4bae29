"""The hub's job-token API (twinhub.services.processing.hubside) in a real JupyterHub.

A JupyterHub app is initialized in this process from the configuration the processing part
gives the hub (its registration, its role, its handlers), beside the stac and dask-gateway
services whose access the tokens carry and another service; its tornado application serves
real HTTP on a loopback port (no proxy, no server: only the hub's REST API is used). The
service's own client (hubtokens.mint/revoke) talks to it as in the platform. The jobs the
hub checks are rows of a real twinhub database (SQLite, migrated).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyterhub import orm, roles
from jupyterhub.app import JupyterHub
from jupyterhub.crypto import CryptKeeper
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from traitlets.config import Config

from twinhub import db
from twinhub.db.models import ProcessingJob
from twinhub.process.runtime import Runtime
from twinhub.services.processing import (
    HUB_TOKENS_PATH,
    ProcessingPart,
    hub_handlers,
    hubtokens,
    max_token_seconds,
)
from twinhub.services.processing.config import TwinhubProcessing
from twinhub.services.processing.context import ProcessingContext
from twinhub.services.processing.hubtokens import PURPOSE_SCOPES, job_note
from twinhub.services.registration import grant_access, register_service

OTHER_TOKEN = "another-service-token-0123456789"
WALL = 600.0


def hub_config(rt: Runtime, tmp: Path, jobs_db: str | None = None) -> Config:
    c = Config()
    c.JupyterHub.db_url = f"sqlite:///{tmp / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret = bytes.fromhex("00" * 32)
    c.JupyterHub.authenticator_class = "dummy"
    c.Authenticator.allow_all = True
    c.Authenticator.admin_users = {"root"}
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.auth_token = "proxy-token"
    c.CryptKeeper.keys = [bytes.fromhex("11" * 32)]
    # The services whose access a job token carries, and one more (with `tokens`, as the
    # processing service had: it still may not use the processing API).
    for name in ("stac", "dask-gateway"):
        register_service(c, name, f"http://127.0.0.1:9/{name}", f"{name}-token-0123456789")
        grant_access(c, name)
    register_service(c, "registry", "http://127.0.0.1:9/registry", OTHER_TOKEN)
    c.JupyterHub.load_roles = [
        *c.JupyterHub.load_roles,
        {"name": "registry-service", "scopes": ["tokens", "read:users"], "services": ["registry"]},
    ]
    ProcessingPart().configure_hub(c, rt)
    # The database whose processing_jobs the handlers read (``jobs_db``: another one).
    for _, handler, kwargs in c.JupyterHub.extra_handlers:
        if ".hubside." in handler:
            kwargs["db_url"] = rt.db_url if jobs_db is None else jobs_db
    return c


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    cfg = Config()
    cfg.TwinhubProcessing.wall_time = WALL
    ports = {"public": 1, "hub": 2, "processing": 3, "stac": 4, "dask-gateway": 5}
    r = Runtime(state_dir=state, config=cfg, ports=ports, mode="multi-user", instance_id="th")
    db.upgrade(r.db_url)
    yield r
    db.dispose_engines()


def add_job(
    rt: Runtime, owner: str, status: str = "running", ended_ago: float | None = None
) -> str:
    """A processing job of ``owner`` (``ended_ago``: seconds since it finished)."""
    jid = uuid.uuid4().hex
    finished = None if ended_ago is None else datetime.now(UTC) - timedelta(seconds=ended_ago)
    with db.session(rt.db_url) as s:
        s.add(
            ProcessingJob(
                id=jid, owner=owner, project="personal", process_id="echo", inputs={},
                status=status, stage="processing", wall_time=WALL, max_output_bytes=4096,
                finished_at=finished,
            )
        )  # fmt: skip
    return jid


def set_job(rt: Runtime, jid: str, **values: Any) -> None:
    with db.session(rt.db_url) as s:
        row = s.get(ProcessingJob, jid)
        for key, value in values.items():
            setattr(row, key, value)


@asynccontextmanager
async def real_hub(
    rt: Runtime, tmp: Path, jobs_db: str | None = None
) -> AsyncIterator[tuple[JupyterHub, str]]:
    """The hub app (initialized) and its API URL, served on loopback."""
    app = JupyterHub.instance(
        config=hub_config(rt, tmp, jobs_db)
    )  # the singleton CryptKeeper reads
    sock, port = bind_unused_port()
    server = None
    try:
        await app.initialize([])
        server = HTTPServer(app.tornado_application)
        server.add_sockets([sock])
        yield app, f"http://127.0.0.1:{port}/hub/api"
    finally:
        if server is not None:
            server.stop()
        sock.close()
        JupyterHub.clear_instance()
        CryptKeeper.clear_instance()


def user_token(app: JupyterHub, name: str, **kw: Any) -> str:
    orm_user = orm.User.find(app.db, name)
    if orm_user is None:
        orm_user = orm.User(name=name)
        app.db.add(orm_user)
        roles.assign_default_roles(app.db, entity=orm_user)  # as the hub does at login
        app.db.commit()
    return app.users[orm_user].new_api_token(**kw)


def run(main: Callable[..., Any], rt: Runtime, tmp: Path, jobs_db: str | None = None) -> None:
    async def go() -> None:
        async with (
            real_hub(rt, tmp, jobs_db) as (app, api),
            httpx.AsyncClient(timeout=30) as http,
        ):
            await main(app, api, http)

    asyncio.run(go())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def service_ctx(rt: Runtime, api: str) -> ProcessingContext:
    return ProcessingContext(
        rt=rt,
        settings=TwinhubProcessing(config=rt.config),
        db_url=rt.db_url,
        hub_api=api,
        token=rt.secret("service-processing"),
        prefix="/services/processing/",
    )


def test_the_service_mints_and_revokes_runner_tokens_through_the_hub(rt, tmp_path) -> None:
    service = rt.secret("service-processing")
    j1 = add_job(rt, "alice")

    async def main(app: JupyterHub, api: str, http: httpx.AsyncClient) -> None:
        user_token(app, "alice")
        ctx = service_ctx(rt, api)
        token, tid = await hubtokens.mint(ctx, "alice", 120, note=f"twinhub processing job {j1}")
        r = await http.get(f"{api}/user", headers=auth(token))
        assert r.status_code == 200 and r.json()["name"] == "alice"
        own = {"read:users:name!user=alice", "read:users:groups!user=alice"}
        assert set(r.json()["scopes"]) - own == set(hubtokens.RUNNER_SCOPES)
        orm_token = orm.APIToken.find(app.db, token)
        # The hub writes the note: the job and the purpose.
        assert orm_token.note == f"twinhub processing job {j1} (runner)"
        assert orm_token.api_id == tid
        left = orm_token.expires_at.replace(tzinfo=UTC) - datetime.now(UTC)
        assert 100 < left.total_seconds() <= 120
        # A gateway-only token of the job (what stops its clusters).
        r = await http.post(
            f"{api}/{HUB_TOKENS_PATH}/alice",
            json={"job": j1, "purpose": "stop", "expires_in": 60},
            headers=auth(service),
        )
        assert r.status_code == 201, r.text
        assert r.json()["scopes"] == [hubtokens.GATEWAY_SCOPE] == list(PURPOSE_SCOPES["stop"])
        assert r.json()["note"] == job_note(j1, "stop") == f"twinhub processing job {j1} (stop)"
        assert (r.json()["job"], r.json()["purpose"]) == (j1, "stop")
        assert r.headers["Cache-Control"] == "no-store"
        # R9: a runner token of a running job goes only once it is the job's own (the
        # manager records its id before the runner starts).
        assert await hubtokens.revoke(ctx, "alice", tid) is False
        assert (await http.get(f"{api}/user", headers=auth(token))).status_code == 200
        set_job(rt, j1, token_id=tid)
        assert await hubtokens.revoke(ctx, "alice", tid) is True
        assert (await http.get(f"{api}/user", headers=auth(token))).status_code == 403
        assert await hubtokens.revoke(ctx, "alice", tid) is False  # gone: nothing there
        assert await hubtokens.revoke(ctx, "alice", r.json()["id"]) is True
        with pytest.raises(hubtokens.HubTokenError, match="404"):
            await hubtokens.mint(ctx, "nobody", 60, note=f"twinhub processing job {j1}")

    run(main, rt, tmp_path)


def test_tokens_only_for_a_job_of_the_user_that_runs_or_ended_lately(rt, tmp_path) -> None:
    """R6: the service mints a runner token only for a running job of that user, a stop
    token only for one that runs or ended less than an hour ago."""
    running = add_job(rt, "alice")
    lately = add_job(rt, "alice", "dismissed", ended_ago=600)
    long_ago = add_job(rt, "alice", "failed", ended_ago=7200)
    queued = add_job(rt, "alice", "accepted")
    bobs = add_job(rt, "bob")

    async def main(app: JupyterHub, api: str, http: httpx.AsyncClient) -> None:
        user_token(app, "alice")
        user_token(app, "bob")
        ctx = service_ctx(rt, api)

        async def mint(job: str, purpose: str, user: str = "alice") -> httpx.Response:
            return await http.post(
                f"{api}/{HUB_TOKENS_PATH}/{user}",
                json={"job": job, "purpose": purpose, "expires_in": 60},
                headers=auth(ctx.token),
            )

        for job, purpose, user in (
            (running, "runner", "alice"),
            (running, "stop", "alice"),
            (lately, "stop", "alice"),
            (bobs, "runner", "bob"),
        ):
            r = await mint(job, purpose, user)
            assert r.status_code == 201, (job, purpose, r.text)
            assert orm.APIToken.find(app.db, r.json()["token"]).note == job_note(job, purpose)
        for job, purpose, words in (
            (lately, "runner", "is not running"),
            (queued, "runner", "is not running"),
            (long_ago, "stop", "neither runs nor ended lately"),
            (queued, "stop", "neither runs nor ended lately"),
            (bobs, "runner", "is not a processing job of alice"),
            (bobs, "stop", "is not a processing job of alice"),
            (uuid.uuid4().hex, "runner", "is not a processing job of alice"),
        ):
            r = await mint(job, purpose)
            assert r.status_code == 403 and words in r.json()["message"], (job, purpose, r.text)
        # The client's side: the job is named in the note, the purpose by the scopes.
        with pytest.raises(hubtokens.HubTokenError, match="403.*is not running"):
            await hubtokens.mint(ctx, "alice", 60, note=f"twinhub processing job {lately}")
        token, _ = await hubtokens.mint(
            ctx, "alice", 60, job_note(lately, "stop"), PURPOSE_SCOPES["stop"]
        )
        r = await http.get(f"{api}/user", headers=auth(token))
        assert set(r.json()["scopes"]) & set(hubtokens.RUNNER_SCOPES) == {hubtokens.GATEWAY_SCOPE}
        with pytest.raises(hubtokens.HubTokenError, match="names no job id"):
            await hubtokens.mint(ctx, "alice", 60, note="twinhub processing: stop")
        with pytest.raises(ValueError, match="no token purpose"):
            await hubtokens.mint(ctx, "alice", 60, job_note(running, "runner"), ("tokens",))

    run(main, rt, tmp_path)


def test_revocation_touches_only_the_jobs_own_tokens(rt, tmp_path) -> None:
    """R9: DELETE takes a job's recorded runner token, a stop token of a job of that user,
    or a runner token of a job that no longer runs (minted while it was dismissed); never
    the user's own tokens, however they are noted, nor another user's."""
    running = add_job(rt, "alice")
    ended = add_job(rt, "alice")
    bobs = add_job(rt, "bob")

    async def main(app: JupyterHub, api: str, http: httpx.AsyncClient) -> None:
        alice = user_token(app, "alice")
        user_token(app, "bob")
        ctx = service_ctx(rt, api)
        url = f"{api}/{HUB_TOKENS_PATH}/alice"
        recorded, recorded_id = await hubtokens.mint(ctx, "alice", 60, job_note(running, "runner"))
        set_job(rt, running, token_id=recorded_id)
        spare, spare_id = await hubtokens.mint(ctx, "alice", 60, job_note(running, "runner"))
        late, late_id = await hubtokens.mint(ctx, "alice", 60, job_note(ended, "runner"))
        set_job(rt, ended, status="dismissed", finished_at=datetime.now(UTC))
        stop, stop_id = await hubtokens.mint(
            ctx, "alice", 60, job_note(running, "stop"), PURPOSE_SCOPES["stop"]
        )
        bob, bob_id = await hubtokens.mint(ctx, "bob", 60, job_note(bobs, "runner"))
        set_job(rt, bobs, token_id=bob_id)
        # Alice's own tokens that look like the service's: its notes, its scopes.
        runner, gateway = list(hubtokens.RUNNER_SCOPES), [hubtokens.GATEWAY_SCOPE]
        lookalikes = {
            note: user_token(app, "alice", note=note, scopes=scopes)
            for note, scopes in (
                ("twinhub processing job x", runner),
                ("twinhub processing: stop", gateway),
                (f"twinhub processing job {running}", runner),
                (f"twinhub processing job {running} (runner)", runner),  # not the recorded one
                (f"twinhub processing job {running} (stop)", runner),  # more than a stop's
                (f"twinhub processing job {bobs} (stop)", gateway),  # bob's job
            )
        }
        keep = {"alice": alice, "spare": spare, "bob": bob, **lookalikes}
        tids = {name: orm.APIToken.find(app.db, t).api_id for name, t in keep.items()}
        for name, tid in [*tids.items(), ("nonsense", "x1"), ("no a", "1"), ("bare", "a")]:
            r = await http.delete(f"{url}/{tid}", headers=auth(ctx.token))
            assert r.status_code == 404, name
        for name, token in keep.items():
            assert orm.APIToken.find(app.db, token) is not None, name
        for tid in (recorded_id, late_id, stop_id):
            r = await http.delete(f"{url}/{tid}", headers=auth(ctx.token))
            assert r.status_code == 204, tid
        for token in (recorded, late, stop):
            assert orm.APIToken.find(app.db, token) is None
        # A runner token of the job that is not its recorded one: once the job ended.
        set_job(rt, running, status="failed", finished_at=datetime.now(UTC))
        assert await hubtokens.revoke(ctx, "alice", spare_id) is True

    run(main, rt, tmp_path)


def test_an_unreadable_jobs_table_mints_and_revokes_nothing(rt, tmp_path) -> None:
    """No database to check: 503, nothing minted (the hub never mints unchecked)."""
    jid = add_job(rt, "alice")
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"  # no processing_jobs table

    async def main(app: JupyterHub, api: str, http: httpx.AsyncClient) -> None:
        user_token(app, "alice")
        ctx = service_ctx(rt, api)
        before = app.db.query(orm.APIToken).count()
        with pytest.raises(hubtokens.HubTokenError, match="503.*cannot be checked"):
            await hubtokens.mint(ctx, "alice", 60, job_note(jid, "runner"))
        assert app.db.query(orm.APIToken).count() == before

    run(main, rt, tmp_path, jobs_db=empty)


def test_only_the_services_own_token_may_call(rt, tmp_path) -> None:
    service = rt.secret("service-processing")
    jid = add_job(rt, "alice")
    body = {"job": jid, "purpose": "runner", "expires_in": 60}

    async def main(app: JupyterHub, api: str, http: httpx.AsyncClient) -> None:
        alice = user_token(app, "alice")
        root = user_token(app, "root")  # an admin, token with every scope root has
        assert orm.User.find(app.db, "root").admin
        minted = await http.post(f"{api}/{HUB_TOKENS_PATH}/alice", json=body, headers=auth(service))
        tid = minted.json()["id"]
        for who, token in (("alice", alice), ("admin", root), ("service", OTHER_TOKEN)):
            for user in ("alice", "root"):
                r = await http.post(
                    f"{api}/{HUB_TOKENS_PATH}/{user}", json=body, headers=auth(token)
                )
                assert r.status_code == 403, (who, r.text)
                assert "only the processing service" in r.json()["message"]
            r = await http.delete(f"{api}/{HUB_TOKENS_PATH}/alice/{tid}", headers=auth(token))
            assert r.status_code == 403, who
        r = await http.post(f"{api}/{HUB_TOKENS_PATH}/alice", json=body)
        assert r.status_code == 403  # no token at all
        # The minted token itself is no key to the API either.
        r = await http.post(
            f"{api}/{HUB_TOKENS_PATH}/alice", json=body, headers=auth(minted.json()["token"])
        )
        assert r.status_code == 403
        assert orm.APIToken.find(app.db, minted.json()["token"]) is not None  # not revoked
        # ...and the service's token no longer mints through JupyterHub's own API.
        r = await http.post(
            f"{api}/users/alice/tokens",
            json={"scopes": ["admin:users"], "expires_in": 60},
            headers=auth(service),
        )
        assert r.status_code == 403
        r = await http.post(
            f"{api}/users/alice/tokens",
            json={"scopes": list(hubtokens.RUNNER_SCOPES), "expires_in": 60},
            headers=auth(service),
        )
        assert r.status_code == 403

    run(main, rt, tmp_path)


def test_bad_requests_are_refused(rt, tmp_path) -> None:
    service = rt.secret("service-processing")
    most = max_token_seconds(TwinhubProcessing(config=rt.config))
    assert most == WALL + 3600
    jid = add_job(rt, "alice")

    async def main(app: JupyterHub, api: str, http: httpx.AsyncClient) -> None:
        user_token(app, "alice")
        url = f"{api}/{HUB_TOKENS_PATH}/alice"
        ok = {"job": jid, "purpose": "runner", "expires_in": 60}

        async def post(body: Any) -> httpx.Response:
            return await http.post(url, json=body, headers=auth(service))

        for body, words in (
            ({**ok, "expires_in": most + 1}, f"between 1 and {most}"),
            ({**ok, "expires_in": 0}, "between 1"),
            ({**ok, "purpose": "stop", "expires_in": 301}, "between 1 and 300"),
            ({"job": jid, "purpose": "runner"}, "expires_in must be an integer"),
            ({**ok, "expires_in": True}, "expires_in must be an integer"),
            ({**ok, "expires_in": 60.5}, "expires_in must be an integer"),
            ({**ok, "purpose": "admin"}, "purpose must be one of: runner, stop"),
            ({"job": jid, "expires_in": 60}, "purpose must be"),
            ({**ok, "job": "../x"}, "job must be a job id"),
            ({**ok, "job": "x" * 65}, "job must be a job id"),
            ({"purpose": "runner", "expires_in": 60}, "job must be a job id"),
            ({**ok, "scopes": ["admin:users"]}, "unknown fields: scopes"),
            ({**ok, "note": "x"}, "unknown fields: note"),
            ({**ok, "roles": ["admin"]}, "unknown fields: roles"),
            (["expires_in"], "must be a JSON object"),
        ):
            r = await post(body)
            assert r.status_code == 400 and words in r.json()["message"], (body, r.text)
        assert (await post({**ok, "expires_in": most})).status_code == 201
        r = await http.post(f"{api}/{HUB_TOKENS_PATH}/nobody", json=ok, headers=auth(service))
        assert r.status_code == 404

    run(main, rt, tmp_path)


def test_the_part_registers_the_handlers_without_the_tokens_scope(rt) -> None:
    assert "tokens" not in ProcessingPart.scopes
    c = Config()
    c.JupyterHub.extra_handlers = [("/other", "some.Handler")]
    ProcessingPart().configure_hub(c, rt)
    assert c.JupyterHub.extra_handlers == [
        ("/other", "some.Handler"),
        *hub_handlers(int(WALL + 3600), rt.db_url),
    ]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "tokens" not in roles["processing-service"]["scopes"]
    # Runners retrying their reports longer than the hour: the bound grows with them.
    long = TwinhubProcessing(wall_time=100.0, report_timeout=7200.0)
    assert max_token_seconds(long) == 100 + 7200 + 600

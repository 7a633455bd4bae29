"""The hub's job-token API (twinhub.services.processing.hubside) in a real JupyterHub.

A JupyterHub app is initialized in this process from the configuration the processing part
gives the hub (its registration, its role, its handlers), beside the stac and dask-gateway
services whose access the tokens carry and another service; its tornado application serves
real HTTP on a loopback port (no proxy, no server: only the hub's REST API is used). The
service's own client (hubtokens.mint/revoke) talks to it as in the platform.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
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
from twinhub.services.registration import grant_access, register_service

OTHER_TOKEN = "another-service-token-0123456789"
WALL = 600.0


def hub_config(rt: Runtime, tmp: Path) -> Config:
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
    return c


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    cfg = Config()
    cfg.TwinhubProcessing.wall_time = WALL
    ports = {"public": 1, "hub": 2, "processing": 3, "stac": 4, "dask-gateway": 5}
    return Runtime(state_dir=state, config=cfg, ports=ports, mode="multi-user", instance_id="th")


@asynccontextmanager
async def real_hub(rt: Runtime, tmp: Path) -> AsyncIterator[tuple[JupyterHub, str]]:
    """The hub app (initialized) and its API URL, served on loopback."""
    app = JupyterHub.instance(config=hub_config(rt, tmp))  # the singleton CryptKeeper reads
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


def run(main: Callable[..., Any], rt: Runtime, tmp: Path) -> None:
    async def go() -> None:
        async with real_hub(rt, tmp) as (app, api), httpx.AsyncClient(timeout=30) as http:
            await main(app, api, http)

    asyncio.run(go())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def test_the_service_mints_and_revokes_runner_tokens_through_the_hub(rt, tmp_path) -> None:
    service = rt.secret("service-processing")

    async def main(app: JupyterHub, api: str, http: httpx.AsyncClient) -> None:
        user_token(app, "alice")
        ctx = ProcessingContext(
            rt=rt,
            settings=TwinhubProcessing(config=rt.config),
            db_url="",
            hub_api=api,
            token=service,
            prefix="/services/processing/",
        )
        token, tid = await hubtokens.mint(ctx, "alice", 120, note="twinhub processing job j1")
        r = await http.get(f"{api}/user", headers=auth(token))
        assert r.status_code == 200 and r.json()["name"] == "alice"
        own = {"read:users:name!user=alice", "read:users:groups!user=alice"}
        assert set(r.json()["scopes"]) - own == set(hubtokens.RUNNER_SCOPES)
        orm_token = orm.APIToken.find(app.db, token)
        assert orm_token.note == "twinhub processing job j1" and orm_token.api_id == tid
        left = orm_token.expires_at.replace(tzinfo=UTC) - datetime.now(UTC)
        assert 100 < left.total_seconds() <= 120
        # A gateway-only token (what stops a job's cluster); a note without the prefix
        # gets it.
        r = await http.post(
            f"{api}/{HUB_TOKENS_PATH}/alice",
            json={"expires_in": 60, "note": "stop", "scopes": [hubtokens.RUNNER_SCOPES[0]]},
            headers=auth(service),
        )
        assert r.status_code == 201, r.text
        assert r.json()["scopes"] == [hubtokens.RUNNER_SCOPES[0]]
        assert r.json()["note"] == "twinhub processing: stop"
        assert r.headers["Cache-Control"] == "no-store"
        # Revoked: the token stops working; again: nothing there.
        assert await hubtokens.revoke(ctx, "alice", tid) is True
        assert (await http.get(f"{api}/user", headers=auth(token))).status_code == 403
        assert await hubtokens.revoke(ctx, "alice", tid) is False
        assert await hubtokens.revoke(ctx, "alice", r.json()["id"]) is True
        with pytest.raises(hubtokens.HubTokenError, match="404"):
            await hubtokens.mint(ctx, "nobody", 60)

    run(main, rt, tmp_path)


def test_only_the_services_own_token_may_call(rt, tmp_path) -> None:
    service = rt.secret("service-processing")

    async def main(app: JupyterHub, api: str, http: httpx.AsyncClient) -> None:
        alice = user_token(app, "alice")
        root = user_token(app, "root")  # an admin, token with every scope root has
        assert orm.User.find(app.db, "root").admin
        minted = await http.post(
            f"{api}/{HUB_TOKENS_PATH}/alice", json={"expires_in": 60}, headers=auth(service)
        )
        tid = minted.json()["id"]
        for who, token in (("alice", alice), ("admin", root), ("service", OTHER_TOKEN)):
            for user in ("alice", "root"):
                r = await http.post(
                    f"{api}/{HUB_TOKENS_PATH}/{user}",
                    json={"expires_in": 60},
                    headers=auth(token),
                )
                assert r.status_code == 403, (who, r.text)
                assert "only the processing service" in r.json()["message"]
            r = await http.delete(f"{api}/{HUB_TOKENS_PATH}/alice/{tid}", headers=auth(token))
            assert r.status_code == 403, who
        r = await http.post(f"{api}/{HUB_TOKENS_PATH}/alice", json={"expires_in": 60})
        assert r.status_code == 403  # no token at all
        # The minted token itself is no key to the API either.
        r = await http.post(
            f"{api}/{HUB_TOKENS_PATH}/alice",
            json={"expires_in": 60},
            headers=auth(minted.json()["token"]),
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


def test_bad_requests_and_foreign_tokens_are_refused(rt, tmp_path) -> None:
    service = rt.secret("service-processing")
    most = max_token_seconds(TwinhubProcessing(config=rt.config))
    assert most == WALL + 3600

    async def main(app: JupyterHub, api: str, http: httpx.AsyncClient) -> None:
        alice = user_token(app, "alice")
        url = f"{api}/{HUB_TOKENS_PATH}/alice"

        async def post(body: Any) -> httpx.Response:
            return await http.post(url, json=body, headers=auth(service))

        for body, words in (
            ({"expires_in": most + 1}, f"between 1 and {most}"),
            ({"expires_in": 0}, "between 1"),
            ({}, "expires_in must be an integer"),
            ({"expires_in": True}, "expires_in must be an integer"),
            ({"expires_in": 60.5}, "expires_in must be an integer"),
            ({"expires_in": 60, "scopes": ["admin:users"]}, "scopes must be"),
            ({"expires_in": 60, "scopes": ["tokens"]}, "scopes must be"),
            ({"expires_in": 60, "scopes": ["inherit"]}, "scopes must be"),
            ({"expires_in": 60, "scopes": []}, "scopes must be"),
            ({"expires_in": 60, "roles": ["admin"]}, "unknown fields: roles"),
            ({"expires_in": 60, "note": "x" * 201}, "note must be"),
            (["expires_in"], "must be a JSON object"),
        ):
            r = await post(body)
            assert r.status_code == 400 and words in r.json()["message"], (body, r.text)
        assert (await post({"expires_in": most})).status_code == 201
        r = await http.post(
            f"{api}/{HUB_TOKENS_PATH}/nobody", json={"expires_in": 60}, headers=auth(service)
        )
        assert r.status_code == 404
        # Revocation touches only tokens minted here: not alice's own (even one whose note
        # looks like ours), not another user's through alice's path, not nonsense ids.
        own = orm.APIToken.find(app.db, alice)
        lookalike = user_token(app, "alice", note="twinhub processing job x")
        bob_minted = await http.post(
            f"{api}/{HUB_TOKENS_PATH}/bob", json={"expires_in": 60}, headers=auth(service)
        )
        assert bob_minted.status_code == 404  # no such user yet
        user_token(app, "bob")
        bob_minted = await http.post(
            f"{api}/{HUB_TOKENS_PATH}/bob", json={"expires_in": 60}, headers=auth(service)
        )
        lookalike_id = orm.APIToken.find(app.db, lookalike).api_id
        for tid in (own.api_id, lookalike_id, bob_minted.json()["id"], "x1", "a", "1"):
            r = await http.delete(f"{url}/{tid}", headers=auth(service))
            assert r.status_code == 404, tid
        for token in (alice, lookalike, bob_minted.json()["token"]):
            assert orm.APIToken.find(app.db, token) is not None

    run(main, rt, tmp_path)


def test_the_part_registers_the_handlers_without_the_tokens_scope(rt) -> None:
    assert "tokens" not in ProcessingPart.scopes
    c = Config()
    c.JupyterHub.extra_handlers = [("/other", "some.Handler")]
    ProcessingPart().configure_hub(c, rt)
    assert c.JupyterHub.extra_handlers == [
        ("/other", "some.Handler"),
        *hub_handlers(int(WALL + 3600)),
    ]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "tokens" not in roles["processing-service"]["scopes"]
    # Runners retrying their reports longer than the hour: the bound grows with them.
    long = TwinhubProcessing(wall_time=100.0, report_timeout=7200.0)
    assert max_token_seconds(long) == 100 + 7200 + 600

"""Job runners and job clusters on the real multi-user platform (``multiuser_platform``).

- LocalJobBackend starts a real process as the user's OS account (checked in the process
  table), with a token the real hub minted for that user (only the runner's two scopes),
  and stop() ends it and everything in its group;
- the hub's job-token API (processing.hubside): the service mints and revokes through it,
  only for a job of that user in processing_jobs (running, for a runner's token); a user's,
  an admin's and another service's token are refused; the service's own token no longer
  mints through JupyterHub's ``/users/{name}/tokens``;
- the gateway's ``job`` option: a cluster for a running job of its user is allowed beyond
  ``max_clusters_per_user``; an unknown job, another user's, a finished one, or a second
  cluster of the same job are refused; hubtokens.stop_job_cluster stops one;
- outputs.size / outputs.remove on the real object store with the user's own keys.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import resource
import stat
import sys
import time
import uuid

import httpx
import psutil
import pytest
import requests

from tests.helpers.platform import Platform
from twinhub import db, objectstore
from twinhub.config import Twinhub
from twinhub.db.models import ProcessingJob
from twinhub.gateway import TwinhubGateway, gateway_url
from twinhub.process.runtime import Runtime
from twinhub.services.processing import HUB_TOKENS_PATH, hubtokens, outputs
from twinhub.services.processing import backend as jb
from twinhub.services.processing.config import TwinhubProcessing
from twinhub.services.processing.context import ProcessingContext
from twinhub.spawn.os_accounts import ensure_account, os_account_name
from twinhub.spawn.resource_limits import TwinhubUserLimits

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OWNER, OTHER = "p2jobowner", "p2jobother"

# What the runner reports about itself, then a grandchild in its group, then a long sleep.
PROBE = """
import os, resource, subprocess, sys, time
print("UID", os.getuid(), os.getgid(), "CWD", os.getcwd(), flush=True)
print("NPROC", resource.getrlimit(resource.RLIMIT_NPROC)[1], flush=True)
print("TOKEN", os.environ["JUPYTERHUB_API_TOKEN"], flush=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
time.sleep(300)
"""


@pytest.fixture(scope="module")
def p(multiuser_platform: Platform) -> Platform:
    rt = Runtime.load(multiuser_platform.state)
    prefix = Twinhub(config=rt.config).user_prefix
    for name in (OWNER, OTHER):
        multiuser_platform.add_user(name)
        # The gateway runs clusters only for existing accounts (the spawner makes them).
        ensure_account(name, rt.state_dir, prefix, Twinhub(config=rt.config).home_root)
    # The hub's job-token API is the processing part's (on by default in multi-user mode).
    assert "processing" in rt.ports
    multiuser_platform.add_user("p2admin", admin=True)
    return multiuser_platform


def runtime(p: Platform) -> Runtime:
    return Runtime.load(p.state)


def make_ctx(p: Platform) -> ProcessingContext:
    rt = runtime(p)
    # The service's own token: the hub's job-token API answers it alone.
    token = rt.secret("service-processing")
    return ProcessingContext(
        rt=rt,
        # Defaults: the platform may run without the processing part, its options unparsed.
        settings=TwinhubProcessing(),
        db_url=rt.db_url,
        hub_api=rt.hub_api_url,
        token=token,
        prefix="/services/processing/",
        internal_url="http://127.0.0.1:9/services/processing/",
    )


def set_job(rt: Runtime, jid: str, **values) -> None:
    with db.session(rt.db_url) as s:
        row = s.get(ProcessingJob, jid)
        for key, value in values.items():
            setattr(row, key, value)


def add_job(rt: Runtime, owner: str, status: str = "running") -> str:
    jid = uuid.uuid4().hex
    with db.session(rt.db_url) as s:
        s.add(
            ProcessingJob(
                id=jid, owner=owner, project="personal", process_id="echo", inputs={},
                status=status, stage="processing", wall_time=300.0, max_output_bytes=4096,
            )
        )  # fmt: skip
    return jid


def wait_for(what: str, cond, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise TimeoutError(f"never: {what}")


def test_local_backend_runs_the_runner_as_the_users_account(p: Platform) -> None:
    ctx = make_ctx(p)
    rt = ctx.rt
    backend = jb.LocalJobBackend(ctx)
    backend.command = [sys.executable, "-c", PROBE]
    jid = add_job(rt, OWNER)
    row = {"id": jid, "owner": OWNER, "project": "personal", "wall_time": 300.0}
    account = os_account_name(OWNER, Twinhub(config=rt.config).user_prefix)

    async def main() -> None:
        handle = await backend.start(row, "job-secret")
        try:
            pw = pwd.getpwnam(account)  # made by the backend if it was not there
            proc = psutil.Process(handle["pid"])
            assert handle["uid"] == pw.pw_uid
            assert set(proc.uids()) == {pw.pw_uid} and set(proc.gids()) == {pw.pw_gid}
            assert proc.username() == account
            # Its output file's dir: root's, closed to others (the service reads, trims and
            # removes it: the user must not be able to swap what is in it).
            st = os.stat(handle["dir"])
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
            # The log in it is the user's: what the runner writes counts against its quota.
            st = os.stat(os.path.join(handle["dir"], jb.LOG_NAME))
            assert (st.st_uid, st.st_gid) == (pw.pw_uid, pw.pw_gid)
            out = await asyncio.to_thread(
                wait_for, "the runner's lines", lambda: "TOKEN" in backend.output_tail(handle)
            )
            assert out
            lines = dict(
                line.split(" ", 1) for line in backend.output_tail(handle).splitlines() if line
            )
            assert lines["UID"] == f"{pw.pw_uid} {pw.pw_gid} CWD {pw.pw_dir}"
            nproc = TwinhubUserLimits(config=rt.config).max_processes
            assert int(lines["NPROC"]) == (nproc or resource.RLIM_INFINITY)
            # The token is the user's, with the runner's two scopes only.
            async with httpx.AsyncClient() as c:
                r = await c.get(
                    f"{rt.hub_api_url}/user",
                    headers={"Authorization": f"token {lines['TOKEN']}"},
                )
            assert r.status_code == 200 and r.json()["name"] == OWNER
            # (JupyterHub adds every token's own identity: its name and groups, read only.)
            scopes = set(r.json()["scopes"])
            own = {f"read:users:name!user={OWNER}", f"read:users:groups!user={OWNER}"}
            assert scopes - own == set(hubtokens.RUNNER_SCOPES)
            group = await asyncio.to_thread(
                wait_for,
                "the grandchild",
                lambda: len(backend._members(handle)) == 2 and backend._members(handle),
            )
            assert all(q.uids().real == pw.pw_uid for q in group)
            await backend.stop(handle, grace=2.0)
            assert not backend.alive(handle)
            assert not [q for q in group if q.is_running() and q.status() != "zombie"]
        finally:
            for q in backend._members(handle):
                q.kill()
            # The hub revokes a running job's runner token once it is the job's (recorded).
            set_job(rt, jid, token_id=handle["token_id"])
            assert await hubtokens.revoke(ctx, OWNER, handle["token_id"])
        async with httpx.AsyncClient() as c:
            r = await c.get(
                f"{rt.hub_api_url}/user", headers={"Authorization": f"token {lines['TOKEN']}"}
            )
        assert r.status_code == 403  # revoked

    asyncio.run(main())


def test_only_the_service_mints_job_tokens_in_the_hub(p: Platform) -> None:
    ctx = make_ctx(p)
    rt = ctx.rt
    api = f"{rt.hub_api_url}/{HUB_TOKENS_PATH}"

    def call(method: str, path: str, token: str, **kw) -> requests.Response:
        headers = {"Authorization": f"token {token}"}
        return requests.request(method, f"{api}/{path}", headers=headers, timeout=30, **kw)

    jid = add_job(rt, OWNER)
    body = {"job": jid, "purpose": "runner", "expires_in": 60}
    token, tid = asyncio.run(hubtokens.mint(ctx, OWNER, 120, note=f"twinhub processing job {jid}"))
    r = requests.get(
        f"{rt.hub_api_url}/user", headers={"Authorization": f"token {token}"}, timeout=30
    )
    assert r.status_code == 200 and r.json()["name"] == OWNER
    # Only for a job of that user (R6), running for a runner's token.
    for job, user in ((jid, OTHER), (add_job(rt, OWNER, "successful"), OWNER)):
        r = call("POST", user, ctx.token, json={**body, "job": job})
        assert r.status_code == 403, r.text
    others = {
        "a user": p.token(OTHER),
        "an admin": p.token("p2admin"),
        "another service": rt.secret("service-desk"),
    }
    for who, other in others.items():
        r = call("POST", OWNER, other, json=body)
        assert r.status_code == 403, (who, r.text)
        assert call("DELETE", f"{OWNER}/{tid}", other).status_code == 403, who
    # Beyond the allow-list or the bound: refused; the service's token no longer reaches
    # JupyterHub's own token API.
    service = ctx.token
    r = call("POST", OWNER, service, json={**body, "scopes": ["admin:users"]})
    assert r.status_code == 400
    r = call("POST", OWNER, service, json={**body, "expires_in": 10**7})
    assert r.status_code == 400
    r = requests.post(
        f"{rt.hub_api_url}/users/{OWNER}/tokens",
        json={"scopes": list(hubtokens.RUNNER_SCOPES), "expires_in": 60},
        headers={"Authorization": f"token {service}"},
        timeout=30,
    )
    assert r.status_code == 403
    assert asyncio.run(hubtokens.revoke(ctx, OWNER, tid)) is False  # not the job's (R9)
    set_job(rt, jid, token_id=tid)
    assert asyncio.run(hubtokens.revoke(ctx, OWNER, tid)) is True
    r = requests.get(
        f"{rt.hub_api_url}/user", headers={"Authorization": f"token {token}"}, timeout=30
    )
    assert r.status_code == 403


def gateway(p: Platform, user: str, method: str, path: str = "", **kw) -> requests.Response:
    headers = {"Authorization": f"jupyterhub {p.token(user)}"}
    url = f"{gateway_url(runtime(p))}/api/v1/clusters/{path}"
    return requests.request(method, url, headers=headers, timeout=90, **kw)


def test_job_clusters_pass_the_cluster_limit_only_for_a_running_job(p: Platform) -> None:
    rt = runtime(p)
    ctx = make_ctx(p)
    limit = TwinhubGateway(config=rt.config).max_clusters_per_user
    made: list[str] = []
    try:
        for _ in range(limit):
            r = gateway(p, OWNER, "POST", json={"cluster_options": {}})
            assert r.status_code == 201, r.text
            made.append(r.json()["name"])
        r = gateway(p, OWNER, "POST", json={"cluster_options": {}})
        assert r.status_code >= 400 and f"already has {limit} active cluster" in r.text

        job = add_job(rt, OWNER)
        r = gateway(p, OWNER, "POST", json={"cluster_options": {"job": job}})
        assert r.status_code == 201, r.text
        job_cluster = r.json()["name"]
        made.append(job_cluster)
        assert gateway(p, OWNER, "GET", job_cluster).json()["options"]["job"] == job
        r = gateway(p, OWNER, "POST", json={"cluster_options": {"job": job}})
        assert r.status_code >= 400 and f"job {job} already has an active cluster" in r.text

        for refused in (
            uuid.uuid4().hex,  # no such job
            add_job(rt, OTHER),  # someone else's
            add_job(rt, OWNER, status="successful"),  # over
            add_job(rt, OWNER, status="accepted"),  # not started
        ):
            r = gateway(p, OWNER, "POST", json={"cluster_options": {"job": refused}})
            assert r.status_code >= 400
            assert f"job {refused} is not a running job of {OWNER}" in r.text
        r = gateway(p, OWNER, "GET", params={"status": "PENDING,RUNNING"})
        assert sorted(r.json()) == sorted(made)

        # Stopped the way dismiss stops it: with a short-lived token of the owner.
        assert asyncio.run(hubtokens.stop_job_cluster(ctx, OWNER, job_cluster, job=job)) is True
        r = gateway(p, OWNER, "GET", job_cluster)
        assert r.status_code == 404 or r.json()["status"] in ("STOPPED", "FAILED")
        # The job may have a cluster again (a resumed attempt).
        r = gateway(p, OWNER, "POST", json={"cluster_options": {"job": job}})
        assert r.status_code == 201, r.text
        made.append(r.json()["name"])
        # Its job ends with the cluster still up: the cluster now counts. With one
        # interactive cluster shut down, there is still no room for another.
        with db.session(rt.db_url) as s:
            s.get(ProcessingJob, job).status = "successful"
        gateway(p, OWNER, "DELETE", made.pop(0))
        r = gateway(p, OWNER, "POST", json={"cluster_options": {}})
        assert r.status_code >= 400 and f"already has {limit} active cluster" in r.text
    finally:
        for name in made:
            gateway(p, OWNER, "DELETE", name)


def test_outputs_are_sized_and_removed_with_the_users_keys(p: Platform) -> None:
    rt = runtime(p)
    creds = objectstore.ensure_user(rt, OWNER)
    s3 = objectstore.client(rt, creds.access_key, creds.secret_key)
    jid = uuid.uuid4().hex
    prefix = outputs.output_prefix(rt, OWNER, jid)
    assert prefix == f"s3://{creds.home_bucket}/processing/{jid}/"
    for key, size in (("a.zarr/.zattrs", 10), ("a.zarr/0.0", 1000), ("series.csv", 5)):
        s3.put_object(Bucket=creds.home_bucket, Key=f"processing/{jid}/{key}", Body=b"x" * size)
    keep = f"processing/{jid}-other/keep.txt"  # a sibling prefix: never touched
    s3.put_object(Bucket=creds.home_bucket, Key=keep, Body=b"keep")
    assert asyncio.run(outputs.size(rt, OWNER, prefix)) == 1015
    assert asyncio.run(outputs.remove(rt, OWNER, prefix)) == 3
    assert asyncio.run(outputs.size(rt, OWNER, prefix)) == 0
    assert asyncio.run(outputs.remove(rt, OWNER, prefix)) == 0
    assert s3.get_object(Bucket=creds.home_bucket, Key=keep)["Body"].read() == b"keep"
    # Another user's keys cannot reach it, and another user's prefix is refused outright.
    with pytest.raises(ValueError, match="is not in"):
        asyncio.run(outputs.remove(rt, OTHER, prefix))
    s3.delete_object(Bucket=creds.home_bucket, Key=keep)
    assert os.geteuid() == 0

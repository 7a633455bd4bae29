"""Job backends (twinhub.services.processing.backend), hub tokens and output prefixes.

Real processes, a real database and real files. The hub's token API is a fake here
(``FakeHub``, an httpx transport recording requests): the real hub answers in
tests/integration/test_gateway_job_clusters.py. Kubernetes cannot run here: the pod manifest
is checked as data (and against the schema in tests/kubernetes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pwd
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest
from traitlets.config import Config

from twinhub import db
from twinhub.objectstore import credentials, seaweed
from twinhub.process.runtime import Runtime
from twinhub.services.processing import backend as jb
from twinhub.services.processing import backend_kube as bk
from twinhub.services.processing import backend_local as bl
from twinhub.services.processing import hubtokens, outputs
from twinhub.services.processing.config import TwinhubProcessing
from twinhub.services.processing.context import ProcessingContext
from twinhub.spawn import charges, resource_limits

SERVICE_TOKEN = "service-token-never-in-a-runner"
SENTINEL = "TWINHUB_TEST_SERVICE_SECRET"


class FakeHub:
    """A fake of the hub's processing token API (POST .../tokens/{u}, DELETE
    .../tokens/{u}/{id}, hubside.py): records each request, answers as it does (201 with
    the token model, 204, 404)."""

    def __init__(self, refuse: bool = False) -> None:
        self.requests: list[tuple[str, str, dict, dict]] = []
        self.tokens: dict[str, str] = {}
        self.refuse = refuse

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.requests.append((request.method, request.url.path, dict(request.headers), body))
        if request.headers.get("authorization") != f"token {SERVICE_TOKEN}":
            return httpx.Response(403, json={"status": 403, "message": "no"})
        parts = request.url.path.split("/")
        if request.method == "POST" and parts[-2] == "tokens":
            if self.refuse:
                return httpx.Response(403, json={"status": 403, "message": "refused"})
            tid = f"a{len(self.tokens) + 1}"
            self.tokens[tid] = f"user-token-{tid}"
            return httpx.Response(201, json={"id": tid, "token": self.tokens[tid], **body})
        if request.method == "DELETE":
            return httpx.Response(204 if self.tokens.pop(parts[-1], None) else 404)
        return httpx.Response(404)


@pytest.fixture
def rt(tmp_path, monkeypatch) -> Runtime:
    monkeypatch.setenv(SENTINEL, "must-not-reach-a-runner")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    r = Runtime(state_dir=state, config=Config(), instance_id="tjob", mode="personal")
    r.ports.update({"public": 41000, "hub": 41001, "dask-gateway": 41002})
    for i, key in enumerate(seaweed.PORT_KEYS.values()):
        r.ports[key] = 42000 + i  # the embedded store's ports (nothing listens: no S3 call)
    db.upgrade(r.db_url)
    yield r
    db.dispose_engines()


def make_ctx(rt: Runtime, hub: FakeHub, **settings) -> ProcessingContext:
    return ProcessingContext(
        rt=rt,
        settings=TwinhubProcessing(**settings),
        db_url=rt.db_url,
        hub_api="http://hub.test/hub/api",
        token=SERVICE_TOKEN,
        prefix="/services/processing/",
        internal_url="http://127.0.0.1:41003/services/processing/",
        hub=httpx.AsyncClient(transport=httpx.MockTransport(hub)),
    )


def job(jid: str = "0123abcd", owner: str = "olga", **kw) -> dict:
    return {"id": jid, "owner": owner, "project": "climate", "wall_time": 120.0, **kw}


# -- the runner's environment ------------------------------------------------------------------
def test_runner_environment_is_the_users_and_only_hers(rt) -> None:
    olga = credentials.create_row(rt, "olga", "home-")
    other = credentials.create_row(rt, "piet", "home-")
    ctx = make_ctx(rt, FakeHub())
    env = jb.runner_environment(ctx, job(), "job-secret", "user-token")
    assert env[jb.ENV_JOB_ID] == "0123abcd" and env[jb.ENV_JOB_SECRET] == "job-secret"
    assert env["JUPYTERHUB_API_TOKEN"] == "user-token"
    assert env[jb.ENV_PROCESSING_URL] == ctx.internal_url
    assert env["JUPYTERHUB_API_URL"] == ctx.hub_api and env["JUPYTERHUB_USER"] == "olga"
    assert env["TWINHUB_STAC_URL"] == "http://127.0.0.1:41000/services/stac/"
    assert env["DASK_GATEWAY__ADDRESS"] == "http://127.0.0.1:41002/services/dask-gateway"
    assert env["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://127.0.0.1:41002"
    assert env["DASK_GATEWAY__AUTH__TYPE"] == "twinlab.clusters.client.HubAuth"
    assert env["TWINHUB_INSTANCE"] == "tjob" and env["TWINHUB_PROJECT"] == "climate"
    assert env["PYTHONUNBUFFERED"] == "1" and env["PATH"].startswith(f"{sys.prefix}/bin:")
    assert env["AWS_ACCESS_KEY_ID"] == olga.access_key
    assert env["AWS_SECRET_ACCESS_KEY"] == olga.secret_key
    assert json.loads(env["TWINHUB_STORAGE"])["home_bucket"] == "home-olga"
    text = json.dumps(env)
    # Nothing of the service (its token, its environment) nor of another user.
    assert SERVICE_TOKEN not in text and SENTINEL not in text
    assert other.access_key not in text and other.secret_key not in text
    assert "home-piet" not in text
    assert all(isinstance(v, str) for v in env.values())


# -- the local backend: a real process -----------------------------------------------------------
SCRIPT = """
import os, subprocess, sys, time
print("runner of", os.environ["TWINHUB_JOB_ID"], "in", os.getcwd(), flush=True)
print("has service secret:", "TWINHUB_TEST_SERVICE_SECRET" in os.environ, flush=True)
# A grandchild in the same group: stop() must end it too.
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
time.sleep(120)
"""


def run(coro):
    return asyncio.run(coro)


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_local_backend_starts_watches_and_stops_the_runner_group(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    hub = FakeHub()
    ctx = make_ctx(rt, hub)
    backend = bl.LocalJobBackend(ctx)
    backend.command = [sys.executable, "-c", SCRIPT]

    async def main() -> None:
        handle = await backend.start(job(), "s3cret")
        try:
            assert handle["kind"] == "local" and handle["uid"] == os.getuid()
            assert handle["token_id"] == "a1"
            assert json.loads(json.dumps(handle)) == handle  # stored as JSON
            d = Path(handle["dir"])
            assert d == rt.path("processing", "jobs", "0123abcd")
            assert stat.S_IMODE(d.stat().st_mode) == 0o700
            p = psutil.Process(handle["pid"])
            assert p.create_time() == pytest.approx(handle["started"], abs=0.05)
            assert os.getsid(p.pid) == p.pid  # its own session: survives the service
            assert backend.alive(handle)
            await asyncio.to_thread(
                wait_for,
                lambda: (
                    len(backend._members(handle)) == 2 and "secret" in backend.output_tail(handle)
                ),
            )
            tail = backend.output_tail(handle)
            assert "runner of 0123abcd" in tail and "has service secret: False" in tail
            group = [q.pid for q in backend._members(handle)]
            await backend.stop(handle, grace=2.0)
            assert not backend.alive(handle)
            assert not [
                q for q in group if psutil.pid_exists(q) and psutil.Process(q).status() != "zombie"
            ]
            await backend.stop(handle)  # idempotent
        finally:
            for q in backend._members(handle):
                q.kill()
        # The token was minted for olga by the service, with the runner's scopes only.
        method, path, headers, body = hub.requests[0]
        assert (method, path) == ("POST", "/hub/api/twinhub/processing/tokens/olga")
        # R6: the request names the job and the purpose; the hub picks the scopes (the
        # runner's: dask-gateway and stac access) and writes the note.
        assert body == {
            "job": "0123abcd",
            "purpose": "runner",
            "expires_in": 120 + int(ctx.settings.report_timeout) + jb.TOKEN_MARGIN,
        }
        assert (
            hubtokens.PURPOSE_SCOPES["runner"]
            == hubtokens.RUNNER_SCOPES
            == (
                "access:services!service=dask-gateway",
                "access:services!service=stac",
            )
        )

    run(main())


def test_a_runner_that_exits_is_not_alive_and_its_output_stays(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    backend.command = [sys.executable, "-c", "import sys; print('boom: no result'); sys.exit(3)"]

    async def main() -> None:
        handle = await backend.start(job(), "s")
        await asyncio.to_thread(wait_for, lambda: not backend.alive(handle))
        # Its last lines, and how it ended (this process started and reaped it).
        assert backend.output_tail(handle) == "boom: no result\n\n(exit status 3)"
        assert backend.output_tail(handle, max_bytes=7) == "result\n\n(exit status 3)"
        await backend.stop(handle)  # nothing left: no error

    run(main())


def test_the_runner_is_an_open_source_of_its_user_until_it_stops(rt, monkeypatch) -> None:
    """With accounting on, the runner has a charge (kind "job") from before it starts until
    it is stopped: the end of the user's last cluster then never takes it for a leftover
    of the account to kill (charges.end_leftovers), and the meter reads it."""
    credentials.create_row(rt, "olga", "home-")
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    backend.command = [sys.executable, "-c", "import time; time.sleep(60)"]
    directory = rt.path("run", "accounting", "charges")
    monkeypatch.setattr(backend, "_accounting_dir", lambda: str(directory))
    seen = []
    spawn = backend._spawn

    def spawn_after_the_charge(*args):
        seen.extend(charges.list_charges(directory))
        return spawn(*args)

    monkeypatch.setattr(backend, "_spawn", spawn_after_the_charge)

    async def main() -> None:
        handle = await backend.start(job(), "s")
        try:
            assert [c.source_id for c in seen] == ["job:0123abcd#1"]  # before the runner
            (charge,) = charges.list_charges(directory)
            assert (charge.kind, charge.user, charge.ended_at) == ("job", "olga", None)
            assert charge.uid == handle["uid"] and handle["charge"] == charge.source_id
            # an open source of olga's: the end of her last cluster kills no leftover of hers
            # (end_leftovers waits for none; the faults test shows it on the platform)
            assert charges._has_open(directory, "olga", handle["uid"])
            assert backend.alive(handle)
        finally:
            await backend.stop(handle, grace=1.0)
        (charge,) = charges.list_charges(directory)
        assert charge.ended_at is not None

    run(main())


def test_a_failed_start_leaves_no_job_dir_and_holds_nothing(rt, monkeypatch) -> None:
    credentials.create_row(rt, "olga", "home-")
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    backend.command = [sys.executable, "-c", "pass"]

    def refuse(*args):
        raise OSError("no launcher here")

    monkeypatch.setattr(backend, "_spawn", refuse)
    with pytest.raises(jb.BackendError, match="no launcher here"):
        run(backend.start(job(), "s"))
    assert not rt.path("processing", "jobs", "0123abcd").exists()


def test_holds_says_what_a_release_left(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    backend.command = [sys.executable, "-c", "pass"]

    async def main() -> None:
        handle = await backend.start(job(), "s")
        await asyncio.to_thread(wait_for, lambda: not backend.alive(handle))
        assert backend.holds(handle)  # its job dir
        await backend.stop(handle)
        await backend.cleanup(handle)
        assert not backend.holds(handle)

    run(main())


def test_kube_refresh_never_forgets_a_pod_it_just_made(rt) -> None:
    """A list asked before the pod existed answers without it: the pod stays pending (not
    gone) until a list shows it, or a minute passes."""
    backend = bk.KubeJobBackend(make_ctx(rt, FakeHub()))
    backend._made["twinhub-job-new-1"] = time.monotonic()
    backend._phases["twinhub-job-new-1"] = "Pending"

    class Pods:
        items: list = []

    class Api:
        async def list_namespaced_pod(self, ns, label_selector=""):
            return Pods()

    backend._api = Api()
    handle = {"kind": "kube", "pod": "twinhub-job-new-1"}

    async def main() -> None:
        try:
            await backend.refresh()
            assert backend.alive(handle)
            backend._made["twinhub-job-new-1"] -= bk.MADE_GRACE + 1
            await backend.refresh()
            assert not backend.alive(handle)
        finally:
            task = backend.ctx.extras.pop("kube-job-refresh", None)
            if task is not None:
                task.cancel()

    run(main())


def test_a_second_attempt_gets_a_fresh_job_dir(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    backend.command = [sys.executable, "-c", "print('attempt')"]
    d = rt.path("processing", "jobs", "0123abcd")
    d.mkdir(parents=True)
    (d / "runner.log").symlink_to("/etc/hostname")  # left by the user: never followed

    async def main() -> None:
        handle = await backend.start(job(), "s")
        await asyncio.to_thread(wait_for, lambda: not backend.alive(handle))
        assert not (d / "runner.log").is_symlink()
        assert backend.output_tail(handle) == "attempt\n"

    run(main())


def test_alive_and_stop_never_touch_a_reused_pid(rt) -> None:
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    other = psutil.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        real = {
            "kind": "local",
            "pid": other.pid,
            "started": other.create_time(),
            "uid": os.getuid(),
        }
        assert backend.alive(real)
        for stale in (
            {**real, "started": real["started"] - 5},  # the pid of an earlier process
            {**real, "uid": os.getuid() + 4242},  # another account's
            {**real, "kind": "kube"},
            {**real, "pid": 0},
        ):
            assert not backend.alive(stale)
            run(backend.stop(stale, grace=0.2))
            assert other.is_running() and other.status() != "zombie"
        run(backend.stop(real, grace=2.0))
        assert other.wait(5) == -signal.SIGTERM
    finally:
        if other.is_running():
            other.kill()


def test_a_failed_start_revokes_the_token_and_says_why(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    hub = FakeHub()
    backend = bl.LocalJobBackend(make_ctx(rt, hub))
    backend.command = ["/nonexistent/runner"]
    with pytest.raises(jb.BackendError, match="the runner did not start"):
        run(backend.start(job(), "s"))
    assert [r[0] for r in hub.requests] == ["POST", "DELETE"] and hub.tokens == {}


def test_a_refused_token_fails_the_start(rt) -> None:
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub(refuse=True)))
    with pytest.raises(jb.BackendError, match="no token for the job's runner.*403"):
        run(backend.start(job(), "s"))
    assert not rt.path("processing", "jobs", "0123abcd").exists()


def test_bad_job_ids_make_no_directory(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    hub = FakeHub()
    backend = bl.LocalJobBackend(make_ctx(rt, hub))
    backend.command = [sys.executable, "-c", "pass"]
    # Refused before any token is asked for (the note names no job id), or by _job_dir.
    with pytest.raises(jb.BackendError, match="no job id|not a job id"):
        run(backend.start(job("../../etc"), "s"))
    assert hub.tokens == {}  # revoked


def test_multi_user_mode_refuses_a_name_that_is_no_account(rt) -> None:
    rt.mode = "multi-user"
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    with pytest.raises(jb.BackendError, match="cannot run jobs for 'Bad Name'"):
        run(backend.start(job(owner="Bad Name"), "s"))


# -- M7: the runner's cgroup; whatever it started dies with it ------------------------------------
ESCAPE = """
import os, subprocess, sys, time
print("cgroup:", open("/proc/self/cgroup").read().replace(chr(10), ";"), flush=True)
# A child that leaves the runner's session and process group (setsid): stop() must end it.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True)
print("escaped", child.pid, flush=True)
time.sleep(120)
"""


def _escaped_pid(backend, handle) -> int:
    for line in backend.output_tail(handle).splitlines():
        if line.startswith("escaped "):
            return int(line.split()[1])
    return 0


def _cgroups_usable(rt) -> bool:
    return bool(resource_limits.detect(f"twinhub-{rt.instance_id}").kind)


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "no-cgroup"])
def test_stop_ends_a_child_that_left_the_runners_session(rt, cgroups) -> None:
    if cgroups and not _cgroups_usable(rt):
        pytest.skip("no usable cgroup here (not root, or no delegation)")
    credentials.create_row(rt, "olga", "home-")
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    backend.command = [sys.executable, "-c", ESCAPE]
    backend.cgroups, backend.memory, backend.cores = cgroups, "300M", 0.5

    async def main() -> None:
        handle = await backend.start(job(attempt=1), "s")
        escaped = 0
        try:
            await asyncio.to_thread(wait_for, lambda: _escaped_pid(backend, handle))
            escaped = _escaped_pid(backend, handle)
            assert os.getsid(escaped) == escaped != handle["pid"]  # out of the runner's session
            if cgroups:
                dirs = [Path(d) for d in handle["cgroup"]]
                assert dirs and all(d.name == "processing-0123abcd-1" for d in dirs)
                # Joined before the runner's first line ran, its child with it.
                assert "processing-0123abcd-1" in backend.output_tail(handle)
                members = set()
                for d in dirs:
                    members |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
                assert {handle["pid"], escaped} <= members
                limits = {
                    f.name: f.read_text().strip()
                    for d in dirs
                    for f in (d / "memory.limit_in_bytes", d / "memory.max")
                    if f.exists()
                }
                assert str(300 * 1024**2) in limits.values()
            else:
                assert handle["cgroup"] == []
            await backend.stop(handle, grace=2.0)
            assert not backend.alive(handle)
            assert not psutil.pid_exists(escaped) or psutil.Process(escaped).status() == "zombie"
            assert not [d for d in handle["cgroup"] if os.path.exists(d)]  # removed
        finally:
            await backend.stop(handle, grace=0.5)  # leaves nothing behind for the next test
            if escaped and psutil.pid_exists(escaped):
                os.kill(escaped, signal.SIGKILL)

    run(main())


def test_the_runner_becomes_the_account_without_a_preexec_hook(rt, monkeypatch) -> None:
    """L18: the service forks only the launcher, with no preexec_fn (one could deadlock the
    child of a threaded parent); the launcher joins the cgroup and drops to the account
    before the exec. The account here: nobody (multi-user mode's are made by the platform)."""
    credentials.create_row(rt, "olga", "home-")
    calls = []
    real = bl.subprocess.Popen

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(bl.subprocess, "Popen", spy)
    nobody = pwd.getpwnam("nobody")
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    monkeypatch.setattr(backend, "_account", lambda user: nobody)
    backend.command = [
        sys.executable,
        "-c",
        "import os; print(os.getresuid(), os.getresgid(), os.getgroups())",
    ]
    handle = run(backend.start(job(), "s"))
    wait_for(lambda: not backend.alive(handle))
    u, g = nobody.pw_uid, nobody.pw_gid
    assert backend.output_tail(handle) == f"{(u, u, u)} {(g, g, g)} []\n"
    assert handle["uid"] == u
    # R2: its log is the account's (its quota), in root's closed dir.
    log_st = (Path(handle["dir"]) / jb.LOG_NAME).stat()
    dir_st = Path(handle["dir"]).stat()
    assert (log_st.st_uid, log_st.st_gid, stat.S_IMODE(log_st.st_mode)) == (u, g, 0o600)
    assert (dir_st.st_uid, stat.S_IMODE(dir_st.st_mode)) == (0, 0o700)
    assert calls and all(k.get("preexec_fn") is None for k in calls)
    assert calls[0]["start_new_session"] is True


# -- M12: a bounded log, removed with the job ------------------------------------------------------
def test_the_log_is_trimmed_past_its_cap_and_cleanup_removes_the_job_dir(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    backend.max_log_bytes = 8192
    backend.command = [
        sys.executable,
        "-c",
        "import sys, time\n"
        "for i in range(2000): print('line %05d' % i, flush=True)\n"
        "print('last line', flush=True); time.sleep(60)",
    ]

    async def main() -> None:
        handle = await backend.start(job(attempt=1), "s")
        log_file = Path(handle["dir"]) / jb.LOG_NAME
        try:
            await asyncio.to_thread(wait_for, lambda: "last line" in backend.output_tail(handle))
            assert log_file.stat().st_size > 8192
            assert backend.alive(handle)  # the watch trims
            text = log_file.read_text()
            assert log_file.stat().st_size <= 8192
            assert text.startswith("[twinhub: runner log trimmed,")
            assert text.endswith("line 01999\nlast line\n") and "line 00000" not in text
            # Root's, closed to others: the user cannot swap what the service reads.
            st = Path(handle["dir"]).stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
        finally:
            await backend.stop(handle, grace=1.0)
        await backend.cleanup(handle)
        assert not Path(handle["dir"]).exists()
        assert rt.path("processing", "jobs").is_dir()  # only the job's own dir went
        await backend.cleanup(handle)  # idempotent
        # A handle naming anything else removes nothing.
        elsewhere = rt.path("keep", "0123abcd")
        elsewhere.mkdir(parents=True)
        await backend.cleanup({**handle, "dir": str(elsewhere)})
        assert elsewhere.is_dir()

    run(main())


# What the runner runs: space allocated past the end of its stdout (the log), size unchanged.
FALLOCATE = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
KEEP_SIZE = 1  # FALLOC_FL_KEEP_SIZE
rc = libc.fallocate(1, KEEP_SIZE, 0, 4 * 1024 * 1024)
print("fallocate", rc, ctypes.get_errno(), flush=True)
time.sleep(60)
"""


def test_space_allocated_past_the_end_of_the_log_is_trimmed_too(rt) -> None:
    """R2: fallocate(FALLOC_FL_KEEP_SIZE) on its stdout gives the log blocks but no size;
    the watch trims on the blocks it holds as well (a real runner, a real ext4/tmpfs file)."""
    credentials.create_row(rt, "olga", "home-")
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    backend.max_log_bytes = 64 * 1024
    backend.command = [sys.executable, "-c", FALLOCATE]

    async def main() -> None:
        handle = await backend.start(job(attempt=1), "s")
        log_file = Path(handle["dir"]) / jb.LOG_NAME
        try:
            await asyncio.to_thread(wait_for, lambda: "fallocate" in backend.output_tail(handle))
            rc, errno = backend.output_tail(handle).split()[1:3]
            if rc != "0":
                pytest.skip(f"fallocate is not supported here (errno {errno})")
            st = log_file.stat()
            assert st.st_size < 100 and st.st_blocks * 512 >= 4 * 1024 * 1024
            assert backend.alive(handle)  # the watch trims
            st = log_file.stat()
            assert st.st_blocks * 512 <= backend.max_log_bytes
            assert backend.output_tail(handle) == f"fallocate 0 {errno}\n"  # the text stays
        finally:
            await backend.stop(handle, grace=1.0)

    run(main())


def test_a_fifo_in_place_of_the_log_never_blocks_the_service(rt) -> None:
    d = rt.path("processing", "jobs", "0123abcd")
    d.mkdir(parents=True)
    os.mkfifo(d / jb.LOG_NAME)
    backend = bl.LocalJobBackend(make_ctx(rt, FakeHub()))
    handle = {"kind": "local", "pid": 0, "dir": str(d), "uid": os.getuid()}
    answers: list = []
    # In a thread: a read that blocks on the FIFO fails the test instead of hanging it.
    t = threading.Thread(
        target=lambda: answers.extend([backend.output_tail(handle), backend.alive(handle)]),
        daemon=True,
    )
    t.start()
    t.join(5)
    assert answers == ["", False]
    # Let a blocked reader go (ENXIO when none is left: the fixed backend's case).
    with contextlib.suppress(OSError):
        os.close(os.open(d / jb.LOG_NAME, os.O_WRONLY | os.O_NONBLOCK))


# -- the caller's token (the job manager mints it first) ------------------------------------------
def test_a_token_passed_in_is_used_and_revoked_when_the_start_fails(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    hub = FakeHub()
    ctx = make_ctx(rt, hub)
    backend = bl.LocalJobBackend(ctx)

    async def main() -> None:
        token = await hubtokens.mint(ctx, "olga", 60, "twinhub processing job 0123abcd")
        backend.command = [
            sys.executable,
            "-c",
            "import os; print(os.environ['JUPYTERHUB_API_TOKEN'])",
        ]
        handle = await backend.start(job(), "s", token)
        assert handle["token_id"] == token[1]
        await asyncio.to_thread(wait_for, lambda: not backend.alive(handle))
        assert backend.output_tail(handle) == f"{token[0]}\n"
        second = await hubtokens.mint(ctx, "olga", 60, "twinhub processing job 0123abcd")
        backend.command = ["/nonexistent/runner"]
        with pytest.raises(jb.BackendError, match="the runner did not start.*nonexistent"):
            await backend.start(job(), "s", second)
        assert second[1] not in hub.tokens and token[1] in hub.tokens

    run(main())
    assert [r[0] for r in hub.requests] == ["POST", "POST", "DELETE"]  # no mint of its own


# -- Kubernetes: the pod ---------------------------------------------------------------------
def test_pod_manifest_runs_as_the_user_image_without_secrets_in_sight(rt) -> None:
    ctx = make_ctx(rt, FakeHub())
    kb = bk.KubeJobBackend(ctx)
    kb.image, kb.run_as_uid = "registry.example/twinhub-user:1", 1000
    env = {"TWINHUB_JOB_SECRET": "job-secret", "JUPYTERHUB_API_TOKEN": "user-token", "X": "1"}
    j = job("ABCdef12", owner="dana@example.org", wall_time=900.0)
    pod = kb.pod_manifest(j, env)
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == "twinhub-job-abcdef12-1"
    labels = pod["metadata"]["labels"]
    assert labels["twinhub.io/job"] == "ABCdef12" and labels["twinhub.io/project"] == "climate"
    assert labels["twinhub.io/user"] != "dana@example.org"  # a label-safe slug
    assert pod["metadata"]["annotations"]["twinhub.io/user"] == "dana@example.org"
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 900
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["runAsNonRoot"] is True
    (c,) = spec["containers"]
    assert c["image"] == "registry.example/twinhub-user:1"
    assert c["command"] == ["python", "-m", "twinlab.processing.runner"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["envFrom"] == [{"secretRef": {"name": "twinhub-job-abcdef12-1"}}]
    assert "job-secret" not in json.dumps(pod) and "user-token" not in json.dumps(pod)
    secret = kb.secret_manifest(j, env)
    assert secret["metadata"]["name"] == "twinhub-job-abcdef12-1"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == env


def test_kube_backend_without_an_image_says_so(rt) -> None:
    kb = bk.KubeJobBackend(make_ctx(rt, FakeHub()))
    with pytest.raises(jb.BackendError, match="KubeJobBackend.image is not set"):
        run(kb.start(job(), "s"))


# -- choosing the backend ------------------------------------------------------------------------
def test_backend_for_the_deployment_and_the_configured_class(rt) -> None:
    ctx = make_ctx(rt, FakeHub())
    assert type(jb.backend_for(ctx)) is bl.LocalJobBackend
    rt.deployment = "kubernetes"
    assert type(jb.backend_for(ctx)) is bk.KubeJobBackend
    ctx.settings.backend_class = "twinhub.services.processing.backend.LocalJobBackend"
    assert type(jb.backend_for(ctx)) is bl.LocalJobBackend
    ctx.settings.backend_class = "twinhub.services.processing.hubtokens.HubTokenError"
    with pytest.raises(ValueError, match="is not a JobBackend"):
        jb.backend_for(ctx)
    ctx.settings.backend_class = "no.such.Backend"
    with pytest.raises(ValueError, match="no.such.Backend"):
        jb.backend_for(ctx)


def test_local_backend_is_configurable_from_the_platform_config(rt) -> None:
    rt.config.LocalJobBackend.command = ["/bin/true"]
    assert bl.LocalJobBackend(make_ctx(rt, FakeHub())).command == ["/bin/true"]


# -- hub tokens ------------------------------------------------------------------------------
def test_revoke_is_idempotent_and_empty_ids_are_no_op(rt) -> None:
    hub = FakeHub()
    ctx = make_ctx(rt, hub)

    async def main() -> None:
        token, tid = await hubtokens.mint(ctx, "olga", 60, "twinhub processing job 0123abcd")
        assert token == "user-token-a1" and tid == "a1"
        assert await hubtokens.revoke(ctx, "olga", tid) is True
        assert await hubtokens.revoke(ctx, "olga", tid) is False
        assert await hubtokens.revoke(ctx, "olga", "") is False
        assert await hubtokens.stop_job_cluster(ctx, "olga", "", job="0123abcd") is True

    run(main())
    assert [r[0] for r in hub.requests] == ["POST", "DELETE", "DELETE"]


def test_stop_tokens_name_the_job_and_ask_for_the_gateway_only(rt) -> None:
    """R6: stopping a job's clusters asks the hub for a stop token of that job (the hub
    checks it ran lately); it is revoked after."""
    hub = FakeHub()
    ctx = make_ctx(rt, hub)
    assert hubtokens.PURPOSE_SCOPES["stop"] == (hubtokens.GATEWAY_SCOPE,)
    with pytest.raises(TypeError, match="job"):
        run(hubtokens.stop_job_cluster(ctx, "olga", "c1"))  # never without its job
    # (The fake hub's transport answers the gateway's paths too: 403 to a user's token.)
    assert run(hubtokens.stop_job_cluster(ctx, "olga", "c1", wait=0, job="0123abcd")) is False
    with pytest.raises(hubtokens.HubTokenError, match="refused listing"):
        run(hubtokens.stop_job_clusters(ctx, "olga", "0123abcd", wait=0))
    tokens = [(m, body) for m, path, _, body in hub.requests if "/processing/tokens/" in path]
    stop = {"job": "0123abcd", "purpose": "stop", "expires_in": hubtokens.STOP_TOKEN_SECONDS}
    assert tokens == [("POST", stop), ("DELETE", {}), ("POST", stop), ("DELETE", {})]
    assert hub.tokens == {}


# -- output prefixes -------------------------------------------------------------------------
def test_output_prefix_is_a_job_folder_of_the_users_bucket(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    assert outputs.output_prefix(rt, "olga", "0123abcd") == "s3://home-olga/processing/0123abcd/"
    # Not recorded yet: the bucket it will get (a name buckets cannot hold is made valid).
    prefix = outputs.output_prefix(rt, "Dana_X", "j1")
    assert prefix.startswith("s3://home-dana-x-") and prefix.endswith("/processing/j1/")
    with pytest.raises(ValueError, match="not a job id"):
        outputs.output_prefix(rt, "olga", "../x")
    assert outputs.split_prefix(rt, "olga", "s3://home-olga/processing/0123abcd/") == (
        "home-olga",
        "processing/0123abcd/",
    )


@pytest.mark.parametrize(
    "prefix",
    [
        "s3://home-piet/processing/0123abcd/",  # another user's bucket
        "s3://home-olga/",  # the whole bucket
        "s3://home-olga/processing/",  # every job
        "s3://home-olga/notebooks/0123abcd/",
        "s3://home-olga/processing/../x/",
        "s3://home-olga/processing/a/b/",
        "home-olga/processing/0123abcd/",
        "",
    ],
)
def test_only_a_job_folder_of_the_users_own_bucket_is_ever_removed(rt, prefix) -> None:
    credentials.create_row(rt, "olga", "home-")
    with pytest.raises(ValueError):
        outputs.remove_sync(rt, "olga", prefix)
    with pytest.raises(ValueError):
        outputs.size_sync(rt, "olga", prefix)


def test_removing_no_prefix_removes_nothing(rt) -> None:
    assert run(outputs.remove(rt, "olga", "")) == 0


class FakeCoreV1:
    """A fake of kubernetes_asyncio's CoreV1Api (no API server here): keeps the Secrets and
    Pods created, lists pods with a phase the test sets, records deletions."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.phases: dict[str, str] = {}
        self.deleted: list[tuple[str, str]] = []

    async def create_namespaced_secret(self, ns, body):
        self.secrets[body["metadata"]["name"]] = body

    async def create_namespaced_pod(self, ns, body):
        self.pods[body["metadata"]["name"]] = body
        self.phases[body["metadata"]["name"]] = "Pending"

    async def list_namespaced_pod(self, ns, label_selector=""):
        assert label_selector == "twinhub.io/component=processing-job"
        items = [
            SimpleNamespace(metadata=SimpleNamespace(name=n), status=SimpleNamespace(phase=ph))
            for n, ph in self.phases.items()
        ]
        return SimpleNamespace(items=items)

    async def read_namespaced_pod_log(self, name, ns, tail_lines=100):
        return "Traceback: the runner failed\n"

    async def delete_namespaced_pod(self, name, ns, grace_period_seconds=0):
        self.deleted.append(("pod", name))
        self.phases.pop(name, None)

    async def delete_namespaced_secret(self, name, ns, grace_period_seconds=0):
        self.deleted.append(("secret", name))


def test_kube_backend_creates_watches_and_deletes_the_pod(rt) -> None:
    credentials.create_row(rt, "olga", "home-")
    hub = FakeHub()
    kb = bk.KubeJobBackend(make_ctx(rt, hub))
    kb.image, kb.namespace = "user-image:1", "twinhub"
    kb._api = api = FakeCoreV1()

    async def main() -> None:
        handle = await kb.start(job(), "s3cret")
        assert handle == {
            "kind": "kube", "pod": "twinhub-job-0123abcd-1", "namespace": "twinhub",
            "token_id": "a1",
        }  # fmt: skip
        env = {
            k: base64.b64decode(v).decode()
            for k, v in api.secrets["twinhub-job-0123abcd-1"]["data"].items()
        }
        assert (
            env["TWINHUB_JOB_SECRET"] == "s3cret" and env["JUPYTERHUB_API_TOKEN"] == "user-token-a1"
        )
        assert env["HOME"] == "/home/jovyan"
        assert kb.alive(handle)
        await kb.refresh()
        assert kb.alive(handle)
        api.phases["twinhub-job-0123abcd-1"] = "Failed"
        await kb.refresh()
        assert not kb.alive(handle)
        assert kb.output_tail(handle) == "Traceback: the runner failed\n"
        await kb.stop(handle)
        assert api.deleted == [
            ("pod", "twinhub-job-0123abcd-1"),
            ("secret", "twinhub-job-0123abcd-1"),
        ]
        # After a restart: unknown until read, then a pod that is not listed is gone.
        fresh = bk.KubeJobBackend(make_ctx(rt, hub))
        fresh._api = api
        assert fresh.alive(handle)
        await fresh.refresh()
        assert not fresh.alive(handle)
        for task in (
            kb.ctx.extras.get("kube-job-refresh"),
            fresh.ctx.extras.get("kube-job-refresh"),
        ):
            if task is not None:
                task.cancel()

    run(main())


# -- L17a: a failed pod start leaves no token and no Secret behind -------------------------------
class FailingCoreV1(FakeCoreV1):
    """FakeCoreV1 whose calls named in ``fail`` raise (as the API does: 403, 409, 500...)."""

    def __init__(self, *fail: str) -> None:
        super().__init__()
        self.fail = set(fail)

    async def create_namespaced_secret(self, ns, body):
        if "secret" in self.fail:
            raise RuntimeError("(403) secrets is forbidden")
        await super().create_namespaced_secret(ns, body)

    async def create_namespaced_pod(self, ns, body):
        if "pod" in self.fail:
            raise RuntimeError("(403) denied by ValidatingAdmissionPolicy")
        await super().create_namespaced_pod(ns, body)

    async def delete_namespaced_secret(self, name, ns, grace_period_seconds=0):
        self.deleted.append(("secret", name))
        if "delete" in self.fail:
            raise RuntimeError("(500) the API server is down")


@pytest.mark.parametrize(
    "fail",
    [("secret",), ("pod",), ("pod", "delete"), ("environment",), ("api",)],
    ids=["secret", "pod", "pod-and-delete", "environment", "no-api"],
)
def test_a_failed_pod_start_revokes_the_token_whatever_failed(rt, fail) -> None:
    credentials.create_row(rt, "olga", "home-")
    hub = FakeHub()
    kb = bk.KubeJobBackend(make_ctx(rt, hub))
    kb.image, kb.namespace = "user-image:1", "twinhub-jobs"
    api = FailingCoreV1(*fail)

    async def core():
        if "api" in fail:
            raise RuntimeError("no kube config")
        return api

    async def environment(job, secret, token):
        raise jb.BackendError("no storage for olga: the store is down")

    kb._core = core
    if "environment" in fail:
        kb._environment = environment
    with pytest.raises(jb.BackendError):
        run(kb.start(job(), "s"))
    assert hub.tokens == {} and [r[0] for r in hub.requests] == ["POST", "DELETE"]
    assert api.pods == {}
    if "secret" in fail or "pod" in fail:
        assert ("secret", "twinhub-job-0123abcd-1") in api.deleted

"""twinhub.process.supervisor: restart policy, restarts of real processes, crash loops, PostgreSQL
after kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from twinhub.process.components import Component
from twinhub.process.postgres import PG_BIN, LocalPostgres
from twinhub.process.runtime import Runtime
from twinhub.process.supervisor import (
    COMPONENTS_FILE,
    RestartPolicy,
    Supervisor,
    pid_alive,
    processes_of_instance,
    read_records,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


# -- the policy alone --------------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap_and_a_crash_loop_gives_up():
    p = RestartPolicy(backoff=0.5, backoff_max=3.0, limit=4, window=60)
    now = 1000.0
    assert p.next_delay([], now) == 0.5
    assert p.next_delay([now - 1], now) == 1.0
    assert p.next_delay([now - 2, now - 1], now) == 2.0
    assert p.next_delay([now - 3, now - 2, now - 1], now) == 3.0  # capped
    assert p.next_delay([now - 4, now - 3, now - 2, now - 1], now) is None  # crash loop
    # Restarts older than the window no longer count: backoff and loop count start again.
    assert p.next_delay([now - 500, now - 400, now - 300, now - 200], now) == 0.5


def test_policy_reads_the_configuration():
    from traitlets.config import Config

    cfg = Config()
    cfg.TwinhubSupervisor.component_restart = {"idle-culler": False}
    cfg.TwinhubSupervisor.crash_loop_restarts = 2
    p = RestartPolicy.from_config(cfg)
    assert p.enabled("hub") and not p.enabled("idle-culler")
    assert p.next_delay([1.0, 2.0], 3.0) is None
    cfg.TwinhubSupervisor.restart = False
    assert not RestartPolicy.from_config(cfg).enabled("hub")


# -- a supervisor of real processes -----------------------------------------------------------
@pytest.fixture
def rt(tmp_path) -> Runtime:
    r = Runtime(state_dir=tmp_path, instance_id="test-" + uuid.uuid4().hex[:8])
    for d in ("run", "logs"):
        (tmp_path / d).mkdir()
    return r


def watch_until(sup: Supervisor, cond, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.watch()
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not reached in {timeout} s: {read_records(sup.rt)}")


def test_killed_component_is_restarted_and_the_others_keep_running(rt):
    hooks: list[str] = []
    sup = Supervisor(rt, say=lambda _m: None, policy=RestartPolicy(backoff=0.05))
    a = Component("a", SLEEPER, after_restart=lambda: hooks.append("after"))
    a.before_restart = lambda: hooks.append("before")
    sup.start_all([a, Component("b", SLEEPER)])
    try:
        pid_a, pid_b = sup.running["a"].proc.pid, sup.running["b"].proc.pid
        os.kill(pid_a, signal.SIGKILL)
        watch_until(
            sup, lambda: sup.running["a"].state == "running" and hooks == ["before", "after"]
        )
        rec = read_records(rt)
        assert rec["a"]["pid"] != pid_a and pid_alive(rec["a"]["pid"])
        assert rec["a"]["restarts"] == 1
        assert rec["a"]["last_exit"]["code"] == -signal.SIGKILL
        assert rec["b"] == {**rec["b"], "pid": pid_b, "restarts": 0, "state": "running"}
        assert pid_alive(pid_b) and not sup.failed
        assert "restarting" in (rt.logs_dir / "a.log").read_text()
    finally:
        sup.stop_all()
    assert processes_of_instance(rt.instance_id) == []
    assert not rt.path(COMPONENTS_FILE).exists()


def test_crash_loop_gives_up_on_one_component_only(rt):
    lines: list[str] = []
    sup = Supervisor(rt, say=lines.append, policy=RestartPolicy(backoff=0.01, limit=3))
    # Ready at once, exits after a moment: a crash loop.
    crasher = Component("crasher", [sys.executable, "-c", "import time; time.sleep(0.2); exit(3)"])
    sup.start_all([crasher, Component("steady", SLEEPER)])
    try:
        watch_until(sup, lambda: sup.running["crasher"].state == "gave-up")
        rec = read_records(rt)
        assert rec["crasher"]["restarts"] == 3 and rec["crasher"]["last_exit"]["code"] == 3
        assert sup.failed == ["crasher"]
        assert any("crash loop, giving up" in m for m in lines)
        # Given up: not started again; the other one was never touched.
        time.sleep(0.5)
        sup.watch()
        assert read_records(rt)["crasher"]["restarts"] == 3
        assert rec["steady"]["state"] == "running" and pid_alive(rec["steady"]["pid"])
    finally:
        sup.stop_all()


def test_restart_off_leaves_the_component_down(rt):
    policy = RestartPolicy(enabled=lambda name: name != "once", backoff=0.01)
    sup = Supervisor(rt, say=lambda _m: None, policy=policy)
    sup.start_all([Component("once", SLEEPER), Component("other", SLEEPER)])
    try:
        os.kill(sup.running["once"].proc.pid, signal.SIGKILL)
        watch_until(sup, lambda: sup.running["once"].state == "failed")
        time.sleep(0.2)
        sup.watch()
        rec = read_records(rt)
        assert rec["once"]["restarts"] == 0 and sup.failed == ["once"]
        assert rec["other"]["state"] == "running"
    finally:
        sup.stop_all()


def test_leftovers_in_the_dead_component_s_process_group_are_killed(rt):
    # The component starts a child in its own process group (as postgres has backends and
    # the object store's runner has weed), then is killed.
    child_pid = rt.path("child.pid")
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    sup = Supervisor(rt, say=lambda _m: None, policy=RestartPolicy(backoff=0.05))
    sup.start_all([Component("parent", [sys.executable, "-c", code])])
    try:
        deadline = time.monotonic() + 10
        while not child_pid.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        first_child = int(child_pid.read_text())
        child_pid.unlink()
        os.kill(sup.running["parent"].proc.pid, signal.SIGKILL)
        watch_until(sup, lambda: sup.running["parent"].state == "running" and child_pid.exists())
        assert not pid_alive(first_child)
    finally:
        sup.stop_all()


# -- PostgreSQL after kill -9 ------------------------------------------------------------------
@pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="PostgreSQL 15 is not installed")
def test_postgres_comes_back_after_kill_9(rt):
    from twinhub.services.datalake.database import server_argv

    base = Path(tempfile.mkdtemp(prefix="twinhub-pgk-", dir="/tmp"))
    base.chmod(0o711)
    pg = LocalPostgres(base / "pg", settings={"fsync": "off"})
    try:
        pg.start()
        pg.stop()
        sup = Supervisor(rt, say=lambda _m: None, policy=RestartPolicy(backoff=0.05))
        comp = Component(
            "stac-db",
            server_argv(pg),
            ready=pg.accepting,
            stop_signal=signal.SIGINT,
            before_restart=pg.clear_stale_locks,
        )
        sup.start_all([comp])
        postmaster = sup.running["stac-db"].proc.pid
        os.kill(postmaster, signal.SIGKILL)
        # What a kill -9 leaves: the lock file and socket file, both naming a dead server.
        sock = pg.run_dir / f".s.PGSQL.{pg.port}"
        time.sleep(0.3)
        assert sock.is_socket() and (pg.data_dir / "postmaster.pid").exists()
        assert not pg.accepting(), "a leftover socket file must not count as ready"
        watch_until(sup, lambda: sup.running["stac-db"].state == "running", timeout=60)
        assert read_records(rt)["stac-db"]["restarts"] == 1
        assert pg.clear_stale_locks() == [], "a live server's lock files are kept"
        with psycopg.connect(
            host=str(pg.run_dir), port=pg.port, user=pg.role, dbname=pg.dbname,
            passfile=str(pg.passfile),
        ) as conn:  # fmt: skip
            assert conn.execute("SELECT 1").fetchone() == (1,)
        sup.stop_all()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_stale_lock_files_of_a_dead_server_are_removed_and_live_ones_kept(tmp_path):
    pg = LocalPostgres.__new__(LocalPostgres)
    pg.data_dir, pg.run_dir = tmp_path / "data", tmp_path / "run"
    pg.data_dir.mkdir()
    pg.run_dir.mkdir()
    dead = 2**22 + 12345  # above pid_max's default: never a live process
    (pg.data_dir / "postmaster.pid").write_text(f"{dead}\n/data\n")
    (pg.run_dir / ".s.PGSQL.5432.lock").write_text(f"{dead}\n")
    (pg.run_dir / ".s.PGSQL.5432").write_text("")
    removed = pg.clear_stale_locks()
    assert sorted(Path(p).name for p in removed) == [
        ".s.PGSQL.5432", ".s.PGSQL.5432.lock", "postmaster.pid",
    ]  # fmt: skip
    # A live process that is not postgres (this one) is stale too; none is left.
    (pg.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n")
    assert pg.clear_stale_locks() == [str(pg.data_dir / "postmaster.pid")]
    assert pg.clear_stale_locks() == []


# -- what `twinhub status` says -----------------------------------------------------------------
def test_status_shows_restarts_last_exit_and_crash_loops(tmp_path, capsys):
    import subprocess

    from twinhub.platform import status

    rt = Runtime(
        state_dir=tmp_path, ports={"public": 8000}, instance_id="test-" + uuid.uuid4().hex[:8]
    )
    rt.save()
    # A stand-in for `twinhub up` (status checks that the recorded pid is a twinhub).
    sup = subprocess.Popen(["twinhub-up", "600"], executable="/bin/sleep")
    comp = subprocess.Popen(["sleep", "600"])
    try:
        rt.path("run", "supervisor.pid").write_text(str(sup.pid))
        at = time.time()
        rt.path(COMPONENTS_FILE).write_text(
            json.dumps(
                {
                    "hub": {"pid": comp.pid, "state": "running", "restarts": 2,
                            "last_exit": {"code": -9, "at": at, "uptime": 3.0}},
                    "stac": {"pid": 2**22 + 7, "state": "gave-up", "restarts": 5,
                             "last_exit": {"code": 1, "at": at, "uptime": 0.4}},
                }
            )
        )  # fmt: skip
        assert status(tmp_path) == 1
        out = capsys.readouterr().out
        hub = next(ln for ln in out.splitlines() if ln.strip().startswith("hub "))
        assert "running" in hub and "restarts 2 (last exit: signal 9," in hub
        stac = next(ln for ln in out.splitlines() if ln.strip().startswith("stac "))
        assert "GAVE-UP" in stac and "restarts 5" in stac and "crash loop" in stac
    finally:
        for p in (sup, comp):
            p.kill()
            p.wait()

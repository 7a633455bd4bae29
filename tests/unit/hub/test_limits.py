"""Limits: parsing, and real cgroups where this machine allows them (root, cgroup v1 or v2)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest
from traitlets.config import Config

from twinhub.spawn import resource_limits
from twinhub.spawn.resource_limits import Limits, human_bytes, parse_cpu, parse_memory


@pytest.mark.parametrize(
    ("text", "n"),
    [("2G", 2 * 2**30), ("512M", 512 * 2**20), ("1.5Gi", 3 * 2**29), ("100", 100),
     ("64k", 65536), (1024, 1024), (None, None), ("", None)],
)  # fmt: skip
def test_parse_memory(text, n) -> None:
    assert parse_memory(text) == n


@pytest.mark.parametrize("bad", ["2 gigs", "-1G", "G", True, 0])
def test_parse_memory_refuses(bad) -> None:
    with pytest.raises(ValueError, match="memory limit"):
        parse_memory(bad)


def test_parse_cpu_and_describe() -> None:
    assert parse_cpu("500m") == 0.5 and parse_cpu(2) == 2.0 and parse_cpu(None) is None
    with pytest.raises(ValueError, match="cpu limit 'two'"):
        parse_cpu("two")
    assert human_bytes(2 * 2**30) == "2 GiB" and human_bytes(1000) == "1000 B"
    assert Limits.from_profile({"cpu": 1, "memory": "2G", "gpu": 1}).describe() == (
        "memory 2 GiB, 1 CPU, 1 GPU"
    )
    assert Limits.from_profile(None).describe() == "no limits"


@pytest.fixture
def support():
    group = "twinhub-t" + secrets.token_hex(4)
    s = resource_limits.detect(group)
    if not s.kind:
        pytest.skip(f"no usable cgroup here, limits are advisory: {s.reason}")
    yield s
    resource_limits.remove_stale(group)


def test_memory_limit_kills_a_process_over_it(support) -> None:
    cg = resource_limits.ServerCgroup(support, "mem", Limits(cpu=None, memory=parse_memory("64M")))
    assert cg.enforced
    cg.create()
    try:
        code = "b = bytearray({} * 2**20); print('survived')"
        join = cg.join_paths()
        small = subprocess.run([sys.executable, "-c", code.format(16)],
                               preexec_fn=lambda: resource_limits.join_cgroup(join), capture_output=True)  # fmt: skip
        assert small.returncode == 0 and small.stdout == b"survived\n"
        big = subprocess.run([sys.executable, "-c", code.format(256)],
                             preexec_fn=lambda: resource_limits.join_cgroup(join), capture_output=True)  # fmt: skip
        assert big.returncode == -9  # OOM-killed
    finally:
        cg.kill_and_remove()
    assert not any(d.exists() for d in cg.dirs)


def test_cpu_quota_throttles(support) -> None:
    cg = resource_limits.ServerCgroup(support, "cpu", Limits(cpu=0.25))
    cg.create()
    busy = "import time\nw=time.monotonic()\nwhile time.monotonic()-w<1: pass\nprint(time.process_time())"
    try:
        join = cg.join_paths()
        out = subprocess.run([sys.executable, "-c", busy], preexec_fn=lambda: resource_limits.join_cgroup(join),
                             capture_output=True, text=True, check=True)  # fmt: skip
    finally:
        cg.kill_and_remove()
    assert float(out.stdout) < 0.5, f"used {out.stdout.strip()} s of CPU in 1 s with a 0.25 quota"


def test_kill_and_remove_kills_leftovers_and_remove_stale_spares_busy_groups(support) -> None:
    busy = resource_limits.ServerCgroup(support, "busy", Limits(memory=2**30))
    empty = resource_limits.ServerCgroup(support, "empty", Limits(memory=2**30))
    busy.create()
    empty.create()
    join = busy.join_paths()
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: resource_limits.join_cgroup(join))
    try:
        time.sleep(0.1)
        assert proc.pid in busy.pids()
        group = support.parents[next(iter(support.parents))].name
        assert resource_limits.remove_stale(group) == ["empty"]
        assert all(d.exists() for d in busy.dirs)
        busy.kill_and_remove()
        assert proc.wait(timeout=5) == -9
        assert not any(d.exists() for d in busy.dirs)
    finally:
        proc.kill()
        proc.wait()


def test_cgroup_v2_files_on_a_fake_hierarchy(tmp_path) -> None:
    """A fake (plain files) cgroup v2 tree: this machine has no cgroup v2 controllers, so
    the kernel side cannot run here; this checks what twinhub writes and where."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    group = tmp_path / "twinhub-x"
    group.mkdir()
    (group / "cgroup.controllers").write_text("cpu memory\n")
    (group / "cgroup.subtree_control").write_text("")
    support = resource_limits._detect_v2(tmp_path, "twinhub-x")
    assert support == resource_limits.CgroupSupport("v2", {"unified": group})
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (group / "cgroup.subtree_control").read_text() == "+memory +cpu"
    cg = resource_limits.ServerCgroup(support, "alice", Limits(cpu=0.5, memory=100 * 2**20))
    cg.create()
    leaf = group / "alice"
    assert (leaf / "memory.max").read_text() == str(100 * 2**20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert cg.join_paths() == [str(leaf / "cgroup.procs")]
    # Without the controllers, limits are advisory and the reason says which are missing.
    (tmp_path / "cgroup.controllers").write_text("cpuset io pids\n")
    why = resource_limits._detect_v2(tmp_path, "twinhub-x")
    assert why.kind == "" and "memory, cpu not available" in why.reason


# -- per-user limits -------------------------------------------------------------------------

NOBODY = 65534


def test_user_limits_config() -> None:
    assert resource_limits.TwinhubUserLimits().max_processes == 1024
    cfg = Config({"TwinhubUserLimits": {"max_processes": 7}})
    assert resource_limits.TwinhubUserLimits(config=cfg).max_processes == 7


@pytest.mark.skipif(os.geteuid() != 0, reason="root ignores RLIMIT_NPROC; needs to switch uid")
def test_process_cap_set_before_the_uid_switch_stops_forks_with_eagain() -> None:
    """As the spawner and the Dask backend do: cap in the child, then become the user."""
    if any(d.isdigit() and _owner(d) == NOBODY for d in os.listdir("/proc")):
        pytest.skip("processes of uid 65534 already run here: the count would be off")
    cap = 5
    code = (
        "import resource, subprocess\n"
        "print(*resource.getrlimit(resource.RLIMIT_NPROC))\n"
        "kids = []\n"
        "try:\n"
        f"    for _ in range({cap} + 20):\n"
        "        kids.append(subprocess.Popen(['sleep', '5']))\n"
        "except BlockingIOError:\n"
        "    print('EAGAIN after', len(kids))\n"
        "for k in kids:\n"
        "    k.kill(); k.wait()\n"
    )

    def preexec() -> None:
        resource_limits.limit_processes(cap)
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    out = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=preexec, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"{cap} {cap}"
    # The child itself counts: fewer than ``cap`` more processes, then EAGAIN.
    assert lines[1] == f"EAGAIN after {cap - 1}", lines


def _owner(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


@pytest.mark.skipif(os.geteuid() != 0, reason="makes directories owned by another uid")
def test_private_runtime_dir_is_the_users_alone_and_refuses_planted_entries(tmp_path) -> None:
    """Kernels' IPC sockets live there: 0700, the user's, under root-owned 0711 parents."""
    from twinhub.spawn.modes import private_runtime_dir
    from twinhub.spawn.os_accounts import AccountError

    root = tmp_path / "run"
    d = private_runtime_dir(root / "inst" / "4242", 4242, 4242)
    st = d.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4242, 4242, 0o700)
    assert (root / "inst").stat().st_mode & 0o777 == 0o711
    # Again (a restart): the same directory, still private.
    d.chmod(0o755)
    assert private_runtime_dir(d, 4242, 4242) == d and d.stat().st_mode & 0o777 == 0o700
    # Something that is not a directory there is refused, not followed.
    (root / "inst" / "4343").symlink_to(tmp_path)
    with pytest.raises(AccountError, match="not a directory"):
        private_runtime_dir(root / "inst" / "4343", 4343, 4343)
    assert tmp_path.stat().st_uid == 0
    # A parent others may write to is refused.
    (root / "inst").chmod(0o777)
    with pytest.raises(AccountError, match="owned by root, not writable by others"):
        private_runtime_dir(root / "inst" / "4444", 4444, 4444)

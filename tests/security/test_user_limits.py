"""One user's kernel cannot starve the others: a (bounded) fork bomb and a memory hog.

Both run in alice's real kernel on the session multi-user platform while bob keeps working.
The fork bomb is bounded (it stops at EAGAIN or at the cap plus a margin, then kills its
children) so that it is safe on a machine shared with other tests.
"""

from __future__ import annotations

import json
import pwd
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.helpers.kernel import KernelDied, execute, run_code, shutdown_kernel, start_kernel
from twinhub.spawn import resource_limits

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

ALICE, BOB = "klim-alice", "klim-bob"
CAP = resource_limits.TwinhubUserLimits().max_processes  # the session platform keeps the default


@pytest.fixture(scope="module")
def two(multiuser_platform):
    p = multiuser_platform
    for name in (ALICE, BOB):
        p.add_user(name)
    return p, {name: p.spawn(name) for name in (ALICE, BOB)}


_FORK_BOMB = """
import os, resource, subprocess, time
soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
kids, why = [], None
try:
    for _ in range({cap} + 64):
        kids.append(subprocess.Popen(["sleep", "30"]))
except OSError as e:
    why = type(e).__name__
open({at_limit!r}, "w").close()  # the test checks bob and the hub now
end = time.monotonic() + 30
while time.monotonic() < end and not os.path.exists({release!r}):
    time.sleep(0.1)
for k in kids:
    k.kill()
for k in kids:
    k.wait()
print("NPROC", soft, hard, "STARTED", len(kids), "STOPPED BY", why)
"""


def test_fork_bomb_stops_at_the_users_cap_and_others_keep_working(two) -> None:
    p, urls = two
    home = Path(pwd.getpwnam(f"twin-{ALICE}").pw_dir)
    at_limit, release = home / ".forkbomb-at-limit", home / ".forkbomb-release"
    for f in (at_limit, release):
        f.unlink(missing_ok=True)
    result: dict = {}

    def bomb() -> None:
        code = _FORK_BOMB.format(cap=CAP, at_limit=str(at_limit), release=str(release))
        result["out"] = run_code(urls[ALICE], p.token(ALICE), code, timeout=120)

    t = threading.Thread(target=bomb, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 90
        while not at_limit.exists() and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert at_limit.exists(), result
        # Alice holds every process her account may have: bob and the hub are unaffected.
        assert run_code(urls[BOB], p.token(BOB), "print(sum(range(10)))") == "45\n"
        r = p.api("GET", f"/users/{BOB}", user=BOB)
        assert r.status_code == 200 and r.json()["servers"][""]["ready"]
    finally:
        release.touch()
        t.join(90)
    out = result["out"]
    assert f"NPROC {CAP} {CAP}" in out, out
    # Stopped by the kernel's EAGAIN, short of the cap (alice's server and kernel threads
    # count too), not by the loop's own bound.
    started = int(out.split("STARTED ")[1].split()[0])
    assert "STOPPED BY BlockingIOError" in out and started < CAP, out
    # Alice's server survives its user hitting the cap.
    assert run_code(urls[ALICE], p.token(ALICE), "print('still here')") == "still here\n"


def test_memory_hog_is_stopped_and_others_keep_working(two) -> None:
    p, urls = two
    tok = p.token(ALICE)
    kid = start_kernel(urls[ALICE], tok)
    try:
        env = json.loads(
            execute(
                urls[ALICE],
                tok,
                kid,
                "import os, json\n"
                "print(json.dumps({k: os.environ.get(k) for k in "
                "('MEM_LIMIT', 'TWINHUB_LIMITS_ENFORCED')}))",
            )
        )
        mem_limit = int(env["MEM_LIMIT"])
        assert mem_limit == 2 * 2**30  # the default profile's 2 GiB
        if env["TWINHUB_LIMITS_ENFORCED"] != "1":
            # Advisory only here (no usable cgroup): the limit is passed on, not enforced.
            pytest.skip("memory limits are advisory on this machine (TWINHUB_LIMITS_ENFORCED=0)")
        hog = f"b = bytearray({mem_limit + 2**30})\nprint('SURVIVED', len(b))"
        with pytest.raises(KernelDied):
            execute(urls[ALICE], tok, kid, hog, timeout=120)
    finally:
        shutdown_kernel(urls[ALICE], tok, kid)
    # Bob is unaffected; alice's server survived the OOM kill of her kernel.
    assert run_code(urls[BOB], p.token(BOB), "print('bob ok')") == "bob ok\n"
    assert run_code(urls[ALICE], tok, "print('alice ok')") == "alice ok\n"
    assert requests.get(p.url + "hub/api/", timeout=30).status_code == 200


_DASK_HOG = """
import os, resource
from dask_gateway import Gateway

def memory_limit():
    for line in open("/proc/self/cgroup"):
        _, ctrls, path = line.strip().split(":", 2)
        if ctrls == "" and os.path.exists(f"/sys/fs/cgroup{path}/memory.max"):
            return open(f"/sys/fs/cgroup{path}/memory.max").read().strip()
        if "memory" in ctrls.split(","):
            return open(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read().strip()

cluster = Gateway().new_cluster(worker_memory=0.5, shutdown_on_close=False)
try:
    cluster.scale(1)
    client = cluster.get_client()
    client.wait_for_workers(1, timeout=180)
    mem = list(client.run(memory_limit).values())
    nproc = list(client.run(lambda: resource.getrlimit(resource.RLIMIT_NPROC)[1]).values())
    print("WORKER MEMORY", mem, "NPROC", nproc)
    try:
        client.run(lambda: len(bytearray(3 * 2**29)))
        print("HOG SURVIVED")
    except Exception as e:
        print("HOG STOPPED", type(e).__name__)
finally:
    cluster.shutdown()
"""


def test_dask_worker_over_its_memory_is_stopped(two) -> None:
    """Workers run without a nanny: only their cgroup stops one growing past worker_memory."""
    p, urls = two
    support = resource_limits.detect("twinhub-probe")
    if not support.kind:
        pytest.skip(f"memory limits are advisory on this machine: {support.reason}")
    out = run_code(urls[ALICE], p.token(ALICE), _DASK_HOG, timeout=300)
    assert f"WORKER MEMORY ['{2**29}'] NPROC [{CAP}]" in out, out
    assert "HOG STOPPED" in out, out
    assert run_code(urls[BOB], p.token(BOB), "print('bob ok')") == "bob ok\n"

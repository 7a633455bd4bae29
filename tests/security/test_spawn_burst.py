"""A burst of first-time users spawning at once queues and succeeds (issue 17, item 9).

Thirty first-time users spawning together on a 2-core machine used to start thirty servers
at once: none listened within JupyterHub's 60 s start timeout and every spawn failed.  Here
a real multi-user platform (its own: it runs with one start at a time and a start timeout
shorter than the whole burst, which the session platform must not) gets BURST users who
never had a server (no OS account yet), all asking at the same moment, each with their own
token.  Every request is accepted (201/202, never 429), every server becomes ready and
answers through the proxy, and those who had to wait were told so: the 202 answer and the
progress stream say how many are ahead of them.  The burst lasts longer than one start may
take, so it only succeeds because time spent queued does not count against the timeout: to
make that hold on fast machines too, each server's interpreter sleeps SLOW_START seconds
before starting (a ``sitecustomize`` on the profile's PYTHONPATH; a real, slower server).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.helpers.platform import Platform, purge_shared_dir, twinhub_cli

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

BURST = 8
SLOW_START = 3  # seconds each server sleeps before starting: the burst takes > BURST * this
START_TIMEOUT = 18  # seconds one start may take once it leaves the queue
PREFIX = "tb" + secrets.token_hex(2) + "-"  # this run's OS accounts, distinct from others'

SITECUSTOMIZE = """
import os, sys, time
if sys.argv and sys.argv[0].endswith("jupyterhub-singleuser"):
    time.sleep(float(os.environ["TWINHUB_TEST_START_SLEEP"]))
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("multi-user mode creates OS accounts: needs root")
    base = tmp_path_factory.mktemp("burst")
    # Read by the servers' OS accounts: outside pytest's 0700 base directory.
    slow = Path("/tmp") / f"twinhub-slowstart-{secrets.token_hex(4)}"
    slow.mkdir(mode=0o755)
    slow.chmod(0o755)
    (slow / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (slow / "sitecustomize.py").chmod(0o644)
    profiles = [
        {
            "slug": "slow-start",
            "display_name": "Slow start",
            "default": True,
            "env": {"PYTHONPATH": str(slow), "TWINHUB_TEST_START_SLEEP": str(SLOW_START)},
        },
        {  # never listens within the start timeout
            "slug": "stuck",
            "display_name": "Stuck",
            "env": {"PYTHONPATH": str(slow), "TWINHUB_TEST_START_SLEEP": "600"},
        },
    ]
    config = base / "twinhub_config.py"
    config.write_text(f"c.Twinhub.profiles = {profiles!r}\n")
    state = base / "state"
    p = None
    try:
        p = Platform.start(
            state,
            mode="multi-user",
            extra=[
                f"--config={config}",
                f"--Twinhub.user_prefix={PREFIX}",
                "--TwinhubSpawnerConfig.concurrent_starts=1",
                f"--TwinhubSpawnerConfig.start_timeout={START_TIMEOUT}",
                f"--TwinhubSpawnerConfig.max_pending_spawns={BURST}",
            ],
        )
        yield p
    finally:
        if p is not None:
            p.stop()
        twinhub_cli("down", "--state", str(state), "--purge-users")
        purge_shared_dir(state)
        shutil.rmtree(slow, ignore_errors=True)


def _progress(url: str, token: str, timeout: float) -> list[dict]:
    """Every event of a spawn's progress stream, to its last (ready or failed)."""
    events: list[dict] = []
    with requests.get(
        url, headers={"Authorization": f"token {token}"}, stream=True, timeout=timeout
    ) as r:
        if r.status_code != 200:
            return [{"failed": True, "message": f"progress {r.status_code}: {r.text[:300]}"}]
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get("ready") or events[-1].get("failed"):
                    break
    return events


def test_a_burst_of_first_time_users_is_queued_and_every_server_becomes_ready(platform):
    p = platform
    admin = {"Authorization": f"token {p.token('admin')}"}
    names = [f"u{i:02d}" for i in range(BURST)]
    r = requests.post(p.hub_api + "/users", headers=admin, json={"usernames": names}, timeout=60)
    assert r.status_code == 201, r.text
    tokens = {}
    for n in names:
        r = requests.post(f"{p.hub_api}/users/{n}/tokens", headers=admin, json={}, timeout=60)
        tokens[n] = r.json()["token"]
    go = threading.Barrier(BURST)
    out: dict[str, dict] = {}

    def spawn(name: str) -> None:
        h = {"Authorization": f"token {tokens[name]}"}
        go.wait()
        t0 = time.monotonic()
        r = requests.post(f"{p.hub_api}/users/{name}/server", headers=h, timeout=300)
        res = out[name] = {"status": r.status_code, "body": r.text}
        if r.status_code in (201, 202):
            res["events"] = _progress(
                f"{p.hub_api}/users/{name}/server/progress", tokens[name], 300
            )
            res["ready_s"] = time.monotonic() - t0

    again: dict[str, requests.Response] = {}

    def ask_again(name: str) -> None:
        # While the burst queues: a second request says where the first one stands.
        time.sleep(3)
        h = {"Authorization": f"token {tokens[name]}"}
        again[name] = requests.post(f"{p.hub_api}/users/{name}/server", headers=h, timeout=60)

    threads = [threading.Thread(target=spawn, args=(n,)) for n in names]
    threads += [threading.Thread(target=ask_again, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(360)

    assert sorted(out) == names
    # Every request accepted: within the platform's configured size, no 429.
    assert {n: o["status"] for n, o in out.items() if o["status"] not in (201, 202)} == {}
    # Every spawn ended ready (none failed, none hangs), and answers through the proxy.
    last = {n: o["events"][-1] for n, o in out.items()}
    assert {n: e for n, e in last.items() if not e.get("ready")} == {}
    for n in names:
        h = {"Authorization": f"token {tokens[n]}"}
        r = requests.get(f"{p.url}user/{n}/api/status", headers=h, timeout=30)
        assert r.status_code == 200, (n, r.status_code, r.text[:200])

    # Those who waited were told where they stand, in the 202 answer and in their progress.
    queued_202 = [json.loads(o["body"]) for o in out.values() if o["status"] == 202 and o["body"]]
    assert any(b.get("queued_ahead") for b in queued_202), queued_202
    assert all(b["progress_url"].endswith("/progress") for b in queued_202)
    assert {n: r.status_code for n, r in again.items() if r.status_code != 202} == {}
    told = [r.json() for r in again.values() if r.json().get("queued_ahead")]
    assert told and all("already starting (queued, " in b["message"] for b in told), again
    places = {
        n: [
            int(e["message"].split()[1])
            for e in o["events"]
            if e.get("message", "").startswith("Queued:")
        ]
        for n, o in out.items()
    }
    deepest = max(places.values(), key=lambda v: v[0] if v else -1)
    assert deepest and deepest[0] >= BURST // 2, places
    assert deepest == sorted(deepest, reverse=True), deepest  # the line only moves forward
    # The burst took longer than one start may: the time queued did not count.
    assert max(o["ready_s"] for o in out.values()) > START_TIMEOUT, out

    for n in names:
        requests.delete(
            f"{p.hub_api}/users/{n}/server", headers={"Authorization": f"token {tokens[n]}"}
        )


def test_a_start_that_outlasts_the_timeout_fails_with_a_message_and_leaves_nothing(platform):
    """A spawn that was accepted never hangs: past the start timeout it fails, saying why."""
    p = platform
    name = "stuck"
    admin = {"Authorization": f"token {p.token('admin')}"}
    requests.post(f"{p.hub_api}/users/{name}", headers=admin, timeout=60)
    token = requests.post(
        f"{p.hub_api}/users/{name}/tokens", headers=admin, json={}, timeout=60
    ).json()["token"]
    h = {"Authorization": f"token {token}"}
    r = requests.post(
        f"{p.hub_api}/users/{name}/server", headers=h, json={"profile": "stuck"}, timeout=120
    )
    assert r.status_code in (201, 202), r.text
    events = _progress(f"{p.hub_api}/users/{name}/server/progress", token, 120)
    assert events[-1].get("failed"), events[-1]
    assert f"did not start within {START_TIMEOUT} s" in events[-1]["message"], events[-1]
    # Nothing left running: no server for the user, no process of its OS account.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not requests.get(f"{p.hub_api}/users/{name}", headers=h, timeout=30).json()["servers"]:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{name}'s failed server is still listed")
    uid = pwd.getpwnam(PREFIX + name).pw_uid
    left = [
        q.info
        for q in psutil.process_iter(["pid", "uids", "cmdline"])
        if q.info["uids"] and q.info["uids"].real == uid
    ]
    assert left == []

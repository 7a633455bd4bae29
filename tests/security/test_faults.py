"""Fault injection on a real multi-user platform: kill -9 each component in turn while two
users work; then kill -9 the supervisor (`twinhub up`) and start it again.

Expected (issue 17, item 2): the supervisor restarts what died within seconds and counts it
(`twinhub status`); the users' servers keep answering and their kernels keep their state;
a new `twinhub up` replaces the components a dead supervisor left, keeps the users'
servers, and leaves one platform and no orphan.

Accounting (issue 12, durability): a kernel burns CPU (measured inside) from before the
supervisor's and the meter's kill -9 until after the new `twinhub up`; the meter's records
of that server then match the truth within 10 % (plus its start-up and idle cost, measured
first), with no record stored twice, none overlapping, and no gap longer than one interval.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tests.helpers import accounting as acct
from tests.helpers.kernel import execute, start_kernel
from tests.helpers.platform import Platform, purge_shared_dir, twinhub_cli
from tests.helpers.stac import collection
from twinhub.process.runtime import Runtime
from twinhub.process.supervisor import pid_alive, processes_of_instance
from twinhub.spawn import charges
from twinhub.spawn.os_accounts import RUNTIME_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

USERS = ("faultann", "faultben")
# The order matters only for the time it takes: the hub and proxy last.
KILL_ORDER = (
    "object-store", "stac-db", "stac", "projects", "accounting", "cache", "dask-gateway", "idle-culler",
    "proxy", "hub",
)  # fmt: skip


def records(state: Path) -> dict:
    try:
        return json.loads((state / "run" / "components.json").read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The platform, and per user: server URL, token, kernel id (holding ``marker``)."""
    if os.geteuid() != 0:
        pytest.skip("multi-user mode creates OS accounts: needs root")
    state = tmp_path_factory.mktemp("faults") / "state"
    p = Platform.start(state, mode="multi-user")
    box = {"p": p}
    try:
        users = {}
        for name in USERS:
            p.add_user(name)
            url = p.spawn(name, timeout=180)
            tok = p.token(name)
            kid = start_kernel(url, tok)
            execute(url, tok, kid, f"marker = {name!r} * 2\nopen('keep.txt', 'w').write({name!r})")
            users[name] = (url, tok, kid)
        r = requests.post(
            p.url + "services/stac/collections",
            json=collection("faultann-obs"),
            headers={"Authorization": f"token {p.token(USERS[0])}"},
            timeout=60,
        )
        assert r.status_code in (200, 201), r.text
        yield box, users
    finally:
        box["p"].stop()
        twinhub_cli("down", "--state", str(state), "--purge-users")
        purge_shared_dir(state)


def all_processes() -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            out.append((int(d.name), cmd.strip()))
    return out


def ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1 and len(chain) < 64:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        chain.append(pid)
    return chain


def users_still_work(p: Platform, users: dict) -> None:
    """Both servers answer through the proxy and both kernels still hold their variable."""
    for name, (url, tok, kid) in users.items():
        r = requests.get(url + "api/status", headers={"Authorization": f"token {tok}"}, timeout=30)
        assert r.status_code == 200, (name, r.status_code, r.text[:200])
        assert execute(url, tok, kid, "marker", timeout=60).strip() == repr(name * 2)


def lake_still_works(p: Platform) -> int:
    """The STAC API answers from its database; returns the failed tries before that."""
    for tries in range(10):
        r = requests.get(
            p.url + "services/stac/collections/faultann-obs",
            headers={"Authorization": f"token {p.token(USERS[1])}"},
            timeout=30,
        )
        if r.status_code == 200:
            return tries
        time.sleep(0.5)
    raise AssertionError(f"the STAC API does not answer: {r.status_code} {r.text[:300]}")


def wait_restarted(state: Path, name: str, old_pid: int, restarts: int, timeout: float = 60):
    deadline = time.monotonic() + timeout
    rec: dict = {}
    while time.monotonic() < deadline:
        rec = records(state).get(name, {})
        if rec.get("pid") != old_pid and rec.get("state") == "running":
            assert rec["restarts"] == restarts, rec
            return rec, timeout - (deadline - time.monotonic())
        time.sleep(0.2)
    raise AssertionError(f"{name} not back within {timeout} s: {rec}")


def test_kill_9_of_each_component_is_survived(work):
    box, users = work
    p = box["p"]
    listed = list(records(p.state))
    assert set(KILL_ORDER) <= set(listed), listed
    took, failed = {}, {}
    for name in KILL_ORDER:
        old = records(p.state)[name]["pid"]
        os.kill(old, signal.SIGKILL)
        _, took[name] = wait_restarted(p.state, name, old, restarts=1)
        st = twinhub_cli("status", "--state", str(p.state))
        line = next(ln for ln in st.stdout.splitlines() if ln.strip().startswith(name + " "))
        assert "running" in line and "restarts 1" in line and "signal 9" in line, line
        users_still_work(p, users)
        failed[name] = lake_still_works(p)
    # The hub lists both servers still running, and the lake still has the collection (its
    # database and its API were both killed).
    for name in USERS:
        assert p.api("GET", f"/users/{name}", user=name).json()["servers"][""]["ready"]
    r = requests.get(
        p.url + "services/stac/collections/faultann-obs",
        headers={"Authorization": f"token {p.token(USERS[1])}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    print("seconds until back:", {k: round(v, 1) for k, v in took.items()})
    # Not one failed request: the API's pool notices connections closed by a dead database.
    assert failed == dict.fromkeys(KILL_ORDER, 0), failed
    # Nothing was given up on, and the supervisor never stopped anything.
    assert p.proc.poll() is None
    assert "giving up" not in "\n".join(p.output)


def test_kill_9_of_the_supervisor_then_up_again(work):
    box, users = work
    p = box["p"]
    rt = Runtime.load(p.state)
    before = records(p.state)
    port = rt.ports["public"]
    # Ground truth for the meter across the restart: the first user's kernel burns CPU from
    # before the kills until the new platform is up; its server's start-up and idle cost first.
    burner = USERS[0]
    url, tok, kid = users[burner]
    charge = acct.open_charge(p.state, burner)
    assert charge.cgroups.get("cpu"), charge
    base = acct.Baseline.measure(Path(charge.cgroups["cpu"]), idle=10, settle=2)
    execute(url, tok, kid, acct.BURN_UNTIL_STOPPED)
    burn_start = datetime.now(UTC)
    time.sleep(acct.interval(p.state) + 3)  # the meter ticks mid-burn before the kills
    # What a spawn cut short by a dead hub leaves: a process of the instance that no
    # server record names.
    stray = subprocess.Popen(
        ["sleep", "600"], env={**os.environ, "TWINHUB_INSTANCE": rt.instance_id},
        start_new_session=True,
    )  # fmt: skip
    p.proc.kill()
    p.proc.wait(10)
    # The meter dies too, mid-burn: with no supervisor nothing restarts it before `up`.
    os.kill(before["accounting"]["pid"], signal.SIGKILL)
    killed_at = datetime.now(UTC)
    deadline = time.monotonic() + 10
    while pid_alive(before["accounting"]["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(before["accounting"]["pid"])
    # Everything else it started still runs: it is reported, and `up` does not refuse.
    assert all(pid_alive(r["pid"]) for n, r in before.items() if n != "accounting")
    st = twinhub_cli("status", "--state", str(p.state))
    assert st.returncode == 1 and "supervisor is gone" in st.stdout, st.stdout
    q = Platform.start(p.state, mode="multi-user", port=port)
    box["p"] = q
    out = "\n".join(q.output)
    assert "replacing its components" in out, out
    assert stray.wait(10) == -signal.SIGTERM and f"{stray.pid} sleep 600" in out, out
    after = records(q.state)
    assert set(after) == set(before)
    for name, r in after.items():
        assert r["pid"] != before[name]["pid"] and not pid_alive(before[name]["pid"]), name
    # One platform: one supervisor, one process per component, nothing else but the
    # users' servers and what runs under them (kernels).
    ups = [pid for pid, cmd in all_processes() if f"twinhub up --state {q.state}" in cmd]
    assert ups == [q.proc.pid], ups
    keep = {r["pid"] for r in after.values()}
    procs = processes_of_instance(rt.instance_id)
    servers = {pid for pid, cmd in procs if "jupyterhub-singleuser" in cmd}
    assert len(servers) == len(USERS), procs
    orphans = [(pid, cmd) for pid, cmd in procs if not ({pid, *ancestors(pid)} & (keep | servers))]
    assert orphans == []
    users_still_work(q, users)  # the servers were kept, with their kernels
    _metered_across_the_restart(q, users[burner], charge, base, burn_start, killed_at)
    for name, (url, tok, kid) in users.items():
        assert execute(url, tok, kid, "open('keep.txt').read()").strip() == repr(name)
    r = requests.get(
        q.url + "services/stac/collections/faultann-obs",
        headers={"Authorization": f"token {q.token(USERS[1])}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    # `down` then stops everything, user servers included.
    down = twinhub_cli("down", "--state", str(q.state))
    assert down.returncode == 0, down.stderr
    q.proc.wait(90)
    assert processes_of_instance(rt.instance_id) == []
    # and the servers' private kernel-socket dirs go with them
    assert not (Path(RUNTIME_ROOT) / rt.instance_id).exists()


def _metered_across_the_restart(
    q: Platform,
    kernel: tuple[str, str, str],
    charge: charges.Charge,
    base: acct.Baseline,
    burn_start: datetime,
    killed_at: datetime,
) -> None:
    """Stops the burn, waits for the new meter's tick after it, compares with the truth."""
    url, tok, kid = kernel
    out = execute(url, tok, kid, "stop_burn()", timeout=60)
    done = datetime.now(UTC)
    truth = acct.value(out, "BURNED")
    # The server was kept: the same source, still open, metered by the new service.
    assert acct.open_charge(q.state, charge.user).source_id == charge.source_id
    metered, at = acct.metered_after(q.state, charge.source_id, done, timeout=120)
    rows = acct.records(q.state, charge.source_id, "cpu")
    ends = [r["end"] for r in rows]
    assert any(burn_start < e < killed_at for e in ends), "the meter ticked mid-burn"
    base.check(f"{charge.user} (supervisor and meter killed, up again)", truth, metered, at)
    assert acct.duplicates(q.state, charge.source_id, "cpu") == []
    acct.no_overlap(rows)
    gap = acct.largest_gap(rows)
    print(f"{len(rows)} cpu records, largest gap {gap:.1f} s")
    assert gap <= acct.interval(q.state), gap

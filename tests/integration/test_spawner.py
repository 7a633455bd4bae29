"""The spawners against a real hub + proxy + spawned servers + kernels, in both modes.

Each mode gets one hub for the module (tests.helpers.localhub, not `twinhub up`, so the
spawner is tested on its own).  Multi-user tests create real OS accounts (root only) and
purge them at the end.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers.kernel import KernelDied, execute, run_code, shutdown_kernel, start_kernel
from tests.helpers.localhub import LocalHub
from twinhub.process.runtime import Runtime
from twinhub.spawn import os_accounts, profiles, resource_limits

pytestmark = pytest.mark.integration

PROFILES = [
    {
        "slug": "std",
        "display_name": "Standard",
        "default": True,
        "limits": {"cpu": 1, "memory": "1G"},
        "env": {"TWIN_X": "std"},
    },
    {
        "slug": "tiny",
        "display_name": "Tiny",
        "limits": {"cpu": 0.5, "memory": "400M"},
        "env": {"TWIN_X": "tiny"},
    },
    {"slug": "gpu", "display_name": "GPU", "gpu": True, "limits": {"gpu": 1}},
    # Python cannot even start with this: the server exits at once.
    {"slug": "broken", "env": {"PYTHONHOME": "/nonexistent"}},
]
PREFIX = "tw" + secrets.token_hex(2) + "-"  # distinct OS accounts per test run


def _base(tag: str) -> Path:
    """A world-traversable base dir: servers run as other accounts in multi-user mode."""
    base = Path("/tmp") / f"twinhub-{tag}-{secrets.token_hex(4)}"
    base.mkdir(mode=0o711)
    base.chmod(0o711)
    return base


def _config() -> dict:
    return {
        "Twinhub": {"profiles": PROFILES, "user_prefix": PREFIX, "detect_gpu": True},
    }


@pytest.fixture(scope="module")
def mu_hub() -> Iterator[LocalHub]:
    if os.geteuid() != 0:
        pytest.skip("multi-user mode creates OS accounts: needs root")
    base = _base("mu")
    hub = LocalHub(base, "multi-user", _config()).start()
    yield hub
    hub.stop()
    os_accounts.purge_accounts(Runtime(state_dir=hub.state))
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def personal_hub() -> Iterator[LocalHub]:
    base = _base("pers")
    # Limits switched off here: the advisory path (the multi-user hub tests enforcement).
    config = {**_config(), "TwinhubSpawnerConfig": {"enforce_limits": "off"}}
    hub = LocalHub(base, "personal", config).start()
    yield hub
    hub.stop()
    shutil.rmtree(base, ignore_errors=True)


def _enforced() -> bool:
    return bool(resource_limits.detect("twinhub-probe").kind) if os.geteuid() == 0 else False


# -- multi-user ----------------------------------------------------------------------------


@pytest.mark.multiuser
def test_unknown_profile_is_a_clear_400(mu_hub: LocalHub) -> None:
    r = mu_hub.spawn("ann", "nope")
    assert r.status_code == 400
    msg = r.json()["message"]
    assert "unknown profile 'nope'" in msg and "std" in msg and "tiny" in msg
    r = mu_hub.spawn("ann", "gpu")
    if profiles.gpu_present():
        assert r.status_code in (201, 202)
        mu_hub.stop_server("ann")
    else:
        assert r.status_code == 400
        assert "no GPU was detected" in r.json()["message"]
    # The refused choice is not kept as ann's default: a plain start gets the default.
    assert mu_hub.api("GET", "/users/ann").json()["servers"] == {}


@pytest.mark.multiuser
def test_options_form_lists_and_starts_profiles(mu_hub: LocalHub) -> None:
    browser = mu_hub.login_session("eve")
    r = browser.get(mu_hub.url + "hub/spawn/eve", timeout=30)
    assert r.status_code == 200
    assert 'value="std" checked' in r.text and 'value="tiny"' in r.text
    assert ('value="gpu"' in r.text) == profiles.gpu_present()
    # Submitting the form starts the chosen profile.
    r = browser.post(
        mu_hub.url + "hub/spawn/eve",
        data={"profile": "tiny", "_xsrf": browser.cookies.get("_xsrf", "")},
        timeout=60,
    )
    assert r.status_code == 200
    mu_hub.wait_ready("eve")
    server = mu_hub.api("GET", "/users/eve").json()["servers"][""]
    assert server["user_options"] == {"profile": "tiny"}
    mu_hub.stop_server("eve")


@pytest.mark.multiuser
def test_two_users_kernels_env_and_isolation(mu_hub: LocalHub) -> None:
    # Both spawns in flight at once: account creation is serialised, not broken.
    t0 = time.monotonic()
    for name in ("ann", "ben"):
        assert mu_hub.spawn(name, "std").status_code in (201, 202)
    urls = {name: mu_hub.wait_ready(name) for name in ("ann", "ben")}
    print(f"two servers ready in {time.monotonic() - t0:.1f} s")

    ann, ben = pwd.getpwnam(PREFIX + "ann"), pwd.getpwnam(PREFIX + "ben")
    assert ann.pw_dir == f"/home/{PREFIX}ann" and ann.pw_shell == "/bin/bash"
    assert os.stat(ann.pw_dir).st_mode & 0o777 == 0o700
    Path(ben.pw_dir, "secret.txt").write_text("ben's")
    os.chown(Path(ben.pw_dir, "secret.txt"), ben.pw_uid, ben.pw_gid)

    # Every file of the platform state (as root sees it), plus ben's home.
    private = [str(ben.pw_dir), f"{ben.pw_dir}/secret.txt"] + [
        os.path.join(d, f) for d, _, files in os.walk(mu_hub.state) for f in files
    ]
    assert len(private) > 5
    probe = f"""
import json, os
out = {{"uid": os.getuid(), "home": os.environ["HOME"], "cwd": os.getcwd(),
       "env": {{k: os.environ.get(k) for k in ("TWINHUB_PROFILE", "TWIN_X", "MEM_LIMIT",
               "CPU_LIMIT", "TWINHUB_LIMITS_ENFORCED", "TWINHUB_SERVICES", "TWINHUB_STATE")}}}}
denied = {{}}
for path in {json.dumps(private)}:
    try:
        os.listdir(path) if os.path.isdir(path) else open(path).read()
        denied[path] = False
    except PermissionError:
        denied[path] = True
out["denied"] = denied
print(json.dumps(out))
"""
    out = json.loads(run_code(urls["ann"], mu_hub.user_token("ann"), probe))
    assert out["uid"] == ann.pw_uid
    assert out["home"] == ann.pw_dir == out["cwd"]
    env = out["env"]
    assert env["TWINHUB_PROFILE"] == "std" and env["TWIN_X"] == "std"
    assert env["MEM_LIMIT"] == str(2**30) and float(env["CPU_LIMIT"]) == 1.0
    assert env["TWINHUB_LIMITS_ENFORCED"] == ("1" if _enforced() else "0")
    assert env["TWINHUB_STATE"] is None
    # No service runs beside this hub (only the spawner part configures it): none is listed.
    assert json.loads(env["TWINHUB_SERVICES"]) == {}
    assert all(out["denied"].values()), out["denied"]

    # Through the proxy: ann's info endpoint with ann's token; ben's token is refused.
    info = requests.get(
        urls["ann"] + "twinlab/api/info",
        headers={"Authorization": f"token {mu_hub.user_token('ann')}"},
        timeout=30,
    )
    assert info.status_code == 200 and info.json()["user"] == "ann"
    other = requests.get(
        urls["ann"] + "twinlab/api/info",
        headers={"Authorization": f"token {mu_hub.user_token('ben')}"},
        timeout=30,
    )
    assert other.status_code == 403
    mu_hub.stop_server("ben")


@pytest.mark.multiuser
def test_limits_enforced_in_kernel(mu_hub: LocalHub) -> None:
    support = resource_limits.detect("twinhub-probe")
    if not support.kind:
        pytest.skip(f"limits are advisory on this machine: {support.reason}")
    mu_hub.stop_server("ann")
    url = mu_hub.start_server("ann", "tiny")
    # Said on the spawn progress (logged by the hub too).
    assert f"Limits memory 400 MiB, 0.5 CPU enforced (cgroup {support.kind})" in mu_hub.log_text()
    token = mu_hub.user_token("ann")
    kid = start_kernel(url, token)
    try:
        # The kernel sits in a cgroup whose memory limit is the profile's 400 MiB.
        limit = execute(url, token, kid, _READ_CGROUP_LIMIT)
        assert int(limit) == 400 * 2**20
        # CPU quota 0.5: a busy thread gets about half of the wall time.
        share = float(execute(url, token, kid, _BUSY_LOOP))
        assert share < 0.75, f"busy loop got {share:.2f} CPU with a 0.5 CPU quota"
        with pytest.raises(KernelDied):
            execute(url, token, kid, "b = bytearray(800 * 2**20)\nprint(len(b))", timeout=60)
    finally:
        shutdown_kernel(url, token, kid)
    mu_hub.stop_server("ann")


_READ_CGROUP_LIMIT = """
for line in open("/proc/self/cgroup"):
    _, ctrls, path = line.strip().split(":", 2)
    if ctrls == "" and __import__("os").path.exists(f"/sys/fs/cgroup{path}/memory.max"):
        print(open(f"/sys/fs/cgroup{path}/memory.max").read().strip()); break
    if "memory" in ctrls.split(","):
        print(open(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read().strip()); break
"""
_BUSY_LOOP = """
import time
w, c = time.monotonic(), time.process_time()
while time.monotonic() - w < 1.5:
    pass
print((time.process_time() - c) / (time.monotonic() - w))
"""


@pytest.mark.multiuser
def test_server_that_dies_at_start_reports_its_own_error(mu_hub: LocalHub) -> None:
    t0 = time.monotonic()
    r = mu_hub.spawn("cat", "broken")
    took = time.monotonic() - t0
    # Without the spawner's check this was an opaque 500 "Internal Server Error" after
    # slow_spawn_timeout (InvalidStateError in BaseHandler.spawn_single_user).
    assert r.status_code == 500
    msg = r.json()["message"]
    assert "exited with status 1 while starting" in msg
    assert "No module named 'encodings'" in msg
    assert took < 10
    assert "InvalidStateError" not in mu_hub.log_text()
    assert mu_hub.api("GET", "/users/cat").json()["servers"] == {}
    # The same cause is what the spawn page's progress stream shows.
    r = mu_hub.api("GET", "/users/cat/server/progress", token=mu_hub.user_token("cat"))
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert events[-1]["failed"] is True
    assert "exited with status 1 while starting" in events[-1]["message"]


@pytest.mark.multiuser
def test_reserved_and_invalid_names_refused(mu_hub: LocalHub) -> None:
    r = mu_hub.spawn("postgres")
    assert r.status_code == 400
    assert "'postgres' is reserved" in r.json()["message"]
    with pytest.raises(KeyError):
        pwd.getpwnam(PREFIX + "postgres")


@pytest.mark.multiuser
def test_purge_accounts_removes_accounts_homes_processes(mu_hub: LocalHub) -> None:
    mu_hub.stop_server("ann")  # in case an earlier test left it running
    url = mu_hub.start_server("ann")
    assert run_code(url, mu_hub.user_token("ann"), "print('alive')") == "alive\n"
    created = sorted(os_accounts.recorded_accounts(mu_hub.state))
    assert PREFIX + "ann" in created and all(n.startswith(PREFIX) for n in created)
    assert os_accounts.purge_accounts(Runtime(state_dir=mu_hub.state)) == created
    for name in created:
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
        assert not Path("/home", name).exists()
    assert os_accounts.recorded_accounts(mu_hub.state) == {}
    assert (mu_hub.state / "accounts.json").stat().st_mode & 0o777 == 0o600
    # The hub still knows ann; her next start re-creates the missing account.
    url = mu_hub.start_server("ann")
    assert run_code(url, mu_hub.user_token("ann"), "import os; print(os.getuid())") == (
        f"{pwd.getpwnam(PREFIX + 'ann').pw_uid}\n"
    )
    assert os_accounts.purge_accounts(Runtime(state_dir=mu_hub.state)) == [PREFIX + "ann"]


# -- personal ------------------------------------------------------------------------------


def test_personal_mode_runs_as_the_calling_user(personal_hub: LocalHub) -> None:
    url = personal_hub.start_server("pat", "std")
    code = (
        "import os; e = os.environ; print(os.getuid(), e['TWINHUB_PROFILE'], "
        "e.get('TWINHUB_STATE'), e['TWINHUB_LIMITS_ENFORCED'], e['MEM_LIMIT'], "
        "open('/proc/self/cgroup').read() == open('/proc/%d/cgroup' % os.getppid()).read())"
    )
    out = run_code(url, personal_hub.user_token("pat"), code)
    # Advisory limits: passed on, not enforced, and the kernel is in no server cgroup
    # (the same as its server's, which is the hub's).
    assert out == f"{os.geteuid()} std None 0 {2**30} True\n"
    log = personal_hub.log_text()
    assert "Limits memory 1 GiB, 1 CPU are advisory only: cgroup enforcement is switched off" in log
    if os.geteuid() == 0:
        assert "jupyterhub-singleuser --ServerApp.allow_root=True" in log
        # As root a second platform user would be root too: refused with the reason.
        r = personal_hub.spawn("quinn")
        assert r.status_code == 403
        msg = r.json()["message"]
        assert "personal mode as root" in msg and "'pat'" in msg and "multi-user" in msg
    else:
        personal_hub.start_server("quinn")
        personal_hub.stop_server("quinn")
    personal_hub.stop_server("pat")


@pytest.mark.multiuser
def test_personal_mode_as_a_regular_user() -> None:
    """The laptop case: hub and servers run as one unprivileged user; limits are advisory."""
    if os.geteuid() != 0:
        pytest.skip("already covered by test_personal_mode_runs_as_the_calling_user")
    base = _base("solo")
    acct = os_accounts.ensure_account("solo", base, prefix=PREFIX)  # registry in base
    hub = LocalHub(base, "personal", _config(), run_as=acct.name)
    try:
        hub.start()
        urls = [hub.start_server(name, "std") for name in ("pat", "quinn")]
        code = "import os; print(os.getuid(), os.environ['TWINHUB_LIMITS_ENFORCED'])"
        for name, url in zip(("pat", "quinn"), urls, strict=True):
            assert run_code(url, hub.user_token(name), code) == f"{acct.uid} 0\n"
        assert "advisory only: the hub does not run as root" in hub.log_text()
        assert "allow_root" not in hub.log_text()
    finally:
        hub.stop()
        os_accounts.purge_accounts(Runtime(state_dir=base))
        shutil.rmtree(base, ignore_errors=True)

"""Two people on the real multi-user platform: login, spawn, own server only, Dask, clean stop."""

from __future__ import annotations

import os
import pwd
import re
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.kernel import run_code
from tests.helpers.platform import Platform, twinhub_cli
from twinhub.auth.local_accounts import get_account
from twinhub.process.runtime import Runtime
from twinhub.process.supervisor import processes_of_instance

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

# The OS-account prefix of the session platform (tests/helpers/platform.py).
PREFIX = os.environ.get("TWINHUB_TEST_USER_PREFIX") or "twin-"


@pytest.fixture(scope="module")
def people(multiuser_platform):
    p = multiuser_platform
    passwords = {}
    for name in ("carol", "dave"):
        passwords[name] = p.add_user(name)
    return p, passwords


def browser_spawn(session, url: str, name: str, timeout: float = 90) -> None:
    """Spawn the way the web UI does: POST /hub/spawn, then follow until the server answers."""
    r = session.post(
        f"{url}hub/spawn/{name}",
        data={"profile": "small-cpu", "_xsrf": session.cookies.get("_xsrf", "")},
        timeout=60,
    )
    assert r.status_code < 400, r.text[:500]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A page (not an API) starts the hub OAuth dance that gives the server's cookie.
        r = session.get(f"{url}user/{name}/lab", timeout=30)
        if r.status_code == 200 and r.url.endswith(f"/user/{name}/lab"):
            return
        time.sleep(0.3)
    raise TimeoutError(f"{name}'s server did not answer through the proxy")


def test_two_users_login_spawn_and_see_only_their_own_server(people):
    p, passwords = people
    carol = p.login_session("carol", passwords["carol"])
    dave = p.login_session("dave", passwords["dave"])
    browser_spawn(carol, p.url, "carol")
    browser_spawn(dave, p.url, "dave")
    # Each reaches their own server through the proxy (hub OAuth, cookies only)...
    assert carol.get(f"{p.url}user/carol/api/contents", timeout=30).status_code == 200
    assert dave.get(f"{p.url}user/dave/api/contents", timeout=30).status_code == 200
    # ...and is refused at the other's, whether by page or API.
    for who, other in ((carol, "dave"), (dave, "carol")):
        r = who.get(f"{p.url}user/{other}/api/contents", timeout=30, allow_redirects=True)
        assert r.status_code in (403, 404), (other, r.status_code)
        r = who.get(f"{p.url}user/{other}/lab", timeout=30, allow_redirects=True)
        assert r.status_code in (403, 404) or "/hub/login" in r.url
    # Servers run as each user's own OS account.
    info = carol.get(f"{p.url}user/carol/twinlab/api/info", timeout=30).json()
    assert info["user"] == "carol"
    procs = {
        pr.info["username"]
        for pr in psutil.process_iter(["username", "cmdline"])
        if pr.info["cmdline"] and "jupyterhub-singleuser" in " ".join(pr.info["cmdline"])
    }
    assert {f"{PREFIX}carol", f"{PREFIX}dave"} <= procs


def test_a_kernel_cannot_read_another_home_or_the_platform_state(people):
    p, _ = people
    p.spawn("dave")
    url = p.spawn("carol")
    secret = next((p.state / "secrets").iterdir())
    probes = {
        "other home": f"/home/{PREFIX}dave",
        "state dir": str(p.state),
        "secret": str(secret),
        "hub db": str(p.state / "hub" / "jupyterhub.sqlite"),
        "config": str(p.state / "twinhub_config.py"),
    }
    code = "import os\n" + "".join(
        f"try:\n    os.listdir({path!r}) if os.path.isdir({path!r}) else open({path!r}).read()\n"
        f"    print({label!r}, 'READABLE')\n"
        f"except OSError as e:\n    print({label!r}, type(e).__name__)\n"
        for label, path in probes.items()
    )
    out = run_code(url, p.token("carol"), code)
    assert "READABLE" not in out, out
    assert out.count("PermissionError") + out.count("FileNotFoundError") == len(probes), out
    # ...while the owner reads their own home.
    assert run_code(url, p.token("carol"), "import os; print(os.getcwd())").strip() == (
        f"/home/{PREFIX}carol"
    )


def test_wrong_password_creates_nobody(people):
    p, _ = people
    import requests

    s = requests.Session()
    s.get(p.url + "hub/login", timeout=30)
    r = s.post(
        p.url + "hub/login",
        data={"username": "mallory", "password": "guess-guess-guess", "_xsrf": s.cookies["_xsrf"]},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code != 302
    assert p.api("GET", "/users/mallory", user="admin").status_code == 404


def test_reserved_names_are_refused(people):
    p, _ = people
    for name in ("root", "postgres"):
        r = p.cli("user", "add", name, check=False)
        assert r.returncode == 2
        assert "reserved" in r.stderr
    with pytest.raises(KeyError):
        pwd.getpwnam(f"{PREFIX}root")


def test_adding_an_existing_user_fails_and_changes_nothing(people):
    """`twinhub user add` of a name that exists (as a local account, or only on the hub:
    made from the admin page) exits non-zero and leaves the account as it was."""
    p, _ = people
    password = p.add_user("ulla")
    r = p.cli("user", "add", "ulla", "--admin", check=False)
    assert r.returncode == 2 and "already exists" in r.stderr, r.stderr
    assert p.login_session("ulla", password)  # the password is still the one given first
    assert p.api("GET", "/users/ulla", user="admin").json()["admin"] is False
    # Only on the hub (the admin page's "Add Users"): no local account is made either.
    assert p.api("POST", "/users/vera", user="admin").status_code == 201
    r = p.cli("user", "add", "vera", check=False)
    assert r.returncode == 2 and "already exists" in r.stderr, r.stderr
    assert "password:" not in r.stdout
    assert get_account(Runtime.load(p.state).db_url, "vera") is None


def test_second_spawn_while_pending_is_explained(people):
    p, _ = people
    first: dict = {}

    def start() -> None:
        first["r"] = p.api("POST", "/users/dave/server", user="dave", json={"profile": "small-cpu"})

    p.stop_server("dave")
    t = threading.Thread(target=start)
    t.start()
    time.sleep(0.4)
    other = p.api("POST", "/users/dave/server", user="dave", json={"profile": "large-cpu"})
    same = p.api("POST", "/users/dave/server", user="dave", json={"profile": "small-cpu"})
    t.join()
    assert first["r"].status_code in (201, 202)
    assert other.status_code == 409, (other.headers, other.text)
    assert "already starting with profile 'small-cpu'" in other.json()["message"]
    assert "'large-cpu' was not applied" in other.json()["message"]
    assert same.status_code == 202
    assert same.json()["progress_url"].endswith("/users/dave/server/progress")
    p.spawn("dave")
    server = p.api("GET", "/users/dave", user="dave").json()["servers"][""]
    assert server["user_options"] == {"profile": "small-cpu"}


def test_kernel_dask_cluster_lives_and_dies_with_the_server(people):
    p, _ = people
    token = p.token("carol")
    url = p.spawn("carol")
    out = run_code(
        url,
        token,
        "from dask_gateway import Gateway\n"
        "import dask.array as da, os, pwd\n"
        "gw = Gateway()\n"
        "cluster = gw.new_cluster(shutdown_on_close=False)\n"
        "cluster.scale(2)\n"
        "client = cluster.get_client()\n"
        "client.wait_for_workers(2, timeout=180)\n"
        "x = da.arange(1_000_000, chunks=100_000)\n"
        "users = client.run(lambda: pwd.getpwuid(os.getuid()).pw_name)\n"
        "print('MEAN', float(x.mean().compute()))\n"
        "print('WORKERS', len(client.scheduler_info()['workers']))\n"
        "print('USERS', sorted(set(users.values())))\n"
        "print('CLUSTER', cluster.name)\n",
        timeout=240,
    )
    assert "MEAN 499999.5" in out
    assert "WORKERS 2" in out
    assert f"USERS ['{PREFIX}carol']" in out
    name = re.search(r"CLUSTER (\S+)", out).group(1)
    gw_api = f"{p.url}services/dask-gateway/api/v1/clusters/"
    headers = {"Authorization": f"jupyterhub {token}"}
    import requests

    assert name in requests.get(gw_api, headers=headers, timeout=30).json()
    p.stop_server("carol")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        clusters = requests.get(gw_api, headers=headers, timeout=30).json()
        if name not in clusters or clusters[name]["status"] in ("STOPPED", "FAILED"):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"cluster {name} still running after carol's server stopped")
    # No scheduler or worker of carol's remains.
    time.sleep(1)
    leftovers = [
        pr.info["cmdline"]
        for pr in psutil.process_iter(["username", "cmdline"])
        if pr.info["username"] == f"{PREFIX}carol" and pr.info["cmdline"]
    ]
    assert leftovers == []


def test_down_stops_servers_and_clusters_leaving_nothing(tmp_path):
    state = tmp_path / "state"
    p = Platform.start(state, mode="multi-user")
    try:
        p.add_user("erin")
        url = p.spawn("erin")
        run_code(
            url,
            p.token("erin"),
            "from dask_gateway import Gateway\n"
            "c = Gateway().new_cluster(shutdown_on_close=False); c.scale(1)\n"
            "c.get_client().wait_for_workers(1, timeout=180)\n",
            timeout=240,
        )
        rt = Runtime.load(state)
        assert any("dask" in cmd for _, cmd in processes_of_instance(rt.instance_id))
        down = twinhub_cli("down", "--state", str(state), "--purge-users")
        assert down.returncode == 0, down.stderr
        p.proc.wait(60)
        assert processes_of_instance(rt.instance_id) == []
        assert not [
            pr for pr in psutil.process_iter(["username"]) if pr.info["username"] == f"{PREFIX}erin"
        ]
        with pytest.raises(KeyError):
            pwd.getpwnam(f"{PREFIX}erin")
        assert not Path(f"/home/{PREFIX}erin").exists()
    finally:
        p.stop()
        twinhub_cli("down", "--state", str(state), "--purge-users")

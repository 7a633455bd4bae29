"""Projects and allocations on a real multi-user platform (`twinhub up` with a config file).

One platform for the module, configured with two projects: ``/projects/climate-adaptation``
(a Keycloak path: it becomes the hub group ``projects:climate-adaptation``; CPU profiles, one
server) and ``gpu-lab`` (GPU allowed, two servers).  No GPU here, so GPU detection is off
(``Twinhub.detect_gpu = False``) and the ``gpu`` profile is a plain server whose ``gpu: true``
is what the allocation checks.  Users act through their own tokens, the admin changes
allocations through the real ``projects`` service, servers are really spawned.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from tests.helpers.platform import Platform, free_port, purge_shared_dir, twinhub_cli
from twinhub import db
from twinhub.db.models import ProjectAllocation

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

CLIMATE = "projects:climate-adaptation"
CONFIG = """
c.Twinhub.detect_gpu = False
c.Twinhub.user_prefix = {prefix!r}
c.Twinhub.profiles = [
    {{"slug": "small", "default": True, "limits": {{"cpu": 1, "memory": "1G"}}}},
    {{"slug": "big", "limits": {{"cpu": 1, "memory": "2G"}}}},
    {{"slug": "gpu", "gpu": True, "description": "needs a GPU allocation"}},
]
c.TwinhubProjects.projects = {{
    "/projects/climate-adaptation": {{"max_servers_per_user": 1, "cpu_hours": 100}},
    "gpu-lab": {{"gpu": True, "max_servers_per_user": 2, "gpu_hours": 10}},
}}
c.TwinhubDataLake.enabled = False
# Revocation of running servers happens at the poll: keep the test short.
c.Spawner.poll_interval = 2
c.TwinhubProjects.storage_sync_interval = 1
"""


@pytest.fixture(scope="module")
def pp(tmp_path_factory) -> Iterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("multi-user mode creates OS accounts: needs root")
    base = tmp_path_factory.mktemp("projects")
    cfg = base / "projects_config.py"
    cfg.write_text(CONFIG.format(prefix="pj" + secrets.token_hex(2) + "-"))
    state = base / "state"
    p = Platform.start(state, mode="multi-user", extra=["--config", str(cfg)])
    p.passwords = {  # type: ignore[attr-defined]
        "pjclim": p.add_user("pjclim", groups=(CLIMATE,)),
        "pjgpu": p.add_user("pjgpu", groups=("gpu-lab",)),
        "pjnone": p.add_user("pjnone"),
    }
    yield p
    p.stop()
    twinhub_cli("down", "--state", str(state), "--purge-users")
    purge_shared_dir(state)


def svc(p: Platform, method: str, path: str, user: str, **kw):
    """A call to the projects service through the proxy, with ``user``'s token."""
    headers = {"Authorization": f"token {p.token(user)}"}
    return requests.request(
        method, p.url + "services/projects/api/" + path, headers=headers, timeout=30, **kw
    )


def spawn(p: Platform, user: str, server: str = "", profile: str | None = None):
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    return p.api("POST", path, user=user, json={"profile": profile} if profile else None)


def wait_servers(p: Platform, user: str, cond, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        servers = p.api("GET", f"/users/{user}", user="admin").json()["servers"]
        if cond(servers):
            return servers
        time.sleep(0.3)
    raise TimeoutError(f"servers of {user} never got there: {servers}")


def stop_all(p: Platform, user: str) -> None:
    servers = p.api("GET", f"/users/{user}", user="admin").json()["servers"]
    for name in servers:
        path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
        p.api("DELETE", path, user="admin")
    wait_servers(p, user, lambda s: not s)


def form(p: Platform, user: str) -> str:
    browser = p.login_session(user, p.passwords[user])  # type: ignore[attr-defined]
    r = browser.get(p.url + f"hub/spawn/{user}", timeout=30)
    assert r.status_code == 200
    return r.text


def stored_rows(p: Platform) -> list[str]:
    with db.session(f"sqlite:///{p.state / 'twinhub.sqlite'}") as s:
        return [r.project for r in s.scalars(select(ProjectAllocation))]


# -- profiles and the GPU rule ----------------------------------------------------------------
def test_gpu_profile_hidden_outside_gpu_project_and_forged_spawn_refused(pp: Platform) -> None:
    page = form(pp, "pjclim")
    assert 'value="small"' in page and 'value="big"' in page
    assert 'value="gpu"' not in page
    assert 'value="gpu"' in form(pp, "pjgpu")

    r = spawn(pp, "pjclim", profile="gpu")
    assert r.status_code == 403
    msg = r.json()["message"]
    assert f"profile 'gpu' is not in the allocation of your projects ({CLIMATE})" in msg
    assert "ask an admin of a GPU project (projects with it: gpu-lab) to add you" in msg
    user = pp.api("GET", "/users/pjclim", user="admin").json()
    assert user["servers"] == {}

    eff = svc(pp, "GET", "users/pjclim/allocation", "pjclim").json()
    assert eff["profiles"] == ["small", "big"] and eff["gpu"] is False
    assert eff["projects"] == [CLIMATE] and eff["cpu_hours"] == 100


def test_user_in_no_project_gets_the_default_allocation(pp: Platform) -> None:
    eff = svc(pp, "GET", "users/pjnone/allocation", "pjnone").json()
    assert eff["source"] == "default" and eff["projects"] == []
    assert eff["profiles"] == ["small", "big"] and eff["max_servers_per_user"] == 1
    r = spawn(pp, "pjnone", profile="gpu")
    assert r.status_code == 403
    assert "not in the default allocation (you are in no project)" in r.json()["message"]


# -- server limit, admin changes at the next spawn ----------------------------------------------
def test_server_limit_and_admin_change_applies_at_next_spawn(pp: Platform) -> None:
    try:
        assert spawn(pp, "pjclim").status_code in (201, 202)
        wait_servers(pp, "pjclim", lambda s: s.get("", {}).get("ready"))
        r = spawn(pp, "pjclim", "second")
        assert r.status_code == 403
        msg = r.json()["message"]
        assert "you already run 1 server(s) (the default server)" in msg
        assert "max_servers_per_user" in msg and "is 1" in msg

        r = svc(pp, "PATCH", f"projects/{CLIMATE}", "admin", json={"max_servers_per_user": 2})
        assert r.status_code == 200, r.text
        assert r.json()["source"] == "admin" and r.json()["updated_by"] == "admin"
        assert r.json()["allocation"]["cpu_hours"] == 100  # untouched keys kept
        assert spawn(pp, "pjclim", "second").status_code in (201, 202)
        wait_servers(pp, "pjclim", lambda s: s.get("second", {}).get("ready"))
        r = spawn(pp, "pjclim", "third")
        assert r.status_code == 403 and "you already run 2 server(s)" in r.json()["message"]
    finally:
        stop_all(pp, "pjclim")
        reset = svc(pp, "DELETE", f"projects/{CLIMATE}", "admin")
    assert reset.status_code == 200
    assert reset.json()["source"] == "config"
    assert reset.json()["allocation"]["max_servers_per_user"] == 1
    assert CLIMATE not in stored_rows(pp)


def test_admin_grants_gpu_and_form_shows_it_at_once(pp: Platform) -> None:
    try:
        r = svc(pp, "PATCH", f"projects/{CLIMATE}", "admin", json={"gpu": True})
        assert r.status_code == 200, r.text
        assert 'value="gpu"' in form(pp, "pjclim")
    finally:
        svc(pp, "DELETE", f"projects/{CLIMATE}", "admin")
    assert 'value="gpu"' not in form(pp, "pjclim")


# -- the API: who may do what, bad input --------------------------------------------------------
def test_non_admin_gets_403_and_nothing_is_stored(pp: Platform) -> None:
    for method in ("PUT", "PATCH"):
        r = svc(pp, method, f"projects/{CLIMATE}", "pjclim", json={"gpu": True})
        assert r.status_code == 403
        assert "only admins may change allocations" in r.json()["description"]
    assert svc(pp, "DELETE", "projects/gpu-lab", "pjgpu").status_code == 403
    assert stored_rows(pp) == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("{not json", "request body is not valid JSON"),
        ("[1, 2]", "request body must be a JSON object, not list"),
        ('{"gpu": "yes"}', "gpu must be true or false, not 'yes'"),
        ('{"profiles": ["huge"]}', "unknown profile 'huge'; configured profiles: small, big, gpu"),
        ('{"profiles": ["gpu"]}', "profile(s) ['gpu'] need a GPU allocation: set gpu to true"),
        ('{"max_servers_per_user": 0}', "max_servers_per_user must be an integer >= 1"),
        ('{"cpu_hours": -5}', "cpu_hours must be a number >= 0, or null; got -5"),
        ('{"colour": "red"}', "unknown key(s) ['colour']"),
    ],
)
def test_bad_allocation_is_a_400_and_nothing_is_stored(pp: Platform, body: str, needle: str):
    before = svc(pp, "GET", f"projects/{CLIMATE}", "admin").json()
    for method in ("PUT", "PATCH"):
        r = svc(pp, method, f"projects/{CLIMATE}", "admin", data=body)
        assert r.status_code == 400, r.text
        assert needle in r.json()["description"]
    assert svc(pp, "GET", f"projects/{CLIMATE}", "admin").json() == before
    assert stored_rows(pp) == []


def test_users_see_only_their_own_projects(pp: Platform) -> None:
    mine = svc(pp, "GET", "projects", "pjclim").json()["projects"]
    assert [x["name"] for x in mine] == [CLIMATE]
    assert svc(pp, "GET", "projects", "pjnone").json()["projects"] == []
    r = svc(pp, "GET", "projects/gpu-lab", "pjclim")
    assert r.status_code == 404 and "no project 'gpu-lab' among yours" in r.json()["description"]
    # The Keycloak path names the same project as its hub group.
    r = svc(pp, "GET", "projects//projects/climate-adaptation", "pjclim")
    assert r.status_code == 200 and r.json()["name"] == CLIMATE
    everything = svc(pp, "GET", "projects", "admin").json()["projects"]
    assert [x["name"] for x in everything] == ["gpu-lab", CLIMATE]
    assert svc(pp, "GET", "users/pjgpu/allocation", "pjclim").status_code == 403
    assert svc(pp, "GET", "users/pjgpu/allocation", "admin").json()["gpu"] is True
    # No token: the hub auth layer answers before the API.
    r = requests.get(pp.url + "services/projects/api/projects", timeout=30)
    assert r.status_code == 401


def test_admin_creates_a_project_at_run_time_and_deletes_it(pp: Platform) -> None:
    r = svc(pp, "PUT", "projects/pj-extra", "admin", json={"profiles": ["big"]})
    assert r.status_code == 200, r.text
    assert r.json()["allocation"]["max_servers_per_user"] == 1  # defaults filled in
    assert r.json()["configured"] is None
    assert "pj-extra" in stored_rows(pp)
    r = svc(pp, "DELETE", "projects/pj-extra", "admin")
    assert r.json() == {"name": "pj-extra", "deleted": True}
    assert svc(pp, "DELETE", "projects/pj-extra", "admin").status_code == 404
    assert svc(pp, "PATCH", "projects/pj-extra", "admin", json={}).status_code == 404


# -- revocation -------------------------------------------------------------------------------
def test_losing_the_group_stops_a_server_it_no_longer_allows(pp: Platform) -> None:
    try:
        assert spawn(pp, "pjgpu", profile="gpu").status_code in (201, 202)
        wait_servers(pp, "pjgpu", lambda s: s.get("", {}).get("ready"))
        r = pp.api("DELETE", "/groups/gpu-lab/users", user="admin", json={"users": ["pjgpu"]})
        assert r.status_code == 200
        wait_servers(pp, "pjgpu", lambda s: not s, timeout=30)
        log = (pp.state / "logs" / "hub.log").read_text()
        assert (
            "Stopping pjgpu: profile 'gpu' is no longer in the default allocation "
            "(its user is in no project)" in log
        )
        r = spawn(pp, "pjgpu", profile="gpu")
        assert r.status_code == 403
    finally:
        pp.api("POST", "/groups/gpu-lab/users", user="admin", json={"users": ["pjgpu"]})
        stop_all(pp, "pjgpu")


# -- project buckets -------------------------------------------------------------------------
def _s3_access(pp: Platform, user: str, bucket: str) -> str:
    """'ok' when ``user``'s own S3 key can write and list ``bucket``, else the S3 error code."""
    from botocore.exceptions import ClientError

    from twinhub import objectstore
    from twinhub.process.runtime import Runtime

    rt = Runtime.load(pp.state)
    creds = objectstore.get_user(rt, user)
    c = objectstore.client(rt, creds.access_key, creds.secret_key)
    try:
        c.put_object(Bucket=bucket, Key=f"from-{user}.txt", Body=user.encode())
        c.list_objects_v2(Bucket=bucket)
        return "ok"
    except ClientError as e:
        return e.response.get("Error", {}).get("Code", "error")


def _eventually(fn, want: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    got = fn()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.3)
        got = fn()
    return got


def test_project_buckets_follow_membership(pp: Platform) -> None:
    from twinhub.objectstore.memberships import project_bucket_name

    climate, gpu = project_bucket_name(CLIMATE), project_bucket_name("gpu-lab")
    assert (climate, gpu) == ("project-climate-adaptation", "project-gpu-lab")
    try:
        for user in ("pjclim", "pjgpu"):  # the first spawn creates the user's keys
            assert spawn(pp, user).status_code in (201, 202)
            wait_servers(pp, user, lambda s: s.get("", {}).get("ready"))
        assert _s3_access(pp, "pjclim", climate) == "ok"
        assert _s3_access(pp, "pjgpu", gpu) == "ok"
        assert _s3_access(pp, "pjgpu", climate) == "AccessDenied"
        assert _s3_access(pp, "pjclim", gpu) == "AccessDenied"
        # Leaving the project takes the bucket away while the server runs (periodic sync)
        r = pp.api("DELETE", f"/groups/{CLIMATE}/users", user="admin", json={"users": ["pjclim"]})
        assert r.status_code == 200
        assert _eventually(lambda: _s3_access(pp, "pjclim", climate), "AccessDenied") == (
            "AccessDenied"
        )
        # ... and joining one gives it
        r = pp.api("POST", "/groups/gpu-lab/users", user="admin", json={"users": ["pjclim"]})
        assert r.status_code == 200
        assert _eventually(lambda: _s3_access(pp, "pjclim", gpu), "ok") == "ok"
    finally:
        pp.api("POST", f"/groups/{CLIMATE}/users", user="admin", json={"users": ["pjclim"]})
        pp.api("DELETE", "/groups/gpu-lab/users", user="admin", json={"users": ["pjclim"]})
        stop_all(pp, "pjclim")
        stop_all(pp, "pjgpu")


# -- configuration ----------------------------------------------------------------------------
def test_bad_project_configuration_stops_twinhub_up(tmp_path: Path) -> None:
    cfg = tmp_path / "bad_config.py"
    cfg.write_text(
        'c.TwinhubProjects.projects = {"/projects/x": {"profiles": ["nope"]}}\n'
        "c.TwinhubDataLake.enabled = False\n"
    )
    state = tmp_path / "state"
    r = twinhub_cli(
        "up", "--state", str(state), "--mode", "multi-user", "--port", str(free_port()),
        "--config", str(cfg), timeout=120,
    )  # fmt: skip
    assert r.returncode == 1
    assert "TwinhubProjects.projects['/projects/x']: unknown profile 'nope'" in r.stdout
    purge_shared_dir(state)

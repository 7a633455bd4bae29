"""Charging to a project and budgets held while running, on a real multi-user platform.

Its own platform (the session's has no projects, a 300 s grace and JupyterHub's 30 s poll):
projects ``alpha`` (100 CPU-hours) and ``beta`` (0.01 CPU-hours, 36 core-seconds), a 3 s
grace, servers polled every 2 s. ``dtwo`` is in both projects, ``done`` in alpha only,
``dthree`` in alpha and ``delta`` (0.01 CPU-hours, for the hub-restart case), ``dfour``
in ``epsilon`` (0.01 CPU-hours, for the gateway's own checks).
Servers and Dask clusters are really spawned; the budget is used up by usage written
through the accounting store (:class:`UsageStore`, the meter's own path to the database;
the meter itself is tested in the accounting accuracy tests), then the budget checks run
(:func:`enforce.evaluate`, what the accounting service does after each meter tick).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from tests.helpers.kernel import run_code
from tests.helpers.platform import Platform, purge_shared_dir, twinhub_cli
from twinhub import db
from twinhub.db.models import EnforcementEvent
from twinhub.gateway import gateway_url
from twinhub.process.runtime import Runtime
from twinhub.services.accounting import enforce
from twinhub.services.accounting.config import TwinhubAccounting
from twinhub.services.accounting.energy import EnergyModel
from twinhub.services.accounting.readings import Reading, Source
from twinhub.services.accounting.store import UsageStore
from twinhub.services.projects.catalog import ProjectCatalog
from twinlab.contract import ENV_PROJECT

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]

CONFIG = """
c.Twinhub.detect_gpu = False
c.Twinhub.profiles = [{"slug": "small", "default": True}]
c.TwinhubProjects.projects = {
    "alpha": {"max_servers_per_user": 2, "cpu_hours": 100},
    "beta": {"max_servers_per_user": 2, "cpu_hours": 0.01},
    "delta": {"cpu_hours": 0.01},
    "epsilon": {"cpu_hours": 0.01},
}
c.TwinhubDataLake.enabled = False
c.TwinhubAccounting.enabled = True
c.TwinhubAccounting.grace = 3
# The service's own checks run rarely: this test runs them when it needs them.
c.TwinhubAccounting.interval = 30
c.Spawner.poll_interval = 2
c.TwinhubGateway.max_clusters_per_user = 3
"""


@pytest.fixture(scope="module")
def pe(tmp_path_factory) -> Iterator[Platform]:
    if os.geteuid() != 0:
        pytest.skip("multi-user mode creates OS accounts: needs root")
    base = tmp_path_factory.mktemp("acctenf")
    cfg = base / "enforce_config.py"
    cfg.write_text(CONFIG)
    state = base / "state"
    p = Platform.start(state, mode="multi-user", extra=["--config", str(cfg)])
    p.passwords = {  # type: ignore[attr-defined]
        "dtwo": p.add_user("dtwo", groups=("alpha", "beta")),
        "done": p.add_user("done", groups=("alpha",)),
        "dthree": p.add_user("dthree", groups=("alpha", "delta")),
        "dfour": p.add_user("dfour", groups=("epsilon",)),
    }
    yield p
    p.stop()
    twinhub_cli("down", "--state", str(state), "--purge-users")
    purge_shared_dir(state)


# -- helpers --------------------------------------------------------------------------------
def rt(p: Platform) -> Runtime:
    return Runtime.load(p.state)


def spawn(p: Platform, user: str, server: str = "", **options):
    path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
    return p.api("POST", path, user=user, json=options)


def servers(p: Platform, user: str) -> dict:
    return p.api("GET", f"/users/{user}", user="admin").json()["servers"]


def wait_for(what: str, cond, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.3)
    raise TimeoutError(f"never: {what}")


def ready(p: Platform, user: str, server: str = "") -> dict:
    return wait_for(
        f"{user}/{server} ready",
        lambda: servers(p, user).get(server, {}).get("ready") and servers(p, user)[server],
    )


def stop_all(p: Platform, user: str) -> None:
    for name in servers(p, user):
        path = f"/users/{user}/servers/{name}" if name else f"/users/{user}/server"
        p.api("DELETE", path, user="admin")
    wait_for(f"{user} has no server", lambda: not servers(p, user))


def server_env(p: Platform, user: str, server: str = "") -> dict[str, str]:
    """The environment the hub gave the server process (read as root from /proc)."""
    pid = servers(p, user)[server]["state"]["pid"]
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode().split("=", 1) for kv in raw if b"=" in kv)


def gateway(p: Platform, user: str, method: str, path: str = "", **kw) -> requests.Response:
    headers = {"Authorization": f"jupyterhub {p.token(user)}"}
    return requests.request(
        method, f"{gateway_url(rt(p))}/api/v1/clusters/{path}", headers=headers, timeout=90, **kw
    )


def new_cluster(p: Platform, user: str, **options) -> str:
    r = gateway(p, user, "POST", json={"cluster_options": options})
    assert r.status_code == 201, r.text
    return r.json()["name"]


def cluster(p: Platform, user: str, name: str) -> dict:
    return gateway(p, user, "GET", name).json()


def use_cpu_hours(p: Platform, user: str, project: str, hours: float) -> None:
    """``hours`` of CPU charged to ``project`` through the accounting store."""
    model = EnergyModel(
        cpu_watts=3.5, memory_watts_per_gib=0.4, gpu_watts=None, pue=1.0, carbon_intensity=300
    )
    store = UsageStore(rt(p).db_url, model, interval=30)
    src = Source(f"server:{user}/#test{uuid.uuid4().hex[:8]}", user, project, "server")
    t = datetime.now(UTC) - timedelta(minutes=1)
    store.apply([Reading(src, "cpu", "counter", 0.0, "cgroup", t)])
    store.apply([Reading(src, "cpu", "counter", hours * 3600, "cgroup", t + timedelta(seconds=30))])


def evaluate(p: Platform) -> list[dict]:
    r = rt(p)
    for _ in range(20):  # the service may be writing the same rows at that moment
        try:
            return enforce.evaluate(
                r.db_url, ProjectCatalog.from_runtime(r), TwinhubAccounting(config=r.config)
            )
        except OperationalError:
            time.sleep(0.5)
    raise TimeoutError("budget_states stayed locked")


def events(p: Platform, **where) -> list[EnforcementEvent]:
    with db.session(rt(p).db_url) as s:
        q = select(EnforcementEvent).order_by(EnforcementEvent.id)
        for k, v in where.items():
            q = q.where(getattr(EnforcementEvent, k) == v)
        return list(s.scalars(q))


# -- the tests ------------------------------------------------------------------------------
def test_project_choice_at_spawn_form_rest_and_refusal(pe: Platform) -> None:
    browser = pe.login_session("dtwo", pe.passwords["dtwo"])  # type: ignore[attr-defined]
    page = browser.get(pe.url + "hub/spawn/dtwo", timeout=30).text
    assert '<select name="project"' in page
    assert '<option value="alpha" selected>alpha</option>' in page and 'value="beta"' in page
    browser = pe.login_session("done", pe.passwords["done"])  # type: ignore[attr-defined]
    page = browser.get(pe.url + "hub/spawn/done", timeout=30).text
    assert "<select" not in page and "Charged to project <strong>alpha</strong>" in page

    r = spawn(pe, "done", project="beta")
    assert r.status_code == 400
    assert r.json()["message"] == "project 'beta' is not one of your projects; allowed: alpha"
    assert servers(pe, "done") == {}

    try:
        assert spawn(pe, "dtwo", project="beta").status_code in (201, 202)
        ready(pe, "dtwo")
        assert server_env(pe, "dtwo")[ENV_PROJECT] == "beta"
        assert spawn(pe, "done").status_code in (201, 202)  # the default: the first allowed
        ready(pe, "done")
        assert server_env(pe, "done")[ENV_PROJECT] == "alpha"
    finally:
        stop_all(pe, "done")


def test_clusters_are_charged_like_the_server_that_makes_them(pe: Platform) -> None:
    if "" not in servers(pe, "dtwo"):
        assert spawn(pe, "dtwo", project="beta").status_code in (201, 202)
    server = ready(pe, "dtwo")
    # The gateway offers dtwo's projects, the first by default; others are refused by name.
    r = gateway(pe, "dtwo", "POST", json={"cluster_options": {"project": "gamma"}})
    assert r.status_code >= 400
    assert "project 'gamma' is not one of your projects; allowed: alpha, beta" in r.text
    # In the server (charged to beta), twinlab's client makes beta the default.
    url = pe.url.rstrip("/") + server["url"]
    code = (
        "from dask_gateway import Gateway\n"
        "g = Gateway()\n"
        "name = g.submit()\n"
        "print(g.cluster_options()['project'], g.get_cluster(name).options['project'])\n"
        "g.stop_cluster(name)\n"
    )
    out = run_code(url, pe.token("dtwo"), code, timeout=120)
    assert out.split() == ["beta", "beta"], out


def test_budget_refuses_spawns_stops_servers_and_clusters_then_a_raise_lets_it_spawn(
    pe: Platform,
) -> None:
    if "" not in servers(pe, "dtwo"):
        assert spawn(pe, "dtwo", project="beta").status_code in (201, 202)
    ready(pe, "dtwo")  # charged to beta
    assert spawn(pe, "dtwo", "a", project="alpha").status_code in (201, 202)
    ready(pe, "dtwo", "a")
    beta_cluster = new_cluster(pe, "dtwo", project="beta")
    alpha_cluster = new_cluster(pe, "dtwo", project="alpha")
    assert cluster(pe, "dtwo", beta_cluster)["options"]["project"] == "beta"
    try:
        use_cpu_hours(pe, "dtwo", "beta", 0.02)
        over = [e for e in evaluate(pe) if e["project"] == "beta"]
        assert [(e["budget"], e["action"]) for e in over] == [("cpu_hours", "exhausted")]

        # Past the 3 s grace, at the next 2 s poll: beta's server stops, alpha's runs on.
        wait_for("beta's server stopped", lambda: "" not in servers(pe, "dtwo"), timeout=60)
        assert servers(pe, "dtwo")["a"]["ready"]
        wait_for(
            "beta's cluster stopped",
            lambda: cluster(pe, "dtwo", beta_cluster)["status"] in ("STOPPED", "FAILED"),
            timeout=60,
        )
        assert cluster(pe, "dtwo", alpha_cluster)["status"] in ("PENDING", "RUNNING")

        figures = r"project beta used 0\.0[0-9]+ of 0\.01 CPU-hours"
        stopped = events(pe, user="dtwo", action="stopped")
        assert {(e.server, e.cluster) for e in stopped} == {("", None), (None, beta_cluster)}
        reason = next(e.message for e in stopped if e.server == "")
        assert re.fullmatch(
            figures + r" and stayed over for more than the grace of 3 s; ask an admin to raise it",
            reason,
        ), reason
        hub_log = (pe.state / "logs" / "hub.log").read_text()
        assert f"Stopping dtwo: {reason}" in hub_log

        # A new spawn, or cluster, charged to beta: refused with the figures.
        r = spawn(pe, "dtwo", project="beta")
        assert r.status_code == 403
        assert re.fullmatch(figures + "; ask an admin to raise it", r.json()["message"])
        r = gateway(pe, "dtwo", "POST", json={"cluster_options": {"project": "beta"}})
        assert r.status_code >= 400 and re.search(figures, r.text), r.text

        # An admin raises beta's budget through the projects API: at the next check it spawns.
        r = requests.patch(
            pe.url + "services/projects/api/projects/beta",
            headers={"Authorization": f"token {pe.token('admin')}"},
            json={"cpu_hours": 100},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert [e["action"] for e in evaluate(pe) if e["project"] == "beta"] == ["cleared"]
        assert spawn(pe, "dtwo", project="beta").status_code in (201, 202)
        ready(pe, "dtwo")
    finally:
        stop_all(pe, "dtwo")
        requests.delete(
            pe.url + "services/projects/api/projects/beta",
            headers={"Authorization": f"token {pe.token('admin')}"},
            timeout=30,
        )


def test_leaving_the_charged_project_stops_the_server(pe: Platform) -> None:
    r = pe.api("POST", "/groups/beta/users", user="admin", json={"users": ["done"]})
    assert r.status_code == 200, r.text
    try:
        assert spawn(pe, "done", project="beta").status_code in (201, 202)
        ready(pe, "done")
        r = pe.api("DELETE", "/groups/beta/users", user="admin", json={"users": ["done"]})
        assert r.status_code == 200, r.text
        wait_for("done's server stopped", lambda: not servers(pe, "done"), timeout=30)
        hub_log = (pe.state / "logs" / "hub.log").read_text()
        assert (
            "Stopping done: its user is no longer a member of project 'beta', which it is "
            "charged to" in hub_log
        )
    finally:
        pe.api("DELETE", "/groups/beta/users", user="admin", json={"users": ["done"]})
        stop_all(pe, "done")


def test_a_restarted_hub_still_knows_what_a_server_is_charged_to(pe: Platform) -> None:
    assert spawn(pe, "dthree", project="delta").status_code in (201, 202)  # not the default
    ready(pe, "dthree")
    components = pe.state / "run" / "components.json"
    old = json.loads(components.read_text())["hub"]["pid"]
    try:
        os.kill(old, signal.SIGKILL)  # the supervisor restarts it; the server runs on

        def hub_back() -> bool:
            rec = json.loads(components.read_text())["hub"]
            if rec["pid"] == old or rec["state"] != "running":
                return False
            try:
                return pe.api("GET", "/users/dthree", user="admin").status_code == 200
            except requests.RequestException:
                return False

        wait_for("the hub restarted", hub_back, timeout=120)
        assert servers(pe, "dthree")[""]["ready"]
        use_cpu_hours(pe, "dthree", "delta", 0.02)
        assert [e["action"] for e in evaluate(pe) if e["project"] == "delta"] == ["exhausted"]
        wait_for("delta's server stopped", lambda: not servers(pe, "dthree"), timeout=60)
        (stop,) = events(pe, user="dthree", action="stopped")
        assert stop.project == "delta" and stop.message.startswith("project delta used 0.0")
    finally:
        stop_all(pe, "dthree")


def test_the_gateway_stops_a_cluster_over_budget_when_its_user_runs_no_server(
    pe: Platform,
) -> None:
    # The OS account exists once dfour has had a server; then no server runs any more, so
    # the hub's running checks (which also stop clusters) never run for dfour.
    assert spawn(pe, "dfour").status_code in (201, 202)
    ready(pe, "dfour")
    stop_all(pe, "dfour")
    name = new_cluster(pe, "dfour")  # made through the REST API: no kernel holds it
    try:
        assert cluster(pe, "dfour", name)["options"]["project"] == "epsilon"
        use_cpu_hours(pe, "dfour", "epsilon", 0.02)
        assert [e["action"] for e in evaluate(pe) if e["project"] == "epsilon"] == ["exhausted"]
        # The gateway checks every TwinhubAccounting.interval (30 s here), past the 3 s grace.
        wait_for(
            "epsilon's cluster stopped by the gateway",
            lambda: cluster(pe, "dfour", name)["status"] in ("STOPPED", "FAILED"),
            timeout=90,
        )
        (stop,) = events(pe, user="dfour", action="stopped")
        assert (stop.project, stop.budget, stop.cluster, stop.server) == (
            "epsilon",
            "cpu_hours",
            name,
            None,
        )
        assert re.fullmatch(
            f"Dask cluster {name} charged to project epsilon: project epsilon used "
            r"0\.0[0-9]+ of 0\.01 CPU-hours and stayed over for more than the grace of 3 s; "
            "ask an admin to raise it",
            stop.message,
        ), stop.message
        # Nothing new charged to epsilon meanwhile.
        r = gateway(pe, "dfour", "POST", json={"cluster_options": {"project": "epsilon"}})
        assert r.status_code >= 400 and "project epsilon used" in r.text, r.text
    finally:
        gateway(pe, "dfour", "DELETE", name)

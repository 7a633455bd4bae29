"""Dask clusters and the kernels that make them, on the session's real multi-user platform.

- a refused cluster (per-user limit) no longer hangs the user's other clusters;
- a kernel's clusters stop when the kernel ends (shut down, or killed), unless made with
  ``shutdown_on_close=False``;
- ``twinlab.clusters`` lists and stops all of a user's clusters;
- the Dask sidebar's REST API (dask-labextension) makes gateway clusters owned by the user,
  which no other user can see or stop;
- the sidebar's dashboard proxy and check (twinlab.serverext.dashboards) reach the cluster's
  dashboard on the platform's gateway with the server's token, HTTP and websocket, and
  nothing else: no other user, no anonymous page, no other host.

Everything runs for real: ``twinhub up``, the hub, users' servers and kernels, the gateway, the
schedulers and workers as the users' OS accounts.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
import uuid
from urllib.parse import quote, urlsplit

import pytest
import requests
import websocket

from tests.helpers.kernel import execute, run_code, shutdown_kernel, start_kernel

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.multiuser]

# Bounds of the tests, not measurements (bench/ measures): a cluster must be gone within the
# gateway's grace time (10 s) plus its stop; get_client must answer within the 10 s.
GONE_WITHIN = 60.0
GET_CLIENT_WITHIN = 10


@pytest.fixture(scope="module")
def users(multiuser_platform):
    p = multiuser_platform
    names = [f"gk{uuid.uuid4().hex[:6]}", f"gk{uuid.uuid4().hex[:6]}"]
    for n in names:
        p.add_user(n)
    yield p, names
    for n in names:
        stop_all(p, n)
        with contextlib.suppress(Exception):  # the platform's own teardown stops what is left
            p.stop_server(n)


def gw_api(p) -> str:
    return f"{p.url}services/dask-gateway/api/v1/clusters/"


def clusters_of(p, name: str, statuses: str = "PENDING,RUNNING") -> dict:
    h = {"Authorization": f"jupyterhub {p.token(name)}"}
    r = requests.get(gw_api(p), params={"status": statuses}, headers=h, timeout=30)
    r.raise_for_status()
    return r.json()


def status_of(p, user: str, cluster: str) -> str:
    h = {"Authorization": f"jupyterhub {p.token(user)}"}
    r = requests.get(gw_api(p) + cluster, headers=h, timeout=30)
    r.raise_for_status()
    return r.json()["status"]


def stop_all(p, name: str) -> None:
    h = {"Authorization": f"jupyterhub {p.token(name)}"}
    for c in clusters_of(p, name):
        requests.delete(gw_api(p) + c, headers=h, timeout=30)
    wait_until(lambda: not clusters_of(p, name, "PENDING,RUNNING,STOPPING"), GONE_WITHIN)


def wait_until(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.5)
    return cond()


def sidebar(url: str, headers: dict) -> str:
    """The Dask sidebar's REST API of a server, once loaded (twinlab.serverext defers it
    until after the server's start)."""
    api = f"{url.rstrip('/')}/dask/clusters"
    assert wait_until(
        lambda: requests.get(api, headers=headers, timeout=30).status_code == 200, 30
    ), requests.get(api, headers=headers, timeout=30).text[:300]
    return api


def values(out: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^([A-Z_]+) (.*)$", out, re.M))


REFUSED_THEN_GET_CLIENT = """
import gc, threading, time
from dask_gateway import Gateway, GatewayCluster
g = Gateway()
cluster = g.new_cluster()
other = g.new_cluster()
cluster.scale(1)
refusals = []
for make in (g.new_cluster, g.new_cluster, GatewayCluster):
    try:
        make()
    except ValueError as e:
        refusals.append(str(e))
print("REFUSED", len(refusals), "|", refusals[0])
# The refused clusters are cyclic garbage; a collection on the clients' IO-loop thread (where
# it often happens on its own) used to deadlock that loop.  Make it happen there now.
collected = threading.Event()
g.loop.add_callback(lambda: (gc.collect(), collected.set()))
print("COLLECTED", collected.wait(10))
t = time.monotonic()
client = cluster.get_client()
print("GET_CLIENT", round(time.monotonic() - t, 2))
client.wait_for_workers(1, timeout=120)
print("SUM", client.submit(sum, [1, 2]).result(timeout=60))
print("OTHER", other.get_client().scheduler_info()["type"])
"""


def test_refused_cluster_does_not_hang_get_client(users):
    p, (alice, _) = users
    url = p.spawn(alice)
    token = p.token(alice)
    kid = start_kernel(url, token)
    try:
        # The kernel's own timeout: the test fails (TimeoutError) rather than hangs.
        out = values(execute(url, token, kid, REFUSED_THEN_GET_CLIENT, timeout=240))
    finally:
        shutdown_kernel(url, token, kid)
    assert out["REFUSED"].startswith("3 |") and "the most allowed is 2" in out["REFUSED"], out
    assert out["COLLECTED"] == "True", out
    assert float(out["GET_CLIENT"]) < GET_CLIENT_WITHIN, out
    assert out["SUM"] == "3", out
    assert out["OTHER"] == "Scheduler", out
    stop_all(p, alice)


def test_kernel_shutdown_stops_its_clusters_but_not_kept_ones(users):
    p, (alice, _) = users
    url = p.spawn(alice)
    token = p.token(alice)
    kid = start_kernel(url, token)
    code = (
        "from dask_gateway import Gateway\n"
        "g = Gateway()\n"
        "held = g.new_cluster()\n"
        "kept = g.new_cluster(shutdown_on_close=False)\n"
        "print('HELD', held.name)\n"
        "print('KEPT', kept.name)\n"
    )
    try:
        out = values(execute(url, token, kid, code, timeout=180))
    finally:
        # Jupyter's kernels API, as JupyterLab's "Shut Down Kernel" does.
        shutdown_kernel(url, token, kid)
    held, kept = out["HELD"], out["KEPT"]
    assert wait_until(lambda: status_of(p, alice, held) in ("STOPPED", "FAILED"), GONE_WITHIN)
    assert status_of(p, alice, kept) == "RUNNING"
    stop_all(p, alice)


@pytest.mark.parametrize("how", ["SIGKILL", "restart"])
def test_killed_or_restarted_kernel_clusters_stop(users, how):
    """A kernel that cannot clean up (killed, OOM, crashed; or replaced by a restart)."""
    p, (alice, _) = users
    url = p.spawn(alice)
    token = p.token(alice)
    kid = start_kernel(url, token)
    code = (
        "import os\nfrom dask_gateway import GatewayCluster\n"
        "held = GatewayCluster()\n"
        "kept = GatewayCluster(shutdown_on_close=False)\n"
        "print('HELD', held.name)\nprint('KEPT', kept.name)\nprint('PID', os.getpid())\n"
    )
    try:
        out = values(execute(url, token, kid, code, timeout=180))
        if how == "SIGKILL":
            os.kill(int(out["PID"]), signal.SIGKILL)  # no atexit, no finalizer runs
        else:
            r = requests.post(
                f"{url.rstrip('/')}/api/kernels/{kid}/restart",
                headers={"Authorization": f"token {token}"},
                timeout=60,
            )
            assert r.status_code == 200, r.text
        assert wait_until(
            lambda: status_of(p, alice, out["HELD"]) in ("STOPPED", "FAILED"), GONE_WITHIN
        ), f"cluster of the {how} kernel still running"
        assert status_of(p, alice, out["KEPT"]) == "RUNNING"
    finally:
        shutdown_kernel(url, token, kid)
        stop_all(p, alice)


SIDEBAR_CHECK = """
from twinlab import clusters
mine = clusters.list_clusters()
print("LISTED", " ".join(sorted(c.name for c in mine)))
print("WORKERS", [c.workers for c in mine])
print("LINKS", all(c.dashboard and c.dashboard.endswith("/status") for c in mine))
print("STOPPED", " ".join(sorted(clusters.stop_clusters())))
"""


def test_sidebar_clusters_are_the_users_gateway_clusters(users):
    p, (alice, bob) = users
    url_a, url_b = p.spawn(alice), p.spawn(bob)
    ha = {"Authorization": f"token {p.token(alice)}"}
    hb = {"Authorization": f"token {p.token(bob)}"}
    sidebar_a = sidebar(url_a, ha)
    sidebar_b = sidebar(url_b, hb)
    # "+ NEW" in the sidebar: PUT /dask/clusters
    r = requests.put(sidebar_a, headers=ha, timeout=180)
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["name"].startswith("GatewayCluster"), model
    name = model["scheduler_address"].rsplit("/", 1)[-1]
    assert model["scheduler_address"].startswith("gateway://"), model
    # Its dashboard link goes through the platform's proxy (the owner-only dashboard route).
    link = f"{p.url}services/dask-gateway/clusters/{name}/status"
    assert model["dashboard_link"] == link, model
    assert name in clusters_of(p, alice)
    r = requests.get(model["dashboard_link"], headers={"Authorization": ha["Authorization"]})
    assert r.status_code == 200 and "bokeh" in r.text.lower()
    # The sidebar checks the link from alice's server (its token): it finds the plots.
    check = requests.get(
        f"{url_a.rstrip('/')}/dask/dashboard-check/{quote(link, safe='')}", headers=ha, timeout=60
    ).json()
    assert check["isActive"] is True and "Individual Task Stream" in check["plots"], check
    # Without login no page of the gateway answers, the list of plots included.
    plot_path = check["plots"]["Individual Task Stream"]
    base = link.removesuffix("/status")
    for page in ("/individual-plots.json", plot_path, "/status"):
        assert requests.get(base + page, timeout=30).status_code == 401, page

    # Clicking the cluster in the sidebar: its plots through alice's server.
    proxied = f"{url_a.rstrip('/')}/dask/dashboard/{model['id']}"
    r = requests.get(f"{proxied}/individual-plots.json", headers=ha, timeout=60)
    assert r.status_code == 200 and r.json() == check["plots"], r.text[:300]
    r = requests.get(proxied + plot_path, headers=ha, timeout=60)
    assert r.status_code == 200 and "bokeh" in r.text.lower(), r.text[:300]
    # ...and Bokeh's websocket (its session token is in the page; ACK is its first message)
    bokeh_token = re.search(r'"token":\s*"([^"]+)"', r.text)
    assert bokeh_token, r.text[:500]
    ws = websocket.create_connection(
        proxied.replace("http", "ws", 1) + plot_path + "/ws",
        header=[f"Authorization: {ha['Authorization']}"],
        subprotocols=["bokeh", bokeh_token.group(1)],
        timeout=60,
    )
    try:
        assert '"msgtype":"ACK"' in ws.recv().replace(" ", "")
    finally:
        ws.close()
    # The dashboard's own redirect (/ -> /status) stays on this proxy.
    r = requests.get(proxied + "/", headers=ha, allow_redirects=False, timeout=30)
    assert r.status_code in (301, 302, 307), r.status_code
    assert urlsplit(r.headers["Location"]).path == urlsplit(proxied).path + "/status", r.headers
    # Read-only: no other method reaches the dashboard with the server's token.
    r = requests.post(f"{proxied}/individual-plots.json", headers=ha, timeout=30)
    assert r.status_code == 405, r.text[:300]
    # No way out of the cluster's dashboard: dot segments (here encoded) are refused.
    r = requests.get(f"{proxied}/%2e%2e/%2e%2e/api/v1/clusters/", headers=ha, timeout=30)
    assert r.status_code == 404, r.text[:300]
    # A link elsewhere is "not a dashboard" and is not fetched: nothing connects to it.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(1.0)
        elsewhere = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        r = requests.get(
            f"{url_a.rstrip('/')}/dask/dashboard-check/{quote(elsewhere, safe='')}",
            headers=ha,
            timeout=60,
        )
        assert r.status_code == 200 and r.json()["isActive"] is False, r.text
        with pytest.raises(TimeoutError):
            listener.accept()

    # Bob: not through alice's server, not through the gateway, not its dashboard.
    for u in (
        sidebar_a,
        f"{proxied}/individual-plots.json",
        proxied + plot_path,
        f"{url_a.rstrip('/')}/dask/dashboard-check/{quote(link, safe='')}",
    ):
        assert requests.get(u, headers=hb, timeout=30).status_code in (403, 404), u
    assert requests.delete(f"{sidebar_a}/{model['id']}", headers=hb).status_code in (403, 404)
    assert requests.get(sidebar_b, headers=hb, timeout=30).json() == []
    # A cluster id the sidebar of bob's server does not manage: 404, nothing forwarded.
    r = requests.get(
        f"{url_b.rstrip('/')}/dask/dashboard/{model['id']}/individual-plots.json", headers=hb
    )
    assert r.status_code == 404, r.text[:300]
    assert name not in clusters_of(p, bob)
    gb = {"Authorization": f"jupyterhub {p.token(bob)}"}
    assert requests.delete(gw_api(p) + name, headers=gb, timeout=30).status_code in (403, 404)
    assert requests.get(model["dashboard_link"], headers=hb, timeout=30).status_code == 404
    assert status_of(p, alice, name) == "RUNNING"

    # Scale from the sidebar (PATCH), then see and stop it from a kernel with twinlab.
    r = requests.patch(f"{sidebar_a}/{model['id']}", headers=ha, json={"workers": 1})
    assert r.status_code == 200, r.text
    assert wait_until(
        lambda: requests.get(f"{sidebar_a}/{model['id']}", headers=ha).json()["workers"] == 1,
        120,
    )
    out = values(run_code(url_a, p.token(alice), SIDEBAR_CHECK, timeout=120))
    assert out["LISTED"] == name and out["STOPPED"] == name, out
    assert out["WORKERS"] == "[1]" and out["LINKS"] == "True", out
    assert wait_until(lambda: status_of(p, alice, name) in ("STOPPED", "FAILED"), GONE_WITHIN)

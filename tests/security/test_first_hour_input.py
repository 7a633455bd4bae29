"""Bad input to what issue 18 added beside the ASGI services (the hub's help pages, set-password
links, the user server's tutorials API, the Dask sidebar's dashboard proxy): a 4xx, nothing
stored, and the hub, the proxy and the user's server keep serving (same pids)."""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

USER = "badinput"
LONG = "n" * 10_000
# (label, path under the platform's URL, method, who: None | "user" | "admin", allowed)
CORPUS = [
    ("help: traversal", "hub/help/..%2f..%2f..%2fetc%2fpasswd", "GET", None, {400, 404}),
    ("help: dot-dot", "hub/help/../../etc/passwd", "GET", None, {302, 400, 404}),
    ("help: NUL", "hub/help/a%00b", "GET", None, {400, 404}),
    ("help: long name", "hub/help/" + LONG, "GET", None, {400, 404, 414}),
    ("set-password: long token", "hub/set-password?token=" + "x" * 10_000, "GET", None,
     {400, 414}),
    ("set-password: bad bytes", "hub/set-password?token=%ff%fe%00", "GET", None, {400}),
    ("set-password: no token", "hub/set-password", "GET", None, {400}),
    ("link: NUL in name", "hub/api/twinhub/users/a%00b/set-password-link", "POST", "admin",
     {400, 404}),
    ("link: long name", f"hub/api/twinhub/users/{LONG}/set-password-link", "POST", "admin",
     {400, 404, 414}),
    ("link: not admin", f"hub/api/twinhub/users/{USER}/set-password-link", "POST", "user",
     {403}),
    ("tutorials: traversal", f"user/{USER}/twinlab/api/tutorials/..%2f..%2fetc%2fpasswd",
     "POST", "user", {400, 404}),
    ("tutorials: NUL", f"user/{USER}/twinlab/api/tutorials/a%00b.ipynb", "POST", "user",
     {400, 404}),
    ("tutorials: long name", f"user/{USER}/twinlab/api/tutorials/{LONG}.ipynb", "POST", "user",
     {400, 404, 414}),
    ("tutorials: method", f"user/{USER}/twinlab/api/tutorials", "DELETE", "user", {405}),
    ("dashboard: unknown cluster", f"user/{USER}/dask/dashboard/nope/status", "GET", "user",
     {404}),
    ("dashboard: traversal", f"user/{USER}/dask/dashboard/nope/..%2f..%2fapi%2fstatus", "GET",
     "user", {400, 404}),
    ("dashboard-check: other host", f"user/{USER}/dask/dashboard-check/"
     "http%3A%2F%2F169.254.169.254%2Flatest", "GET", "user", {200, 400, 404}),
    # the Usage page's API (twinlab.usage): what it passes on, and what the service refuses
    ("usage page: another user", f"user/{USER}/usage/api/usage?user=admin", "GET", "user",
     {400}),
    ("usage page: long query", f"user/{USER}/usage/api/usage?start=" + "1" * 5000, "GET",
     "user", {400, 414}),
    ("usage page: NUL", f"user/{USER}/usage/api/usage?project=a%00b", "GET", "user", {400}),
    ("usage page: step not a step", f"user/{USER}/usage/api/usage?step=abc", "GET", "user",
     {400}),
    ("usage page: bad bytes", f"user/{USER}/usage/api/usage?start=%ff%fe", "GET", "user",
     {400}),
    ("usage page: traversal", f"user/{USER}/usage/..%2f..%2fetc%2fpasswd", "GET", "user",
     {400, 404}),
]  # fmt: skip


def pids(p) -> dict[str, int]:
    records = json.loads((p.state / "run" / "components.json").read_text())
    return {
        name: records[name]["pid"] for name in ("hub", "proxy", "accounting") if name in records
    }


@pytest.fixture(scope="module")
def env(multiuser_platform):
    p = multiuser_platform
    if p.api("GET", f"/users/{USER}", user="admin").status_code == 404:
        p.add_user(USER)
    server = p.spawn(USER)
    # The sidebar's routes answer once dask-labextension has loaded (deferred after start).
    r = requests.get(server + "dask/clusters", headers=auth(p, "user"), timeout=60)
    assert r.status_code == 200, r.text
    before = pids(p)
    tutorials = sorted(requests.get(server + "twinlab/api/tutorials", headers=auth(p, "user"),
                                    timeout=30).json()["tutorials"], key=str)  # fmt: skip
    yield p, server
    assert pids(p) == before, "a component was replaced while taking bad input"
    after = requests.get(server + "twinlab/api/tutorials", headers=auth(p, "user"), timeout=30)
    assert sorted(after.json()["tutorials"], key=str) == tutorials  # nothing stored
    p.stop_server(USER)


def auth(p, who: str | None) -> dict[str, str]:
    if who is None:
        return {}
    return {"Authorization": f"token {p.token(USER if who == 'user' else 'admin')}"}


@pytest.mark.parametrize(("label", "path", "method", "who", "allowed"), CORPUS,
                         ids=[c[0] for c in CORPUS])  # fmt: skip
def test_bad_input_gets_a_4xx_and_everything_keeps_serving(env, label, path, method, who, allowed):
    p, server = env
    r = requests.request(
        method, p.url + path, headers=auth(p, who), timeout=60, allow_redirects=False
    )
    assert r.status_code in allowed, f"{label}: {r.status_code} {r.text[:300]}"
    if label.startswith("dashboard-check") and r.status_code == 200:
        assert r.json().get("isActive") is False, r.text  # said "not a dashboard", fetched nothing
    assert requests.get(p.url + "hub/help/", timeout=30).status_code == 200
    assert requests.get(server + "api/status", headers=auth(p, "user"), timeout=30).ok
    if label.startswith("usage page"):  # its server (jupyter-server-proxy's child) still serves
        assert requests.get(server + "usage/", headers=auth(p, "user"), timeout=30).ok

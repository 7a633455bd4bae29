"""Who may do what: a matrix of actors x endpoints against the real multi-user platform.

Each row is one endpoint; each column an actor (anonymous, the owner ``alice``, another user
``bob``, ``mira`` who shares a project with alice, an admin).  Later issues add their
endpoints (registry, accounting, data lake...) as rows here.  Expected statuses are sets because JupyterHub answers "not yours" with 403 or
404 depending on the endpoint, and browser-like requests without a token get redirected.
"""

from __future__ import annotations

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

OK = {200, 201, 204}
DENIED = {401, 403, 404}
LOGIN = {302, 401, 403}  # anonymous: redirected to the login page or refused

#: A hub group alice and mira (the "member" actor) are in: a project for accounting.
PROJECT = "authz-project"

# (method, path template, {actor: allowed statuses}); {owner} is alice's name.
MATRIX: list[tuple[str, str, dict[str, set[int]]]] = [
    ("GET", "hub/api/users", {"anon": DENIED, "owner": DENIED, "other": DENIED, "admin": OK}),
    ("GET", "hub/api/users/{owner}", {"anon": DENIED, "owner": OK, "other": DENIED, "admin": OK}),
    (
        "POST",
        "hub/api/users/{owner}/tokens",
        {"anon": DENIED, "owner": OK, "other": DENIED, "admin": OK},
    ),
    (
        "GET",
        "hub/api/users/{owner}/tokens",
        {"anon": DENIED, "owner": OK, "other": DENIED, "admin": OK},
    ),
    ("GET", "user/{owner}/api/status", {"anon": LOGIN, "owner": OK, "other": DENIED}),
    ("GET", "user/{owner}/api/contents", {"anon": LOGIN, "owner": OK, "other": DENIED}),
    ("GET", "user/{owner}/twinlab/api/info", {"anon": LOGIN, "owner": OK, "other": DENIED}),
    ("GET", "user/{owner}/twinlab/api/tutorials", {"anon": LOGIN, "owner": OK, "other": DENIED}),
    (
        "POST",
        "user/{owner}/twinlab/api/tutorials/01-getting-started.ipynb",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "GET",
        "services/dask-gateway/api/v1/clusters/",
        {"anon": DENIED, "owner": OK, "other": OK},
    ),
    ("GET", "hub/api/services", {"anon": DENIED, "owner": DENIED, "other": DENIED, "admin": OK}),
    # the data lake page's API (twinlab.serverext.lake): the server's owner only (the page
    # itself, behind jupyter-server-proxy, is checked in test_browse_api: the proxy answers
    # 500 to the GET-with-a-body these rows send)
    (
        "GET",
        "user/{owner}/twinlab/api/lake/collections",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "GET",
        "user/{owner}/twinlab/api/lake/search?limit=1",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "GET",
        "user/{owner}/twinlab/api/storage/buckets",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "GET",
        "user/{owner}/twinlab/api/storage/list?bucket=lake&limit=5",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    (
        "PUT",
        "user/{owner}/twinlab/api/storage/upload?key=authz/matrix.json",
        {"anon": LOGIN, "owner": OK, "other": DENIED},
    ),
    # hub services: every platform user may search the lake and read through the cache
    # (their access scope); anonymous callers never
    ("GET", "services/stac/collections", {"anon": DENIED, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "services/stac/search?limit=1", {"anon": DENIED, "owner": OK, "other": OK}),
    ("GET", "services/cache/stats", {"anon": DENIED, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "services/cache/metrics", {"anon": DENIED, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "services/cache/health", {"anon": OK, "owner": OK, "other": OK}),
    (
        "GET",
        "services/cache/assets/nosuch/127.0.0.1:1/x",
        {"anon": DENIED, "owner": {404}, "other": {404}, "admin": {404}},
    ),
    ("POST", "services/cache/stats", {"anon": DENIED, "owner": {405}, "other": {405}}),
    # twinhub's hub pages: the help pages are the platform's public docs; set-password links
    # are made by admins and used with their token. Pages that take only the hub's cookie
    # (/hub/home: each user sees only their own; /hub/authorize: admins) are checked with
    # logged-in sessions in test_home_page.
    ("GET", "hub/help/", {"anon": OK, "owner": OK, "other": OK, "admin": OK}),
    ("GET", "hub/help/support", {"anon": OK, "owner": OK, "other": OK, "admin": OK}),
    (
        "POST",
        "hub/api/twinhub/users/{owner}/set-password-link",
        {"anon": DENIED, "owner": DENIED, "other": DENIED, "admin": OK},
    ),
    ("GET", "hub/set-password", {"anon": {400}, "owner": {400}, "other": {400}, "admin": {400}}),
    # accounting: one's own usage; a project's totals for its members; someone else's usage
    # and a project's per-member breakdown for admins; metrics need read:metrics (admins)
    (
        "GET",
        "services/accounting/api/v1/usage",
        {"anon": DENIED, "owner": OK, "other": OK, "member": OK, "admin": OK},
    ),
    (
        "GET",
        "services/accounting/api/v1/usage?user={owner}",
        {
            "anon": DENIED,
            "owner": OK,
            "other": {403},
            "member": {403},
            "admin": OK,
            "narrowed": {403},
        },
    ),
    (
        "GET",
        "services/accounting/api/v1/usage?project=" + PROJECT,
        {"anon": DENIED, "owner": OK, "other": {403}, "member": OK, "admin": OK},
    ),
    (
        "GET",
        "services/accounting/api/v1/usage?project=" + PROJECT + "&by=member",
        {"anon": DENIED, "owner": {403}, "other": {403}, "member": {403}, "admin": OK},
    ),
    (
        "GET",
        "services/accounting/api/v1/usage?project=" + PROJECT + "&user={owner}",
        {"anon": DENIED, "owner": OK, "other": {403}, "member": {403}, "admin": OK},
    ),
    (
        "GET",
        "services/accounting/metrics",
        {
            "anon": {401},
            "owner": {403},
            "other": {403},
            "member": {403},
            "admin": OK,
            "narrowed": {403},
        },
    ),
    ("GET", "services/accounting/health", {"anon": OK, "owner": OK, "other": OK, "admin": OK}),
    ("POST", "services/accounting/api/v1/usage", {"anon": DENIED, "owner": {405}, "admin": {405}}),
    # the Usage page (in the owner's server, behind its login) and its API
    (
        "GET",
        "user/{owner}/usage/",
        {"anon": LOGIN, "owner": OK, "other": DENIED, "narrowed": DENIED},
    ),
    (
        "GET",
        "user/{owner}/usage/api/usage",
        {"anon": LOGIN, "owner": OK, "other": DENIED, "narrowed": DENIED},
    ),
]


# Dask Gateway's own API takes hub tokens with its own scheme name.
SCHEMES = {"services/dask-gateway/api/": "jupyterhub"}


def scheme_for(path: str) -> str:
    return next((s for prefix, s in SCHEMES.items() if path.startswith(prefix)), "token")


@pytest.fixture(scope="module")
def actors(multiuser_platform):
    p = multiuser_platform
    for name in ("alice", "bob", "mira"):
        if p.api("GET", f"/users/{name}", token=p.token("admin")).status_code == 404:
            p.add_user(name)
    p.api("POST", f"/groups/{PROJECT}", token=p.token("admin"))  # 409 if it exists
    r = p.api(
        "POST",
        f"/groups/{PROJECT}/users",
        token=p.token("admin"),
        json={"users": ["alice", "mira"]},
    )
    assert r.status_code == 200, r.text
    p.spawn("alice")
    tokens = {
        "anon": None,
        "owner": p.token("alice"),
        "other": p.token("bob"),
        "member": p.token("mira"),
        "admin": p.token("admin"),
        # an admin's token narrowed to using services: no admin power, no one's server
        "narrowed": p.api(
            "POST",
            "/users/admin/tokens",
            token=p.token("admin"),
            json={"scopes": ["access:services"], "note": "authz matrix: narrowed"},
        ).json()["token"],
    }
    return p, tokens


@pytest.mark.parametrize(
    ("method", "path", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _ in MATRIX]
)
def test_matrix(actors, method, path, expected):
    p, tokens = actors
    url = p.url + path.format(owner="alice")
    failures = []
    for actor, allowed in expected.items():
        tok = tokens[actor]
        headers = {"Authorization": f"{scheme_for(path)} {tok}"} if tok else {}
        r = requests.request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            timeout=30,
            # a GET carries no body: jupyter-server-proxy answers one with a 500
            json=None if method == "GET" else {},
        )
        if r.status_code not in allowed:
            failures.append(f"{actor}: {r.status_code} (allowed {sorted(allowed)})")
    assert not failures, f"{method} {path}: " + "; ".join(failures)

"""Services decide from the token's scopes, as JupyterHub's own API does (issue 17, item 5).

Against the session's real multi-user platform: the same people call the projects and cache
services with their full tokens and with tokens narrowed through the hub's own token API (an
admin's token narrowed to one service's access scope; a user's narrowed to reading their own
name), and anonymously.  Each cell is one endpoint x one token; a refused write stores
nothing.  The scopes each endpoint needs are listed in docs/projects.md and docs/cache.md.
"""

from __future__ import annotations

import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.multiuser]

PROJECT = "scoped-lab"
ALLOC = {"profiles": [], "gpu": False, "max_servers_per_user": 1, "cpu_hours": 5}
OK = {200}
NO_AUTH = {401}


def narrowed(p, owner: str, scopes: list[str]) -> str:
    """A token of ``owner`` carrying ``scopes`` only, made with the hub's token API."""
    r = p.api(
        "POST",
        f"/users/{owner}/tokens",
        token=p.token(owner),
        json={"scopes": scopes, "note": "tests/security/test_scoped_tokens", "expires_in": 3600},
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


@pytest.fixture(scope="module")
def tokens(multiuser_platform):
    p = multiuser_platform
    for name in ("alice", "bob"):
        if p.api("GET", f"/users/{name}", token=p.token("admin")).status_code == 404:
            p.add_user(name)
    toks = {
        "anon": None,
        "admin": p.token("admin"),
        "alice": p.token("alice"),
        "bob": p.token("bob"),
        "admin-projects": narrowed(p, "admin", ["access:services!service=projects"]),
        "admin-cache": narrowed(p, "admin", ["access:services!service=cache"]),
        "alice-name": narrowed(p, "alice", ["read:users:name!user=alice"]),
    }
    # a project the admin made (bob is in it through the hub group)
    r = call(p, toks["admin"], "PUT", f"projects/api/projects/{PROJECT}", json=ALLOC)
    assert r.status_code == 200, r.text
    r = p.api("POST", f"/groups/{PROJECT}", token=toks["admin"])
    assert r.status_code in (201, 409), r.text
    r = p.api("POST", f"/groups/{PROJECT}/users", token=toks["admin"], json={"users": ["bob"]})
    assert r.status_code == 200, r.text
    yield p, toks
    # leave the session's platform as it was for the modules after this one
    call(p, toks["admin"], "DELETE", f"projects/api/projects/{PROJECT}")
    p.api("DELETE", f"/groups/{PROJECT}", token=toks["admin"])


def call(p, token: str | None, method: str, path: str, **kw) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.request(
        method, p.url + "services/" + path, headers=headers, timeout=30, allow_redirects=False, **kw
    )


def stored(p, toks) -> dict:
    r = call(p, toks["admin"], "GET", f"projects/api/projects/{PROJECT}")
    assert r.status_code == 200, r.text
    return r.json()["allocation"]


# (method, path, body, {token: allowed statuses or (status, text in description)})
P = "projects/api/"
CELLS = [
    ("GET", P + "projects", None, {
        "anon": NO_AUTH, "alice": OK, "bob": OK, "admin": OK, "admin-projects": OK,
        "admin-cache": (403, "access:services!service=projects"),
        "alice-name": (403, "access:services!service=projects"),
    }),
    ("GET", P + f"projects/{PROJECT}", None, {
        "anon": NO_AUTH, "bob": OK, "admin": OK, "alice": {404}, "admin-projects": {404},
        "admin-cache": {403}, "alice-name": {403},
    }),
    ("PUT", P + f"projects/{PROJECT}", {**ALLOC, "cpu_hours": 999}, {
        "anon": NO_AUTH, "alice": (403, "only admins"), "bob": (403, "only admins"),
        "admin-projects": (403, "admin:users"), "admin-cache": {403}, "alice-name": {403},
    }),
    ("PATCH", P + f"projects/{PROJECT}", {"cpu_hours": 999}, {
        "anon": NO_AUTH, "alice": (403, "only admins"), "admin-projects": (403, "admin:users"),
        "admin-cache": {403}, "alice-name": {403},
    }),
    ("DELETE", P + f"projects/{PROJECT}", None, {
        "anon": NO_AUTH, "bob": (403, "only admins"), "admin-projects": (403, "admin:users"),
        "admin-cache": {403}, "alice-name": {403},
    }),
    ("GET", P + "users/bob/allocation", None, {
        "anon": NO_AUTH, "bob": OK, "admin": OK, "alice": (403, "read:users:groups"),
        "admin-projects": (403, "read:users:groups"), "admin-cache": {403},
        "alice-name": {403},
    }),
    ("GET", P + "users/alice/allocation", None, {
        "alice": OK, "alice-name": (403, "access:services!service=projects"),
    }),
    ("GET", "projects/health", None, {"anon": OK, "admin-cache": OK}),
    ("GET", "cache/stats", None, {
        "anon": NO_AUTH, "alice": OK, "admin": OK, "admin-cache": OK,
        "admin-projects": (403, "access:services!service=cache"),
        "alice-name": (403, "access:services!service=cache"),
    }),
    ("GET", "cache/metrics", None, {
        "anon": NO_AUTH, "bob": OK, "admin-cache": OK, "admin-projects": {403},
        "alice-name": {403},
    }),
    ("GET", "cache/assets/nosuch/127.0.0.1:1/x", None, {
        "anon": NO_AUTH, "alice": {404}, "admin-cache": {404}, "admin-projects": {403},
        "alice-name": {403},
    }),
    ("POST", "cache/stats", {}, {
        "anon": NO_AUTH, "alice": {405}, "admin-cache": {405}, "admin-projects": {403},
    }),
    ("GET", "cache/health", None, {"anon": OK, "admin-projects": OK}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), CELLS, ids=[f"{m} {p}" for m, p, _, _ in CELLS]
)
def test_each_token_gets_what_its_scopes_allow(tokens, method, path, body, expected):
    p, toks = tokens
    before = stored(p, toks)
    failures = []
    for who, allowed in expected.items():
        r = call(p, toks[who], method, path, json=body)
        want, text = (allowed, "") if isinstance(allowed, set) else ({allowed[0]}, allowed[1])
        if r.status_code not in want:
            failures.append(f"{who}: {r.status_code} {r.text[:200]} (allowed {sorted(want)})")
            continue
        if r.status_code >= 400:
            doc = r.json()
            if doc.get("code") != r.status_code or text not in doc.get("description", ""):
                failures.append(f"{who}: {r.status_code} body {doc} lacks {text!r}")
    assert not failures, f"{method} {path}: " + "; ".join(failures)
    if method != "GET":
        assert stored(p, toks) == before, "a refused write changed the project"


def test_a_narrowed_admin_token_sees_only_its_own_projects(tokens):
    p, toks = tokens
    every = {x["name"] for x in call(p, toks["admin"], "GET", P + "projects").json()["projects"]}
    assert PROJECT in every
    mine = call(p, toks["admin-projects"], "GET", P + "projects").json()["projects"]
    assert mine == []  # the admin is in no project
    bobs = call(p, toks["bob"], "GET", P + "projects").json()["projects"]
    assert [x["name"] for x in bobs] == [PROJECT]


def test_the_full_admin_token_still_writes(tokens):
    p, toks = tokens
    r = call(p, toks["admin"], "PATCH", P + f"projects/{PROJECT}", json={"cpu_hours": 7})
    assert r.status_code == 200 and r.json()["allocation"]["cpu_hours"] == 7
    r = call(p, toks["admin"], "PUT", P + f"projects/{PROJECT}", json=ALLOC)
    assert r.status_code == 200 and stored(p, toks)["cpu_hours"] == 5

"""twinhub's face on the real multi-user platform: where a login lands (/hub/home) and what it
shows (the user's own servers, projects, clusters, services, links), named servers only when
the allocation allows more than one, a spawn page that starts nothing until the click, the
help pages, and a user made on the admin page getting in through a one-time link.
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from tests.helpers.platform import Platform

pytestmark = [pytest.mark.integration, pytest.mark.multiuser, pytest.mark.slow]


def _svc(p: Platform, method: str, path: str, **kw) -> requests.Response:
    headers = {"Authorization": f"token {p.token('admin')}"}
    return requests.request(
        method, p.url + "services/projects/api/" + path, headers=headers, timeout=30, **kw
    )


def _project(p: Platform, name: str, **alloc) -> None:
    r = _svc(p, "PUT", f"projects/{name}", json=alloc)
    assert r.status_code == 200, r.text


def _new_user(p: Platform, name: str, groups: tuple[str, ...] = ()) -> requests.Session:
    if p.api("GET", f"/users/{name}", user="admin").status_code != 404:
        pytest.skip(f"{name} existed before this test: its password is unknown")
    password = p.add_user(name, groups=groups)
    return p.login_session(name, password)


def _servers(p: Platform, name: str) -> dict:
    return p.api("GET", f"/users/{name}", user="admin").json().get("servers", {})


def test_login_lands_on_home_with_the_users_own_platform(multiuser_platform: Platform) -> None:
    p = multiuser_platform
    _project(p, "face-solo", profiles=["small-cpu"], max_servers_per_user=1, cpu_hours=100)
    _project(p, "face-other", profiles=["large-cpu"], max_servers_per_user=3)
    password = p.add_user("facehome", groups=("face-solo",))
    other = _new_user(p, "faceother", groups=("face-other",))

    s = requests.Session()
    s.get(p.url + "hub/login", timeout=30)
    r = s.post(
        p.url + "hub/login",
        data={"username": "facehome", "password": password, "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 302 and r.headers["Location"].endswith("/hub/home")
    page = s.get(p.url + "hub/home", timeout=30)
    assert page.status_code == 200
    html = page.text
    # The platform's name and logo, not JupyterHub's.
    assert "<title>twinhub</title>" in html and 'id="twinhub-logo"' in html
    assert "Welcome to twinhub, facehome" in html
    assert s.get(p.url + "hub/logo", timeout=30).headers["Content-Type"].startswith("image/svg")
    # Nothing started by the login; the start form offers exactly the project's profile.
    assert _servers(p, "facehome") == {}
    assert 'data-state="stopped"' in html and 'id="twinhub-start"' in html
    assert 'value="small-cpu"' in html and 'value="large-cpu"' not in html
    # Projects and what they allow: only the user's own.
    assert 'data-project="face-solo"' in html and "100 cpu hours" in html
    assert "face-other" not in html
    # One server allowed: no named servers offered.
    assert 'id="twinhub-named-servers"' not in html
    # Links: the Data lake page in the user's server, docs, support, Dask; the services.
    assert "/user/facehome/datalake/" in html
    assert 'href="/hub/help/"' in html and 'id="twinhub-support-link"' in html
    for name in ("stac", "dask-gateway", "projects", "cache"):
        assert f'data-service="{name}"' in html, name
    # The gateway answered for this user's own token: zero clusters, not "unknown".
    assert 'id="twinhub-cluster-count">0<' in html
    # Not an admin: no Admin or Accounts in the navigation.
    assert "twinhub-nav-accounts" not in html and "twinhub-nav-admin" not in html
    # The Accounts page is for admins only.
    assert s.get(p.url + "hub/authorize", timeout=30).status_code == 403
    # The other user's page shows their project and named servers, none of facehome's.
    theirs = other.get(p.url + "hub/home", timeout=30).text
    assert 'data-project="face-other"' in theirs and "face-solo" not in theirs
    assert 'id="twinhub-named-servers"' in theirs
    assert "facehome" not in theirs
    # A named server through the home page's "New server…" (the spawn page's form for it).
    url = p.url + "hub/spawn/faceother/second"
    form = other.get(url, timeout=30)
    assert form.status_code == 200 and 'name="profile" value="large-cpu"' in form.text
    assert _servers(p, "faceother") == {}
    r = other.post(
        url, data={"profile": "large-cpu", "_xsrf": other.cookies.get("_xsrf")}, timeout=120
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 120
    while not _servers(p, "faceother").get("second", {}).get("ready"):
        assert time.monotonic() < deadline, "named server did not start"
        time.sleep(0.5)
    theirs = other.get(p.url + "hub/home", timeout=30).text
    row = re.search(r'data-server-name="second">(.*?)</tr>', theirs, re.S).group(1)
    assert "Large CPU" in row and "running" in row
    p.api("DELETE", "/users/faceother/servers/second", user="admin", json={"remove": True})


def test_home_page_needs_a_login(multiuser_platform: Platform) -> None:
    r = requests.get(multiuser_platform.url + "hub/home", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/hub/login" in r.headers["Location"]


def test_spawn_page_with_one_profile_starts_nothing_until_the_click(
    multiuser_platform: Platform,
) -> None:
    p = multiuser_platform
    _project(p, "face-one", profiles=["small-cpu"], max_servers_per_user=1)
    s = _new_user(p, "faceone", groups=("face-one",))
    r = s.get(p.url + "hub/spawn/faceone", timeout=30)
    assert r.status_code == 200
    assert 'id="spawn_form"' in r.text and 'name="profile" value="small-cpu"' in r.text
    time.sleep(2)
    assert _servers(p, "faceone") == {}, "GET /hub/spawn started a server unasked"
    # The click (the form's POST) starts it with the profile the form named.
    r = s.post(
        p.url + "hub/spawn/faceone",
        data={"profile": "small-cpu", "_xsrf": s.cookies.get("_xsrf")},
        timeout=120,
    )
    assert r.status_code == 200
    deadline = time.monotonic() + 120
    while not _servers(p, "faceone").get("", {}).get("ready"):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.5)
    assert _servers(p, "faceone")[""]["user_options"] == {"profile": "small-cpu"}
    home = s.get(p.url + "hub/home", timeout=30).text
    assert 'data-state="running"' in home and "Small CPU" in home
    assert 'id="twinhub-datalake-link" href="/user/faceone/datalake/"' in home
    # A Dask cluster of faceone's: counted on faceone's page, on nobody else's.
    gw = p.url + "services/dask-gateway/api/v1/clusters/"
    auth = {"Authorization": f"jupyterhub {p.token('faceone')}"}
    r = requests.post(gw, json={"cluster_options": {}}, headers=auth, timeout=60)
    assert r.status_code == 201, r.text
    cluster = r.json()["name"]
    try:
        mine = s.get(p.url + "hub/home", timeout=30).text
        assert 'id="twinhub-cluster-count">1<' in mine
        assert f"/services/dask-gateway/clusters/{cluster}/status" in mine
        admin = p.login_session("admin", p.admin_password)
        theirs = admin.get(p.url + "hub/home", timeout=30).text
        assert 'id="twinhub-cluster-count">0<' in theirs and cluster not in theirs
    finally:
        requests.delete(gw + cluster, headers=auth, timeout=60)
    p.stop_server("faceone")


def test_help_pages_render_the_platforms_docs(multiuser_platform: Platform) -> None:
    p = multiuser_platform
    index = requests.get(p.url + "hub/help/", timeout=30)
    assert index.status_code == 200
    assert 'href="/hub/help/projects"' in index.text and 'href="/hub/help/support"' in index.text
    assert requests.get(p.url + "hub/help", timeout=30).status_code == 200
    page = requests.get(p.url + "hub/help/projects", timeout=30)
    assert page.status_code == 200 and "<h1>Projects and allocations</h1>" in page.text
    # Links between docs stay inside the help pages.
    assert not re.search(r'href="[^"]*\.md[#"]', page.text)
    support = requests.get(p.url + "hub/help/support", timeout=30)
    assert support.status_code == 200 and "help" in support.text.lower()
    missing = requests.get(p.url + "hub/help/nope", timeout=30)
    assert missing.status_code == 404
    # Only *.md files directly in docs/ are pages ('%2e%2e' is normalised away: a redirect).
    for bad in ("..%2Fpyproject", "%2e%2e", "ARCH..ITECTURE", "..%2F..%2Fetc%2Fpasswd"):
        r = requests.get(p.url + "hub/help/" + bad, timeout=30, allow_redirects=False)
        assert r.status_code in (302, 404), (bad, r.status_code)
        assert "[project]" not in r.text and "root:" not in r.text


def test_admin_made_user_gets_in_with_a_one_time_link(multiuser_platform: Platform) -> None:
    p = multiuser_platform
    name = "facenew"
    # What the admin page does: POST /hub/api/users.
    r = p.api("POST", "/users", user="admin", json={"usernames": [name]})
    assert r.status_code == 201, r.text
    # Admins see the Accounts page in the navigation; it lists the user with no way in.
    admin = p.login_session("admin", p.admin_password)
    home = admin.get(p.url + "hub/home", timeout=30).text
    assert 'id="twinhub-nav-accounts" href="/hub/authorize"' in home
    accounts = admin.get(p.url + "hub/authorize", timeout=30).text
    assert re.search(rf'id="no-way-in".*data-user="{name}"', accounts, re.S)
    # A non-admin may not make links (for others or themselves).
    p.add_user("facepeer")
    for target in (name, "facepeer"):
        r = p.api("POST", f"/twinhub/users/{target}/set-password-link", user="facepeer")
        assert r.status_code == 403
    # The admin makes one on the page (the button's POST).
    r = admin.post(
        p.url + "hub/authorize",
        data={"action": "link", "username": name, "_xsrf": admin.cookies.get("_xsrf")},
        timeout=30,
    )
    assert r.status_code == 200
    url = re.search(r'id="twinhub-link-url" readonly value="([^"]+)"', r.text).group(1)
    url = url.replace("&amp;", "&")
    assert "/hub/set-password?token=" in url
    # The user opens it and chooses a password.
    u = requests.Session()
    form = u.get(url, timeout=30)
    assert form.status_code == 200 and f"Set your password for {name}" in form.text
    bad = _set_password(url, "short", u)
    assert bad.status_code == 400 and "too short" in bad.text
    good = "a-good-long-password-42"
    done = _set_password(url, good, u)
    assert done.status_code == 200 and "Password set" in done.text
    p.login_session(name, good)  # raises unless the login succeeds
    # One use only.
    again = _set_password(url, good + "x", u)
    assert again.status_code == 400 and "already used" in again.text
    p.login_session(name, good)
    # No longer listed as without a way in.
    accounts = admin.get(p.url + "hub/authorize", timeout=30).text
    assert not re.search(rf'id="no-way-in".*data-user="{name}".*id="approved"', accounts, re.S)
    # The REST call makes a reset link for an existing account; a forged token is refused.
    r = p.api("POST", f"/twinhub/users/{name}/set-password-link", user="admin")
    assert r.status_code == 200 and r.json()["username"] == name
    assert p.api("POST", "/twinhub/users/nobody/set-password-link", user="admin").status_code == 404
    forged = u.get(p.url + "hub/set-password?token=" + "x" * 40, timeout=30)
    assert forged.status_code == 400 and "not valid" in forged.text
    # The admin page tells admins where users they add get their way in.
    assert 'id="twinhub-admin-accounts"' in admin.get(p.url + "hub/admin", timeout=30).text


def _post(s: requests.Session, url: str, data: dict) -> requests.Response:
    """A form POST as the browser sends it (GET first for the _xsrf cookie)."""
    if "_xsrf" not in s.cookies:
        s.get(url, timeout=30)
    return s.post(url, data={**data, "_xsrf": s.cookies["_xsrf"]}, timeout=30)


def _set_password(url: str, password: str, s: requests.Session | None = None):
    s = s or requests.Session()
    s.get(url, timeout=30)
    fields = {"new_password": password, "new_password_confirm": password}
    return _post(s, url, fields)


def _link(p: Platform, name: str, token: str | None = None) -> requests.Response:
    path = f"/twinhub/users/{name}/set-password-link"
    return p.api("POST", path, user=None if token else "admin", token=token)


def _logged_in(s: requests.Session, p: Platform) -> bool:
    r = s.get(p.url + "hub/home", timeout=30, allow_redirects=False)
    return r.status_code == 200


def test_admin_made_users_cannot_be_taken_by_signup(multiuser_platform: Platform) -> None:
    p = multiuser_platform
    name = "facesquat"
    r = p.api("POST", "/users", user="admin", json={"usernames": [name], "admin": True})
    assert r.status_code == 201, r.text
    # Someone asks for the name on the signup page, in any spelling: refused, nothing stored
    # (a pending request would make the admin's link a 409 below).
    for spelling in (name, name.upper(), f" {name} "):
        fields = {"username": spelling, "password": "squat-password-1"}
        r = _post(
            requests.Session(),
            p.url + "hub/signup",
            fields | {"password_confirm": fields["password"]},
        )
        assert r.status_code == 400 and "user name taken" in r.text, (spelling, r.text[-500:])
    assert _link(p, name).status_code == 200
    # A request made before the admin added the user came from someone else: it goes when
    # the admin makes the user (approving it would hand the user over); the link works.
    pend = "facepend"
    fields = {
        "username": pend,
        "password": "pend-password-1",
        "password_confirm": "pend-password-1",
    }
    assert _post(requests.Session(), p.url + "hub/signup", fields).status_code == 200
    admin = p.login_session("admin", p.admin_password)
    assert f'data-user="{pend}"' in admin.get(p.url + "hub/authorize", timeout=30).text
    assert p.api("POST", "/users", user="admin", json={"usernames": [pend]}).status_code == 201
    r = _post(admin, p.url + "hub/authorize", {"action": "approve", "username": pend})
    assert r.status_code == 404 and "no account" in r.text
    with pytest.raises(RuntimeError):  # the requester's password is no way in
        p.login_session(pend, "pend-password-1")
    assert _link(p, pend).status_code == 200


def test_old_links_die_and_sessions_end_with_the_account(multiuser_platform: Platform) -> None:
    p = multiuser_platform
    name = "faceold"
    assert p.api("POST", "/users", user="admin", json={"usernames": [name]}).status_code == 201
    # Two "no account" links; the second is used.
    first, second = _link(p, name).json()["url"], _link(p, name).json()["url"]
    page = requests.get(first, timeout=30)
    # The token is in the URL: no Referer carries it on, no cache keeps the page.
    assert page.headers.get("Referrer-Policy") == "no-referrer"
    assert page.headers.get("Cache-Control") == "no-store"
    assert _set_password(second, "faceold-password-1").status_code == 200
    user = p.login_session(name, "faceold-password-1")
    assert _logged_in(user, p)
    # The admin deletes the account on the Accounts page: the state is "no account" again,
    # yet the first link stays dead, and the user's session ends.
    admin = p.login_session("admin", p.admin_password)
    r = _post(admin, p.url + "hub/authorize", {"action": "delete", "username": name})
    assert r.status_code == 200 and f"account {name} deleted" in r.text
    r = _set_password(first, "faceold-password-2")
    assert r.status_code == 400 and "already used" in r.text
    assert r.headers.get("Cache-Control") == "no-store"
    assert not _logged_in(user, p)
    # A new link gives the way in again; a reset link used in the user's own logged-in
    # browser ends that session, and the new password logs in.
    assert _set_password(_link(p, name).json()["url"], "faceold-password-3").status_code == 200
    user = p.login_session(name, "faceold-password-3")
    done = _set_password(_link(p, name).json()["url"], "faceold-password-4", s=user)
    assert done.status_code == 200 and "Password set" in done.text
    assert not _logged_in(user, p)
    assert _logged_in(p.login_session(name, "faceold-password-4"), p)
    # Withdrawn approval ends sessions at once too.
    user = p.login_session(name, "faceold-password-4")
    r = _post(admin, p.url + "hub/authorize", {"action": "revoke", "username": name})
    assert r.status_code == 200 and not _logged_in(user, p)


def test_links_need_admin_users_over_all_users(multiuser_platform: Platform) -> None:
    p = multiuser_platform
    target, group = "facetarget", "face-delegated"
    body = {"usernames": [target], "admin": True}
    assert p.api("POST", "/users", user="admin", json=body).status_code == 201
    assert p.api("POST", f"/groups/{group}", user="admin").status_code in (201, 409)
    r = p.api("POST", f"/groups/{group}/users", user="admin", json={"users": [target]})
    assert r.status_code == 200, r.text
    # A token that manages only the group's users: no links (here for a hub admin).
    r = p.api(
        "POST", "/users/admin/tokens", user="admin",
        json={"scopes": [f"admin:users!group={group}"], "expires_in": 600},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    narrowed = r.json()["token"]
    assert p.api("GET", f"/users/{target}", token=narrowed).status_code == 200
    r = _link(p, target, token=narrowed)
    assert r.status_code == 403 and "over all users" in r.json()["message"]
    assert _link(p, target).status_code == 200


def test_cli_link_gives_an_admin_made_user_a_way_in(multiuser_platform: Platform) -> None:
    p = multiuser_platform
    name = "facecli"
    assert p.api("POST", "/users", user="admin", json={"usernames": [name]}).status_code == 201
    # `twinhub user add` refuses the existing name and changes nothing...
    r = p.cli("user", "add", name, check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
    # ...`twinhub user link` is the command line's way in for them.
    r = p.cli("user", "link", name)
    url = r.stdout.splitlines()[0]
    assert url.startswith(p.url + "hub/set-password?token="), r.stdout
    # This platform has no public URL: the link names the local address, and says so.
    assert "Twinhub.public_url" in r.stderr
    u = requests.Session()
    assert f"Set your password for {name}" in u.get(url, timeout=30).text
    good = "another-good-password-7"
    done = _set_password(url, good, u)
    assert done.status_code == 200 and "Password set" in done.text
    p.login_session(name, good)
    r = p.cli("user", "link", "nobody-here", check=False)
    assert r.returncode != 0 and "no such user: nobody-here" in r.stderr


def test_personal_mode_home_without_projects(personal_platform: Platform) -> None:
    p = personal_platform
    s = p.login_session("admin", p.admin_password)
    page = s.get(p.url + "hub/home", timeout=30)
    assert page.status_code == 200 and "Welcome to twinhub, admin" in page.text
    assert "Projects and allocations are not used on this platform" in page.text
    assert 'id="twinhub-named-servers"' not in page.text and 'id="twinhub-start"' in page.text
    assert 'id="twinhub-nav-accounts"' in page.text

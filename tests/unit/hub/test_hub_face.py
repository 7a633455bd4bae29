"""The hub face's pieces that need no running hub: help pages from docs/, set-password link
tokens, when named servers are offered, the home page's gateway-token cache, and a Keycloak
login taking a user made on the admin page."""

from __future__ import annotations

import asyncio
import base64
import time
from types import SimpleNamespace

import pytest
from tornado import web

from twinhub.auth import links
from twinhub.auth.keycloak import ADMIN_CREATED, TwinhubKeycloakAuthenticator
from twinhub.db import upgrade
from twinhub.hubconf import face
from twinhub.hubconf import help as helppages
from twinhub.hubconf.home import gateway_token, named_servers_allowed


def test_docs_dir_setting_wins(tmp_path) -> None:
    (tmp_path / "guide.md").write_text("# Guide\n")
    (tmp_path / "not a page.md").write_text("# skipped: not a page name\n")
    assert face.TwinhubFace(docs_dir=str(tmp_path)).resolved_docs_dir() == tmp_path
    assert list(helppages.pages(tmp_path)) == ["guide"]


def test_docs_are_found_in_the_checkout_and_pages_listed() -> None:
    docs = face.TwinhubFace().resolved_docs_dir()
    assert docs is not None and (docs / "projects.md").exists()
    found = helppages.pages(docs)
    assert {"index", "support", "projects", "accounts"} <= set(found)
    assert face.TwinhubFace(docs_dir="/nonexistent").resolved_docs_dir() is None
    # An installed package has no checkout: the docs are data files under sys.prefix.
    assert face.INSTALLED_DOCS.parts[-3:] == ("share", "twinhub", "docs")
    assert helppages.pages(None) == {}


def test_markdown_is_rendered_without_raw_html_and_md_links_become_help_links() -> None:
    md = helppages.renderer("/hub/help/")
    out = md.render(
        "# T\n\nSee [p](projects.md#limits), [x](https://example.org/a.md) "
        "<script>alert(1)</script>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    assert 'href="/hub/help/projects#limits"' in out
    assert 'href="https://example.org/a.md"' in out
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "<table>" in out
    assert helppages.title_of("intro\n# The title\n", "x") == "The title"
    assert helppages.title_of("no heading", "fallback") == "fallback"


def test_set_password_link_works_once_and_expires() -> None:
    secret = b"s" * 32
    state = {"ann": links.link_state("cookie-1", None)}
    token, _ = links.make_token(secret, "ann", state["ann"], 60)
    assert links.read_token(secret, token, state.get) == ("ann", state["ann"])
    # Setting the password changes the account's state: the same link is spent.
    state["ann"] = links.link_state("cookie-1", "$argon2id$hash")
    with pytest.raises(links.LinkError, match="already used"):
        links.read_token(secret, token, state.get)
    # A reset link is bound to the hash it was made over.
    reset, _ = links.make_token(secret, "ann", state["ann"], 60)
    assert links.read_token(secret, reset, state.get)[0] == "ann"
    # Another secret, a tampered name, garbage, an expired link: refused.
    with pytest.raises(links.LinkError):
        links.read_token(b"t" * 32, reset, state.get)
    with pytest.raises(links.LinkError, match="not valid"):
        links.read_token(secret, "garbage!", state.get)
    old, expires = links.make_token(secret, "ann", state["ann"], -1)
    assert expires < time.time()
    with pytest.raises(links.LinkError, match="expired"):
        links.read_token(secret, old, state.get)


def test_a_no_account_link_dies_with_the_hub_users_sessions() -> None:
    # Made while ann had no account; the account is then made and deleted again, which
    # renews the hub user's cookie_id: the state is "no account" again, the link stays dead.
    secret = b"s" * 32
    token, _ = links.make_token(secret, "ann", links.link_state("cookie-1", None), 60)
    now = {"ann": links.link_state("cookie-2", None)}
    with pytest.raises(links.LinkError, match="already used"):
        links.read_token(secret, token, now.get)
    # A deleted user gets the answer of a spent link (the page tells no user names).
    with pytest.raises(links.LinkError, match="already used"):
        links.read_token(secret, token, {}.get)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('["ann", 9999999999, "\u00e9\u00e9"]'.encode(), "already used"),  # non-ASCII mac
        (b"[" * 100_000 + b"]" * 100_000, "not valid"),  # deep nesting
        (b'["\\ud800", 9999999999, "00"]', "not valid"),  # lone surrogate name
        (b'{"a": 1, "b": 2, "c": 3}', "not valid"),
        (b"\xff\xfe", "not valid"),
        (b'["ann", "soon", "00"]', "not valid"),
    ],
)
def test_crafted_tokens_are_refused_not_crashed(raw: bytes, message: str) -> None:
    state = {"ann": links.link_state("cookie-1", None)}
    with pytest.raises(links.LinkError, match=message):
        links.read_token(b"s" * 32, _b64(raw), state.get)
    # A long token is refused unread.
    with pytest.raises(links.LinkError, match="not valid"):
        links.read_token(b"s" * 32, "A" * 5000, state.get)


def test_checkout_docs_only_in_a_source_checkout(tmp_path) -> None:
    # The running checkout: hub/twinhub/hubconf/face.py beside pyproject.toml.
    assert (
        face.CHECKOUT_DOCS is not None
        and face.CHECKOUT_DOCS.parent.joinpath("pyproject.toml").is_file()
    )
    # An installed package: <prefix>/lib/python3.x/site-packages/twinhub/hubconf/face.py,
    # with an unrelated docs/ folder at parents[3]: not served.
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    module = site / "twinhub" / "hubconf" / "face.py"
    module.parent.mkdir(parents=True)
    module.write_text("")
    (tmp_path / "lib" / "docs").mkdir()
    (tmp_path / "lib" / "pyproject.toml").write_text("")
    assert face.checkout_docs(module) is None
    # A folder named hub without pyproject.toml beside it: not a checkout either.
    other = tmp_path / "x" / "hub" / "twinhub" / "hubconf" / "face.py"
    other.parent.mkdir(parents=True)
    other.write_text("")
    assert face.checkout_docs(other) is None
    (tmp_path / "x" / "pyproject.toml").write_text("")
    assert face.checkout_docs(other) == (tmp_path / "x" / "docs").resolve()


class _FakeHubUser:
    """Fake of JupyterHub's User (the hub's database cannot run here): id, cookie_id, name,
    and API tokens numbered as they are made."""

    made = 0

    def __init__(self, user_id: int, name: str, cookie_id: str) -> None:
        self.name = name
        self.orm_user = SimpleNamespace(id=user_id, cookie_id=cookie_id)

    def new_api_token(self, **kw) -> str:
        _FakeHubUser.made += 1
        return f"token-{_FakeHubUser.made}"


def test_gateway_token_cache_follows_the_user_not_the_name() -> None:
    alice = _FakeHubUser(101, "alice", "c-101")
    first = gateway_token(alice)
    assert gateway_token(alice) == first  # cached
    # alice renamed to bob; a new alice is another user: never bob's token.
    alice.name = "bob"
    new_alice = _FakeHubUser(102, "alice", "c-102")
    assert gateway_token(new_alice) != first
    assert gateway_token(alice) == first
    # Ended sessions (a new cookie_id): a new token.
    alice.orm_user.cookie_id = "c-101b"
    assert gateway_token(alice) != first


@pytest.mark.parametrize(
    ("allowed", "limit", "shown"),
    [(False, None, False), (True, 1, False), (True, 2, True), (True, None, True)],
)
def test_named_servers_only_when_the_allocation_allows_more_than_one(allowed, limit, shown):
    summary = {"effective": {"max_servers_per_user": limit}, "projects": {}}
    assert named_servers_allowed(allowed, summary) is shown
    assert named_servers_allowed(allowed, None) is allowed


class _FakeAdminMadeUser:
    """Fake of JupyterHub's User as the admin page leaves it in Keycloak mode: marked, not
    bound yet (the hub's database cannot run here)."""

    name = "erin"

    async def get_auth_state(self) -> dict:
        return {ADMIN_CREATED: True}


class _FakeHandler:
    """Fake of the login handler: it only looks up hub users."""

    def __init__(self, users: dict) -> None:
        self.find_user = users.get


def _kc_model(admin: bool | None) -> dict:
    # What oauthenticator's _token_to_auth_model returns: admin None unless admin_users or
    # admin_groups decided it.
    info = {"sub": "sub-erin", "preferred_username": "erin", "groups": []}
    return {"name": "erin", "admin": admin, "auth_state": {"oauth_user": info}}


@pytest.mark.parametrize(("decided", "admin"), [(None, False), (True, True), (False, False)])
def test_keycloak_takeover_of_an_admin_made_user_never_keeps_its_admin_flag(
    tmp_path, decided, admin
) -> None:
    db_url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    upgrade(db_url)
    auth = TwinhubKeycloakAuthenticator(db_url=db_url, issuer="https://kc.example.org/r")
    handler = _FakeHandler({"erin": _FakeAdminMadeUser()})
    model = asyncio.run(auth._bind_checks(handler, _kc_model(decided), "sub-erin", "ID token"))
    # None would keep the hub's flag (the admin page may have made erin an admin); the
    # realm's own answer (admin_users, admin_groups) stands.
    assert model["name"] == "erin" and model["admin"] is admin
    # Switched off, the marked user is an existing one: refused like any other.
    auth.admin_created_takeover = False
    with pytest.raises(web.HTTPError) as e:
        asyncio.run(auth._bind_checks(handler, _kc_model(decided), "sub-erin", "ID token"))
    assert e.value.status_code == 403 and "already exists" in e.value.log_message

"""The hub face's pure pieces: help pages from docs/, set-password link tokens, when named
servers are offered."""

from __future__ import annotations

import time

import pytest

from twinhub.auth import links
from twinhub.hubconf import face
from twinhub.hubconf import help as helppages
from twinhub.hubconf.home import named_servers_allowed


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
    state = {"ann": None}
    token, _ = links.make_token(secret, "ann", None, 60)
    assert links.read_token(secret, token, state.get) == ("ann", None)
    # Setting the password changes the account's state: the same link is spent.
    state["ann"] = "$argon2id$hash"
    with pytest.raises(links.LinkError, match="already used"):
        links.read_token(secret, token, state.get)
    # A reset link is bound to the hash it was made over.
    reset, _ = links.make_token(secret, "ann", "$argon2id$hash", 60)
    assert links.read_token(secret, reset, state.get) == ("ann", "$argon2id$hash")
    # Another secret, a tampered name, garbage, an expired link: refused.
    with pytest.raises(links.LinkError):
        links.read_token(b"t" * 32, reset, state.get)
    with pytest.raises(links.LinkError, match="not valid"):
        links.read_token(secret, "garbage!", state.get)
    old, expires = links.make_token(secret, "ann", "$argon2id$hash", -1)
    assert expires < time.time()
    with pytest.raises(links.LinkError, match="expired"):
        links.read_token(secret, old, state.get)


@pytest.mark.parametrize(
    ("allowed", "limit", "shown"),
    [(False, None, False), (True, 1, False), (True, 2, True), (True, None, True)],
)
def test_named_servers_only_when_the_allocation_allows_more_than_one(allowed, limit, shown):
    summary = {"effective": {"max_servers_per_user": limit}, "projects": {}}
    assert named_servers_allowed(allowed, summary) is shown
    assert named_servers_allowed(allowed, None) is allowed

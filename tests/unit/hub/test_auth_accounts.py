"""Password hashing and local accounts on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select
from traitlets.config import Config

from twinhub import db
from twinhub.auth import local_accounts, part, passwords
from twinhub.auth.authenticator import TwinhubLocalAuth
from twinhub.process.runtime import Runtime


def stored_hash(url: str, name: str) -> str:
    with db.session(url) as s:
        return s.scalar(
            select(db.LocalAccount.password_hash).where(db.LocalAccount.username == name)
        )


def test_hash_is_salted_argon2id_and_verifies():
    h1, h2 = passwords.hash_password("correct horse"), passwords.hash_password("correct horse")
    assert h1.startswith("$argon2id$") and h1 != h2  # salted
    assert "correct horse" not in h1
    assert passwords.verify_password(h1, "correct horse")
    assert not passwords.verify_password(h1, "correct horsE")
    assert not passwords.verify_password(None, "anything")
    assert not passwords.verify_password("not-a-hash", "x")
    with pytest.raises(ValueError, match="non-empty"):
        passwords.hash_password("")


def test_unknown_user_takes_as_long_as_wrong_password():
    h = passwords.hash_password("pw-123456789")

    def fastest(stored) -> float:
        # The fastest of a few runs: robust to other load on the machine.
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            passwords.verify_password(stored, "wrong")
            times.append(time.perf_counter() - t0)
        return min(times)

    assert 0.5 < fastest(None) / fastest(h) < 2.0


def test_rehash_when_parameters_are_weaker(twinhub_db):
    from argon2 import PasswordHasher

    local_accounts.create_account(twinhub_db, "old", password="old-password-1")
    weak = PasswordHasher(time_cost=1, memory_cost=8192).hash("old-password-1")
    with db.session(twinhub_db) as s:
        s.scalar(
            select(db.LocalAccount).where(db.LocalAccount.username == "old")
        ).password_hash = weak
    assert local_accounts.verify_login(twinhub_db, "old", "old-password-1") is not None
    new = stored_hash(twinhub_db, "old")
    assert new != weak and not passwords.needs_rehash(new)


def test_admin_created_account_gets_generated_password(twinhub_db):
    pw = local_accounts.create_account(twinhub_db, "Alice", admin=True)
    assert len(pw) >= 16
    info = local_accounts.get_account(twinhub_db, "alice")  # names are lowercased
    assert info.username == "alice" and info.is_admin and info.approved
    assert pw not in stored_hash(twinhub_db, "alice")
    assert local_accounts.verify_login(twinhub_db, "alice", pw).account_id == info.account_id
    assert local_accounts.verify_login(twinhub_db, "alice", pw + "x") is None
    assert local_accounts.verify_login(twinhub_db, "nobody", pw) is None


def test_account_errors_name_the_problem(twinhub_db):
    local_accounts.create_account(twinhub_db, "bob")
    with pytest.raises(local_accounts.AccountError, match="'bob' already exists"):
        local_accounts.create_account(twinhub_db, "bob")
    with pytest.raises(ValueError, match="reserved"):  # the CLI catches ValueError
        local_accounts.create_account(twinhub_db, "root")
    with pytest.raises(local_accounts.AccountError, match="not valid"):
        local_accounts.create_account(twinhub_db, "9lives")
    with pytest.raises(local_accounts.AccountError, match="too long"):
        local_accounts.create_account(twinhub_db, "a" * 40)
    with pytest.raises(local_accounts.AccountError, match="at least 10 characters"):
        local_accounts.request_account(twinhub_db, "carol", "short")
    with pytest.raises(local_accounts.AccountError, match="differ from the user name"):
        local_accounts.request_account(twinhub_db, "carolcarol", "CarolCarol")
    with pytest.raises(local_accounts.AccountError, match="no account 'ghost'"):
        local_accounts.set_password(twinhub_db, "ghost", "long-enough-pw")
    assert [a.username for a in local_accounts.list_accounts(twinhub_db)] == ["bob"]


def test_signup_waits_for_approval(twinhub_db):
    info = local_accounts.request_account(twinhub_db, "dave", "dave-password-1")
    assert not info.approved
    assert [a.username for a in local_accounts.list_accounts(twinhub_db, approved=False)] == [
        "dave"
    ]
    # Right password, but not approved: verify_login reports it, the authenticator refuses.
    assert local_accounts.verify_login(twinhub_db, "dave", "dave-password-1").approved is False
    assert local_accounts.set_approved(twinhub_db, "dave") is True
    assert local_accounts.verify_login(twinhub_db, "dave", "dave-password-1").approved is True
    assert local_accounts.set_approved(twinhub_db, "ghost") is False


def test_change_password_and_delete(twinhub_db):
    local_accounts.create_account(twinhub_db, "erin", password="first-password")
    local_accounts.set_password(twinhub_db, "erin", "second-password")
    assert local_accounts.verify_login(twinhub_db, "erin", "first-password") is None
    assert local_accounts.verify_login(twinhub_db, "erin", "second-password") is not None
    assert local_accounts.delete_account(twinhub_db, "erin") is True
    assert local_accounts.verify_login(twinhub_db, "erin", "second-password") is None
    assert local_accounts.delete_account(twinhub_db, "erin") is False


def test_ensure_first_admin_once(tmp_path):
    rt = Runtime(state_dir=tmp_path, config=Config({"Twinhub": {"admin_user": "boss"}}))
    db.upgrade(rt.db_url)
    pw = part.ensure_first_admin(rt)
    assert pw and local_accounts.verify_login(rt.db_url, "boss", pw).is_admin
    assert part.ensure_first_admin(rt) is None
    assert local_accounts.verify_login(rt.db_url, "boss", pw) is not None  # unchanged


def test_configure_hub_sets_authenticator_and_keeps_operator_options(tmp_path):
    rt = Runtime(
        state_dir=tmp_path,
        config=Config(
            {
                "Twinhub": {"admin_user": "boss", "user_prefix": "u-"},
                "TwinhubLocalAuth": {"min_password_length": 14, "open_signup": True},
            }
        ),
    )
    c = Config()
    c.Authenticator.admin_users = {"other"}
    c.JupyterHub.template_paths = ["/somewhere"]
    part.AuthPart().configure_hub(c, rt)
    assert c.JupyterHub.authenticator_class is TwinhubLocalAuth
    assert c.TwinhubLocalAuth.db_url == rt.db_url
    assert c.TwinhubLocalAuth.user_prefix == "u-"
    assert c.TwinhubLocalAuth.min_password_length == 14 and c.TwinhubLocalAuth.open_signup
    assert c.Authenticator.admin_users == {"other", "boss"}
    assert c.JupyterHub.template_paths == [str(part.TEMPLATES_DIR), "/somewhere"]
    # The configured class really reads these options.
    db.upgrade(rt.db_url)
    a = TwinhubLocalAuth(config=c)
    assert (a.db_url, a.min_password_length, a.open_signup) == (rt.db_url, 14, True)
    assert a.refresh_pre_spawn  # a withdrawn approval stops spawns at once


def test_authenticator_refuses_a_database_that_was_not_upgraded(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    db.upgrade(url, "0001_local_accounts")
    with pytest.raises(db.DatabaseError, match="twinhub up"):
        TwinhubLocalAuth(db_url=url)
    assert db.current_revision(url) == "0001_local_accounts"  # left for the backup step
    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    TwinhubLocalAuth(db_url=fresh)  # nothing to back up: tables are created
    assert db.current_revision(fresh) == db.head_revision()


def test_first_admin_never_promotes_an_existing_request(tmp_path):
    rt = Runtime(state_dir=tmp_path, config=Config({"Twinhub": {"admin_user": "boss"}}))
    db.upgrade(rt.db_url)
    local_accounts.request_account(rt.db_url, "boss", "someones-password")
    assert part.ensure_first_admin(rt) is None
    info = local_accounts.get_account(rt.db_url, "boss")
    assert not info.is_admin and not info.approved


def test_signup_requests_are_bounded(tmp_path):
    import asyncio

    url = f"sqlite:///{tmp_path / 'twinhub.sqlite'}"
    db.upgrade(url)
    a = TwinhubLocalAuth(db_url=url, max_pending_signups=2)
    for name in ("one", "two"):
        asyncio.run(a.request_account(name, "password-" + name))
    with pytest.raises(local_accounts.AccountError, match="too many account requests"):
        asyncio.run(a.request_account("three", "password-three"))
    local_accounts.set_approved(url, "one")  # approving frees a place
    assert asyncio.run(a.request_account("three", "password-three")).approved is False
    closed = TwinhubLocalAuth(db_url=url, enable_signup=False)
    with pytest.raises(local_accounts.AccountError, match="signup is disabled"):
        asyncio.run(closed.request_account("four", "password-four"))

"""Local accounts in twinhub's own database (``local_accounts``): create, approve, verify.

Used by the authenticator (in the hub process) and by the CLI (``twinhub user add``), so
every function takes the database URL and opens its own short session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from ..config import Twinhub
from ..db import LocalAccount, session
from ..spawn.os_accounts import check_platform_name
from .passwords import generate_password, hash_password, needs_rehash, verify_password

log = logging.getLogger("twinhub.auth")

DEFAULT_MIN_PASSWORD_LENGTH = 10


class AccountError(ValueError):
    """A request about an account cannot be done; the message says why (shown to users)."""


@dataclass(frozen=True)
class AccountInfo:
    username: str
    account_id: str
    is_admin: bool
    approved: bool
    created_at: datetime


def _info(row: LocalAccount) -> AccountInfo:
    return AccountInfo(row.username, row.account_id, row.is_admin, row.approved, row.created_at)


def normalize_username(name: str, prefix: str = "twin-") -> str:
    """Lowercase ``name`` and check it can become an OS account (``<prefix><name>``).

    Names are validated once, here, for every way an account is made, so the multi-user
    spawner never meets a name it cannot map.
    """
    name = (name or "").strip().lower()
    if not name:
        raise AccountError("user name must not be empty")
    try:
        check_platform_name(name, prefix)
    except ValueError as e:
        raise AccountError(str(e)) from e
    return name


def check_password_policy(
    password: str, username: str, min_length: int = DEFAULT_MIN_PASSWORD_LENGTH
) -> None:
    if not password:
        raise AccountError("password must not be empty")
    if len(password) < min_length:
        raise AccountError(f"password too short: at least {min_length} characters")
    if password.strip().lower() == username.lower():
        raise AccountError("password must differ from the user name")


def create_account(
    db_url: str,
    name: str,
    admin: bool = False,
    *,
    password: str | None = None,
    approved: bool = True,
    min_length: int = DEFAULT_MIN_PASSWORD_LENGTH,
    prefix: str = "twin-",
) -> str:
    """Create account ``name``; returns its password (generated unless given).

    The password is returned once for the caller to show; only its hash is stored.
    Raises AccountError (a ValueError) when the name is invalid or taken.
    """
    name = normalize_username(name, prefix)
    if password is None:
        password = generate_password()
    else:
        check_password_policy(password, name, min_length)
    row = LocalAccount(
        username=name, password_hash=hash_password(password), is_admin=admin, approved=approved
    )
    try:
        with session(db_url) as s:
            s.add(row)
    except IntegrityError as e:
        raise AccountError(f"account {name!r} already exists") from e
    log.info("created %saccount %s (%s)", "admin " if admin else "", name,
             "approved" if approved else "awaiting approval")  # fmt: skip
    return password


def request_account(
    db_url: str,
    name: str,
    password: str,
    *,
    approved: bool = False,
    min_length: int = DEFAULT_MIN_PASSWORD_LENGTH,
    prefix: str = "twin-",
) -> AccountInfo:
    """A user's own signup: stored unapproved (unless ``approved``) with their password."""
    create_account(
        db_url, name, password=password, approved=approved, min_length=min_length, prefix=prefix
    )
    info = get_account(db_url, name)
    assert info is not None
    return info


def get_account(db_url: str, name: str) -> AccountInfo | None:
    with session(db_url) as s:
        row = s.scalar(select(LocalAccount).where(LocalAccount.username == name.strip().lower()))
        return _info(row) if row else None


def count_pending(db_url: str) -> int:
    with session(db_url) as s:
        return s.scalar(select(func.count()).where(LocalAccount.approved.is_(False))) or 0


def list_accounts(db_url: str, *, approved: bool | None = None) -> list[AccountInfo]:
    """Accounts by name; only approved (True) or pending (False) ones when asked."""
    q = select(LocalAccount).order_by(LocalAccount.username)
    if approved is not None:
        q = q.where(LocalAccount.approved == approved)
    with session(db_url) as s:
        return [_info(r) for r in s.scalars(q)]


def _update(db_url: str, name: str, **values) -> bool:
    with session(db_url) as s:
        row = s.scalar(select(LocalAccount).where(LocalAccount.username == name))
        if row is None:
            return False
        for k, v in values.items():
            setattr(row, k, v)
        return True


def set_approved(db_url: str, name: str, approved: bool = True) -> bool:
    """Approve (or withdraw approval of) ``name``; False when there is no such account."""
    return _update(db_url, name, approved=approved)


def set_admin(db_url: str, name: str, admin: bool) -> bool:
    return _update(db_url, name, is_admin=admin)


def delete_account(db_url: str, name: str) -> bool:
    with session(db_url) as s:
        row = s.scalar(select(LocalAccount).where(LocalAccount.username == name))
        if row is None:
            return False
        s.delete(row)
        return True


def set_password(
    db_url: str, name: str, password: str, *, min_length: int = DEFAULT_MIN_PASSWORD_LENGTH
) -> None:
    check_password_policy(password, name, min_length)
    if not _update(db_url, name, password_hash=hash_password(password)):
        raise AccountError(f"no account {name!r}")


def verify_login(db_url: str, name: str, password: str) -> AccountInfo | None:
    """The account when ``password`` is right (approved or not: the caller decides), else None.

    A stored hash made with older parameters is replaced on success.
    """
    name = (name or "").strip().lower()
    with session(db_url) as s:
        row = s.scalar(select(LocalAccount).where(LocalAccount.username == name))
        # Verify even without a row: same time either way.
        if not verify_password(row.password_hash if row else None, password or ""):
            return None
        assert row is not None
        if needs_rehash(row.password_hash):
            row.password_hash = hash_password(password)
        return _info(row)


def ensure_first_admin(
    rt,
    password: Callable[[], str] | None = None,
    *,
    min_length: int = DEFAULT_MIN_PASSWORD_LENGTH,
) -> str | None:
    """Create ``Twinhub.admin_user`` the first time; returns its password: ``password()``
    (checked against ``min_length``; called only then, so a restarted hub needs no secret)
    or a generated one.

    None when the account already exists (its password is never shown again).
    """
    tw = Twinhub(config=rt.config)
    name = tw.admin_user
    existing = get_account(rt.db_url, name)
    if existing is not None:
        if not (existing.is_admin and existing.approved):
            # Never promote an existing account: it may be someone's signup request that
            # happens to carry the name the operator later chose for the admin.
            log.warning(
                "Twinhub.admin_user %r exists but is not an approved admin account; "
                "approve it on /hub/authorize if that is intended",
                name,
            )
        return None
    return create_account(rt.db_url, name, admin=True, prefix=tw.user_prefix,
                          password=password() if password else None,
                          min_length=min_length)  # fmt: skip


def password_state(db_url: str, name: str) -> str | None:
    """The stored hash of ``name``'s password (None: no such account). A set-password link
    is signed over it, so setting a password spends the link (:mod:`twinhub.auth.links`)."""
    with session(db_url) as s:
        row = s.scalar(select(LocalAccount).where(LocalAccount.username == name))
        return row.password_hash if row else None


def replace_password(
    db_url: str, name: str, password: str, expected_hash: str, *, min_length: int
) -> bool:
    """Set ``name``'s password only if its hash is still ``expected_hash`` (one link, one use,
    even for two requests at once); False when it changed meanwhile."""
    check_password_policy(password, name, min_length)
    new_hash = hash_password(password)
    with session(db_url) as s:
        # One UPDATE ... WHERE hash = expected: atomic in SQLite and PostgreSQL alike.
        done = s.execute(
            update(LocalAccount)
            .where(LocalAccount.username == name, LocalAccount.password_hash == expected_hash)
            .values(password_hash=new_hash)
        )
        return bool(done.rowcount)

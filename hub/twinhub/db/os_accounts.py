"""Which OS account each platform user runs as (multi-user mode), kept in ``os_accounts``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from .models import OsAccount
from .schema import session


@dataclass(frozen=True)
class OsAccountRecord:
    platform_user: str
    os_name: str
    uid: int
    created_at: datetime


def _record(row: OsAccount) -> OsAccountRecord:
    return OsAccountRecord(row.platform_user, row.os_name, row.uid, row.created_at)


def record_os_account(db_url: str, platform_user: str, os_name: str, uid: int) -> OsAccountRecord:
    """Remember that ``platform_user`` runs as OS account ``os_name`` (``uid``).

    Recording the same mapping again updates the uid (an account re-created after removal);
    an OS name already recorded for a *different* platform user is refused (ValueError),
    because two platform users must never share files.
    """
    if not platform_user or not os_name:
        raise ValueError("platform_user and os_name must not be empty")
    if uid < 0:
        raise ValueError(f"uid must be >= 0, got {uid}")
    try:
        with session(db_url) as s:
            row = s.get(OsAccount, platform_user)
            if row is None:
                row = OsAccount(platform_user=platform_user, os_name=os_name, uid=uid)
                s.add(row)
            else:
                row.os_name, row.uid = os_name, uid
            s.flush()
            return _record(row)
    except IntegrityError as e:
        raise ValueError(
            f"OS account {os_name!r} is already recorded for another platform user"
        ) from e


def get_os_account(db_url: str, platform_user: str) -> OsAccountRecord | None:
    with session(db_url) as s:
        row = s.get(OsAccount, platform_user)
        return _record(row) if row else None


def list_os_accounts(db_url: str) -> list[OsAccountRecord]:
    """Every recorded mapping, by platform user name."""
    with session(db_url) as s:
        rows = s.scalars(select(OsAccount).order_by(OsAccount.platform_user)).all()
        return [_record(r) for r in rows]


def forget_os_account(db_url: str, platform_user: str) -> bool:
    """Drop the mapping of ``platform_user``; True when there was one."""
    with session(db_url) as s:
        row = s.get(OsAccount, platform_user)
        if row is None:
            return False
        s.delete(row)
        return True

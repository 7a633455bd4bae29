"""twinhub's own tables (SQLAlchemy 2 declarative models).

Adding a table: define its model here (or in a module imported by ``twinhub.db``), then add a
migration under ``migrations/versions/`` whose ``down_revision`` is the current head (see
docs/accounts.md, "Adding a table").  Models describe the *newest* schema; migrations are how
an existing database gets there, so never edit a migration that has been released.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Boolean, DateTime, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: SQLite can only change constraints through Alembic's batch
# mode, which needs to find them by name; PostgreSQL gets the same names.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_account_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LocalAccount(Base):
    """A platform account of the embedded authenticator (one row per user name)."""

    __tablename__ = "local_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stable identifier that survives renames; what later tables (allocations, accounting)
    # should reference instead of the user name.
    account_id: Mapped[str] = mapped_column(
        String(32), unique=True, nullable=False, default=new_account_id
    )
    username: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    # argon2id encoded hash (algorithm, parameters and salt included); never the password.
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    is_admin: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    approved: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )

    def __repr__(self) -> str:
        state = "approved" if self.approved else "pending"
        return f"<LocalAccount {self.username} {state}{' admin' if self.is_admin else ''}>"


class OsAccount(Base):
    """The OS account a platform user runs as in multi-user mode."""

    __tablename__ = "os_accounts"

    platform_user: Mapped[str] = mapped_column(String(255), primary_key=True)
    os_name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    uid: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class PlatformMeta(Base):
    """Key/value facts about the platform instance (schema and platform version, ...)."""

    __tablename__ = "platform_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )


# Tables whose models live in their own modules register on Base.metadata when imported:
# import them here so migrations checks and sessions always see every table.
from . import allocations as _allocations  # noqa: E402,F401

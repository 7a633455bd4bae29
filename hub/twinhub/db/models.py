"""twinhub's own tables (SQLAlchemy 2 declarative models).

Every table of twinhub is here (as JupyterHub keeps all of its own in ``orm.py``); the code
that reads and writes a table lives with its concern. Adding a table: define its model here, then add a
migration under ``migrations/versions/`` whose ``down_revision`` is the current head (see
docs/accounts.md, "Adding a table").  Models describe the *newest* schema; migrations are how
an existing database gets there, so never edit a migration that has been released.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Integer, MetaData, String, Text
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


class OidcIdentity(Base):
    """One OpenID Connect identity and the platform user name it owns."""

    __tablename__ = "oidc_identities"

    issuer: Mapped[str] = mapped_column(String(512), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    username: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    # What the provider called the user at their latest login (renames are visible here).
    provider_username: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    last_login_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )


class StorageCredential(Base):
    """A platform user's object-store identity: access key, secret key, private bucket."""

    __tablename__ = "storage_credentials"

    platform_user: Mapped[str] = mapped_column(String(255), primary_key=True)
    access_key: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    # The object store needs the secret itself to check signatures (SigV4 is symmetric), so
    # it is kept as is; this database file is 0600 and the value never goes to a log.
    secret_key: Mapped[str] = mapped_column(String(128), nullable=False)
    home_bucket: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )

    def __repr__(self) -> str:  # never the secret
        return f"<StorageCredential {self.platform_user} {self.access_key} {self.home_bucket}>"


class ProjectAllocation(Base):
    """An admin's allocation for one project (a hub group), winning over configuration."""

    __tablename__ = "project_allocations"

    project: Mapped[str] = mapped_column(String(255), primary_key=True)
    # The validated allocation (twinhub.services.projects.allocations.validate_allocation), all keys present.
    allocation: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    updated_by: Mapped[str] = mapped_column(String(255), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )

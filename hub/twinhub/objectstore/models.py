"""The ``storage_credentials`` table (migration 0003): one S3 key pair per platform user."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from ..db.models import Base, utcnow


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

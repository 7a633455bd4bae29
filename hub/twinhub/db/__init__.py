"""twinhub's own database: SQLAlchemy models, sessions and Alembic migrations.

``db_url`` is ``Runtime.db_url``: SQLite in the state directory by default, or PostgreSQL
(``postgresql+psycopg://...``).  Tables are only ever created or changed by migrations
(:func:`upgrade`), which the supervisor runs after a backup (:func:`backup_and_upgrade`).
"""

from .backup import UpgradeReport, backup_and_upgrade, default_hub_db_url, upgrade_hub_db
from .models import (
    Base,
    LocalAccount,
    OidcIdentity,
    OsAccount,
    PlatformMeta,
    ProjectAllocation,
    StorageCredential,
)
from .schema import (
    DatabaseError,
    check_schema,
    current_revision,
    dispose_engines,
    engine,
    head_revision,
    iso,
    redacted,
    session,
    upgrade,
)

__all__ = [
    "Base",
    "DatabaseError",
    "LocalAccount",
    "OsAccount",
    "OidcIdentity",
    "PlatformMeta",
    "ProjectAllocation",
    "StorageCredential",
    "UpgradeReport",
    "backup_and_upgrade",
    "check_schema",
    "current_revision",
    "default_hub_db_url",
    "dispose_engines",
    "engine",
    "head_revision",
    "iso",
    "redacted",
    "session",
    "upgrade",
    "upgrade_hub_db",
]

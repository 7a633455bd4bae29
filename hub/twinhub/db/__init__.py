"""twinhub's own database: SQLAlchemy models, sessions and Alembic migrations.

``db_url`` is ``Runtime.db_url``: SQLite in the state directory by default, or PostgreSQL
(``postgresql+psycopg://...``).  Tables are only ever created or changed by migrations
(:func:`upgrade`), which the supervisor runs after a backup (:func:`backup_and_upgrade`).
"""

from .backup import UpgradeReport, backup_and_upgrade, default_hub_db_url, upgrade_hub_db
from .identities import IdentityConflict, OidcIdentity
from .models import Base, LocalAccount, OsAccount, PlatformMeta
from .os_accounts import (
    OsAccountRecord,
    forget_os_account,
    get_os_account,
    list_os_accounts,
    record_os_account,
)
from .schema import (
    DatabaseError,
    check_schema,
    current_revision,
    dispose_engines,
    engine,
    head_revision,
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
    "OsAccountRecord",
    "PlatformMeta",
    "UpgradeReport",
    "backup_and_upgrade",
    "check_schema",
    "current_revision",
    "default_hub_db_url",
    "dispose_engines",
    "engine",
    "forget_os_account",
    "get_os_account",
    "head_revision",
    "IdentityConflict",
    "list_os_accounts",
    "record_os_account",
    "redacted",
    "session",
    "upgrade",
    "upgrade_hub_db",
]

# The object store's table is modelled beside its code; registering it here (last: its module
# imports this package) keeps Base.metadata complete for migration checks in any import order.
from ..objectstore import models as _storage_models  # noqa: E402,F401

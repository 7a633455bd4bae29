"""Alembic environment for twinhub's own tables.

Run programmatically by :func:`twinhub.db.upgrade`, which hands over an open connection in
``config.attributes["connection"]``; no alembic.ini exists on disk.
"""

from alembic import context

from twinhub.db.models import Base
from twinhub.db.schema import VERSION_TABLE

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "twinhub migrations run through twinhub.db.upgrade(db_url), not the alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # Our own version table: twinhub's tables may share a PostgreSQL database with the hub's,
    # and JupyterHub keeps its revision in the default ``alembic_version``.
    version_table=VERSION_TABLE,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()

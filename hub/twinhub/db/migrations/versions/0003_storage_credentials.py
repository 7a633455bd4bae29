"""storage_credentials: each platform user's S3 access key for the object store

Revision ID: 0003_storage_credentials
Revises: 0002_os_accounts
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_storage_credentials"
down_revision = "0002_os_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_credentials",
        sa.Column("platform_user", sa.String(255), nullable=False),
        sa.Column("access_key", sa.String(64), nullable=False),
        sa.Column("secret_key", sa.String(128), nullable=False),
        sa.Column("home_bucket", sa.String(63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("platform_user", name="pk_storage_credentials"),
        sa.UniqueConstraint("access_key", name="uq_storage_credentials_access_key"),
        sa.UniqueConstraint("home_bucket", name="uq_storage_credentials_home_bucket"),
    )


def downgrade() -> None:
    op.drop_table("storage_credentials")

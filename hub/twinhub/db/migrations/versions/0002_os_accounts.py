"""os_accounts: platform user -> OS account (was a JSON file of the spawner)

Revision ID: 0002_os_accounts
Revises: 0001_local_accounts
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_os_accounts"
down_revision = "0001_local_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "os_accounts",
        sa.Column("platform_user", sa.String(255), nullable=False),
        sa.Column("os_name", sa.String(64), nullable=False),
        sa.Column("uid", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("platform_user", name="pk_os_accounts"),
        sa.UniqueConstraint("os_name", name="uq_os_accounts_os_name"),
    )


def downgrade() -> None:
    op.drop_table("os_accounts")

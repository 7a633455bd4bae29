"""project_allocations: allocations of projects changed by admins at run time

Revision ID: 0005_allocations
Revises: 0004_oidc_identities
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_allocations"
down_revision = "0004_oidc_identities"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_allocations",
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("allocation", sa.JSON(), nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", name="pk_project_allocations"),
    )


def downgrade() -> None:
    op.drop_table("project_allocations")

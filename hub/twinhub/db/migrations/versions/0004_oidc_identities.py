"""oidc_identities: OpenID Connect identity (issuer, sub) -> platform user name

Revision ID: 0004_oidc_identities
Revises: 0003_storage_credentials
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_oidc_identities"
down_revision = "0003_storage_credentials"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oidc_identities",
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("username", sa.String(255), nullable=False),
        sa.Column("provider_username", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "subject", name="pk_oidc_identities"),
        sa.UniqueConstraint("username", name="uq_oidc_identities_username"),
    )


def downgrade() -> None:
    op.drop_table("oidc_identities")

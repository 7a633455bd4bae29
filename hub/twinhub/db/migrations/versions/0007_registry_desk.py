"""registry and service desk: onboarding requests, their audit trail, entry versions,
health checks; tickets, their messages and attachments

Revision ID: 0007_registry_desk
Revises: 0006_accounting
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_registry_desk"
down_revision = "0006_accounting"
branch_labels = None
depends_on = None

# As models.BigId: 64-bit on PostgreSQL, SQLite's autoincrementing INTEGER rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: A request that still holds its slug (models.RegistryRequest's partial unique index).
LIVE = "state NOT IN ('rejected', 'retired')"


def upgrade() -> None:
    op.create_table(
        "registry_requests",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(255), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("entry", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("activity", sa.Text(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=True),
        sa.Column("upstream", sa.Text(), nullable=True),
        sa.Column("allow_private", sa.Boolean(), nullable=False),
        sa.Column("sandbox", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_requests"),
    )
    op.create_index("ix_registry_requests_slug", "registry_requests", ["slug"])
    op.create_index(
        "uq_registry_requests_live_slug",
        "registry_requests",
        ["slug"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )
    op.create_index("ix_registry_requests_state", "registry_requests", ["state"])
    op.create_index("ix_registry_requests_provider", "registry_requests", ["provider"])
    op.create_index("ix_registry_requests_updated", "registry_requests", ["updated_at"])
    op.create_table(
        "registry_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=True),
        sa.Column("to_state", sa.String(32), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_registry_events"),
    )
    op.create_index("ix_registry_events_request_id", "registry_events", ["request_id", "id"])
    op.create_table(
        "registry_entry_versions",
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("entry", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "version", name="pk_registry_entry_versions"),
    )
    op.create_table(
        "registry_health",
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("slug", name="pk_registry_health"),
    )
    op.create_table(
        "desk_tickets",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("service", sa.String(64), nullable=True),
        sa.Column("project", sa.String(255), nullable=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_desk_tickets"),
    )
    op.create_index("ix_desk_tickets_owner", "desk_tickets", ["owner"])
    op.create_index("ix_desk_tickets_state", "desk_tickets", ["state"])
    op.create_table(
        "desk_messages",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("ticket_id", BigId, nullable=False),
        sa.Column("author", sa.String(255), nullable=False),
        sa.Column("staff", sa.Boolean(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_desk_messages"),
    )
    op.create_index("ix_desk_messages_ticket_id", "desk_messages", ["ticket_id", "id"])
    op.create_table(
        "desk_attachments",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("ticket_id", BigId, nullable=False),
        sa.Column("message_id", BigId, nullable=True),
        sa.Column("uploader", sa.String(255), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(127), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_desk_attachments"),
    )
    op.create_index("ix_desk_attachments_ticket_id", "desk_attachments", ["ticket_id"])


def downgrade() -> None:
    op.drop_index("ix_desk_attachments_ticket_id", table_name="desk_attachments")
    op.drop_table("desk_attachments")
    op.drop_index("ix_desk_messages_ticket_id", table_name="desk_messages")
    op.drop_table("desk_messages")
    op.drop_index("ix_desk_tickets_state", table_name="desk_tickets")
    op.drop_index("ix_desk_tickets_owner", table_name="desk_tickets")
    op.drop_table("desk_tickets")
    op.drop_table("registry_health")
    op.drop_table("registry_entry_versions")
    op.drop_index("ix_registry_events_request_id", table_name="registry_events")
    op.drop_table("registry_events")
    op.drop_index("ix_registry_requests_updated", table_name="registry_requests")
    op.drop_index("ix_registry_requests_provider", table_name="registry_requests")
    op.drop_index("ix_registry_requests_state", table_name="registry_requests")
    op.drop_index("uq_registry_requests_live_slug", table_name="registry_requests")
    op.drop_index("ix_registry_requests_slug", table_name="registry_requests")
    op.drop_table("registry_requests")

"""accounting: usage sources, cursors, records, roll-ups, budget states, enforcement events

Revision ID: 0006_accounting
Revises: 0005_allocations
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_accounting"
down_revision = "0005_allocations"
branch_labels = None
depends_on = None

# As models.BigId: 64-bit on PostgreSQL, SQLite's autoincrementing INTEGER rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage_sources",
        sa.Column("source_id", sa.String(255), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("probe", sa.JSON(), nullable=True),
        sa.Column("final_read", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source_id", name="pk_usage_sources"),
    )
    op.create_index("ix_usage_sources_project", "usage_sources", ["project"])
    op.create_table(
        "usage_cursors",
        sa.Column("source_id", sa.String(255), nullable=False),
        sa.Column("counter", sa.String(128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source_id", "counter", name="pk_usage_cursors"),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("source_id", sa.String(255), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=True),
        sa.Column("source_kind", sa.String(32), nullable=False),
        sa.Column("resource", sa.String(32), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quantity", sa.Float(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=True),
        sa.Column("energy_method", sa.String(16), nullable=False),
        sa.Column("co2e_g", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_usage_records"),
        sa.UniqueConstraint("source_id", "resource", "start", name="uq_usage_records_source_id"),
    )
    op.create_index("ix_usage_records_user_start", "usage_records", ["user", "start"])
    op.create_index("ix_usage_records_project_start", "usage_records", ["project", "start"])
    op.create_index("ix_usage_records_end", "usage_records", ["end"])
    op.create_table(
        "usage_rollups",
        sa.Column("scope_kind", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(511), nullable=False),
        sa.Column("step", sa.String(8), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cpu_core_s", sa.Float(), nullable=False),
        sa.Column("memory_gib_s", sa.Float(), nullable=False),
        sa.Column("gpu_s", sa.Float(), nullable=False),
        sa.Column("dask_worker_s", sa.Float(), nullable=False),
        sa.Column("storage_gib_s", sa.Float(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("co2e_g", sa.Float(), nullable=False),
        sa.Column("methods", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "scope_kind", "scope", "step", "bucket_start", name="pk_usage_rollups"
        ),
    )
    op.create_table(
        "budget_states",
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("budget", sa.String(32), nullable=False),
        sa.Column("used", sa.Float(), nullable=True),
        sa.Column("limit", sa.Float(), nullable=True),
        sa.Column("fraction", sa.Float(), nullable=True),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("over_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project", "budget", name="pk_budget_states"),
    )
    op.create_table(
        "enforcement_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(255), nullable=True),
        sa.Column("server", sa.String(255), nullable=True),
        sa.Column("cluster", sa.String(255), nullable=True),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("budget", sa.String(32), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_enforcement_events"),
    )
    op.create_index("ix_enforcement_events_project_at", "enforcement_events", ["project", "at"])


def downgrade() -> None:
    op.drop_index("ix_enforcement_events_project_at", table_name="enforcement_events")
    op.drop_table("enforcement_events")
    op.drop_table("budget_states")
    op.drop_table("usage_rollups")
    op.drop_index("ix_usage_records_end", table_name="usage_records")
    op.drop_index("ix_usage_records_project_start", table_name="usage_records")
    op.drop_index("ix_usage_records_user_start", table_name="usage_records")
    op.drop_table("usage_records")
    op.drop_table("usage_cursors")
    op.drop_index("ix_usage_sources_project", table_name="usage_sources")
    op.drop_table("usage_sources")

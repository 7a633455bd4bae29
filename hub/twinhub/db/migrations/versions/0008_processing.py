"""processing: jobs, their logs, user-registered processes

Revision ID: 0008_processing
Revises: 0007_registry_desk
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_processing"
down_revision = "0007_registry_desk"
branch_labels = None
depends_on = None

# As models.BigId: 64-bit on PostgreSQL, SQLite's autoincrementing INTEGER rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "processing_jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("process_id", sa.String(64), nullable=False),
        sa.Column("process_version", sa.String(32), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("stages", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("runner", sa.JSON(), nullable=True),
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("cluster", sa.String(255), nullable=False),
        sa.Column("output_prefix", sa.Text(), nullable=False),
        sa.Column("output_bytes", sa.BigInteger(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=True),
        sa.Column("source_items", sa.JSON(), nullable=False),
        sa.Column("stac_item", sa.Text(), nullable=False),
        sa.Column("wall_time", sa.Float(), nullable=False),
        sa.Column("max_output_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_processing_jobs"),
    )
    op.create_index("ix_processing_jobs_owner", "processing_jobs", ["owner", "created_at"])
    op.create_index("ix_processing_jobs_status", "processing_jobs", ["status"])
    op.create_index("ix_processing_jobs_project", "processing_jobs", ["project", "status"])
    op.create_table(
        "processing_logs",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_processing_logs"),
    )
    op.create_index("ix_processing_logs_job_id", "processing_logs", ["job_id", "id"])
    op.create_table(
        "processing_user_processes",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("visibility", sa.String(300), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.JSON(), nullable=False),
        sa.Column("code", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("python", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_processing_user_processes"),
    )
    op.create_index("ix_processing_user_processes_owner", "processing_user_processes", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_processing_user_processes_owner", table_name="processing_user_processes")
    op.drop_table("processing_user_processes")
    op.drop_index("ix_processing_logs_job_id", table_name="processing_logs")
    op.drop_table("processing_logs")
    op.drop_index("ix_processing_jobs_project", table_name="processing_jobs")
    op.drop_index("ix_processing_jobs_status", table_name="processing_jobs")
    op.drop_index("ix_processing_jobs_owner", table_name="processing_jobs")
    op.drop_table("processing_jobs")

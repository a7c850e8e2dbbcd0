"""create stack_jobs

Revision ID: 0001_jobs
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_jobs"
down_revision = None
branch_labels = None
depends_on = None

STATUSES = ("pending", "started", "progress", "success", "failure", "retry", "revoked")


def upgrade() -> None:
    op.create_table(
        "stack_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*STATUSES, name="jobstatus", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("message", sa.String(500), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_stack_jobs_status_created", "stack_jobs", ["status", "created_at"])
    op.create_index("ix_stack_jobs_kind_created", "stack_jobs", ["kind", "created_at"])


def downgrade() -> None:
    op.drop_table("stack_jobs")

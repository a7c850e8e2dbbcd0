"""worker liveness: stack_workers, and who owns each job's current attempt

Revision ID: 0002_liveness
Revises: 0001_jobs
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_liveness"
down_revision = "0001_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stack_workers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("queues", sa.JSON, nullable=False),
        sa.Column("running", sa.JSON, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("stack_jobs") as batch:
        batch.add_column(sa.Column("lost_attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("worker_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("worker_pid", sa.Integer, nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    # The sweep looks for running jobs by status; this keeps it an index scan on a big table.
    op.create_index("ix_stack_jobs_status_updated", "stack_jobs", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_stack_jobs_status_updated", "stack_jobs")
    with op.batch_alter_table("stack_jobs") as batch:
        for column in ("claimed_at", "worker_pid", "worker_id", "lost_attempts"):
            batch.drop_column(column)
    op.drop_table("stack_workers")

"""canary jobs: the ones `stack doctor` sends, left out of the default job listing

Revision ID: 0003_canary
Revises: 0002_liveness
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_canary"
down_revision = "0002_liveness"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stack_jobs") as batch:
        batch.add_column(sa.Column("canary", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("stack_jobs") as batch:
        batch.drop_column("canary")

"""Alembic environment for stack's own tables; driven from stack.jobs.migrate, not alembic.ini."""

from alembic import context

from stack.jobs.migrate import VERSION_TABLE
from stack.jobs.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

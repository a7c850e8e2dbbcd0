"""Bring the database to the newest schema. Runs in the `migrate` and `api` roles, never workers."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

log = logging.getLogger(__name__)

VERSION_TABLE = "stack_alembic_version"  # ours, so it never collides with the app's own alembic
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same in every process that migrates.
_ADVISORY_LOCK_KEY = 0x57AC_0001


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine) -> str:
    """Upgrade to head and return the revision. Safe when several API replicas start at once:
    on PostgreSQL they queue on an advisory lock instead of racing on CREATE TABLE."""
    config = _config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        config.attributes["connection"] = connection
        before = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
        command.upgrade(config, "head")
    head = head_revision()
    if before == head:
        log.info("database already at revision %s", head)
    else:
        log.info("database migrated from %s to %s", before or "empty", head)
    return head

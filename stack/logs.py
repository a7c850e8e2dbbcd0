"""Logging setup, called only by entry points (CLI, the uvicorn factory)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


# Chatty at INFO about things nobody acts on ("setup plugin ...", "Will assume ... DDL").
_QUIET = ("alembic.runtime.plugins", "alembic.runtime.migration")


def configure_logging(level: str = "info") -> None:
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
    root = logging.getLogger()
    if root.handlers:  # a host (uvicorn, celery, pytest) configured it already
        logging.getLogger("stack").setLevel(level.upper())
        return
    logging.basicConfig(level=level.upper(), format=FORMAT, datefmt="%H:%M:%S")

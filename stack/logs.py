"""Logging setup, called only by entry points (CLI, the uvicorn factory)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "info") -> None:
    root = logging.getLogger()
    if root.handlers:  # a host (uvicorn, celery, pytest) configured it already
        logging.getLogger("stack").setLevel(level.upper())
        return
    logging.basicConfig(level=level.upper(), format=FORMAT, datefmt="%H:%M:%S")

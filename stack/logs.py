"""Logging setup: one format for every role, called only by entry points.

Every process of the stack (the `stack` CLI, uvicorn, Celery's worker and beat, Flower) logs
through one handler on the root logger, so a terminal shows one format whatever wrote the line:

- text (development): `LEVEL logger: message`, no timestamp — honcho's prefix (or journald's,
  or `docker logs -t`) already carries the time, and two timestamps a line is noise;
- json (STACK_LOG_FORMAT=json, the default with APP_ENV=production): one object a line with
  time, level, logger, message, and `job_id` / `kind` while a job runs (`job_logging`).

Lines a person does not act on (a server that started as it always does, a message received)
are demoted to DEBUG here, by logger and message, since the libraries log them at INFO.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from stack.errors import ConfigError

if TYPE_CHECKING:
    from stack.config import Settings

TEXT_FORMAT = "%(levelname)-7s %(name)s: %(message)s"
LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")

# Loggers that libraries give handlers of their own (uvicorn's default config, Celery's hijack,
# tornado's pretty logging): their lines must reach our root handler instead, once.
HOST_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "celery",
    "celery.task",
    "celery.redirected",
    "tornado",
    "tornado.application",
    "tornado.general",
)

# billiard's pool logs to "multiprocessing" and cuts it off from the root logger: it gets the
# handler itself (at ERROR, as Celery would: "Process 'ForkPoolWorker-1' ... exited with signal 9").
POOL_LOGGER = "multiprocessing"

# Every INFO line of these loggers is routine ("setup plugin ...", "Will assume ... DDL").
ROUTINE_LOGGERS = ("alembic.runtime",)

# (logger, message template) of routine lines logged at INFO or WARNING by libraries.
ROUTINE_MESSAGES = frozenset(
    {
        # uvicorn: a start or stop that went as always; "Uvicorn running on ..." stays.
        ("uvicorn.error", "Started server process [%d]"),
        ("uvicorn.error", "Finished server process [%d]"),
        ("uvicorn.error", "Waiting for application startup."),
        ("uvicorn.error", "Application startup complete."),
        ("uvicorn.error", "Waiting for application shutdown."),
        ("uvicorn.error", "Application shutdown complete."),
        ("uvicorn.error", "Shutting down"),
        # Celery: a periodic task sent on time, every period, forever. (A job's task lines,
        # "Task jobs.x[id] received / succeeded", stay: they show each delivery of a message.)
        ("celery.beat", "Scheduler: Sending due task %s (%s)"),
        # Flower: it asks the workers before any has started, and retries; nobody acts on these.
        ("flower.command", "Broker: %s"),
        ("flower.command", "Registered tasks: \n%s"),
        ("flower.inspector", "Inspect method %s failed"),
        ("flower.inspector", "Inspect method %s failed: %s"),
        ("kombu.mixins", "Connected to %s"),
    }
)

# Celery's ERROR, with a traceback of billiard's internals, for an attempt whose pool process
# died or was killed at the hard time limit: stack's WARNING already names the job and what became
# of it (stack.jobs.supervision).
ANNOUNCED_BY_STACK = frozenset({"WorkerLostError", "TimeLimitExceeded"})

_job: ContextVar[tuple[str, str | None] | None] = ContextVar("stack_job", default=None)


@contextlib.contextmanager
def job_logging(job_id: str, kind: str | None = None) -> Iterator[None]:
    """Tag every record logged inside the block (this thread or task) with the job's id and kind."""
    token = _job.set((job_id, kind))
    try:
        yield
    finally:
        _job.reset(token)


class JobContext(logging.Filter):
    """Adds `job_id` and `kind` to records logged inside `job_logging` (JSON lines show them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _job.get()
        if current is not None:
            job_id, kind = current
            if not hasattr(record, "job_id"):
                record.job_id = job_id
            if kind and not hasattr(record, "kind"):
                record.kind = kind
        return True


class Routine(logging.Filter):
    """Demotes routine library lines to DEBUG, then drops them below the configured level (the
    logger already let them through at their original level)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if is_routine(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.level


def is_routine(record: logging.LogRecord) -> bool:
    if isinstance(record.msg, str) and (record.name, record.msg) in ROUTINE_MESSAGES:
        return True
    if record.name == "celery.worker.request" and record.msg == "Task handler raised error: %r":
        args = record.args if isinstance(record.args, tuple) else ()
        return bool(args) and type(args[0]).__name__ in ANNOUNCED_BY_STACK
    return record.levelno == logging.INFO and record.name.startswith(ROUTINE_LOGGERS)


class StackHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler of the root logger; a class of its own so configuring twice replaces it."""


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",  # ISO 8601, UTC
            # uvicorn's coloured copy of the message; Celery's formatting arguments
            reserved_attrs=[*RESERVED_ATTRS, "taskName", "color_message", "data"],
        )
    return logging.Formatter(TEXT_FORMAT)


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    if level.lower() not in LEVELS:
        raise ConfigError(f"STACK_LOG_LEVEL={level!r} is not a log level; use one of {', '.join(LEVELS)}")
    return logging.getLevelNamesMapping()[level.upper()]


def log_format(settings: Settings) -> str:
    """STACK_LOG_FORMAT, or json in production and text elsewhere when it is unset."""
    chosen = settings.log_format or ("json" if settings.is_production else "text")
    if chosen not in FORMATS:
        raise ConfigError(f"STACK_LOG_FORMAT={chosen!r} is not a log format; use text or json")
    return chosen


def configure_logging(level: str | int = "info", *, fmt: str = "text") -> StackHandler:
    """Route every logger through one handler on the root logger, in format `fmt` (text | json).
    Safe to call again (by uvicorn's factory, Celery's signal): the handler is replaced, not added."""
    threshold = parse_level(level)
    handler = StackHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(JobContext())
    handler.addFilter(Routine(threshold))
    root, pool = logging.getLogger(), logging.getLogger(POOL_LOGGER)
    for logger in (root, pool):
        for old in [h for h in logger.handlers if isinstance(h, StackHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
    root.setLevel(threshold)
    pool.setLevel(max(threshold, logging.ERROR))
    pool.propagate = False  # it has the handler itself: one line, not two
    for name in HOST_LOGGERS:
        host = logging.getLogger(name)
        host.handlers.clear()
        host.propagate = True
    capture_warnings()
    return handler


def configure_for(settings: Settings, *, level: str | int | None = None) -> StackHandler:
    """`configure_logging` with STACK_LOG_LEVEL (unless `level` overrides it) and STACK_LOG_FORMAT."""
    return configure_logging(settings.log_level if level is None else level, fmt=log_format(settings))


def uvicorn_handler() -> StackHandler:
    """The handler factory of uvicorn's --log-config (stack/uvicorn_log_config.json), so uvicorn's
    own lines — including those of a process that never loads the app — share the format."""
    from stack.config import get_settings

    return configure_for(get_settings())


def capture_warnings() -> None:
    """Python warnings (Celery's SecurityWarning, deprecations) as one log line each, not as the
    warnings module's multi-line print with the source line."""
    warnings.showwarning = _log_warning


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    text = re.sub(r"\s+", " ", str(message)).strip()
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, text, filename, lineno)


def main(argv: list[str] | None = None) -> None:
    """`python -m stack.logs <celery arguments>`: Celery's command line under stack's logging. Flower
    has no logging hook of its own (tornado's options only choose a level), so its role runs so."""
    from celery.__main__ import main as celery_main

    from stack.config import get_settings

    configure_for(get_settings())
    sys.argv = ["celery", *(sys.argv[1:] if argv is None else argv)]
    celery_main()


if __name__ == "__main__":
    main()

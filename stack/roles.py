"""How each SERVICE_TYPE starts: the one place that builds those command lines.

`stack run <role>` (Procfile.prod, the Dockerfile, compose) and the dev Procfile all come here, so
the API, the workers, beat and flower are started the same way on a laptop and in production.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stack.api import workers as api_workers
from stack.config import ALL_QUEUES, Role, Settings
from stack.errors import ConfigError

log = logging.getLogger(__name__)

CELERY_APP = "stack.worker:app"
API_FACTORY = "stack.api.app:create_app_from_env"
POOLS = ("prefork", "threads", "solo", "gevent", "eventlet", "processes")
# uvicorn's own lines (access log included) through stack's one handler and format (stack.logs).
UVICORN_LOG_CONFIG = Path(__file__).with_name("uvicorn_log_config.json")


@dataclass(frozen=True)
class Launch:
    """A process to exec: argv and extra environment; `migrate_first` for the api role."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    migrate_first: bool = False
    warnings: list[str] = field(default_factory=list)


def _python_module(module: str) -> list[str]:
    # The interpreter running `stack`, so the role uses the same virtualenv on every platform.
    return [sys.executable, "-m", module]


# Before a worker's or beat's subcommand: no ASCII-art banner. The worker logs its queues and
# kinds in one line instead (stack.jobs.supervision); Celery logs through stack's handler and
# format (stack.jobs.celery_app). Flower keeps its banner: its "Visit me at" line.
NO_BANNER = "--quiet"


def _celery(*args: str) -> list[str]:
    return [*_python_module("celery"), "-A", CELERY_APP, *args]


def worker_queues(settings: Settings, all_queues: Sequence[str]) -> list[str]:
    queues = list(dict.fromkeys(settings.worker_queues))
    if not queues or ALL_QUEUES in queues:
        return sorted(set(all_queues) | {"default"})
    return queues


def api(
    settings: Settings, extra: Sequence[str] = (), *, reuseport: bool | None = None, handover: bool = False
) -> Launch:
    """`handover` (the --reload supervisor's api): SO_REUSEPORT sockets even for one worker, so
    the next API can bind the port while this one still serves (stack/reload.py)."""
    served = [
        "--factory",
        API_FACTORY,
        "--log-level",
        settings.log_level.lower(),
        "--log-config",
        str(UVICORN_LOG_CONFIG),
        # Open event streams would hold a shutdown up to STACK_SSE_MAX_SECONDS; clients
        # reconnect and resume (Last-Event-ID), so a deploy need not wait for them.
        "--timeout-graceful-shutdown",
        "10",
        *extra,
    ]
    address = ["--host", settings.host, "--port", str(settings.port)]
    balanced = api_workers.supported() if reuseport is None else reuseport
    if balanced and (settings.web_concurrency > 1 or handover):
        # One listening socket per uvicorn process: connections spread evenly (stack/api/workers.py).
        workers = ["--workers", str(settings.web_concurrency)]
        argv = [*_python_module("stack.api.workers"), *address, *workers, "--", *served]
    else:
        argv = [*_python_module("uvicorn"), *address, "--workers", str(settings.web_concurrency), *served]
    return Launch(argv=argv, migrate_first=settings.migrate_on_start)


def worker(
    settings: Settings,
    extra: Sequence[str] = (),
    *,
    all_queues: Sequence[str],
    platform: str = sys.platform,
) -> Launch:
    queues = worker_queues(settings, all_queues)
    pool = settings.worker_pool
    if pool not in POOLS:
        raise ConfigError(f"STACK_WORKER_POOL={pool!r} is not a Celery pool; use one of {POOLS}")
    warnings = []
    if platform == "win32" and pool == "prefork":
        # billiard's prefork cannot fork on Windows; the worker would start and never run a task.
        pool = "threads"
        warnings.append(
            "prefork does not work on Windows: using the threads pool "
            "(set STACK_WORKER_POOL=threads or solo to silence this)"
        )
    serves_all = ALL_QUEUES in settings.worker_queues
    name = settings.worker_name or f"{'worker' if serves_all else '-'.join(queues)}@%h"
    argv = _celery(
        NO_BANNER,
        "worker",
        "--queues",
        ",".join(queues),
        "--pool",
        pool,
        "--hostname",
        name,
        "--loglevel",
        settings.log_level.upper(),
        # Mingle (sync revoked ids with the other workers at start) and gossip exist for
        # revocations that live only in workers' memory; a job's revocation lives in its row,
        # checked at every claim. Without them a worker is ready a second sooner.
        "--without-mingle",
        "--without-gossip",
    )
    if settings.worker_concurrency:
        argv += ["--concurrency", str(settings.worker_concurrency)]
    return Launch(argv=[*argv, *extra], warnings=warnings)


def beat(settings: Settings, extra: Sequence[str] = ()) -> Launch:
    schedule = settings.data_dir.resolve() / "celerybeat-schedule"
    argv = _celery(NO_BANNER, "beat", "--loglevel", settings.log_level.upper(), "--schedule", str(schedule))
    return Launch(argv=[*argv, *extra])


def flower(settings: Settings, extra: Sequence[str] = ()) -> Launch:
    env = {}
    if settings.flower_basic_auth:
        if ":" not in settings.flower_basic_auth:
            raise ConfigError("STACK_FLOWER_BASIC_AUTH must look like user:password")
        # Through the environment, not argv: argv is visible to every user in `ps`.
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    elif settings.is_production:
        raise ConfigError(
            "flower exposes every task's arguments and can revoke them: with APP_ENV=production "
            "set STACK_FLOWER_BASIC_AUTH=user:password"
        )
    # Flower has no logging hook: `stack.logs` sets stack's handler up before Celery's command
    # line starts it, and --logging=none keeps tornado from adding its own format.
    flower_args = [f"--port={settings.flower_port}", f"--address={settings.host}", "--logging=none"]
    argv = [*_python_module("stack.logs"), "-A", CELERY_APP, "flower", *flower_args, *extra]
    return Launch(argv=argv, env=env)


def launch_for(role: Role, settings: Settings, extra: Sequence[str], *, all_queues: Sequence[str]) -> Launch:
    if role is Role.API:
        return api(settings, extra)
    if role is Role.WORKER:
        return worker(settings, extra, all_queues=all_queues)
    if role is Role.BEAT:
        return beat(settings, extra)
    if role is Role.FLOWER:
        return flower(settings, extra)
    raise ValueError(f"{role.value} runs in-process, not as a command line")

"""Job kinds: a name, a params model, a queue and a plain handler function.

An application declares its kinds once::

    registry = JobRegistry()

    @registry.kind("generate_image", queue="content", params=ImageParams)
    def generate_image(params: ImageParams, job: JobContext) -> dict:
        job.progress(40, "rendering tile 4/10")
        ...

and points `STACK_KINDS` at it (`module:attr`). Handlers know nothing of Celery, HTTP or the
database: the same function runs in a worker or inline when `CELERY_ENABLED=false`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from stack.errors import ConfigError, UnknownKindError

TASK_PREFIX = "jobs."


class TransientError(Exception):
    """Raise from a handler for a failure worth retrying (timeouts, 429s, a flaky provider).

    The job goes to `retry` and runs again after a backoff, up to the kind's `max_retries`.
    """


class JobCancelled(Exception):
    """Raised inside a handler by `job.progress()` once the job has been revoked."""


class ProgressFn(Protocol):
    def __call__(self, percent: float, message: str = "") -> None: ...


# Outputs are often served by a web server (nginx, a CDN's origin) running as another user: they
# are world-readable whatever the worker's umask (mkstemp alone gives 0600).
OUTPUT_DIR_MODE = 0o755
OUTPUT_FILE_MODE = 0o644


def make_output_dir(path: Path) -> Path:
    """Create a job's output folder (and its parents), each readable and searchable by all."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        created.chmod(OUTPUT_DIR_MODE)
    return path


def outputs_dir(storage_dir: Path, job_id: str) -> Path:
    """Where one job's output files go; the API serves them to callers who may read the job."""
    return storage_dir / "jobs" / job_id


@dataclass(frozen=True)
class JobContext:
    """What a handler gets besides its params.

    `output_dir` is the job's own folder, served at `/api/jobs/<id>/files/<name>` to callers who
    may read the job; `storage_dir` is the app's, never served (an audit log, caches)."""

    id: str
    kind: str
    attempt: int
    storage_dir: Path
    progress: ProgressFn

    @property
    def output_dir(self) -> Path:
        return outputs_dir(self.storage_dir, self.id)


Handler = Callable[[Any, JobContext], Any]


@dataclass(frozen=True)
class JobKind:
    name: str
    handler: Handler
    params: type[BaseModel]
    queue: str = "default"
    max_retries: int | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None

    @property
    def task_name(self) -> str:
        return TASK_PREFIX + self.name

    def validate(self, raw: Any) -> BaseModel:
        """Params from untrusted JSON; raises pydantic.ValidationError naming the field."""
        return self.params.model_validate(raw if raw is not None else {})


class JobRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}

    def kind(
        self,
        name: str,
        *,
        params: type[BaseModel],
        queue: str = "default",
        max_retries: int | None = None,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if name in self._kinds:
                raise ConfigError(f"job kind {name!r} is registered twice; rename one of them")
            self._kinds[name] = JobKind(
                name=name,
                handler=handler,
                params=params,
                queue=queue,
                max_retries=max_retries,
                soft_time_limit=soft_time_limit,
                time_limit=time_limit,
            )
            return handler

        return register

    def get(self, name: str) -> JobKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKindError(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def queues(self) -> list[str]:
        return sorted({k.queue for k in self._kinds.values()})

    def __iter__(self) -> Iterator[JobKind]:
        return iter(self._kinds.values())

    def __len__(self) -> int:
        return len(self._kinds)


def load_registry(spec: str) -> JobRegistry:
    """Import `module:attr` (STACK_KINDS) and check it is a JobRegistry."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"STACK_KINDS={spec!r} must look like 'package.module:registry'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"STACK_KINDS={spec!r}: cannot import {module_name!r} ({exc}); run from the project "
            "folder or install the package that defines your job kinds"
        ) from exc
    registry = getattr(module, attr, None)
    if not isinstance(registry, JobRegistry):
        raise ConfigError(f"STACK_KINDS={spec!r}: {attr!r} in {module_name!r} is not a JobRegistry")
    return registry

"""Fast-suite fixtures: SQLite, fakeredis, an in-process Celery worker on the memory transport."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from stack.config import Settings, ecosystem_env_names
from stack.jobs.migrate import upgrade
from stack.jobs.outbox import RedisOutbox
from stack.runtime import Runtime, build_runtime

_OUR_ENV = frozenset(ecosystem_env_names())


@pytest.fixture(autouse=True, scope="session")
def _events_and_metrics_stay_in_the_tests() -> Iterator[None]:
    """Runtimes built here would send events and metrics to the Redis of REDIS_URL's default
    (127.0.0.1:6379, another user's on a shared machine): a fake server instead, written
    synchronously so a test sees them at once. Session-wide, as in-process workers outlive a
    single test."""
    server = fakeredis.FakeServer()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            "stack.runtime.RedisOutbox",
            lambda _client, **_options: RedisOutbox(fakeredis.FakeRedis(server=server), background=False),
        )
        yield


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The machine's (or CI's) own settings must not leak into unit tests."""
    for name in list(os.environ):
        if name in _OUR_ENV or name.startswith("STACK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env, and .stack/ lands in the test's folder


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": f"sqlite:///{tmp_path / 'jobs.db'}",
        "progress_interval": 0.0,
        "task_retry_backoff": 0.01,
        "celery_broker_url": "memory://",
        "celery_result_backend": "cache+memory://",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = build_runtime(settings)
    upgrade(rt.engine)
    yield rt
    rt.store.dispose()


class CountingRedis(fakeredis.FakeRedis):
    """Counts pipelines executed (one per round trip) and records the commands they sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.round_trips = 0
        self.commands: list[str] = []

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipeline = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        execute = pipeline.execute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.round_trips += 1
            self.commands += [command[0][0] for command in pipeline.command_stack]
            return execute(*args, **kwargs)

        pipeline.execute = counted  # type: ignore[method-assign]
        return pipeline

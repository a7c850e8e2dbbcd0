"""Which broker URLs get our kombu transport (one Redis client per channel)."""

from __future__ import annotations

from pathlib import Path

from stack.jobs.broker import TRANSPORT, declare_on_publish, transport_for
from stack.jobs.celery_app import create_celery
from stack.jobs.registry import JobRegistry
from tests.unit.conftest import make_settings


def test_only_plain_redis_urls_get_it() -> None:
    assert transport_for("redis://127.0.0.1:6379/0") == TRANSPORT
    assert transport_for("rediss://:secret@cache.example:6380/0") == TRANSPORT
    for url in (
        "sentinel://127.0.0.1:26379",
        "amqp://guest@127.0.0.1//",
        "memory://",
        "redis+socket:///tmp/r",
    ):
        assert transport_for(url) is None, url


def test_the_celery_app_uses_it_for_redis_and_not_for_memory(tmp_path: Path) -> None:
    on_redis = create_celery(
        make_settings(tmp_path, celery_broker_url="redis://127.0.0.1:1/0"), JobRegistry()
    )
    assert on_redis.conf.broker_transport == TRANSPORT
    assert create_celery(make_settings(tmp_path), JobRegistry()).conf.broker_transport is None  # memory://


def test_job_messages_declare_nothing_on_redis_and_their_queue_elsewhere(tmp_path: Path) -> None:
    on_redis = create_celery(
        make_settings(tmp_path, celery_broker_url="redis://127.0.0.1:1/0"), JobRegistry()
    )
    first, second = declare_on_publish(on_redis), declare_on_publish(on_redis)
    assert first == [] and first is not second  # kombu may append to it
    assert declare_on_publish(create_celery(make_settings(tmp_path), JobRegistry())) is None  # Celery's

"""The Redis outbox: events and metrics leave the job's path, arrive in order, in few round trips,
and a Redis that fails or hangs costs the jobs nothing."""

from __future__ import annotations

import logging
import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stack.jobs.batching import BatchWriter
from stack.jobs.outbox import RedisOutbox
from stack.testing.services.base import wait_for
from tests.unit.conftest import CountingRedis


def test_commands_sent_meanwhile_share_one_round_trip() -> None:
    client = CountingRedis()
    outbox = RedisOutbox(client)
    gate = threading.Event()
    writing = threading.Event()
    # Holds the thread inside a write, as a slow Redis would.
    outbox.send(lambda pipeline: (writing.set(), gate.wait(5)))
    assert writing.wait(5), "the outbox never started writing"
    for n in range(100):
        outbox.send(lambda pipeline, n=n: pipeline.rpush("seen", n))
    gate.set()
    assert outbox.flush(5), "outbox not flushed within 5 s"
    assert [int(v) for v in client.lrange("seen", 0, -1)] == list(range(100))  # in order
    assert client.round_trips == 2  # the held write, then everything queued behind it


def test_an_idle_outbox_lets_a_burst_gather_for_its_linger() -> None:
    # A job's start, end and metrics are sent within a millisecond: one pipeline, not three.
    client = CountingRedis()
    outbox = RedisOutbox(client)
    for key in ("started", "finished", "metrics"):
        outbox.send(lambda pipeline, key=key: pipeline.set(key, 1))
    assert outbox.flush(5), "outbox not flushed within 5 s"
    assert client.round_trips == 1
    assert all(client.get(key) == b"1" for key in ("started", "finished", "metrics"))


def test_a_synchronous_outbox_writes_in_the_caller() -> None:
    client = CountingRedis()
    outbox = RedisOutbox(client, background=False)
    outbox.send(lambda pipeline: pipeline.set("k", "v"))
    assert client.get("k") == b"v"  # no flush needed
    assert outbox._writer._thread is None  # no thread was started for it


def test_close_sends_what_is_pending_and_later_sends_go_out_at_once() -> None:
    client = CountingRedis()
    outbox = RedisOutbox(client)
    outbox.send(lambda pipeline: pipeline.set("a", 1))
    outbox.close()
    assert client.get("a") == b"1"
    outbox.send(lambda pipeline: pipeline.set("b", 2))
    assert client.get("b") == b"2"


def test_a_dead_redis_warns_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    outbox = RedisOutbox(redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)))
    with caplog.at_level(logging.DEBUG, logger="stack.jobs.outbox"):
        for _ in range(3):
            outbox.send(lambda pipeline: pipeline.publish("c", "x"))
            assert outbox.flush(5), "outbox not flushed within 5 s"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not sent to Redis" in warnings[0].getMessage()


def test_a_hanging_redis_bounds_what_waits(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("stack.jobs.outbox.MAX_PENDING", 5)
    client = CountingRedis()
    gate = threading.Event()
    outbox = RedisOutbox(client)
    outbox.send(lambda pipeline: gate.wait(5))
    wait_for(
        lambda: outbox._writer._queue.qsize() == 0, timeout=5, what="the writer to take the first command"
    )
    with caplog.at_level(logging.WARNING, logger="stack.jobs.outbox"):
        for n in range(8):
            outbox.send(lambda pipeline, n=n: pipeline.rpush("seen", n))
    gate.set()
    assert outbox.flush(5), "outbox not flushed within 5 s"
    assert [int(v) for v in client.lrange("seen", 0, -1)] == [0, 1, 2, 3, 4]
    assert outbox.dropped == 3 and "not keeping up" in caplog.text


def test_a_writer_inherited_through_a_fork_starts_its_own_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[list[int]] = []
    writer: BatchWriter[int] = BatchWriter(
        written.append, linger=0, max_batch=10, name="test", on_error=lambda items, exc: None
    )
    writer.add(1)
    assert writer.flush(5)
    parent_thread = writer._thread
    monkeypatch.setattr("stack.jobs.batching.os.getpid", lambda: -1)  # as seen from a forked child
    writer.add(2)
    assert writer.flush(5)
    assert writer._thread is not parent_thread and written == [[1], [2]]
    writer.close()

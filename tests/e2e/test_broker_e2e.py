"""Our kombu Redis transport against a real Redis: same messages, one client per channel."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from stack.jobs.broker import TRANSPORT, Channel

pytestmark = pytest.mark.e2e


def test_publishes_through_one_client_and_delivers_what_kombu_would(stack_redis_url: str) -> None:
    queue = Queue("broker-e2e", Exchange("broker-e2e"), routing_key="broker-e2e")
    with Connection(stack_redis_url, transport=TRANSPORT) as connection:
        channel = connection.channel()
        assert isinstance(channel, Channel)
        producer = Producer(channel)
        for n in range(3):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="broker-e2e", declare=[queue])
        assert channel._create_client() is channel._create_client()  # not one per command

        channel._after_fork()  # a fork (prefork pool) replaces the pool: the client follows it
        client = channel._create_client()
        assert client.connection_pool is channel.pool

        received = []
        consumer_channel = connection.channel()
        for _ in range(3):
            message = consumer_channel.basic_get("broker-e2e", no_ack=True)
            assert message is not None, "a published message never reached the queue"
            received.append(message.decode())
    assert received == [{"n": 0}, {"n": 1}, {"n": 2}]
    raw = redis.Redis.from_url(stack_redis_url)
    assert raw.llen("broker-e2e") == 0
    raw.close()

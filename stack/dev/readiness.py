"""What a supervised role waits for: the broker before it starts, and a new API before the old
one stops."""

from __future__ import annotations

import logging
import time

import psutil

from stack.checks import check_broker
from stack.config import Settings, redact_url
from stack.errors import ConfigError

log = logging.getLogger(__name__)


def wait_for_broker(settings: Settings, *, timeout: float, poll: float = 0.5) -> None:
    """Until the broker answers; ConfigError naming the URL and the fix after `timeout` seconds.

    The API and the workers start together with the `redis` Procfile line: without this they
    would race it and print connection errors for the first seconds of every `make dev`.
    """
    if timeout <= 0 or not settings.celery_enabled:
        return
    url = settings.broker_url
    deadline = time.monotonic() + timeout
    result = check_broker(url, timeout=settings.broker_timeout)
    if result.ok:
        return
    log.info("waiting up to %.0f s for the broker at %s to answer", timeout, redact_url(url))
    while time.monotonic() < deadline:
        time.sleep(poll)
        result = check_broker(url, timeout=settings.broker_timeout)
        if result.ok:
            log.info("the broker answers; starting")
            return
    raise ConfigError(
        f"the broker did not answer within {timeout:.0f} s ({result.detail}): start it (the "
        "Procfile's `redis` line runs an embedded one when REDIS_URL is unset), point REDIS_URL at "
        "a running Redis, or raise STACK_BROKER_WAIT"
    )


def listening_sockets(pid: int, port: int) -> int:
    """How many sockets of process `pid` listen on `port`.

    A new API's SO_REUSEPORT sockets start listening only once uvicorn has loaded the app
    (stack/api/workers.py), so this counts its workers that are ready to serve — something a
    request to the port cannot tell, since the old API answers there too.
    """
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return 0
    return sum(1 for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port)

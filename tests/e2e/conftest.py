import pytest

# Fast enough for a suite, slow enough to watch: retries after 0.2 s, progress every 0.05 s.
E2E_ENV = {
    "STACK_TASK_RETRY_BACKOFF": "0.2",
    "STACK_PROGRESS_INTERVAL": "0.05",
    "STACK_WORKER_CONCURRENCY": "2",
}


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return dict(E2E_ENV)

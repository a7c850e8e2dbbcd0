"""Process fixtures: the app's real processes from a Procfile, against the session's servers.

stack_procfile      module  Path of the Procfile to run (default: <rootdir>/Procfile.prod)
stack_env           module  extra environment for every process (override in a test module)
stack_service_env   module  REDIS_URL / DATABASE_URL / data dir from the service fixtures
stack_start         module  factory: start(procfile=None, env=None) -> a ready ProcfileStack
stack_processes     module  the default stack, started and ready
stack_api           module  a JobClient on it, whose failures quote the processes' logs
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack.testing.jobs import JobClient
from stack.testing.procfile import ProcfileStack

StartStack = Callable[..., ProcfileStack]


@pytest.fixture(scope="module")
def stack_procfile(pytestconfig: pytest.Config) -> Path:
    return pytestconfig.rootpath / "Procfile.prod"


@pytest.fixture(scope="module")
def stack_env() -> dict[str, str]:
    return {}


@pytest.fixture(scope="module")
def stack_service_env(
    stack_redis_url: str, stack_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return {
        "REDIS_URL": stack_redis_url,
        "DATABASE_URL": stack_database_url,
        "STACK_DATA_DIR": str(tmp_path_factory.mktemp("stack-data")),
        "STACK_LOG_LEVEL": "info",
    }


@pytest.fixture(scope="module")
def stack_start(
    pytestconfig: pytest.Config,
    stack_procfile: Path,
    stack_service_env: dict[str, str],
    stack_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[StartStack]:
    started: list[ProcfileStack] = []

    def start(
        procfile: Path | str | None = None,
        env: dict[str, str] | None = None,
        *,
        wait: bool = True,
        timeout: float = 60.0,
        workers: int | None = None,
    ) -> ProcfileStack:
        path = pytestconfig.rootpath / procfile if procfile else stack_procfile
        stack = ProcfileStack(
            path,
            env={**stack_service_env, **stack_env, **(env or {})},
            log_dir=tmp_path_factory.mktemp(f"logs-{path.stem}"),
            cwd=pytestconfig.rootpath,
        )
        started.append(stack)
        stack.start()
        if wait:
            stack.wait_ready(timeout=timeout, workers=workers)
        return stack

    try:
        yield start
    finally:
        for stack in reversed(started):
            stack.teardown()


@pytest.fixture(scope="module")
def stack_processes(stack_start: StartStack) -> ProcfileStack:
    return stack_start()


@pytest.fixture(scope="module")
def stack_api(stack_processes: ProcfileStack) -> Iterator[JobClient]:
    # The stack's first token, if it has any: the tests act as a client with every scope would.
    tokens = stack_processes.env.get("STACK_API_TOKENS", "").split(",")
    token = tokens[0].split(":", 1)[0].strip() or None
    client = JobClient(stack_processes.api_url, diagnostics=stack_processes.logs, token=token)
    yield client
    client.close()

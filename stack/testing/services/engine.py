"""The Docker engine as the docker provider sees it: can it run an image now, and testcontainers
set up so that it works on a machine that reaches no registry.

Every question to the engine has a short timeout, so a machine with a dead socket or no network
costs the test session at most a few seconds before it falls back to local binaries. The
decisions (where containers are reached, which containers are stale, why an image cannot be
pulled) are pure functions, unit-tested without Docker.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stack.testing.services.selection import DockerVerdict

logger = logging.getLogger(__name__)

# Checks only: a ping, an image lookup, a registry manifest lookup. Long enough for a loaded
# machine, short enough that a hanging registry cannot stall a test session.
CHECK_TIMEOUT = 2.0
# Creating, stopping and removing containers can take longer on a busy engine.
OPERATION_TIMEOUT = 60.0

# Every container the plugin starts carries "<hostname> <pid>" of the test session that owns it,
# so a later session can remove what a crashed one left behind (and nothing a live one uses).
OWNER_LABEL = "io.github.stack.testing.owner"

# The user's own say on where testcontainers reaches containers; we never override it.
_CONNECTION_ENV = ("TC_HOST", "TESTCONTAINERS_HOST_OVERRIDE", "TESTCONTAINERS_CONNECTION_MODE")
_RYUK_ENV = "TESTCONTAINERS_RYUK_DISABLED"
# What a failed registry lookup says when the registry is out of reach (rather than saying no).
_UNREACHABLE = ("no such host", "dial tcp", "connection refused", "i/o timeout", "network is unreachable")


# --- pure rules -----------------------------------------------------------------------------------
def connection_settings(env: Mapping[str, str], *, engine_name: str, hostname: str) -> dict[str, str]:
    """Environment for testcontainers so that it hands out 127.0.0.1 when that is right.

    testcontainers takes a `/.dockerenv` file for "this process runs in a container" and then
    hands out the bridge gateway (e.g. 172.17.0.1); some VMs and CI runners have that file but run
    the engine themselves, where published ports are on 127.0.0.1. The engine runs on this very
    machine when it reports our host name (a container's name differs from its host's) and is
    reached through a local socket. Anything the user set about it wins.
    """
    if any(env.get(name) for name in _CONNECTION_ENV):
        return {}
    docker_host = env.get("DOCKER_HOST", "")
    if docker_host and not docker_host.startswith("unix://"):
        return {}  # a remote engine: testcontainers uses DOCKER_HOST's host name, which is right
    if engine_name != hostname:
        return {}  # the engine runs elsewhere (Docker Desktop's VM, a socket mounted from a host)
    return {"TESTCONTAINERS_CONNECTION_MODE": "docker_host", "TC_HOST": "127.0.0.1"}


def owner_value(hostname: str, pid: int) -> str:
    return f"{hostname} {pid}"


def stale_containers(
    owners: Iterable[tuple[str, str]], *, hostname: str, alive: Callable[[int], bool]
) -> list[str]:
    """Ids among (id, owner label) pairs whose owning session on this host is gone.

    A container of another host, or of a live process (another session running right now), is
    never stale: removing it would pull a server from under someone's tests.
    """
    stale = []
    for container_id, owner in owners:
        host, _, pid = owner.rpartition(" ")
        if host == hostname and pid.isdigit() and not alive(int(pid)):
            stale.append(container_id)
    return stale


def pull_problem(error: str, *, timed_out: bool) -> str:
    """Why the engine could not look the image up in its registry, in a few words."""
    if timed_out:
        return f"the registry did not answer within {CHECK_TIMEOUT:.0f} s"
    lowered = error.lower()
    if any(marker in lowered for marker in _UNREACHABLE):
        return f"registry unreachable: {error}"
    return error


# --- the real engine ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Engine:
    client: Any  # docker.DockerClient, or None when no engine answers
    problem: str = ""


@functools.cache
def _engine() -> _Engine:
    """Asked once per process: with no engine the ping costs the whole timeout."""
    try:
        import docker  # only present with the dev extra (testcontainers)

        client = docker.from_env(timeout=CHECK_TIMEOUT)
        client.ping()
    except Exception as exc:
        logger.debug("no Docker engine: %r", exc)
        return _Engine(
            None, f"no Docker engine answers ({_short(exc)}; checked DOCKER_HOST or the default socket)"
        )
    return _Engine(client)


@functools.cache
def check_image(image: str) -> DockerVerdict:
    """Whether the engine can run `image`: present locally, or its registry has it (asked through
    the engine, as a pull would be, so the engine's mirrors, proxy and credentials count)."""
    engine = _engine()
    if engine.client is None:
        return DockerVerdict(image, engine=False, usable=False, reason=engine.problem)
    problem = image_problem(engine.client, image)
    return DockerVerdict(image, engine=True, usable=problem is None, reason=problem or "")


def image_problem(client: Any, image: str) -> str | None:
    """None when `client`'s engine can start `image` now, else why not."""
    import docker.errors
    import requests

    try:
        client.images.get(image)
        return None
    except docker.errors.ImageNotFound:
        pass
    except Exception as exc:
        return f"could not inspect image {image} ({_short(exc)})"
    try:
        client.images.get_registry_data(image)
    except requests.exceptions.Timeout:
        return f"image {image} is not present and cannot be pulled ({pull_problem('', timed_out=True)})"
    except Exception as exc:
        text = getattr(exc, "explanation", None) or _short(exc)
        return (
            f"image {image} is not present and cannot be pulled ({pull_problem(str(text), timed_out=False)})"
        )
    return None


@functools.cache
def prepare_testcontainers() -> None:
    """Once per process, before the first container: where containers are reached, Ryuk, and
    the containers crashed sessions left behind."""
    import docker
    from testcontainers.core.config import ConnectionMode
    from testcontainers.core.config import testcontainers_config as config

    client = docker.from_env(timeout=OPERATION_TIMEOUT)
    try:
        engine_name = str(client.info().get("Name", ""))
        settings = connection_settings(os.environ, engine_name=engine_name, hostname=socket.gethostname())
        if settings:
            os.environ.update(settings)
            # testcontainers read its settings when first imported; tell its config object too.
            config.tc_host_override = settings["TC_HOST"]
            config.connection_mode_override = ConnectionMode(settings["TESTCONTAINERS_CONNECTION_MODE"])
            logger.info("docker: the engine runs on this machine; containers reached at 127.0.0.1")
        if not os.environ.get(_RYUK_ENV) and not config.ryuk_disabled:
            problem = image_problem(docker.from_env(timeout=CHECK_TIMEOUT), config.ryuk_image)
            if problem:
                # Ryuk only reaps containers after a crash; our teardown removes them otherwise,
                # and remove_stale_containers() below catches the crashed sessions' ones.
                os.environ[_RYUK_ENV] = "true"
                config.ryuk_disabled = True
                logger.warning("docker: Ryuk disabled: %s", problem)
        remove_stale_containers(client)
    finally:
        client.close()


def owner_labels() -> dict[str, str]:
    """The labels every container of this test session carries."""
    return {OWNER_LABEL: owner_value(socket.gethostname(), os.getpid())}


def remove_stale_containers(client: Any) -> list[str]:
    """Remove the containers of test sessions on this host that ended without tearing down."""
    containers = client.containers.list(all=True, filters={"label": OWNER_LABEL})
    owners = [(c.id, c.labels.get(OWNER_LABEL, "")) for c in containers]
    stale = stale_containers(owners, hostname=socket.gethostname(), alive=_alive)
    for container in containers:
        if container.id in stale:
            logger.warning("docker: removing %s, left by an ended test session", container.name)
            container.remove(force=True, v=True)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]

"""Real Redis and PostgreSQL servers for tests, from a URL, Docker, or local binaries.

The provider classes are imported on first use: the pytest plugin imports this package in every
test run, and most runs never need redis-py or psycopg here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stack.testing.services.base import Kind, ProviderName, Service, ServiceError
from stack.testing.services.selection import (
    DEFAULT_IMAGE,
    IMAGE_ENV,
    MODES,
    URL_ENV,
    DockerVerdict,
    Mode,
    ProviderChoice,
    Unavailable,
    build_service,
    check_image,
    choose,
    find_binaries,
    image_for,
    resolve_mode,
    select_provider,
)

if TYPE_CHECKING:
    from stack.testing.services.postgres import (
        DockerPostgres,
        LocalPostgres,
        PostgresService,
        UrlPostgres,
    )
    from stack.testing.services.redis import DockerRedis, LocalRedis, RedisService, UrlRedis

_LAZY = {
    "RedisService": "redis",
    "UrlRedis": "redis",
    "DockerRedis": "redis",
    "LocalRedis": "redis",
    "PostgresService": "postgres",
    "UrlPostgres": "postgres",
    "DockerPostgres": "postgres",
    "LocalPostgres": "postgres",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "DEFAULT_IMAGE",
    "IMAGE_ENV",
    "MODES",
    "URL_ENV",
    "DockerPostgres",
    "DockerRedis",
    "DockerVerdict",
    "Kind",
    "LocalPostgres",
    "LocalRedis",
    "Mode",
    "PostgresService",
    "ProviderChoice",
    "ProviderName",
    "RedisService",
    "Service",
    "ServiceError",
    "Unavailable",
    "UrlPostgres",
    "UrlRedis",
    "build_service",
    "check_image",
    "choose",
    "find_binaries",
    "image_for",
    "resolve_mode",
    "select_provider",
]

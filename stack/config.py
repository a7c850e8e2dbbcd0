"""All configuration, read from the environment (and `.env`) in one place.

Env names follow the ecosystem (`REDIS_URL`, `DATABASE_URL`, `CELERY_*`, `SERVICE_TYPE`, ...);
everything that is ours is `STACK_*`. In development every setting has a default that works on a
fresh machine: an embedded Redis and a SQLite file under `.stack/`. In production the settings that
would silently point at the wrong place have no default at all.
"""

from __future__ import annotations

import functools
import hashlib
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from stack.errors import ConfigError
from stack.urls import redact_url

ALL_QUEUES = "all"
# A namespace goes into every Redis key and channel name: letters, digits and `_.-` only, so it
# never contains the `:` that separates it from the key, nor a glob character.
NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
VISIBILITY_MARGIN = 60.0  # the default visibility timeout outlasts the longest time limit by this


class AppEnv(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class Role(StrEnum):
    API = "api"
    WORKER = "worker"
    BEAT = "beat"
    FLOWER = "flower"
    MIGRATE = "migrate"
    REDIS = "redis"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STACK_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
    )

    # --- names shared with the ecosystem --------------------------------------------------------
    app_env: AppEnv = Field(
        AppEnv.DEVELOPMENT,
        validation_alias=AliasChoices("APP_ENV"),
        description="development | test | production (production: no silent defaults)",
    )
    service_type: Role | None = Field(
        None,
        validation_alias=AliasChoices("SERVICE_TYPE"),
        description="role for `stack run`: api | worker | beat | flower | migrate | redis",
    )
    secret_key: str | None = Field(
        None, validation_alias=AliasChoices("SECRET_KEY"), description="required in production"
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL"),
        description="default: the embedded Redis, redis://127.0.0.1:STACK_REDIS_PORT/0",
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL"),
        description="postgres[ql][+driver]:// or sqlite:///; default SQLite in STACK_DATA_DIR",
    )
    celery_broker_url: str | None = Field(
        None, validation_alias=AliasChoices("CELERY_BROKER_URL"), description="default: REDIS_URL"
    )
    celery_result_backend: str | None = Field(
        None,
        validation_alias=AliasChoices("CELERY_RESULT_BACKEND"),
        description="default: REDIS_URL",
    )
    celery_enabled: bool = Field(
        True,
        validation_alias=AliasChoices("CELERY_ENABLED"),
        description="false: the API runs jobs inline, no broker needed",
    )
    host: str = Field(
        "127.0.0.1", validation_alias=AliasChoices("HOST"), description="api and flower bind here"
    )
    port: int = Field(8000, ge=1, le=65535, validation_alias=AliasChoices("PORT"), description="api port")
    web_concurrency: int = Field(
        1, ge=1, validation_alias=AliasChoices("WEB_CONCURRENCY"), description="uvicorn workers"
    )

    # --- ours (STACK_*) -----------------------------------------------------------------------------
    kinds: str = Field("app.kinds:registry", description="module:attr of the JobRegistry to serve")
    namespace: str | None = Field(
        None,
        description="prefix of every Redis key, queue and channel of this app, so apps sharing a "
        "Redis never exchange jobs; '' for none; default: the top-level package of STACK_KINDS",
    )
    data_dir: Path = Field(Path(".stack"), description="embedded Redis/SQLite data and storage")
    storage_dir: Path | None = Field(None, description="where job outputs go; default DATA_DIR/files")
    procfile: Path | None = Field(
        None,
        description="the Procfile the stack runs from, quoted in doctor's fixes; default: a running "
        "honcho's, else ./Procfile",
    )
    redis_port: int = Field(6379, ge=1, le=65535, description="port of the embedded Redis")
    migrate_on_start: bool = Field(True, description="run migrations when the api role starts")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="request body limit")
    worker_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [ALL_QUEUES], description="comma-separated queues, or 'all'"
    )
    worker_pool: str = Field("prefork", description="prefork | threads | solo | gevent | eventlet")
    worker_concurrency: int | None = Field(None, ge=1, description="default: number of CPUs")
    worker_name: str | None = Field(None, description="worker node name; default role@hostname")
    task_soft_time_limit: float = Field(300.0, gt=0, description="seconds before SoftTimeLimit")
    task_time_limit: float = Field(330.0, gt=0, description="seconds before the child is killed")
    task_max_retries: int = Field(3, ge=0, description="retries for errors marked transient")
    task_retry_backoff: float = Field(2.0, ge=0, description="first retry delay, doubled each time")
    task_retry_backoff_max: float = Field(60.0, ge=0, description="cap of the retry delay")
    db_pool_size: int = Field(
        10, ge=1, description="database connections kept per process (API: match its concurrency)"
    )
    db_max_overflow: int = Field(20, ge=0, description="extra connections opened under bursts")
    hint_after: float = Field(
        10.0, ge=0, description="seconds a pending job waits before GET /api/jobs/{id} says why"
    )
    sweep_interval: float = Field(10.0, gt=0, description="seconds between two sweeps (beat)")
    dispatch_grace: float = Field(5.0, ge=0, description="an undispatched job this old is sent by the sweep")
    heartbeat_interval: float = Field(
        5.0, gt=0, description="seconds between two heartbeats of a worker (its row in stack_workers)"
    )
    worker_dead_after: float = Field(
        30.0,
        gt=0,
        description="a worker silent this long is dead: its running jobs run again (or fail, attempts spent)",
    )
    stall_margin: float = Field(
        60.0,
        ge=0,
        description="an inline (CELERY_ENABLED=false) job silent this long past its time limit is lost",
    )
    job_retention_days: float = Field(7.0, ge=0, description="finished jobs older are deleted; 0 keeps")
    visibility_timeout: float | None = Field(
        None, gt=0, description="redis redelivery of unacked jobs; default time limit + 60 s"
    )
    progress_interval: float = Field(
        0.25, ge=0, description="minimum seconds between two progress writes of one job"
    )
    broker_timeout: float = Field(2.0, gt=0, description="seconds to wait for the broker")
    broker_wait: float = Field(
        30.0, ge=0, description="seconds a supervised role (--reload, --name) waits for the broker to start"
    )
    # --- who may call the API, and how much of it --------------------------------------------------
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="bearer tokens, comma-separated; `token:read+submit` limits one to those scopes "
        "(read, submit, cancel; all by default)",
    )
    auth: str | None = Field(
        None,
        description="`none` (anyone may call the API), or module:attr of your own FastAPI dependency "
        "returning a stack.api.auth.Principal; default: bearer tokens (STACK_API_TOKENS)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed to call the API from a browser; none by default"
    )
    sse_max_streams: int = Field(
        1000, ge=1, description="event streams one API process serves at once; more get 503 + Retry-After"
    )
    sse_max_seconds: float = Field(
        300.0, gt=0, description="an event stream ends after this long; EventSource reconnects and resumes"
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="decoded pixels an image param may have (a decompression bomb is a 422)"
    )
    flower_port: int = Field(5555, ge=1, le=65535)
    flower_basic_auth: str | None = Field(None, description="user:password, required in production")
    log_level: str = Field("info", description="debug | info | warning | error | critical")
    log_format: str | None = Field(
        None, description="text (LEVEL logger: message) | json (an object a line); default json in production"
    )

    @field_validator("worker_queues", "api_tokens", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [q.strip() for q in value.split(",") if q.strip()]
        return value

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if value and not NAMESPACE_PATTERN.fullmatch(value):
            raise ValueError(
                "must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit "
                "(it prefixes Redis keys); e.g. STACK_NAMESPACE=myapp, or STACK_NAMESPACE= for none"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        return normalise_database_url(value) if value else None

    @field_validator("service_type", mode="before")
    @classmethod
    def _lower_role(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) and value.strip() else None

    @model_validator(mode="after")
    def _limits_make_sense(self) -> Settings:
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError(
                "STACK_TASK_SOFT_TIME_LIMIT must be lower than STACK_TASK_TIME_LIMIT, or handlers "
                "are killed without the chance to fail cleanly"
            )
        if self.worker_dead_after < 2 * self.heartbeat_interval:
            raise ValueError(
                f"STACK_WORKER_DEAD_AFTER ({self.worker_dead_after:g} s) must be at least twice "
                f"STACK_HEARTBEAT_INTERVAL ({self.heartbeat_interval:g} s), or one late heartbeat "
                "would declare a live worker dead and run its jobs twice"
            )
        if self.visibility_timeout is not None and self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                "STACK_VISIBILITY_TIMEOUT must be longer than STACK_TASK_TIME_LIMIT, or Redis hands "
                "a job that is still running to a second worker"
            )
        return self

    # --- derived values -------------------------------------------------------------------------
    @property
    def is_production(self) -> bool:
        return self.app_env is AppEnv.PRODUCTION

    @property
    def embedded_redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def uses_embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or self.embedded_redis_url

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.effective_redis_url

    @property
    def result_backend(self) -> str:
        return self.celery_result_backend or self.effective_redis_url

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'stack.db').resolve()}"

    @property
    def effective_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "files").resolve()

    @property
    def effective_namespace(self) -> str:
        """STACK_NAMESPACE, else derived from STACK_KINDS: the API and the workers must agree on
        the kinds anyway, so they agree on this too (a folder name could differ between them)."""
        return namespace_of(namespace=self.namespace, kinds=self.kinds)

    @property
    def redis_prefix(self) -> str:
        """What every Redis key and channel of this app starts with: kombu's global_keyprefix for
        the queues (`app:content` is the list a KEDA Redis scaler watches), and our own keys."""
        return key_prefix(self.effective_namespace)

    @property
    def effective_visibility_timeout(self) -> float:
        return self.visibility_timeout or self.task_time_limit + VISIBILITY_MARGIN

    def fingerprint(self) -> dict[str, str]:
        """Short hashes of where this process sends work, comparable across processes, no secrets."""
        return {
            "broker": _digest(self.broker_url),
            "database": _digest(self.effective_database_url),
            "namespace": self.effective_namespace,
        }


def namespace_of(*, namespace: str | None, kinds: str) -> str:
    return namespace.strip() if namespace is not None else derive_namespace(kinds)


def key_prefix(namespace: str) -> str:
    return f"{namespace}:" if namespace else ""


def derive_namespace(kinds: str) -> str:
    """`app.kinds:registry` -> `app`: the top-level package of the kinds, made a valid namespace."""
    package = kinds.split(":", 1)[0].split(".", 1)[0].strip()
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", package).strip("-_.")[:64]
    return cleaned or "stack"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


def normalise_database_url(url: str) -> str:
    """Accept every form platforms hand out and return the one SQLAlchemy + psycopg 3 uses.

    `postgres://`, `postgresql://`, `postgresql+asyncpg://` and `postgresql+psycopg2://` all become
    `postgresql+psycopg://`; asyncpg's `ssl=` query parameter becomes libpq's `sslmode=`.
    """
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "postgres":
        url = "postgresql" + url[len("postgres") :]
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(
            f"DATABASE_URL {redact_url(url)!r} is not a database URL; expected e.g. "
            "postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db"
        ) from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        query = dict(parsed.query)
        if "ssl" in query and "sslmode" not in query:
            ssl = query.pop("ssl")
            query["sslmode"] = "require" if ssl in ("true", "1") else ssl
        parsed = parsed.set(drivername="postgresql+psycopg", query=query)
    elif backend != "sqlite":
        raise ValueError(f"DATABASE_URL uses {backend!r}; stack supports postgresql (psycopg 3) and sqlite")
    return parsed.render_as_string(hide_password=False)


_PRODUCTION_REQUIRED = {
    "DATABASE_URL": ("database_url", "the PostgreSQL URL the API and the workers share"),
    "REDIS_URL": ("redis_url", "the Redis URL the API and the workers share"),
    "SECRET_KEY": (
        "secret_key",
        "a long random string, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`",
    ),
}


def check_production(settings: Settings) -> None:
    if not settings.is_production:
        return
    for env_name, (attr, what) in _PRODUCTION_REQUIRED.items():
        if attr == "redis_url" and (settings.celery_broker_url or not settings.celery_enabled):
            continue
        if not getattr(settings, attr):
            raise ConfigError(
                f"{env_name} is not set, and APP_ENV=production has no default for it: "
                f"set {env_name} to {what}."
            )


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's errors into one ConfigError that names the env var."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a rule across several settings; its message names them
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            field = str(err["loc"][0])
            problems.append(f"{env_name_of(field)}: {err['msg']} (got {_shown(field, err.get('input'))})")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    check_production(settings)
    return settings


def _shown(field: str, value: Any) -> str:
    """An offending value as it may appear in an error message: no password, no secret.

    `stack config` hides the same settings (stack/cli.py); a new secret setting goes in both.
    """
    if field in ("secret_key", "api_tokens"):
        return "***"
    if field == "flower_basic_auth":
        # The user name helps find the typo; without a colon the whole value may be the password.
        return repr(f"{value.split(':', 1)[0]}:***") if isinstance(value, str) and ":" in value else "***"
    if isinstance(value, str) and "://" in value:
        return repr(redact_url(value))
    if isinstance(value, list):
        return repr([redact_url(v) if isinstance(v, str) and "://" in v else v for v in value])
    return repr(value)


def env_name_of(field: str) -> str:
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    if field in Settings.model_fields:
        return f"STACK_{field.upper()}"
    return field


def ecosystem_env_names() -> list[str]:
    """The settings read under the ecosystem's names (REDIS_URL, ...) rather than STACK_*."""
    return [
        str(info.validation_alias.choices[0])
        for info in Settings.model_fields.values()
        if isinstance(info.validation_alias, AliasChoices)
    ]


def describe_settings() -> list[tuple[str, str, str]]:
    """(env name, default, description) for each setting, for `stack --help`."""
    rows = []
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        shown = ",".join(default) if isinstance(default, list) else default
        rows.append((env_name_of(name), "" if shown is None else str(shown), info.description or ""))
    return rows


@functools.cache
def get_settings() -> Settings:
    return load_settings()

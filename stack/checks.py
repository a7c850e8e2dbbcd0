"""Reachability checks with hard timeouts, shared by /ready and `stack doctor`."""

from __future__ import annotations

from dataclasses import dataclass

from kombu import Connection
from sqlalchemy import Engine, text

from stack.config import redact_url


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def check_database(engine: Engine) -> CheckResult:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not reachable" to the caller
        return CheckResult("database", False, f"{type(exc).__name__}: {_first_line(exc)}")
    return CheckResult("database", True, redact_url(engine.url.render_as_string()))


def check_broker(url: str, *, timeout: float) -> CheckResult:
    try:
        with Connection(
            url,
            connect_timeout=timeout,
            transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout},
        ) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    except Exception as exc:
        return CheckResult("broker", False, f"{redact_url(url)}: {_first_line(exc)}")
    return CheckResult("broker", True, redact_url(url))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]

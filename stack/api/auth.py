"""Who may call the API, and what they may do.

Three ways, chosen by settings (`resolve_auth`):

- bearer tokens (STACK_API_TOKENS): `Authorization: Bearer <token>`, compared in constant time
  against every configured token; `token:read+submit` limits a token to those scopes;
- the application's own login (STACK_AUTH=package.module:dependency): any FastAPI dependency,
  with sub-dependencies of its own (OAuth2, a session cookie, a JWT). It returns a `Principal`
  (to grant some scopes) or any other truthy value, such as the app's user object (all scopes);
  it raises HTTPException(401/403) or returns None to refuse;
- nobody (STACK_AUTH=none): the API is open, as a service behind a gateway that authenticates.

Scopes: `read` lists jobs, reads one, streams its events and downloads its files; `submit`
creates jobs; `cancel` cancels them. Jobs are the team's, not a user's: a caller who may read
may read every job. `/health` is public, `/ready` tells anonymous callers only ready or not.

Routes depend on `require(Scope.X)`, which depends on `current_principal`; `install` puts the
configured authenticator behind it (see there).
"""

from __future__ import annotations

import hmac
import importlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status

from stack.config import Settings
from stack.errors import ConfigError

log = logging.getLogger(__name__)

OPEN = "none"


class Scope(StrEnum):
    READ = "read"
    SUBMIT = "submit"
    CANCEL = "cancel"


ALL_SCOPES = frozenset(Scope)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name for logs, and what it may do."""

    name: str
    scopes: frozenset[Scope] = field(default=ALL_SCOPES)

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes


ANONYMOUS = Principal("anonymous", ALL_SCOPES)  # who calls an open API


async def current_principal(request: Request) -> Any:
    """Who calls, by the authenticator `install` put on the app."""
    authenticate: Callable[[Request], Awaitable[Any]] = request.app.state.authenticate
    return await authenticate(request)


def install(app: FastAPI, authenticator: Callable[..., Any]) -> None:
    """Put `authenticator` behind `current_principal`.

    Ours (tokens, open access) take only the request, so `current_principal` calls them itself.
    A custom dependency (STACK_AUTH) may declare sub-dependencies of its own (OAuth2, a cookie):
    it replaces `current_principal` through `app.dependency_overrides`, so FastAPI resolves them.
    Only apps that need it pay for that: with any override set, FastAPI rebuilds the dependency
    graph of every route on every request (measured: 14 % of a submit's time in the API).
    """
    if isinstance(authenticator, TokenAuth) or authenticator is open_access:
        app.state.authenticate = authenticator
    else:
        app.dependency_overrides[current_principal] = authenticator


def _as_principal(value: Any) -> Principal:
    if isinstance(value, Principal):
        return value
    if not value:  # a custom dependency that found nobody
        raise _unauthorized("sign in first")
    return Principal(name=str(getattr(value, "username", None) or getattr(value, "name", None) or value))


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets through callers with `scope` (401 without credentials, 403 without
    the scope) and returns who they are."""

    # async: a sync dependency would cost a thread-pool hop (~0.2 ms) on every request.
    async def check(caller: Annotated[Any, Depends(current_principal)]) -> Principal:
        principal = _as_principal(caller)
        if not principal.may(scope):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"{principal.name} may not {scope.value} jobs (its scopes: "
                f"{', '.join(sorted(s.value for s in principal.scopes)) or 'none'})",
            )
        return principal

    check.__name__ = f"require_{scope.value}"
    return check


# --- bearer tokens -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    secret: bytes
    principal: Principal


def parse_tokens(entries: Sequence[str]) -> list[Token]:
    """STACK_API_TOKENS entries: `token` (every scope) or `token:scope+scope`."""
    tokens = []
    for number, entry in enumerate(entries, start=1):
        secret, _, wanted = entry.partition(":")
        if len(secret) < 16:
            raise ConfigError(
                f"STACK_API_TOKENS entry {number} is {len(secret)} characters long; use at least 16 "
                "random ones, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        scopes = ALL_SCOPES
        if wanted:
            try:
                scopes = frozenset(Scope(s.strip()) for s in wanted.split("+"))
            except ValueError:
                raise ConfigError(
                    f"STACK_API_TOKENS entry {number} asks for scopes {wanted!r}; each must be one of "
                    f"{', '.join(s.value for s in Scope)}, joined with '+' (e.g. token:read+submit)"
                ) from None
        tokens.append(Token(secret.encode(), Principal(f"token #{number}", scopes)))
    return tokens


class TokenAuth:
    """`Authorization: Bearer <token>` against the configured tokens, in constant time."""

    def __init__(self, tokens: Sequence[Token]) -> None:
        self.tokens = list(tokens)

    async def __call__(self, request: Request) -> Principal:
        principal = self.identify(request)
        if principal is None:
            given = "no bearer token" if not _bearer(request) else "an unknown bearer token"
            raise _unauthorized(f"{given}: send Authorization: Bearer <one of STACK_API_TOKENS>")
        return principal

    def identify(self, request: Request) -> Principal | None:
        given = _bearer(request).encode()
        found = None
        for token in self.tokens:  # no early exit: the time taken says nothing about a match
            if hmac.compare_digest(given, token.secret) and given:
                found = token.principal
        return found


def _bearer(request: Request) -> str:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


# --- choosing one --------------------------------------------------------------------------------------
async def open_access(_request: Request | None = None) -> Principal:
    return ANONYMOUS


def resolve_auth(settings: Settings, *, warn: bool = True) -> Callable[..., Any]:
    """The authenticator the settings ask for. With nothing configured the API is open in
    development and refuses to start in production, naming the settings that fix it."""
    if settings.auth and settings.auth.strip().lower() == OPEN:
        return open_access
    if settings.auth:
        return _load_dependency(settings.auth.strip())
    if settings.api_tokens:
        return TokenAuth(parse_tokens(settings.api_tokens))
    if settings.is_production:
        raise ConfigError(
            "APP_ENV=production and the API has no authentication: set STACK_API_TOKENS to one or "
            "more long random tokens, or STACK_AUTH=package.module:dependency to use your app's own "
            "login, or STACK_AUTH=none to serve the API to anyone who can reach it"
        )
    if warn:
        log.warning(
            "the API is open to anyone who can reach it "
            "(development; set STACK_API_TOKENS to require a token)"
        )
    return open_access


def _load_dependency(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"STACK_AUTH={spec!r} must be `none` or look like 'package.module:dependency'")
    try:
        dependency = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"STACK_AUTH={spec!r}: cannot load it ({exc})") from exc
    if not callable(dependency):
        raise ConfigError(f"STACK_AUTH={spec!r} is not callable: it must be a FastAPI dependency")
    return dependency  # type: ignore[no-any-return]


def identify_for_readiness(request: Request) -> Principal | None:
    """Who asks `/ready`, without refusing anyone: only a token or an open API can be checked
    here (a custom dependency may need a whole login flow), so its callers count as anonymous."""
    authenticator = getattr(request.app.state, "authenticate", None)  # None: a custom one (install)
    if authenticator is open_access:
        return ANONYMOUS
    if isinstance(authenticator, TokenAuth):
        return authenticator.identify(request)
    return None

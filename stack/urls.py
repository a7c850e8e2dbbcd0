"""URL helpers with no dependencies, so that the pytest plugin can use them without importing
pydantic and SQLAlchemy in every test run."""

from __future__ import annotations

import re
from urllib.parse import unquote_plus, urlsplit, urlunsplit

MASK = "***"
# Query parameters that carry credentials, in the spellings drivers and services use: redis-py
# and libpq take `?password=`, cloud URLs carry `token=`, `sig=`, `X-Amz-Signature=`... It errs on
# the side of hiding: a harmless `author=` is masked too, which costs nothing in a log line.
_SECRET_PARTS = ("pass", "pwd", "secret", "token", "apikey", "auth", "credential", "signature")
_SECRET_WORDS = frozenset({"key", "sig", "session", "sid", "cookie", "cred", "creds", "jwt", "otp"})
_WORD = re.compile(r"[a-z0-9]+")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter called `name` probably carries a secret.

    Parts match anywhere (`sslpassword`, `x-api-token`); short words only whole (`api_key`,
    `sig`), so that `keepalives` or `design` stay visible.
    """
    lowered = unquote_plus(name).lower()
    return any(part in lowered for part in _SECRET_PARTS) or not _SECRET_WORDS.isdisjoint(
        _WORD.findall(lowered)
    )


def _redact_query(query: str) -> str:
    """Mask the values of secret-looking parameters, keeping the rest byte for byte."""
    if not query:
        return query
    fields = []
    for field in query.split("&"):
        name, equals, value = field.partition("=")
        fields.append(f"{name}={MASK}" if equals and value and is_secret_name(name) else field)
    return "&".join(fields)


def redact_url(url: str) -> str:
    """The URL with its password and the values of secret-looking query (or fragment) parameters
    masked, for logs, error messages and `stack config`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable url>"
    # Cut by hand, the way urlsplit does, rather than urlunsplit: that one rewrites what it does
    # not know (`sqlite:///x.db` -> `sqlite:/x.db`), and a redacted URL must still read as the real one.
    rest, hash_, fragment = url.partition("#")
    rest, question, query = rest.partition("?")
    if password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{parts.netloc.rsplit('@', 1)[-1]}"
        if f"//{parts.netloc}" not in rest:  # urlsplit dropped tabs or newlines from it
            return urlunsplit(parts._replace(netloc=netloc, query="", fragment=""))
        rest = rest.replace(f"//{parts.netloc}", f"//{netloc}", 1)
    # OAuth's implicit flow puts `access_token=` in the fragment: masked the same way.
    return f"{rest}{question}{_redact_query(query)}{hash_}{_redact_query(fragment)}"

"""One error family. Every message names the bad value and says how to fix it."""


class StackError(Exception):
    """An error a user can act on; the CLI prints it without a traceback."""


class ConfigError(StackError):
    """A setting is missing or malformed."""


class UnknownKindError(StackError):
    """No job kind is registered under this name."""

    def __init__(self, kind: str, known: list[str]) -> None:
        self.kind = kind
        self.known = known
        super().__init__(f"unknown job kind {kind!r}; known kinds: {', '.join(known) or '(none)'}")


class JobNotFoundError(StackError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}")

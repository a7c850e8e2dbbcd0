"""`celery -A stack.worker:app` — the Celery app built from the environment's settings.

Built on first attribute access (PEP 562), not at import, so importing this module connects to
nothing and a bad setting surfaces as one clear ConfigError.
"""

from __future__ import annotations

from typing import Any

from stack.config import get_settings
from stack.jobs.celery_app import create_celery
from stack.jobs.registry import load_registry


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        settings = get_settings()
        app = create_celery(settings, load_registry(settings.kinds))
        globals()["app"] = globals()["celery"] = app
        return app
    raise AttributeError(name)

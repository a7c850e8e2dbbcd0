"""Remote-control commands the workers answer, for `stack doctor`.

`stack_fingerprint` returns short hashes of where this worker sends work (broker, database; see
`Settings.fingerprint()`), never URLs or secrets, and the job kinds it knows, so that doctor can
tell "the worker uses another DATABASE_URL / STACK_KINDS than the API".

Celery looks commands up in a process-wide registry, so this module only has to be imported in
the worker process before it starts consuming: `stack.jobs.celery_app` imports it. Workers of an
older stack answer the command with an error, which doctor reports as a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.control import inspect_command

from stack.config import get_settings
from stack.jobs.registry import TASK_PREFIX

log = logging.getLogger(__name__)

FINGERPRINT_COMMAND = "stack_fingerprint"


@inspect_command(name=FINGERPRINT_COMMAND)
def stack_fingerprint(state: Any, **_kwargs: Any) -> dict[str, Any]:
    """Hashes of this worker's broker and database settings, and the job kinds it runs."""
    app = getattr(state, "app", None)
    tasks = app.tasks.keys() if app is not None else ()
    return {
        "fingerprint": get_settings().fingerprint(),
        "kinds": sorted(name.removeprefix(TASK_PREFIX) for name in tasks if name.startswith(TASK_PREFIX)),
    }

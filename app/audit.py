"""Audit log: one JSON line per event, appended to `<storage>/audit.log`."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from app.params import LogParams
from stack.jobs.registry import JobContext

AUDIT_LOG = "audit.log"


def _append_line(path: str, line: str) -> None:
    """Append with O_APPEND and one write() so lines from concurrent workers never interleave.

    A buffered text file may split a long line across several write() calls; a raw fd does not.
    """
    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            # Only a full disk or a signal gets here; finishing the line beats leaving half of it.
            os.write(fd, data[written:])
    finally:
        os.close(fd)


def write_log(params: LogParams, job: JobContext) -> dict[str, Any]:
    record = {
        "ts": datetime.now(UTC).isoformat(),
        "job_id": job.id,
        "event": params.event,
        "level": params.level,
        "actor": params.actor,
        "data": params.data,
    }
    job.storage_dir.mkdir(parents=True, exist_ok=True)
    # default=str: params came from JSON, but a caller running the handler in-process may not.
    line = json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":")) + "\n"
    _append_line(str(job.storage_dir / AUDIT_LOG), line)
    job.progress(50, f"logged {params.event}")
    return {"path": AUDIT_LOG, "line": record}

"""Beat runs the sweep itself, every STACK_SWEEP_INTERVAL, in its own process.

A sweep sent as a task would wait in a queue behind the very jobs it is meant to rescue: with
every worker slot busy (or every worker dead) no sweep would run, exactly when one is needed.
So the scheduler calls it between two ticks of the app's own beat schedule instead.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.beat import PersistentScheduler

from stack.jobs.sweep import Sweeper

log = logging.getLogger(__name__)


class SweepingScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's default scheduler (the app's beat_schedule still runs), plus the sweep."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        lazy = self.app.stack_runtime
        self._sweeper = Sweeper(lazy.get(), self.app)
        self._next_sweep = time.monotonic()
        log.info("beat sweeps every %g s", lazy.settings.sweep_interval)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        wait: float = super().tick(*args, **kwargs)
        now = time.monotonic()
        if now >= self._next_sweep:
            self._sweeper.run()
            interval = self._sweeper.runtime.settings.sweep_interval
            self._next_sweep = max(self._next_sweep + interval, time.monotonic())
        return max(0.0, min(wait, self._next_sweep - time.monotonic()))

    def close(self) -> None:
        super().close()
        self._sweeper.runtime.close()  # the events and metrics of jobs the last sweep released

"""Locust scenarios for the stack: `locust -f loadtests/generate.py --host http://127.0.0.1:8000`.

- AsyncJobUser: submit a job, then follow it to a terminal state; the report shows the submit
  (`POST /api/jobs/<kind>`) and the time to completion (`JOB <kind> end-to-end`) side by side.
- InlineJobUser: the same request against a server with CELERY_ENABLED=false, where the answer
  is the finished job.
- MixedFrontendUser: a weighted mix of the reference kinds and status reads, as a frontend makes.

The two mode-specific users ask the server which mode it runs (`GET /`) and stand down when it is
the other one, so a plain `locust -f loadtests/generate.py` against either server measures the
users that fit. What to submit and how to follow it: `--job-kind`, `--job-params`, `--track`, ...
or the LOADTEST_* environment variables (loadtests/options.py lists them; locust's --help does
not, as it prints before loading this file).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import threading
import time
import urllib.request
from collections import deque
from typing import Any, ClassVar

import gevent
import gevent.pool
from locust import FastHttpUser, between, events, task
from locust.exception import StopUser

from loadtests import options as opts

log = logging.getLogger(__name__)

STATUS_NAME = "GET /api/jobs/[id]"
MODE_CELERY = "celery"
MODE_INLINE = "inline"


class JobFailed(Exception):
    """A job ended in failure or revoked, or its status could not be read."""


class JobTimeout(Exception):
    """A job did not reach a terminal state within --job-timeout."""


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("stack job scenarios")
    for arg in opts.ARGUMENTS:
        group.add_argument(arg.flag, type=str, env_var=arg.env, default=arg.default, help=arg.help)


_options_cache: dict[int, opts.LoadOptions] = {}


def load_options(environment: Any) -> opts.LoadOptions:
    """Parsed once per locust environment; an invalid value stops the run with its message."""
    key = id(environment)
    if key not in _options_cache:
        parsed = getattr(environment, "parsed_options", None)
        if parsed is None:  # a library-style Environment: only the environment variables
            _options_cache[key] = opts.from_env(os.environ)
        else:
            _options_cache[key] = opts.from_mapping(vars(parsed))
    return _options_cache[key]


@events.init.add_listener
def _check_options(environment: Any, **_: Any) -> None:
    # Fail before any user spawns, with the flag's own message rather than a traceback per user.
    try:
        load_options(environment)
    except opts.OptionError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None


_modes: dict[str, str | None] = {}
_modes_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


def server_mode(host: str) -> str | None:
    """`celery` or `inline`, from the stack's index page; None if the server does not say."""
    with _modes_lock:
        if host not in _modes:
            try:
                # Outside the locust client on purpose: a probe is not part of the measured load.
                with urllib.request.urlopen(host.rstrip("/") + "/", timeout=5) as resp:
                    _modes[host] = json.loads(resp.read()).get("mode")
            except (OSError, ValueError) as exc:
                log.warning("could not ask %s for its mode (%s); running every user class", host, exc)
                _modes[host] = None
        return _modes[host]


class JobUser(FastHttpUser):
    """Submits jobs and follows them; subclasses pick the tasks and the server mode they need."""

    abstract = True
    needs_mode: ClassVar[str | None] = None
    # Locust's default of 10 connections per user is plenty: a user has one submit and at most
    # --max-tracked status reads in flight.
    concurrency = 10

    def on_start(self) -> None:
        self.options = load_options(self.environment)
        self._trackers = gevent.pool.Group()
        self._standing_down = False
        mode = server_mode(self.host) if self.needs_mode and self.host else None
        if mode is not None and mode != self.needs_mode:
            self._standing_down = True
            if (type(self).__name__, mode) not in _warned:
                _warned.add((type(self).__name__, mode))
                log.warning(
                    "%s stands down: %s runs in %s mode, this user measures %s mode",
                    type(self).__name__,
                    self.host,
                    mode,
                    self.needs_mode,
                )
            return
        self._pacer = opts.Pacer(self.options.submit_rate)
        if self._pacer.interval:
            # Users spawned in one batch would otherwise submit in lockstep.
            gevent.sleep(random.random() * self._pacer.interval)
            self._pacer = opts.Pacer(self.options.submit_rate)

    def on_stop(self) -> None:
        self._trackers.kill(block=False)

    def wait_time(self) -> float:
        return self._pacer.wait()

    def stand_down_if_mismatched(self) -> None:
        if self._standing_down:
            raise StopUser()

    # --- the job flow ---------------------------------------------------------------------------
    def submit(self, kind: str, params: dict[str, Any], *, track: str | None = None) -> str | None:
        """POST the job and follow it as `track` says (default: --track). Returns its id."""
        track = track or self.options.track
        started = time.perf_counter()
        with self.client.post(
            f"/api/jobs/{kind}", json=params, name=f"POST /api/jobs/{kind}", catch_response=True
        ) as resp:
            job = self._accepted_job(resp)
            if job is None:
                return None
            resp.success()
        task_id = str(job["task_id"])
        if job["status"] in opts.TERMINAL_STATUSES:  # inline mode: the answer is the finished job
            self._record_outcome(kind, task_id, started, job)
        elif track == "wait":
            self.follow(kind, task_id, started)
        elif track == "background" and len(self._trackers) < self.options.max_tracked:
            self._trackers.spawn(self.follow, kind, task_id, started)
        return task_id

    def _accepted_job(self, resp: Any) -> dict[str, Any] | None:
        if resp.status_code not in (200, 202):
            resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            return None
        try:
            job = resp.json()
            if "task_id" not in job or "status" not in job:
                raise KeyError("task_id")
        except (ValueError, TypeError, KeyError):
            resp.failure(f"HTTP {resp.status_code} but not a job: {(resp.text or '')[:200]}")
            return None
        if self.needs_mode == MODE_INLINE and resp.status_code != 200:
            resp.failure(
                f"HTTP {resp.status_code}: the server queued the job; InlineJobUser needs a server "
                "started with CELERY_ENABLED=false"
            )
            return None
        return dict(job)

    def follow(self, kind: str, task_id: str, started: float) -> None:
        """Poll the job until it is terminal or --job-timeout passes; record the end-to-end time."""
        deadline = started + self.options.job_timeout
        job: dict[str, Any] = {}
        while True:
            gevent.sleep(min(self.options.poll_interval, max(0.0, deadline - time.perf_counter())))
            with self.client.get(f"/api/jobs/{task_id}", name=STATUS_NAME, catch_response=True) as resp:
                if resp.status_code == 200:
                    try:
                        job = dict(resp.json())
                        resp.success()
                    except ValueError:
                        resp.failure(f"status is not JSON: {(resp.text or '')[:200]}")
                elif resp.status_code == 404:
                    resp.failure(f"job {task_id} vanished (404)")
                    self._fire(kind, started, JobFailed(f"job {task_id} vanished (404)"))
                    return
                else:
                    resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            if job.get("status") in opts.TERMINAL_STATUSES:
                self._record_outcome(kind, task_id, started, job)
                return
            if time.perf_counter() >= deadline:
                self._fire(
                    kind,
                    started,
                    JobTimeout(
                        f"job still {job.get('status', 'unknown')} at {job.get('progress', '?')}% "
                        f"after {self.options.job_timeout:g} s"
                    ),
                )
                return

    def _record_outcome(self, kind: str, task_id: str, started: float, job: dict[str, Any]) -> None:
        error = None
        if job.get("status") != "success":
            detail = job.get("error") or job.get("message") or ""
            error = JobFailed(f"job ended {job.get('status')}: {str(detail)[:200]}")
        self._fire(kind, started, error)

    def _fire(self, kind: str, started: float, exception: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="JOB",
            name=f"{kind} end-to-end",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=exception,
            context={},
        )


class AsyncJobUser(JobUser):
    """Submit (202) and follow the job to its end, against a server with Celery."""

    needs_mode = MODE_CELERY

    @task
    def submit_job(self) -> None:
        self.stand_down_if_mismatched()
        self.submit(self.options.kind, self.options.params)


class InlineJobUser(JobUser):
    """The same submit against a server with CELERY_ENABLED=false: the answer is the finished job."""

    needs_mode = MODE_INLINE

    @task
    def submit_job(self) -> None:
        self.stand_down_if_mismatched()
        self.submit(self.options.kind, self.options.params)


def _tiny_png() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 90, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


_TEXT = (
    "# The harbour\n\nMara walked down to the harbour at dawn. The boats were already out. "
    "Tomas waved from the pier.\n\n# The storm\n\nBy noon the sky had turned. Mara ran back "
    "to the house while Tomas tied the boats.\n"
)


class MixedFrontendUser(JobUser):
    """What a frontend generates: mostly status reads of its own jobs, a few submits of each kind."""

    wait_time = between(0.5, 2.0)
    recent_size = 20

    def on_start(self) -> None:
        super().on_start()
        self.recent: deque[str] = deque(maxlen=self.recent_size)
        self.png = _tiny_png()

    def _submit(self, kind: str, params: dict[str, Any]) -> None:
        task_id = self.submit(kind, params, track="background")
        if task_id:
            self.recent.append(task_id)

    @task(10)
    def read_status(self) -> None:
        if not self.recent:
            self._submit("demo", {"seconds": 0.5, "steps": 5})
            return
        task_id = random.choice(self.recent)
        with self.client.get(f"/api/jobs/{task_id}", name=STATUS_NAME, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")

    @task(2)
    def list_jobs(self) -> None:
        self.client.get("/api/jobs?limit=20", name="GET /api/jobs")

    @task(3)
    def demo(self) -> None:
        self._submit("demo", {"seconds": 0.5, "steps": 5})

    @task(3)
    def write_log(self) -> None:
        self._submit("write_log", {"event": "page_view", "data": {"page": random.randint(1, 50)}})

    @task(2)
    def generate_image(self) -> None:
        self._submit("generate_image", {"width": 64, "height": 64, "tiles": 4, "style": "gradient"})

    @task(2)
    def generate_content(self) -> None:
        self._submit("generate_content", {"text": _TEXT, "title": "Harbour"})

    @task(1)
    def analyze_image(self) -> None:
        self._submit("analyze_image", {"image_data": self.png, "top_colours": 3})

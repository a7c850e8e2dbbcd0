"""The claim and take-over rules, every job state against every kind of message.

A message for a job is one of: its first delivery, a duplicate (the sweep re-sent it, a client
sent it twice), the broker's redelivery after a worker was lost, the job's own retry, or the
sweep's re-queue. On the wire all of them are the same job id, so none of them may decide on its
own: only the row and its owner's liveness do. The one exception is the retry a worker sends
after the database went away mid-attempt: it carries the token of the attempt it abandoned.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from stack.jobs.liveness import Owner
from stack.jobs.models import Job, JobStatus, utcnow
from stack.jobs.runner import Abandoned
from stack.runtime import Runtime

WORKER = "id-a"
OWNER = Owner("worker-a@host", worker_id=WORKER, pid=100)
TAKER = Owner("worker-b@host", worker_id="id-b", pid=200)

# Messages that carry nothing but the job id: the runner cannot tell them apart.
PLAIN_MESSAGES = ["first delivery", "duplicate", "broker redelivery", "own retry", "sweep re-queue"]


def prepare(runtime: Runtime, state: str, owner: str) -> Job:
    """A demo job in `state`; for running states, its owner `alive` (running it), `idle` (alive,
    and a heartbeat well after the claim no longer lists it), `dead` (heartbeat too old) or
    `gone` (its row removed)."""
    store = runtime.store
    store.register_worker(worker_id=WORKER, name=OWNER.name, pid=1, queues=["default"])
    job = store.create(kind="demo", queue="default", params={"seconds": 0, "steps": 1})
    if state == "pending":
        return job
    store.claim(job.id, owner=OWNER)
    if state == "retry":
        store.retry(job.id, error="flaky", countdown=0, attempt=1)
    elif state == "progress":
        store.set_progress(job.id, 40, "forty", attempt=1)
    elif state == "success":
        store.succeed(job.id, result=None, attempt=1)
    elif state == "failure":
        store.fail(job.id, error="boom", attempt=1)
    elif state == "revoked":
        store.revoke(job.id)
    if owner == "alive":
        store.heartbeat(WORKER, running=[job.id], at=utcnow())
    elif owner == "idle":
        settled = utcnow() + timedelta(seconds=runtime.settings.heartbeat_interval + 1)
        store.heartbeat(WORKER, running=[], at=settled)
    elif owner == "dead":
        past = utcnow() - timedelta(seconds=runtime.settings.worker_dead_after + 5)
        store.heartbeat(WORKER, running=[job.id], at=past)
    elif owner == "gone":
        store.forget_worker(WORKER)
    stored = store.get(job.id)
    assert stored is not None
    return stored


# (state, owner) -> does a plain message run the job?
PLAIN_RULES = [
    ("pending", "-", True),
    ("retry", "-", True),
    ("started", "alive", False),
    ("progress", "alive", False),
    ("started", "idle", True),
    ("progress", "idle", True),
    ("started", "dead", True),
    ("progress", "dead", True),
    ("started", "gone", True),
    ("success", "-", False),
    ("failure", "-", False),
    ("revoked", "-", False),
]


@pytest.mark.parametrize("message", PLAIN_MESSAGES)
@pytest.mark.parametrize(("state", "owner", "runs"), PLAIN_RULES)
def test_a_message_runs_the_job_only_when_nobody_else_may_be_running_it(
    runtime: Runtime, state: str, owner: str, runs: bool, message: str
) -> None:
    before = prepare(runtime, state, owner)
    outcome = runtime.runner.run(before.id, owner=TAKER)
    after = runtime.store.get(before.id)
    assert after is not None
    if runs:
        assert outcome.status is JobStatus.SUCCESS, f"{message} for a {state} job ({owner}) must run it"
        assert after.attempts == before.attempts + 1 and after.worker == TAKER.name
        taken_over = state in ("started", "progress")
        assert after.lost_attempts == (1 if taken_over else 0)
    else:
        assert outcome.status is None, f"{message} for a {state} job ({owner}) must be dropped"
        assert (after.status, after.attempts) == (before.status, before.attempts)


@pytest.mark.parametrize(
    ("token", "runs"),
    [
        (Abandoned(worker_id=WORKER, attempt=1), True),  # its own abandoned attempt: take it over
        (Abandoned(worker_id=WORKER, attempt=7), False),  # another attempt's token: a duplicate
        (Abandoned(worker_id="id-other", attempt=1), False),
    ],
)
def test_the_retry_of_an_abandoned_attempt_takes_over_from_a_live_owner(
    runtime: Runtime, token: Abandoned, runs: bool
) -> None:
    before = prepare(runtime, "progress", "alive")  # the owner is alive and still lists the job
    outcome = runtime.runner.run(before.id, owner=TAKER, abandoned=token)
    after = runtime.store.get(before.id)
    assert after is not None
    assert (outcome.status is JobStatus.SUCCESS) is runs
    assert after.attempts == (2 if runs else 1)


@pytest.mark.parametrize("owner", ["dead", "gone", "idle"])
def test_a_lost_last_attempt_fails_the_job_instead_of_running_it(runtime: Runtime, owner: str) -> None:
    runtime.runner.retry_policy = type(runtime.runner.retry_policy)(max_retries=0, backoff=0, backoff_max=0)
    before = prepare(runtime, "started", owner)
    outcome = runtime.runner.run(before.id, owner=TAKER)
    after = runtime.store.get(before.id)
    assert outcome.status is None
    assert after is not None and after.status is JobStatus.FAILURE and after.attempts == 1
    assert after.error is not None and after.error.startswith("worker lost 1 time while running this job")


def test_an_unknown_job_is_not_run(runtime: Runtime) -> None:
    assert runtime.runner.run("00000000-0000-0000-0000-000000000000", owner=TAKER).status is None

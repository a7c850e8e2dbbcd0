"""Submits written a group at a time: concurrent requests share one transaction and one publish,
and each still gets its own job, or the error it alone would have met."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from kombu import Producer
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from stack.jobs import service as service_module
from stack.jobs import store as store_module
from stack.jobs.celery_app import create_celery
from stack.jobs.grouping import GroupSubmitter
from stack.jobs.models import Job, JobStatus
from stack.jobs.service import DEFERRED_MESSAGE, JobService, Submit
from stack.jobs.store import NewJob
from stack.runtime import Runtime


@pytest.fixture
def service(runtime: Runtime) -> Iterator[JobService]:
    jobs = JobService(runtime, create_celery(runtime.settings, runtime.registry))  # memory broker
    yield jobs
    jobs.close()


class GatedService:
    """Records each group it is asked to write; holds the first until told to go on, so that
    the submits arriving meanwhile must wait for the next group."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self.celery = service.celery
        self.groups: list[int] = []
        self.producers: list[Producer | None] = []
        self.writing = threading.Event()
        self.go_on = threading.Event()

    def submit_many(
        self, submits: Sequence[Submit], *, producer: Producer | None = None
    ) -> list[Job | Exception]:
        self.groups.append(len(submits))
        self.producers.append(producer)
        self.writing.set()
        assert self.go_on.wait(10), "the test never let the first group go on"
        return self.service.submit_many(submits, producer=producer)


async def _wait_for(event: threading.Event, what: str) -> None:
    if not await asyncio.to_thread(event.wait, 10):
        raise AssertionError(f"timed out after 10 s waiting for {what}")


def test_submits_arriving_during_a_write_go_in_the_next_group(service: JobService) -> None:
    gated = GatedService(service)
    submits = GroupSubmitter(gated)  # type: ignore[arg-type]  # what it calls is submit_many
    demo = service.registry.get("demo")
    queued_before = _queued(service, demo.queue)  # the memory broker is the process's: others' too

    async def scenario() -> list[Job]:
        first = asyncio.create_task(submits.submit(demo, {"seconds": 0, "steps": 1}))
        await _wait_for(gated.writing, "the first group to be written")
        rest = [asyncio.create_task(submits.submit(demo, {"seconds": n, "steps": 1})) for n in range(1, 6)]
        await asyncio.sleep(0.05)  # all five queued behind the first group
        gated.go_on.set()
        return await asyncio.gather(first, *rest)

    jobs = asyncio.run(scenario())
    submits.close()
    assert gated.groups == [1, 5]
    first, second = gated.producers
    assert first is not None and second is first, "the writer publishes through one producer it holds"
    assert [job.params["seconds"] for job in jobs] == [0, 1, 2, 3, 4, 5]  # each caller its own job
    assert len({job.id for job in jobs}) == 6
    for job in jobs:
        stored = service.store.get(job.id)
        assert stored is not None and stored.status is JobStatus.PENDING
        assert job.dispatched_at is not None  # published
    assert _queued(service, demo.queue) - queued_before == 6  # one message per job


def _queued(service: JobService, queue: str) -> int:
    with service.celery.connection_for_write() as connection:  # type: ignore[union-attr]
        return int(connection.default_channel._size(queue))


def test_a_row_the_database_refuses_fails_alone(service: JobService, monkeypatch: pytest.MonkeyPatch) -> None:
    create_many = service.store.create_many

    def refuse_bad_rows(new_jobs: Sequence[NewJob]) -> Sequence[Job]:
        if any(new.params.get("bad") for new in new_jobs):
            raise DataError("INSERT ...", {}, Exception("invalid input for type json"))
        return create_many(new_jobs)

    monkeypatch.setattr(service.store, "create_many", refuse_bad_rows)
    demo = service.registry.get("demo")
    outcomes = service.submit_many([(demo, {"n": 1}), (demo, {"bad": True}), (demo, {"n": 3})])
    assert isinstance(outcomes[1], DataError)
    good = [outcome for outcome in outcomes if isinstance(outcome, Job)]
    assert [job.params for job in good] == [{"n": 1}, {"n": 3}]
    assert all(service.store.get(job.id) is not None for job in good)
    assert len(service.store.list(limit=10)) == 2


def test_a_database_outage_fails_every_submit_of_the_group(
    service: JobService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(new_jobs: Sequence[NewJob]) -> Sequence[Job]:
        raise OperationalError("INSERT ...", {}, Exception("connection refused"))

    monkeypatch.setattr(service.store, "create_many", unreachable)
    submits = GroupSubmitter(service)
    demo = service.registry.get("demo")

    async def scenario() -> list[Any]:
        waits = [submits.submit(demo, {"steps": n}) for n in range(1, 4)]
        return await asyncio.gather(*waits, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    submits.close()
    assert all(isinstance(outcome, OperationalError) for outcome in outcomes), outcomes


def test_a_broker_outage_defers_the_whole_group(service: JobService, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []

    def second_publish_fails(celery: Any, kind: Any, job_id: str, **kwargs: Any) -> None:
        if sent:
            raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        sent.append(job_id)

    monkeypatch.setattr(service_module, "publish", second_publish_fails)
    demo = service.registry.get("demo")
    outcomes = service.submit_many([(demo, {}), (demo, {}), (demo, {})])
    for outcome in outcomes:
        assert isinstance(outcome, Job) and outcome.message == DEFERRED_MESSAGE
        stored = service.store.get(outcome.id)
        # Left to the sweep: pending and unmarked, a second message for the first is dropped
        # by its claim.
        assert stored is not None and stored.status is JobStatus.PENDING and stored.dispatched_at is None


def test_a_caller_that_leaves_cancels_only_its_wait(service: JobService) -> None:
    gated = GatedService(service)
    submits = GroupSubmitter(gated)  # type: ignore[arg-type]
    demo = service.registry.get("demo")

    async def scenario() -> tuple[Job, Job]:
        first = asyncio.create_task(submits.submit(demo, {"steps": 1}))
        await _wait_for(gated.writing, "the first group to be written")
        leaving = asyncio.create_task(submits.submit(demo, {"steps": 2}))
        staying = asyncio.create_task(submits.submit(demo, {"steps": 3}))
        await asyncio.sleep(0.05)
        leaving.cancel()  # its client disconnected while its group waited
        gated.go_on.set()
        return await first, await staying

    first, staying = asyncio.run(scenario())
    submits.close()
    assert gated.groups == [1, 2]
    # The leaving caller's job was made all the same, as a synchronous submit's would be.
    assert sorted(job.params["steps"] for job in service.store.list(limit=10)) == [1, 2, 3]
    assert service.store.get(staying.id) is not None and first.id != staying.id


def test_a_store_writes_a_group_in_one_transaction(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    store = runtime.store
    jobs = store.create_many([NewJob(kind="demo", queue="default", params={"n": n}) for n in range(3)])
    assert [job.params for job in jobs] == [{"n": 0}, {"n": 1}, {"n": 2}]
    stored = [store.get(job.id) for job in jobs]
    assert all(s is not None and s.status is JobStatus.PENDING and s.progress == 0 for s in stored)
    # All or none: when the second row breaks the INSERT (a duplicate id), the first is not kept.
    monkeypatch.setattr(store_module, "new_job_id", lambda: "same-id")
    with pytest.raises(IntegrityError):
        store.create_many([NewJob(kind="demo", queue="default", params={}) for _ in range(2)])
    assert store.get("same-id") is None
    assert len(store.list(limit=10)) == 3

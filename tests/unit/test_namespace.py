"""STACK_NAMESPACE: every Redis key and channel of an app starts with it, so apps sharing a Redis
never exchange jobs, events or metrics. The real two-stack proof is tests/e2e/test_namespaces_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest

from stack.config import derive_namespace, load_settings
from stack.doctor.namespaces import check_namespace
from stack.doctor.result import Status
from stack.errors import ConfigError
from stack.jobs import metrics
from stack.jobs.celery_app import celery_config
from stack.jobs.events import RedisPublisher, channel_for
from stack.jobs.models import Job, JobStatus, utcnow
from stack.jobs.registry import JobRegistry
from tests.unit.conftest import make_settings


@pytest.mark.parametrize(
    ("kinds", "namespace"),
    [
        ("app.kinds:registry", "app"),
        ("billing:registry", "billing"),
        ("my project!.jobs:registry", "my-project"),
        ("???:registry", "stack"),
    ],
)
def test_the_default_is_the_top_level_package_of_the_kinds(kinds: str, namespace: str) -> None:
    assert derive_namespace(kinds) == namespace


def test_default_explicit_and_none(tmp_path: Path) -> None:
    assert make_settings(tmp_path).redis_prefix == "app:"
    assert make_settings(tmp_path, namespace="shop").redis_prefix == "shop:"
    assert make_settings(tmp_path, namespace="").redis_prefix == ""  # the keys of before


def test_a_bad_namespace_names_the_setting_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_NAMESPACE", "my app:*")
    with pytest.raises(ConfigError, match=r"STACK_NAMESPACE: .*e\.g\. STACK_NAMESPACE=myapp"):
        load_settings()


def test_the_broker_and_result_backend_prefix_every_key(tmp_path: Path) -> None:
    config = celery_config(make_settings(tmp_path, namespace="shop"), JobRegistry())
    assert config["broker_transport_options"]["global_keyprefix"] == "shop:"
    assert config["result_backend_transport_options"]["global_keyprefix"] == "shop:"
    assert config["task_default_queue"] == "default"  # queue names stay; their keys move
    unprefixed = celery_config(make_settings(tmp_path, namespace=""), JobRegistry())
    assert "global_keyprefix" not in unprefixed["broker_transport_options"]


def test_events_go_to_the_namespaced_channel_only() -> None:
    server = fakeredis.FakeServer()
    subscriber = fakeredis.FakeRedis(server=server).pubsub()
    subscriber.psubscribe("*")
    subscriber.get_message(timeout=1)  # the subscribe confirmation
    RedisPublisher(fakeredis.FakeRedis(server=server), prefix="shop:").publish("j1", {"progress": 40})
    message = subscriber.get_message(timeout=1)
    assert message is not None and message["channel"] == b"shop:stack:jobs:j1"
    assert channel_for("j1", prefix="shop:") == "shop:stack:jobs:j1"
    assert json.loads(message["data"]) == {"progress": 40}


def test_metrics_of_two_namespaces_never_add_up() -> None:
    client = fakeredis.FakeRedis()
    now = utcnow()
    job = Job(id="j", kind="demo", queue="default", claimed_at=now, created_at=now, started_at=now)
    metrics.RedisRecorder(client, prefix="shop:").finished(job, JobStatus.FAILURE)
    assert client.exists("shop:stack:metrics:job_failures")
    assert not client.exists("stack:metrics:job_failures")

    def failures(prefix: str) -> list[tuple[tuple[str, ...], float]]:
        return metrics.read_recorded(client, prefix=prefix).counters["stack_job_failures"]

    assert failures("shop:") == [(("demo",), 1.0)]
    assert failures("blog:") == []


OURS = ["default", "content"]


def test_doctor_alone_in_the_database_is_ok() -> None:
    result = check_namespace({"shop:": {"default", "content"}}, namespace="shop", queues=OURS)
    assert result.status is Status.OK and "no other Celery app" in result.detail


def test_doctor_names_the_other_apps_sharing_the_database() -> None:
    bindings = {"shop:": {"default"}, "blog:": {"default"}, "": {"celery"}}
    result = check_namespace(bindings, namespace="shop", queues=OURS)
    assert result.status is Status.WARN
    assert "prefix 'blog:': queues default" in result.detail and "no prefix: queues celery" in result.detail
    assert "STACK_NAMESPACE" in result.fix


def test_doctor_spots_another_app_under_our_own_keys() -> None:
    result = check_namespace({"": {"default", "emails"}}, namespace="", queues=OURS)
    assert result.status is Status.WARN and "queues emails are bound under no prefix" in result.detail
    assert result.fix.startswith("give each app its own STACK_NAMESPACE")


def test_doctor_without_a_namespace_warns_that_queues_mix() -> None:
    mixed = check_namespace({"": {"default"}, "blog:": {"default"}}, namespace="", queues=OURS)
    assert mixed.status is Status.WARN and "STACK_NAMESPACE is empty" in mixed.detail
    assert mixed.fix.startswith("set STACK_NAMESPACE=")

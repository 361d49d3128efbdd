"""Retries seen from a stock Celery 5.7 client, on RabbitMQ and Redis: ``self.retry``,
``autoretry_for`` with backoff, RETRY in the result backend, exhaustion, and the retry message
run by a real Celery worker."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from functools import partial
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import MaxRetriesExceededError

from .conftest import Broker, Marks, WorkerProcess, celery_worker_process, eventually
from .retry_app import Flaky

pytestmark = [pytest.mark.integration, pytest.mark.interop]

APP = "tests.interop.retry_app:app"
StartWorker = Callable[..., WorkerProcess]


def _gaps(entries: list[dict[str, Any]]) -> list[float]:
    return [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(entries)]


@pytest.mark.parametrize("task", ["retries.flaky", "retries.flaky_sync"])
def test_a_task_that_fails_twice_then_succeeds(
    task: str, start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks
) -> None:
    start_worker(unique_name, app=APP)
    key = marks.key("runs")

    result = celery_client.send_task(task, args=(key, 2, 0.5), queue=unique_name)

    assert result.get(timeout=20) == {"retries": 2}
    runs = marks.read(key)
    assert [run["retries"] for run in runs] == [0, 1, 2]
    assert all(0.49 <= gap < 5 for gap in _gaps(runs)), _gaps(runs)


def test_retry_state_is_stored_while_the_retry_waits(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, redis_url: str
) -> None:
    start_worker(unique_name, app=APP)
    result = celery_client.send_task(
        "retries.flaky", args=("marks:unused", 1, 3), queue=unique_name
    )

    eventually(lambda: result.state == "RETRY")

    assert isinstance(result.info, Flaky)
    assert result.info.args == ("attempt", 0)
    assert "celery.exceptions.Retry: Retry in 3s: Flaky('attempt', 0)" in result.traceback
    with redis.Redis.from_url(redis_url) as client:
        record = json.loads(client.get(f"celery-task-meta-{result.id}"))
    assert record["status"] == "RETRY"
    assert record["result"] == {
        "exc_type": "Flaky",
        "exc_message": ["attempt", 0],
        "exc_module": "tests.interop.retry_app",
    }
    assert record["children"] == [[[result.id, None], None]]  # the retry, as Celery lists it
    assert record["date_done"] is None
    assert result.get(timeout=20) == {"retries": 1}


@pytest.mark.parametrize("with_exc", [True, False])
def test_retries_run_out(
    with_exc: bool, start_worker: StartWorker, celery_client: Celery, unique_name: str,
    marks: Marks,
) -> None:  # fmt: skip
    """``max_retries=2``: three runs, then the ``exc`` given to retry, or, with none,
    ``MaxRetriesExceededError`` naming the call."""
    start_worker(unique_name, app=APP)
    key = marks.key("runs")
    result = celery_client.send_task("retries.exhaust", args=(key, with_exc), queue=unique_name)

    with pytest.raises((Flaky, MaxRetriesExceededError)) as caught:
        result.get(timeout=20)

    if with_exc:
        assert (type(caught.value), caught.value.args) == (Flaky, ("gave up",))
    else:
        assert type(caught.value) is MaxRetriesExceededError
        assert str(caught.value) == (
            f"Can't retry retries.exhaust[{result.id}] args:('{key}', False) kwargs:{{}}"
        )
    assert result.state == "FAILURE"
    assert [run["retries"] for run in marks.read(key)] == [0, 1, 2]


def test_max_retries_none_retries_without_limit(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks
) -> None:
    start_worker(unique_name, app=APP)
    key = marks.key("runs")
    result = celery_client.send_task("retries.unlimited", args=(key, 5), queue=unique_name)

    assert result.get(timeout=20) == 5
    assert len(marks.read(key)) == 6


def test_a_retry_with_new_arguments(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks
) -> None:
    start_worker(unique_name, app=APP)
    key = marks.key("runs")
    result = celery_client.send_task("retries.new_arguments", args=(key, 1), queue=unique_name)

    assert result.get(timeout=20) == 55
    assert [(run["n"], run["step"]) for run in marks.read(key)] == [(1, 1), (11, 5)]


def test_autoretry_backs_off_exponentially_up_to_the_maximum(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks
) -> None:
    """``retry_backoff=True``: 1 s, then 2 s, then 2 s again (``retry_backoff_max=2``)."""
    start_worker(unique_name, app=APP)
    key = marks.key("runs")
    result = celery_client.send_task("retries.auto", args=(key,), queue=unique_name)

    with pytest.raises(Flaky, match="always"):
        result.get(timeout=30)

    gaps = _gaps(marks.read(key))
    assert len(gaps) == 3  # four runs: max_retries=3
    for gap, expected in zip(gaps, [1, 2, 2], strict=True):
        assert expected - 0.01 <= gap < expected + 1.0, gaps


CeleryWorker = Callable[[str], AbstractContextManager[subprocess.Popen[str]]]


@pytest.fixture
def celery_worker(broker: Broker, redis_url: str) -> CeleryWorker:
    """Run a stock ``celery worker`` (solo pool) with ``celery_retry_app`` on a queue, on the
    test's broker, for a ``with`` block."""
    env = {
        "INTEROP_BROKER_URL": broker.client_url,
        "INTEROP_BROKER_OPTIONS": json.dumps(broker.client_options),
        "INTEROP_REDIS_URL": redis_url,
    }
    return partial(celery_worker_process, "tests.interop.celery_retry_app", env=env)


def test_a_retry_celeriac_publishes_runs_on_a_celery_worker(
    start_worker: StartWorker, celery_client: Celery, broker: Broker, unique_name: str,
    celery_worker: CeleryWorker,
) -> None:  # fmt: skip
    """celeriac runs the first attempt and republishes; it stops, and Celery runs the retry."""
    worker = start_worker(unique_name, app=APP, concurrency=1)
    result = celery_client.send_task("retries.handoff", args=("label",), queue=unique_name)
    retried = worker.wait_for("task_retried", task_id=result.id)
    eventually(lambda: result.state == "RETRY")  # stored after the retry is sent, as Celery

    worker.signal(signal.SIGTERM)  # it holds the retry for its ETA: that goes back, unrun
    assert worker.wait() == 0
    eventually(lambda: broker.ready(unique_name) == 1)
    with celery_worker(unique_name):
        ran = result.get(timeout=30)

    eta = datetime.fromisoformat(ran.pop("eta"))
    assert eta.isoformat() == retried["eta"]  # what celeriac said it published
    assert ran == {
        "by": "celery",
        "retries": 1,
        "args": ["label"],
        "id": result.id,
        "root_id": result.id,
        "parent_id": result.id,  # Celery sends a retry as a child of the attempt
    }
    assert result.date_done >= eta

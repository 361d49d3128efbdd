"""A task running longer than RabbitMQ's ``consumer_timeout`` (set to 4 s here) runs once and
leaves the channel alone: its message is handed over to a lease (``runtime/worker/leases.py``).

Without that, RabbitMQ closes the worker's channel ("delivery acknowledgement on channel 1
timed out") and requeues the message, and the task runs a second time (celery#6760); the
second test shows the broker setting bites, so that the first cannot pass by accident.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from tests.chaos.conftest import APP
from tests.chaos.servers import rabbitmq_consumer_timeout
from tests.interop.conftest import Broker, WorkerProcess, eventually

pytestmark = pytest.mark.parametrize("broker", ["amqp"], indirect=True)

#: The broker's consumer_timeout in these tests, and the task that outlasts it thrice.
TIMEOUT = 4
LONG = 12


@pytest.fixture
def short_consumer_timeout() -> Iterator[None]:
    with rabbitmq_consumer_timeout(TIMEOUT):
        yield


@pytest.fixture
def tally(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _runs(tally: redis.Redis, key: str, task_id: str) -> int:
    return int(tally.hget(f"{key}:runs", task_id) or 0)


@pytest.mark.usefixtures("short_consumer_timeout")
def test_a_task_longer_than_consumer_timeout_runs_once(
    start_worker: Any,
    celery_client: Celery,
    unique_name: str,
    broker: Broker,
    tally: redis.Redis,
) -> None:
    worker: WorkerProcess = start_worker(
        unique_name, app=APP, extra=("--consumer-timeout", str(TIMEOUT))
    )
    key = f"t-{uuid.uuid4().hex}"
    long = celery_client.send_task("chaos.long", args=(key, LONG), queue=unique_name)
    time.sleep(TIMEOUT + 2)  # past the timeout: the channel would be gone by now
    short = [
        celery_client.send_task("chaos.late", args=(key,), queue=unique_name) for _ in range(3)
    ]

    assert [result.get(timeout=15) for result in short] == [result.id for result in short]
    assert long.get(timeout=LONG + 15) == long.id
    worker.wait_for("lease_taken")
    # Every copy the run left comes back, finds its lease gone or superseded, and is dropped.
    eventually(lambda: broker.ready(unique_name) == 0, timeout=LONG)
    time.sleep(TIMEOUT * 2)
    assert any(record.get("event") == "lease_superseded" for record in worker.records)
    assert _runs(tally, key, long.id) == 1
    log = "".join(worker.lines)
    assert "PRECONDITION_FAILED" not in log
    assert "timed out" not in log
    tally.delete(f"{key}:runs", f"{key}:started")


@pytest.mark.usefixtures("short_consumer_timeout")
def test_without_a_lease_the_broker_takes_the_message_back(
    start_worker: Any,
    celery_client: Celery,
    unique_name: str,
    tally: redis.Redis,
) -> None:
    """The control: the same run with leases off is taken back by RabbitMQ and run again."""
    start_worker(unique_name, app=APP, extra=("--consumer-timeout", "none"))
    key = f"t-{uuid.uuid4().hex}"
    long = celery_client.send_task("chaos.long", args=(key, LONG), queue=unique_name)

    eventually(lambda: _runs(tally, key, long.id) >= 2, timeout=LONG * 6)
    tally.delete(f"{key}:runs", f"{key}:started")

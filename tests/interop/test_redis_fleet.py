"""Redis only: celeriac beside a stock Celery worker on one queue, and workers that die.

What kombu's Redis transport cannot promise and celeriac must: a mixed fleet runs every task
exactly once; a SIGKILLed worker's messages all come back; a task that outlives the
visibility timeout is not restored and run a second time.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable

import pytest
import redis
from celery import Celery
from kombu import Connection

from runtime import App

from .conftest import REDIS_VISIBILITY_TIMEOUT, Broker, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.interop]

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def celery_worker(
    start_celery_worker: Callable[..., subprocess.Popen[str]], redis_url: str, unique_name: str
) -> subprocess.Popen[str]:
    """A stock ``celery worker`` (prefork, 2 processes, prefetch multiplier 1) on the queue,
    with the default Redis layout (no key prefix); returns once it says it is ready."""
    return start_celery_worker(unique_name, broker_url=redis_url)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_mixed_fleet_runs_every_task_exactly_once(
    celery_worker: subprocess.Popen[str], start_worker: StartWorker, redis_url: str,
    unique_name: str, counts: Callable[[], dict[str, int]],
) -> None:  # fmt: skip
    """2,000 tasks from a Celery client, one queue, a Celery worker and a celeriac worker."""
    start_worker(unique_name, broker_url=redis_url)  # the default layout, as Celery's
    client = Celery("fleet", broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        with client.producer_or_acquire() as producer:
            key = f"{unique_name}:runs"
            results = [
                client.send_task("interop.count", (key,), queue=unique_name, producer=producer)
                for _ in range(2000)
            ]
        ran_by = [result.get(timeout=120) for result in results]
    finally:
        client.backend.client.close()

    runs = counts()
    assert len(runs) == 2000
    assert set(runs.values()) == {1}
    assert set(runs) == {result.id for result in results}
    assert ran_by.count("celery") > 0
    assert ran_by.count("celeriac") > 0
    with Connection(redis_url) as conn:
        assert conn.default_channel._size(unique_name) == 0


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_sigkilled_worker_loses_none_of_the_messages_it_held(
    start_worker: StartWorker, celery_client: Celery, broker: Broker, unique_name: str
) -> None:
    """Three acks_late tasks running (unacknowledged in Redis) and two countdown tasks
    deferred to the delay store when the worker is killed; a new worker runs all five."""
    first = start_worker(unique_name, concurrency=5)
    running = [celery_client.send_task("interop.sync_slow", (3,), queue=unique_name)
               for _ in range(3)]  # fmt: skip
    held = [celery_client.send_task("interop.add", (n, n), queue=unique_name, countdown=4)
            for n in range(2)]  # fmt: skip
    for result in running:
        first.wait_for("task_started", task_id=result.id)
    client = redis.Redis.from_url(broker.client_url)
    prefix = broker.client_options["global_keyprefix"]
    try:
        deadline = time.monotonic() + 10
        while (client.hlen(f"{prefix}unacked"), client.zcard(f"{prefix}_celeriac.delayed")) != (
            3, 2,
        ):  # fmt: skip
            assert time.monotonic() < deadline, "the worker never held all five"
            time.sleep(0.05)
    finally:
        client.close()

    first.signal(signal.SIGKILL)
    first.wait()
    second = start_worker(unique_name, concurrency=3)

    assert [r.get(timeout=30) for r in running] == ["slept"] * 3
    assert [r.get(timeout=30) for r in held] == [0, 2]
    for result in running:
        second.wait_for("task_started", task_id=result.id)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_task_longer_than_the_visibility_timeout_runs_once(
    start_worker: StartWorker, celery_client: Celery, broker: Broker, unique_name: str
) -> None:
    """Two workers sweep, and so does the test, kombu's way, every 0.5 s: the 3x-longer
    task's claim is renewed, so nobody restores it."""
    workers = [start_worker(unique_name, concurrency=1) for _ in range(2)]
    seconds = 3 * REDIS_VISIBILITY_TIMEOUT
    result = celery_client.send_task("interop.sync_slow", (seconds,), queue=unique_name)
    options = {**broker.client_options, "visibility_timeout": REDIS_VISIBILITY_TIMEOUT}
    with Connection(broker.client_url, transport_options=options) as conn:
        while not result.ready():
            conn.default_channel.qos.restore_visible(num=100, interval=1)
            time.sleep(0.5)

    assert result.get(timeout=1) == "slept"
    starts = [r for w in workers for r in w.records
              if r.get("event") == "task_started" and r.get("task_id") == result.id]  # fmt: skip
    assert len(starts) == 1
    assert broker.ready(unique_name) == 0


def test_what_celeriac_publishes_a_celery_worker_runs(
    celery_worker: subprocess.Popen[str], redis_url: str, unique_name: str,
    counts: Callable[[], dict[str, int]],
) -> None:  # fmt: skip
    """celeriac's producer on Redis, a stock Celery worker consuming: it runs every task."""

    async def send() -> list[str]:
        app = App("producer", broker=redis_url, result_backend=redis_url)
        try:
            handles = [
                await app.send_task(
                    "interop.count", args=(f"{unique_name}:runs",), queue=unique_name
                )
                for _ in range(20)
            ]
            return [await handle.get(timeout=30) for handle in handles]
        finally:
            await app.aclose()

    assert asyncio.run(send()) == ["celery"] * 20
    assert set(counts().values()) == {1}
    assert len(counts()) == 20

"""A worker SIGKILLed mid-task on Redis or SQS, with a one-hour visibility timeout: the controller
sees its heart stop, returns its acks_late run to the queue within two heartbeat intervals
(another worker completes it, once), and records its early-acknowledged run lost, with the
WorkerLostError a Celery client reads."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis
from celery import Celery

from controller.recovery import Recovery
from runtime import App
from tests.interop.conftest import ROOT, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HEARTBEAT = 1.0


@pytest.fixture(params=["redis", "sqs"])
def broker_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The broker: Redis (the unacked record restored), or SQS (made visible again)."""
    return redis_url if request.param == "redis" else str(request.getfixturevalue("sqs_url"))


@pytest.fixture
async def producer(broker_url: str, redis_url: str, unique_name: str) -> AsyncIterator[App]:
    app = App("p", broker=broker_url, result_backend=redis_url, run_registry=redis_url,
              run_registry_prefix=f"{unique_name}:")  # fmt: skip
    yield app
    await app.aclose()


def worker(name: str, broker_url: str, redis_url: str, unique_name: str) -> WorkerProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HA_BROKER": broker_url, "HA_REDIS": redis_url,
           "HA_COUNTS": f"{unique_name}:done",
           "CELERIAC_RUN_REGISTRY_PREFIX": f"{unique_name}:"}  # fmt: skip
    return WorkerProcess(
        ["-A", "tests.controller.ha_app:app", "-Q", unique_name, "-c", "2", "-n", name,
         "--run-registry", redis_url, "--heartbeat-interval", str(HEARTBEAT),
         "--visibility-timeout", "3600", "--log-format", "json"], env,
    )  # fmt: skip


async def until(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout}s"
        await asyncio.sleep(0.05)


async def test_a_dead_workers_runs_are_recovered(
    producer: App, broker_url: str, redis_url: str, unique_name: str
) -> None:
    registry = producer.run_registry
    assert registry is not None
    sync = redis.Redis.from_url(redis_url, decode_responses=True)
    first = worker(f"a-{unique_name}", broker_url, redis_url, unique_name)
    second = None
    try:
        first.wait_for("worker_ready")
        late = await producer.send_task("ha.slow_late", (3.0,), queue=unique_name)
        early = await producer.send_task("ha.slow_early", (3.0,), queue=unique_name)

        async def both_started() -> bool:
            runs = [await registry.get(task.id) for task in (late, early)]
            running = sync.hlen(f"{unique_name}:done:starts") == 2  # inside the task bodies
            return running and all(run is not None and run.state == "started" for run in runs)

        await until(both_started, 15)
        first.signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        second = worker(f"b-{unique_name}", broker_url, redis_url, unique_name)
        recovery = Recovery(registry, producer, controller_id="c1")
        recovered: list[str] = []

        async def recovered_both() -> bool:
            recovered.extend(await recovery.check())
            return len(recovered) == 2

        await until(recovered_both, 10)
        assert time.monotonic() - killed <= 2 * HEARTBEAT
        assert sorted(recovered) == sorted([late.id, early.id])
        assert await recovery.check() == []  # once: a second pass (or controller) finds nothing

        second.wait_for("task_succeeded", task_id=late.id, timeout=20)
    finally:
        for process in (first, second):
            if process is not None:
                process.signal(signal.SIGTERM)
                process.wait()
                process.close()

    assert sync.hgetall(f"{unique_name}:done") == {late.id: "1"}  # completed once, by b
    assert sync.hgetall(f"{unique_name}:done:starts") == {late.id: "2", early.id: "1"}
    run = await registry.get(late.id)
    assert run is not None
    assert (run.state, run.get("worker")) == ("succeeded", f"b-{unique_name}")
    lost = await registry.get(early.id)
    assert lost is not None
    assert lost.state == "lost"
    assert lost.get("reason") == f"worker a-{unique_name} stopped heart-beating"
    client = Celery(broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        result = client.AsyncResult(early.id)
        assert result.state == "FAILURE"
        assert type(result.result).__name__ == "WorkerLostError"
    finally:
        client.close()

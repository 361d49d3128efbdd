"""Reconciliation: a run queued too long is skipped with metadata, its Celery client gets a
terminal state, and a celeriac worker that receives it later drops it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import redis
from celery import Celery
from celery.exceptions import TaskRevokedError

from controller.cli import main
from controller.reconciler import DEFAULT_STALE_AFTER, Reconciler
from runtime import App
from runtime.results.runs import RunRegistry
from tests.interop.conftest import ROOT, WorkerProcess, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(redis_url: str, unique_name: str) -> AsyncIterator[App]:
    app = App("p", broker=redis_url, result_backend=redis_url, run_registry=redis_url,
              run_registry_prefix=f"{unique_name}:")  # fmt: skip
    yield app
    await app.aclose()


def backdate(redis_url: str, registry: RunRegistry, task_id: str, seconds: float) -> None:
    """Make the run look queued ``seconds`` ago."""
    client = redis.Redis.from_url(redis_url)
    when = time.time() - seconds
    client.hset(registry.key(task_id), "queued_at", repr(when))
    client.zadd(registry.queued_index, {task_id: when})


async def test_a_run_queued_46_minutes_ago_is_skipped_and_dropped_when_it_arrives(
    producer: App, redis_url: str, unique_name: str
) -> None:
    registry = producer.run_registry
    assert registry is not None
    sent = await producer.send_task("ha.tick", queue=unique_name)
    assert (await registry.get(sent.id)).state == "queued"  # type: ignore[union-attr]
    backdate(redis_url, registry, sent.id, 46 * 60)

    reconciler = Reconciler(registry, producer, controller_id="controller-1")
    assert reconciler.stale_after == DEFAULT_STALE_AFTER == 45 * 60
    assert await reconciler.reconcile() == [sent.id]

    run = await registry.get(sent.id)
    assert run is not None
    assert run.state == "skipped"
    assert run.get("reason") == "skipped: queued longer than 2700 s without starting"
    assert run.get("reconciled_by") == "controller-1"
    assert run.get("last_state") == "queued"
    assert run.get("detected_at")
    # Idempotent, and safe with several controllers: nothing is skipped twice.
    assert await Reconciler(registry, producer, controller_id="controller-2").reconcile() == []

    client = Celery(broker=redis_url, backend=redis_url, set_as_current=False)
    try:
        result = client.AsyncResult(sent.id)
        assert result.state == "REVOKED"
        with pytest.raises(TaskRevokedError, match="queued longer than 2700 s"):
            result.get(timeout=5)
    finally:
        client.close()

    counts = f"{unique_name}:counts"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HA_BROKER": redis_url, "HA_COUNTS": counts,
           "CELERIAC_RUN_REGISTRY_PREFIX": f"{unique_name}:"}  # fmt: skip
    worker = WorkerProcess(["-A", "tests.controller.ha_app:app", "-Q", unique_name,
                            "--run-registry", redis_url, "--log-format", "json"], env)  # fmt: skip
    try:
        worker.wait_for("task_dropped", task_id=sent.id)
        sync = redis.Redis.from_url(redis_url)
        eventually(lambda: sync.llen(unique_name) == 0)
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait()
        worker.close()
    assert sync.hgetall(counts) == {}  # it never ran
    run = await registry.get(sent.id)
    assert run is not None
    assert run.state == "skipped"
    assert run.get("dropped_by")


async def test_runs_that_started_or_are_young_are_left_alone(
    producer: App, redis_url: str, unique_name: str
) -> None:
    registry = producer.run_registry
    assert registry is not None
    young = await producer.send_task("ha.tick", queue=unique_name)
    started = await producer.send_task("ha.tick", queue=unique_name)
    other_queue = await producer.send_task("ha.tick", queue=f"{unique_name}-long")
    for task_id in (started.id, other_queue.id):
        backdate(redis_url, registry, task_id, 46 * 60)
    raw = redis.Redis.from_url(redis_url)
    await registry._write(started.id, "started", 0, {"worker": "w1"})

    reconciler = Reconciler(
        registry, producer, controller_id="c", per_queue={f"{unique_name}-long": 3600.0}
    )
    assert await reconciler.reconcile() == []
    assert (await registry.get(young.id)).state == "queued"  # type: ignore[union-attr]
    assert (await registry.get(started.id)).state == "started"  # type: ignore[union-attr]
    assert raw.zscore(registry.queued_index, started.id) is None


async def test_a_late_queued_record_never_hides_a_start(producer: App) -> None:
    """The worker may record a run before the producer does: the order of writes does not
    move a run back."""
    registry = producer.run_registry
    assert registry is not None
    await registry._write("t-1", "started", 0, {"worker": "w"})
    applied, previous = await registry._write("t-1", "queued", 0, {"queue": "q"})
    assert (applied, previous) == (False, "started")
    await registry._write("t-1", "succeeded", 0, {})
    applied, _ = await registry._write("t-1", "started", 0, {})  # a redelivered duplicate
    assert not applied
    applied, _ = await registry._write("t-1", "queued", 1, {})  # its retry: a new attempt
    assert applied
    listed = await registry.runs(state="queued")
    assert [r.task_id for r in listed] == ["t-1"]
    assert json.dumps(listed[0].as_dict())


async def test_runs_list_prints_a_table_and_json(
    producer: App, redis_url: str, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = producer.run_registry
    assert registry is not None
    queued = await producer.send_task("ha.tick", queue=unique_name)
    await registry._write("t-2", "started", 0, {"worker": "w9", "queue": "other", "task": "x.y"})
    where = ["--redis", redis_url, "--prefix", f"{unique_name}:"]

    assert await asyncio.to_thread(main, ["runs", "list", *where]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task_id", "task", "queue", "state", "attempt", "worker",
                                "updated"]  # fmt: skip
    assert lines[1].split()[:6] == ["t-2", "x.y", "other", "started", "0", "w9"]
    assert lines[2].split()[:5] == [queued.id, "ha.tick", unique_name, "queued", "0"]

    assert (
        await asyncio.to_thread(main, ["runs", "list", *where, "--state", "queued", "--json"]) == 0
    )
    listed = json.loads(capsys.readouterr().out)
    assert [run["task_id"] for run in listed] == [queued.id]
    assert listed[0]["queue"] == unique_name

"""Per-worker rate limits seen from a stock Celery 5.7 client, on RabbitMQ and Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from celery import Celery

from .conftest import Broker, Marks, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.interop]

APP = "tests.interop.retry_app:app"
StartWorker = Callable[..., WorkerProcess]


def test_a_rate_limited_task_waits_for_tokens_without_holding_up_other_tasks(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks,
    broker: Broker,
) -> None:  # fmt: skip
    """30 ``10/s`` tasks, then 5 unlimited ones behind them on the same queue, one slot.

    The limited ones start a tenth of a second apart at the earliest, in order; the others do
    not wait for them: the limited ones wait for their tokens without the slot.
    """
    start_worker(unique_name, app=APP, concurrency=1)
    ticks_key, tocks_key = marks.key("ticks"), marks.key("tocks")

    ticks = [celery_client.send_task("limits.tick", (ticks_key, n), queue=unique_name)
             for n in range(30)]  # fmt: skip
    tocks = [celery_client.send_task("limits.tock", (tocks_key, n), queue=unique_name)
             for n in range(5)]  # fmt: skip

    assert [result.get(timeout=30) for result in tocks] == list(range(5))
    assert [result.get(timeout=30) for result in ticks] == list(range(30))
    started = marks.read(ticks_key)
    assert [entry["n"] for entry in started] == list(range(30))  # first come, first served
    first = started[0]["at"]
    for k, entry in enumerate(started):
        assert entry["at"] - first >= 0.1 * k - 0.05, (k, entry["at"] - first)
    assert started[-1]["at"] - first >= 2.5
    others = [entry["at"] - first for entry in marks.read(tocks_key)]
    assert max(others) < 1.5, others  # the limited batch takes 2.9 s
    assert broker.ready(unique_name) == 0

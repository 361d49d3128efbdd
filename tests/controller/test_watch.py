"""The queue watch: a queue holding messages with no consumer raises the alert once its grace
has passed, naming the queue and its oldest message's age; a consumer clears it. On RabbitMQ
the broker counts consumers; on Redis the workers' heartbeats do."""

from __future__ import annotations

import asyncio
import json
import time

import aio_pika
import pytest
import structlog

from controller.cli import main
from controller.watch import QueueWatch
from runtime import App
from runtime.results.runs import RunRegistry

pytestmark = pytest.mark.integration

GRACE = 1.0


async def test_an_unconsumed_queue_raises_the_alert_within_its_grace(
    app: App, redis_url: str, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = app.run_registry
    assert registry is not None
    for _ in range(3):
        await app.send_task("x.y", queue=unique_name)
    watch = QueueWatch(app, registry, queues=[unique_name], grace=GRACE, interval=0.1)

    with structlog.testing.capture_logs() as logs:
        (first,) = await watch.look()
        assert (first.depth, first.consumers, first.alert) == (3, 0, False)
        await asyncio.sleep(GRACE + 0.1)
        (second,) = await watch.look()
        assert second.alert
        assert second.oldest_age is not None
        assert second.oldest_age >= GRACE
        alerts = [log for log in logs if log["event"] == "queue_unconsumed"]
        assert [(a["queue"], a["depth"]) for a in alerts] == [(unique_name, 3)]
        assert alerts[0]["unconsumed_for"] >= GRACE

        shown = ["queues", "--redis", redis_url, "--prefix", f"{unique_name}:", "--json"]
        assert await asyncio.to_thread(main, shown) == 0
        (state,) = json.loads(capsys.readouterr().out)
        assert (state["queue"], state["depth"], state["alert"]) == (unique_name, 3, True)

        async with consumer(app, registry, unique_name):
            (third,) = await watch.look()
        assert (third.consumers, third.alert) == (1, False)
        assert [log["event"] for log in logs][-1] == "queue_consumed_again"


class consumer:
    """Something consuming ``queue``: on RabbitMQ a real consumer, on Redis a worker's
    heartbeat naming the queue (Redis keeps no consumer count of its own, SQS none at all)."""

    def __init__(self, app: App, registry: RunRegistry, queue: str) -> None:
        self.app, self.registry, self.queue = app, registry, queue
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> None:
        if self.app.broker_url.startswith("amqp"):
            self._connection = await aio_pika.connect(self.app.broker_url)
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=1)
            queue = await channel.get_queue(self.queue)
            await queue.consume(_hold)
            await asyncio.sleep(0.2)
        else:
            await self.registry.beat("w1", 5.0, queues=self.queue)

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()


async def _hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    """Take a message and keep it (unacknowledged) until the connection closes."""


async def test_workers_shows_the_heartbeats(
    redis_url: str, unique_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = RunRegistry.from_url(redis_url, prefix=f"{unique_name}:")
    try:
        await registry.beat("alive@host", 5.0, queues="a,b", concurrency=8, busy=3)
        await registry.beat("dead@host", 0.01, queues="c", concurrency=1, busy=1)
        await asyncio.sleep(0.05)
        where = ["--redis", redis_url, "--prefix", f"{unique_name}:"]
        assert await asyncio.to_thread(main, ["workers", *where, "--json"]) == 0
        shown = {w["worker"]: w for w in json.loads(capsys.readouterr().out)}
        assert await asyncio.to_thread(main, ["workers", *where]) == 0
        lines = capsys.readouterr().out.splitlines()
    finally:
        await registry.aclose()
    assert (shown["alive@host"]["alive"], shown["alive@host"]["busy"]) == (True, "3")
    assert shown["dead@host"]["alive"] is False
    assert lines[0].split() == ["worker", "queues", "slots", "busy", "loop_lag_ms", "version",
                                "last_beat", "alive"]  # fmt: skip
    assert any(line.startswith("dead@host") and line.endswith("NO") for line in lines)


async def test_a_run_past_its_hard_limit_is_reported_stuck_once(
    redis_url: str, unique_name: str
) -> None:
    registry = RunRegistry.from_url(redis_url, prefix=f"{unique_name}:")
    app = App("w", broker="memory://", run_registry=redis_url,
              run_registry_prefix=f"{unique_name}:")  # fmt: skip
    try:
        long_ago = repr(time.time() - 100)
        await registry._write("stuck", "started", 0, {"worker": "w", "hard_limit": 30.0,
                                                       "started_at": long_ago})  # fmt: skip
        await registry._write("fine", "started", 0, {"worker": "w", "hard_limit": 300.0,
                                                      "started_at": long_ago})  # fmt: skip
        watch = QueueWatch(app, registry, grace=10.0)
        with structlog.testing.capture_logs() as logs:
            await watch.look()
            await watch.look()
    finally:
        await registry.aclose()
        await app.aclose()
    stuck = [log for log in logs if log["event"] == "run_stuck"]
    assert [(log["task_id"], log["hard_limit"]) for log in stuck] == [("stuck", 30.0)]
    assert stuck[0]["over_by"] >= 70

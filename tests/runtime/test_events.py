"""The event dispatcher on its own: batching, the buffer's bound, a broker that refuses."""

from __future__ import annotations

import json
from typing import Any

import structlog
from structlog.testing import capture_logs

from protocol import WireMessage
from runtime.errors import BrokerConnectionError
from runtime.events import BATCH, BUFFER_LIMIT, EventDispatcher


class Recording:
    """A Broadcasting stand-in that records what is emitted, or refuses it."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, str, Any]] = []
        self.refusing = False

    async def emit(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        if self.refusing:
            raise BrokerConnectionError("broker: down")
        self.emitted.append((exchange, routing_key, json.loads(message.body)))


def dispatcher(transport: Recording, **options: Any) -> EventDispatcher:
    return EventDispatcher(transport, "w@h", logger=structlog.get_logger(), **options)  # type: ignore[arg-type]


async def test_task_events_only_while_enabled_and_batched() -> None:
    transport = Recording()
    events = dispatcher(transport)
    events.send("task-received", uuid="a")
    events.send_worker("worker-online", freq=2.0, active=0, processed=0)
    await events.flush()
    assert [(key, body["type"]) for _, key, body in transport.emitted] == [
        ("worker.online", "worker-online")
    ]
    events.task_events = True
    for n in range(BATCH + 1):
        events.send("task-started", uuid=str(n))
    await events.flush()
    keys = [key for _, key, _ in transport.emitted[1:]]
    assert keys == ["task.multi", "task.started"]
    assert len(transport.emitted[1][2]) == BATCH
    assert {exchange for exchange, _, _ in transport.emitted} == {"celeryev"}
    clocks = [body["clock"] for body in transport.emitted[1][2]]
    assert clocks == sorted(clocks)
    assert len(set(clocks)) == BATCH


async def test_a_full_buffer_drops_new_events_and_counts_them() -> None:
    transport = Recording()
    events = dispatcher(transport, task_events=True)
    for n in range(BUFFER_LIMIT + 5):
        events.send("task-started", uuid=str(n))
    assert events.dropped == 5
    await events.flush()
    assert sum(len(body) for _, _, body in transport.emitted) == BUFFER_LIMIT


async def test_a_refusing_broker_is_logged_once_per_outage() -> None:
    transport = Recording()
    transport.refusing = True
    events = dispatcher(transport, task_events=True)
    with capture_logs() as logs:
        for n in range(3):
            events.send("task-started", uuid=str(n))
            await events.flush()
        transport.refusing = False
        events.send("task-started", uuid="back")
        await events.flush()
    assert [log["event"] for log in logs] == ["events_not_sent"]
    assert events.dropped == 3
    assert [body["uuid"] for _, _, body in transport.emitted] == ["back"]


async def test_an_unbuildable_event_is_dropped_not_raised() -> None:
    events = dispatcher(Recording(), task_events=True)
    with capture_logs() as logs:
        events.send("task-started", pid=1)  # pid is a common field: a bug, not the task's
    assert events.dropped == 1
    assert logs[0]["event"] == "event_not_built"


async def test_close_publishes_what_waits() -> None:
    transport = Recording()
    events = dispatcher(transport)
    events.start()
    events.send_worker("worker-offline", freq=2.0, active=0, processed=3)
    await events.aclose()
    assert [body["processed"] for _, _, body in transport.emitted] == [3]

"""Monitor-queue mirroring (the Cadasta worker toolbox's task-monitor queue) on RabbitMQ,
Redis, SQS (moto) and ``memory://``.

With ``task_monitor_queue`` set, every task message celeriac publishes (a producer's
``send_task``, a worker's retry, a chain's next step sent by the worker, a scheduler fire)
also reaches the monitor queue through a topic exchange, with its task id; a test consumer of
the monitor queue records every task it gets. With the option off, nothing reaches it though
the exchange and its binding are still there. On RabbitMQ and Redis a stock kombu consumer
reads the copy; a copy RabbitMQ refuses leaves the task itself published.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest
import redis.asyncio
import structlog
from kombu import Connection
from kombu.transport.virtual.exchange import TopicExchange

from controller.keys import Keys
from controller.scheduler import Scheduler
from controller.schedules import Schedule, fire_id, task_id_for
from protocol import TaskMessage, decode_task
from runtime import App, chain
from runtime.serve import configure_monitor
from runtime.transports.base import Transport
from runtime.transports.redis.monitor import topic_matches, topic_pattern
from runtime.transports.urls import transport_for_url
from runtime.worker.slots import Slots
from tests.consumer import SlotConsumer
from tests.controller.test_scheduler import T0, Clock

pytestmark = pytest.mark.integration


@dataclass
class Names:
    """One test's broker and names: its work queue, monitor queue and monitor exchange (the
    seed's ``platform.fifo``, a FIFO queue on SQS)."""

    broker: str
    kind: str
    work: str
    monitor: str
    exchange: str

    @property
    def off(self) -> str:
        """The work queue of the part run with mirroring off."""
        return f"{self.work}-off"


@pytest.fixture(params=["amqp", "redis", "sqs", "memory"])
async def names(
    request: pytest.FixtureRequest, redis_url: str, unique_name: str
) -> AsyncIterator[Names]:
    """Each broker in turn, with names of this test's own; what they leave is deleted."""
    kind = request.param
    if kind == "memory":
        broker = f"memory://{unique_name}"
    elif kind == "redis":
        broker = redis_url
    else:
        broker = str(request.getfixturevalue(f"{kind}_url"))
    found = Names(broker, kind, unique_name, f"{unique_name}.platform.fifo",
                  f"{unique_name}.monitor")  # fmt: skip
    yield found
    if kind == "amqp":
        async with await aio_pika.connect(broker) as connection:
            channel = await connection.channel()
            for name in (found.monitor, found.off):
                await channel.queue_delete(name)
                await channel.queue_delete(f"{name}.dead")
                await channel.exchange_delete(name)
            await channel.exchange_delete(found.exchange)
    elif kind == "redis":
        async with redis.asyncio.Redis.from_url(redis_url) as client:
            await client.delete(*(
                f"_kombu.{what}.{name}"
                for what in ("binding", "binding_permanent")
                for name in (found.work, found.off, found.monitor, found.exchange)
            ))  # fmt: skip


@dataclass
class MonitorRecorder:
    """A test consumer of the monitor queue: records every task message it gets, decoded."""

    consumer: SlotConsumer
    tasks: list[TaskMessage] = field(default_factory=list)

    def ids(self) -> list[str]:
        """The ids recorded, in arrival order (a retried task's twice)."""
        return [task.id for task in self.tasks]

    async def until(self, done: Callable[[], bool], timeout: float = 20) -> None:
        """Record until ``done()``; fail after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not done():
                delivery = await self.consumer.get(timeout=timeout)
                self.tasks.append(decode_task(delivery.message))

    async def quiet_for(self, seconds: float) -> None:
        """Record whatever arrives within ``seconds``."""
        with pytest.raises(TimeoutError):
            await self.until(lambda: False, timeout=seconds)


@pytest.fixture
async def recorder(names: Names) -> AsyncIterator[MonitorRecorder]:
    """Consuming the monitor queue (declared first, as its platform's consumer would)."""
    transport = transport_for_url(names.broker)
    await transport.connect()
    await transport.declare([App().queue_spec(names.monitor)])
    consumer = SlotConsumer(transport, [names.monitor], Slots(4), auto=True)
    yield MonitorRecorder(consumer)
    await consumer.stop()
    await transport.aclose()


def _app(names: Names, redis_url: str, *, monitored: bool = True) -> App:
    return App(
        "monitor-test", broker=names.broker, result_backend=redis_url,
        default_queue=names.work, task_monitor_exchange=names.exchange,
        task_monitor_queue=names.monitor if monitored else None,
    )  # fmt: skip


async def _fire(app: App, redis_url: str, name: str, queue: str) -> str:
    """One fire of schedule ``name`` (``monitor.tick`` to ``queue``), driven as the firing
    tests drive a scheduler; its task id."""
    schedule = Schedule(name=name, task="monitor.tick", every=5.0, options={"queue": queue})
    clock = Clock()
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        scheduler = Scheduler([schedule], app.send_task, client, controller_id="c",
                              keys=Keys(f"{queue}:"), clock=clock)  # fmt: skip
        await scheduler._renew()
        await scheduler._fire_due()
        clock.advance(5)
        await scheduler._fire_due()
        await scheduler._release()
    assert scheduler.fired == 1
    return task_id_for(fire_id(schedule, T0 + timedelta(seconds=5)))


async def _every_path(app: App, redis_url: str, queue: str, phase: str) -> dict[str, str]:
    """Send a task, a task that retries once, a chain and a scheduler fire to ``queue``
    through ``app`` and a worker of it; once all have run, their ids by path."""
    ran: list[tuple[str, int]] = []

    @app.task(name="monitor.add", bind=True)
    async def add(self: Any, x: int, y: int) -> int:
        ran.append((self.request.id, self.request.retries))
        return x + y

    @app.task(name="monitor.retry_once", bind=True)
    async def retry_once(self: Any) -> str:
        ran.append((self.request.id, self.request.retries))
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return "retried"

    @app.task(name="monitor.tick", bind=True)
    async def tick(self: Any) -> None:
        ran.append((self.request.id, self.request.retries))

    ids = {path: f"{phase}-{path}-{uuid.uuid4().hex[:8]}"
           for path in ("send", "retry", "chain1", "chain2")}  # fmt: skip
    async with app.worker([queue], concurrency=2):
        await app.send_task("monitor.add", (1, 2), task_id=ids["send"], queue=queue)
        await retry_once.apply_async(task_id=ids["retry"], queue=queue)
        handle = await app.send_signature(chain(
            add.s(2, 3).set(task_id=ids["chain1"], queue=queue),
            add.s(4).set(task_id=ids["chain2"], queue=queue),
        ))  # fmt: skip
        ids["fire"] = await _fire(app, redis_url, f"tick-{phase}", queue)
        assert handle.id == ids["chain2"]
        expected = {(ids["send"], 0), (ids["retry"], 0), (ids["retry"], 1), (ids["chain1"], 0),
                    (ids["chain2"], 0), (ids["fire"], 0)}  # fmt: skip
        async with asyncio.timeout(30):
            while not expected <= set(ran):
                await asyncio.sleep(0.02)
    return ids


async def test_every_task_published_reaches_the_monitor_and_none_when_off(
    names: Names, recorder: MonitorRecorder, redis_url: str
) -> None:
    app = _app(names, redis_url)
    try:
        ids = await _every_path(app, redis_url, names.work, "on")
        # Each path's message, the retry as a second message of the same id, and the chain's
        # second step (published by the worker when the first succeeded).
        expected = [ids["send"], ids["retry"], ids["retry"], ids["chain1"], ids["chain2"],
                    ids["fire"]]  # fmt: skip
        await recorder.until(lambda: sorted(recorder.ids()) == sorted(expected))
        by_id = {(task.id, task.retries): task for task in recorder.tasks}
        assert (by_id[ids["send"], 0].task, by_id[ids["send"], 0].args) == ("monitor.add", (1, 2))
        assert by_id[ids["retry"], 1].task == "monitor.retry_once"
        assert by_id[ids["chain2"], 0].args == (5, 4)  # the first step's result, then its own
        assert by_id[ids["fire"], 0].task == "monitor.tick"
        await recorder.quiet_for(0.5)
        assert sorted(recorder.ids()) == sorted(expected)  # each once, nothing else

        # Off: the same paths, the exchange and its binding still there, and nothing copied.
        # (A queue of its own: on SQS a long poll the first worker left at its stop may still
        # take a message sent to its queue meanwhile, hidden for the visibility timeout.)
        app.task_monitor_queue = None
        off = await _every_path(app, redis_url, names.off, "off")
        await recorder.quiet_for(1.5)
        assert not set(off.values()) & set(recorder.ids())
        assert sorted(recorder.ids()) == sorted(expected)
    finally:
        await app.aclose()


async def _read_queue(transport: Transport, queue: str) -> TaskMessage:
    consumer = SlotConsumer(transport, [queue], Slots(1), auto=True)
    try:
        return decode_task((await consumer.get(timeout=15)).message)
    finally:
        await consumer.stop()


async def test_the_copy_is_the_task_message(
    names: Names, recorder: MonitorRecorder, redis_url: str
) -> None:
    """Same id, headers and body as the message in the work queue (no worker consumes it)."""
    app = _app(names, redis_url)
    try:
        handle = await app.send_task("monitor.add", (2, 3), {"z": 1}, headers={"tenant": "a"},
                                     priority=3, countdown=60)  # fmt: skip
        await recorder.until(lambda: len(recorder.tasks) == 1)
        original = await _read_queue(await app.connect(), names.work)
    finally:
        await app.aclose()
    copy = recorder.tasks[0]
    assert copy.id == original.id == handle.id
    assert copy == original  # every field: headers, eta, custom headers, arguments
    assert copy.headers["tenant"] == "a"


@pytest.mark.parametrize("kind", ["amqp", "redis"])
async def test_a_kombu_consumer_reads_the_copy(
    kind: str, request: pytest.FixtureRequest, redis_url: str, unique_name: str
) -> None:
    """A stock kombu consumer of the monitor queue (``SimpleQueue``, as a Celery platform's
    consumer would read it) decodes the copy: Celery's headers, the body, and the delivery
    info naming the topic exchange and the task's routing key."""
    broker = redis_url if kind == "redis" else str(request.getfixturevalue("amqp_url"))
    names = Names(broker, kind, unique_name, f"{unique_name}.platform.fifo",
                  f"{unique_name}.monitor")  # fmt: skip
    app = _app(names, redis_url)
    try:
        handle = await app.send_task("reports.digest", ("text",), {"size": 2})
    finally:
        await app.aclose()

    def read() -> tuple[dict[str, Any], Any, dict[str, Any]]:
        with Connection(broker) as connection:
            queue = connection.SimpleQueue(names.monitor)
            try:
                message = queue.get(timeout=15)
                message.ack()
                return dict(message.headers), message.decode(), dict(message.delivery_info)
            finally:
                queue.close()

    try:
        headers, body, info = await asyncio.to_thread(read)
    finally:
        await _clean(names, redis_url)
    assert (headers["id"], headers["task"]) == (handle.id, "reports.digest")
    assert body[:2] == [["text"], {"size": 2}]
    assert (info["exchange"], info["routing_key"]) == (names.exchange, names.work)


async def _clean(names: Names, redis_url: str) -> None:
    if names.kind == "amqp":
        async with await aio_pika.connect(names.broker) as connection:
            channel = await connection.channel()
            await channel.queue_delete(names.monitor)
            await channel.exchange_delete(names.exchange)
            await channel.exchange_delete(names.monitor)
    else:
        async with redis.asyncio.Redis.from_url(redis_url) as client:
            await client.delete(*(
                f"_kombu.{what}.{name}"
                for what in ("binding", "binding_permanent")
                for name in (names.work, names.monitor, names.exchange)
            ))  # fmt: skip


async def test_a_refused_copy_leaves_the_task_published(
    amqp_url: str, redis_url: str, unique_name: str
) -> None:
    """RabbitMQ refuses the monitor's declaration (the exchange exists as a direct one): the
    task is published all the same, and the missed copy is logged."""
    names = Names(amqp_url, "amqp", unique_name, f"{unique_name}.platform.fifo",
                  f"{unique_name}.monitor")  # fmt: skip
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.DIRECT)
    app = _app(names, redis_url)
    try:
        with structlog.testing.capture_logs() as logs:
            handle = await app.send_task("monitor.add", (1, 2))
        transport = await app.connect()
        assert (await transport.queue_depth(names.work))[0] == 1
        assert (await _read_queue(transport, names.work)).id == handle.id
        async with await aio_pika.connect(amqp_url) as connection:
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):  # no monitor queue
                await channel.declare_queue(names.monitor, passive=True)
    finally:
        await app.aclose()
        await _clean(names, redis_url)
    [missed] = [entry for entry in logs if entry["event"] == "task_not_mirrored"]
    assert missed["task_id"] == handle.id
    assert "PRECONDITION_FAILED" in missed["error"], missed


@pytest.mark.parametrize(
    ("binding", "keys"),
    [
        ("#", ["celery", "export", "a.b.c", ""]),
        ("export.*", ["export.x", "export", "export.x.y", "x.export.y"]),
        ("*.fifo", ["platform.fifo", "fifo", "a.platform.fifo"]),
        ("a+b(c)#", ["a+b(c)#", "ab(c)x"]),
    ],
)
def test_redis_topic_routing_is_kombus(binding: str, keys: list[str]) -> None:
    """The binding pattern stored on Redis and its matching are kombu's own."""
    kombu_topic = TopicExchange(channel=None)
    pattern = topic_pattern(binding)
    assert pattern == kombu_topic.key_to_pattern(binding)
    for key in keys:
        assert topic_matches(pattern, key) == bool(kombu_topic._match(pattern, key)), key


def test_the_environment_turns_it_on() -> None:
    """``CELERIAC_MONITOR_QUEUE`` and ``CELERIAC_MONITOR_EXCHANGE``, read by ``celeriac worker``
    and the controller, over the app's settings; unset, the app's own stay."""
    app = App(task_queue_max_priority=9)
    configure_monitor(app, {})
    assert app.monitor is None
    configure_monitor(app, {"CELERIAC_MONITOR_QUEUE": "platform.fifo"})
    assert app.monitor is not None
    assert (app.monitor.queue.name, app.monitor.exchange) == ("platform.fifo", "celeriac.monitor")
    assert app.monitor.queue.max_priority == 9  # declared as the app declares any queue
    configure_monitor(app, {"CELERIAC_MONITOR_EXCHANGE": "monitor"})
    assert (app.monitor.queue.name, app.monitor.exchange) == ("platform.fifo", "monitor")

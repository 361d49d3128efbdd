"""The SQS transport against a real SQS API (moto's server mode), and against kombu's SQS code.

What the shared contract cannot see: kombu's queue names and queue attributes, the double
base64 body as kombu reads and writes it, receives bounded by the free slots on the server's
side, the visibility heartbeat, FIFO ids, predefined queues, the dead-letter copies, closing.
Every transport here gets the queue name prefix ``<unique_name>-``, so tests share nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import pytest
from kombu import Connection, Producer
from kombu.transport.SQS import Channel as KombuSqsChannel

from protocol import WireMessage
from runtime.errors import BrokerConnectionError
from runtime.transports.base import QueueSpec
from runtime.transports.sqs import SqsTransport, sqs_queue_name
from runtime.worker.slots import Slots
from tests.consumer import SlotConsumer
from tests.sqs_server import ACCESS_KEY, REGION, SECRET_KEY

pytestmark = [pytest.mark.integration]

Open = Callable[..., Awaitable[SqsTransport]]


@pytest.fixture
async def open_sqs(sqs_url: str, unique_name: str) -> AsyncIterator[Open]:
    """Opens connected transports with the prefix ``<unique_name>-`` (and ``options``);
    closes them and deletes their queues at the end."""
    opened: list[SqsTransport] = []

    async def open_(**options: Any) -> SqsTransport:
        transport = SqsTransport(sqs_url, {"queue_name_prefix": f"{unique_name}-", **options})
        await transport.connect()
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        await transport.aclose()
    cleaner = SqsTransport(sqs_url)
    client = await cleaner._client_for(None)
    listed = await client.list_queues(QueueNamePrefix=unique_name)
    for url in listed.get("QueueUrls", []):
        await client.delete_queue(QueueUrl=url)
    await cleaner.aclose()


@contextlib.contextmanager
def kombu_connection(sqs_url: str, prefix: str) -> Iterator[Connection]:
    """A kombu connection to the same server, through kombu's own SQS transport (boto3)."""
    endpoint = urlsplit(dict(parse_qsl(urlsplit(sqs_url).query))["endpoint_url"])
    options = {"is_secure": False, "region": REGION, "queue_name_prefix": prefix}
    url = f"sqs://{ACCESS_KEY}:{SECRET_KEY}@{endpoint.hostname}:{endpoint.port}"
    with Connection(url, transport_options={**options, "wait_time_seconds": 1}) as connection:
        yield connection


def _message(n: int, **properties: Any) -> WireMessage:
    return WireMessage(
        b'[[%d], {}, {"callbacks": null}]' % n,
        "application/json",
        "utf-8",
        {"task": "t.add", "id": f"id-{n}", "retries": 0},
        {"correlation_id": f"id-{n}", "reply_to": "r", "delivery_mode": 2, **properties},
    )


async def _attributes(transport: SqsTransport, queue: str) -> dict[str, str]:
    client = await transport._client_for(None)
    url = await transport._queue_url(queue, create=False)
    response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    return dict(response["Attributes"].items())


async def _counts(transport: SqsTransport, queue: str) -> tuple[int, int]:
    """(visible, received and not yet deleted or visible again) messages of ``queue``."""
    found = await _attributes(transport, queue)
    return (
        int(found["ApproximateNumberOfMessages"]),
        int(found["ApproximateNumberOfMessagesNotVisible"]),
    )


async def _eventually_counts(transport: SqsTransport, queue: str, want: tuple[int, int]) -> None:
    async with asyncio.timeout(10):
        while await _counts(transport, queue) != want:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("prefix", "queue", "captured"),
    [
        ("dev-", "my.tasks", "dev-my-tasks"),  # WIRE.md section 5, captured from kombu
        ("dev-", "jobs.fifo", "dev-jobs.fifo"),  # likewise
        ("", "a.b.fifo", "a-b.fifo"),
        ("", "odd:name/with*punct-and_under", "odd_name_with_punct-and_under"),
        ("pre.", "x@y", "pre-x_y"),
    ],
)
def test_queue_names_are_kombus(prefix: str, queue: str, captured: str) -> None:
    # entity_name reads nothing of its channel: None stands in for one.
    kombu_name = KombuSqsChannel.entity_name(cast(KombuSqsChannel, None), prefix + queue)

    assert sqs_queue_name(queue, prefix) == kombu_name == captured


async def test_declare_creates_queues_as_kombu_does(open_sqs: Open, unique_name: str) -> None:
    transport = await open_sqs(visibility_timeout=77)
    await transport.declare([QueueSpec("my.tasks"), QueueSpec("jobs.fifo")])

    client = await transport._client_for(None)
    listed = await client.list_queues(QueueNamePrefix=unique_name)
    names = sorted(url.rsplit("/", 1)[1] for url in listed["QueueUrls"])
    assert names == [
        f"{unique_name}-jobs-fifo-dead",
        f"{unique_name}-jobs.fifo",
        f"{unique_name}-my-tasks",
        f"{unique_name}-my-tasks-dead",
    ]
    plain, fifo = (
        await _attributes(transport, "my.tasks"),
        await _attributes(transport, "jobs.fifo"),
    )
    assert (plain["VisibilityTimeout"], plain.get("FifoQueue")) == ("77", None)
    assert (fifo["VisibilityTimeout"], fifo["FifoQueue"]) == ("77", "true")


async def test_kombu_reads_what_celeriac_sends(
    open_sqs: Open, sqs_url: str, unique_name: str
) -> None:
    transport = await open_sqs()
    await transport.declare([QueueSpec("my.tasks")])
    await transport.publish(_message(7), routing_key="my.tasks")

    def kombu_get() -> tuple[bytes, dict[str, Any], dict[str, Any], dict[str, Any]]:
        with kombu_connection(sqs_url, f"{unique_name}-") as connection:
            queue = connection.SimpleQueue("my.tasks", no_ack=False)
            try:
                message = queue.get(timeout=5)
                message.ack()
                return message.body, message.headers, message.properties, message.delivery_info
            finally:
                queue.close()

    body, headers, properties, delivery_info = await asyncio.to_thread(kombu_get)

    assert body == _message(7).body
    assert headers == dict(_message(7).headers)
    assert properties["correlation_id"] == "id-7"
    assert properties["body_encoding"] == "base64"  # the inner base64, undone by kombu
    assert delivery_info["routing_key"] == "my.tasks"
    assert await _counts(transport, "my.tasks") == (0, 0)


async def test_celeriac_reads_what_kombu_sends(
    open_sqs: Open, sqs_url: str, unique_name: str
) -> None:
    transport = await open_sqs()
    await transport.declare([QueueSpec("jobs.fifo")])

    def kombu_publish() -> None:
        with kombu_connection(sqs_url, f"{unique_name}-") as connection:
            producer = Producer(connection.default_channel)
            producer.publish(
                _message(3).body,
                routing_key="jobs.fifo",
                content_type="application/json",
                content_encoding="utf-8",
                headers=dict(_message(3).headers),
                correlation_id="id-3",
                MessageGroupId="g1",
            )

    await asyncio.to_thread(kombu_publish)
    consumer = SlotConsumer(transport, ["jobs.fifo"], Slots(1))
    delivery = await consumer.get()
    await transport.ack(delivery)
    await consumer.stop()

    assert delivery.message.body == _message(3).body
    assert delivery.message.headers == dict(_message(3).headers)
    assert delivery.message.properties["correlation_id"] == "id-3"
    assert (delivery.queue, delivery.routing_key, delivery.redelivered) == (
        "jobs.fifo",
        "jobs.fifo",
        False,
    )


async def test_fifo_group_and_deduplication_ids(open_sqs: Open) -> None:
    transport = await open_sqs()
    await transport.declare([QueueSpec("jobs.fifo")])
    await transport.publish(_message(1, MessageGroupId="g1"), routing_key="jobs.fifo")
    await transport.publish(_message(2, MessageDeduplicationId="d-2"), routing_key="jobs.fifo")
    await transport.publish(_message(3), routing_key="jobs.fifo")

    client = await transport._client_for(None)
    response = await client.receive_message(
        QueueUrl=await transport._queue_url("jobs.fifo"),
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["All"],
    )
    ids = [
        (m["Attributes"]["MessageGroupId"], m["Attributes"]["MessageDeduplicationId"])
        for m in response["Messages"]
    ]

    assert sorted(group for group, _ in ids) == ["default", "default", "g1"]
    assert ("default", "d-2") in ids
    generated = [dedup for _, dedup in ids if dedup != "d-2"]
    assert len(set(generated)) == 2
    assert all(len(dedup) == 36 for dedup in generated)  # uuid4, as kombu makes them


async def test_never_receives_more_than_the_free_slots(open_sqs: Open) -> None:
    transport = await open_sqs(wait_time_seconds=1)
    await transport.declare([QueueSpec("q")])
    for n in range(5):
        await transport.publish(_message(n), routing_key="q")
    consumer = SlotConsumer(transport, ["q"], Slots(2))

    await consumer.get()
    await consumer.get()
    await consumer.nothing_more()

    # Received (in flight) on the server: exactly the two handed out, none held back.
    assert await _counts(transport, "q") == (3, 2)
    await consumer.stop()


async def test_round_robin_over_queues(open_sqs: Open) -> None:
    transport = await open_sqs(wait_time_seconds=1)
    await transport.declare([QueueSpec("a"), QueueSpec("b")])
    for n in range(3):
        await transport.publish(_message(n), routing_key="a")
        await transport.publish(_message(n), routing_key="b")
    consumer = SlotConsumer(transport, ["a", "b"], Slots(1), auto=True)

    order = [(await consumer.get()).queue for _ in range(6)]
    await consumer.stop()

    assert order == ["a", "b"] * 3


async def test_requeue_makes_it_visible_at_once(open_sqs: Open) -> None:
    transport = await open_sqs(wait_time_seconds=1)
    await transport.declare([QueueSpec("q")])
    await transport.publish(_message(1), routing_key="q")
    slots = Slots(1)
    consumer = SlotConsumer(transport, ["q"], slots)
    delivery = await consumer.get()
    await consumer.stop()
    assert await _counts(transport, "q") == (0, 1)

    await transport.reject(delivery, requeue=True)

    assert await _counts(transport, "q") == (1, 0)


async def test_visibility_is_extended_while_a_task_runs(open_sqs: Open) -> None:
    first = await open_sqs(visibility_timeout=2, wait_time_seconds=1)
    await first.declare([QueueSpec("q")])
    await first.publish(_message(1), routing_key="q")
    running = SlotConsumer(first, ["q"], Slots(1))
    delivery = await running.get()

    second = await open_sqs(visibility_timeout=2, wait_time_seconds=1)
    other = SlotConsumer(second, ["q"], Slots(1), settle=5)
    await other.nothing_more()  # 2.5 visibility timeouts: without the heartbeat it would come

    await first.ack(delivery)
    await _eventually_counts(first, "q", (0, 0))
    await other.stop()
    await running.stop()


async def test_predefined_queues_are_neither_listed_nor_created(
    open_sqs: Open, unique_name: str
) -> None:
    creator = await open_sqs()
    await creator.declare([QueueSpec("pre")])
    predefined = {
        name: {"url": await creator._queue_url(queue, create=False)}
        for name, queue in ((f"{unique_name}-pre", "pre"), (f"{unique_name}-pre-dead", "pre.dead"))
    }
    transport = await open_sqs(predefined_queues=predefined, wait_time_seconds=1)

    await transport.declare([QueueSpec("pre")])
    await transport.publish(_message(1), routing_key="pre")
    consumer = SlotConsumer(transport, ["pre"], Slots(1))
    await transport.ack(await consumer.get())
    await consumer.stop()
    with pytest.raises(BrokerConnectionError, match=rf"'{unique_name}-other'.*predefined_queues"):
        await transport.declare([QueueSpec("other")])

    client = await creator._client_for(None)
    listed = await client.list_queues(QueueNamePrefix=f"{unique_name}-other")
    assert listed.get("QueueUrls", []) == []
    assert await _counts(transport, "pre") == (0, 0)


async def test_dead_letter_copies_it_with_the_reason(open_sqs: Open) -> None:
    transport = await open_sqs(wait_time_seconds=1)
    await transport.declare([QueueSpec("q")])
    await transport.publish(_message(1), routing_key="q")
    consumer = SlotConsumer(transport, ["q"], Slots(1))
    await transport.dead_letter(await consumer.get(), "unknown task 't.add'")
    await consumer.stop()

    dead_consumer = SlotConsumer(transport, ["q.dead"], Slots(1))
    dead = await dead_consumer.get()
    await dead_consumer.stop()

    assert dead.message.body == _message(1).body
    assert dead.message.headers == {
        **_message(1).headers,
        "x-celeriac-reason": "unknown task 't.add'",
        "x-celeriac-queue": "q",
    }
    assert await _counts(transport, "q") == (0, 0)


async def test_an_unreadable_body_is_dead_lettered_by_the_transport(open_sqs: Open) -> None:
    transport = await open_sqs(wait_time_seconds=1)
    await transport.declare([QueueSpec("q")])
    client = await transport._client_for(None)
    await client.send_message(QueueUrl=await transport._queue_url("q"), MessageBody="not kombu's")
    await transport.publish(_message(2), routing_key="q")
    consumer = SlotConsumer(transport, ["q"], Slots(1))

    good = await consumer.get()
    await transport.ack(good)
    await consumer.stop()

    assert good.message.body == _message(2).body
    assert await _counts(transport, "q") == (0, 0)
    dead_consumer = SlotConsumer(transport, ["q.dead"], Slots(1))
    dead = await dead_consumer.get()
    await dead_consumer.stop()
    assert dead.message.body == b"not kombu's"
    assert dead.message.headers["x-celeriac-reason"].startswith("unreadable: ")
    assert dead.message.headers["x-celeriac-queue"] == "q"


async def test_close_makes_unsettled_visible_at_once_and_stops_a_long_poll(
    open_sqs: Open,
) -> None:
    transport = await open_sqs(wait_time_seconds=20)
    await transport.declare([QueueSpec("q"), QueueSpec("idle")])
    await transport.publish(_message(1), routing_key="q")
    consumer = SlotConsumer(transport, ["q"], Slots(1))
    await consumer.get()
    await consumer.stop()
    idle = SlotConsumer(transport, ["idle"], Slots(1))  # long-polling an empty queue
    await asyncio.sleep(0.2)
    observer = await open_sqs()

    await transport.aclose()

    async with asyncio.timeout(5):  # well before the 20 s poll would have ended
        await idle.task
    assert await _counts(observer, "q") == (1, 0)


async def test_a_failing_receive_is_logged_and_retried(
    open_sqs: Open, caplog: pytest.LogCaptureFixture, unique_name: str
) -> None:
    transport = await open_sqs(wait_time_seconds=1)
    await transport.declare([QueueSpec("q")])
    client = await transport._client_for(None)
    await client.delete_queue(QueueUrl=await transport._queue_url("q"))
    consumer = SlotConsumer(transport, ["q"], Slots(1))
    async with asyncio.timeout(10):
        while "SQS receive will retry" not in caplog.text:
            await asyncio.sleep(0.05)

    other = await open_sqs()
    await other.declare([QueueSpec("q")])  # the queue is back, at the same URL
    await other.publish(_message(1), routing_key="q")
    delivery = await consumer.get()
    await transport.ack(delivery)
    await consumer.stop()

    assert delivery.message.body == _message(1).body
    assert f"receive from queue '{unique_name}-q' at 127.0.0.1:" in caplog.text  # where it failed

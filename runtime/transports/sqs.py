"""``sqs://``: Amazon SQS (or an SQS-compatible server), on aiobotocore, as kombu writes it.

Wire: queue ``q`` is the SQS queue ``sqs_queue_name(q, queue_name_prefix)`` (kombu's
translation: punctuation but ``-``/``_`` becomes ``_``, ``.`` becomes ``-``, a ``.fifo`` suffix
stays); queues are created on first use with ``VisibilityTimeout`` and, for ``.fifo`` names,
``FifoQueue``. A ``MessageBody`` is kombu's JSON envelope base64-encoded once more
(:func:`protocol.encode_sqs_body`). FIFO messages take ``MessageGroupId`` from the message
property of that name (default ``"default"``) and ``MessageDeduplicationId`` from the property
or a fresh uuid4. The dead-letter queue of ``q`` is ``q.dead`` (in SQS: ``<q>-dead``).

Options (Celery's ``broker_transport_options``, or the URL's query string): ``region``,
``endpoint_url``, ``queue_name_prefix``, ``visibility_timeout`` (1800 s), ``wait_time_seconds``
(long polling, 10 s, at most 20), ``polling_interval`` (1 s, only between short polls),
``sqs-creation-attributes``, and ``predefined_queues`` (``{sqs name: {"url", ["access_key_id",
"secret_access_key", "region"]}}``; then no queue is listed or created and an unlisted one is an
error). Without options the region comes from ``AWS_DEFAULT_REGION``/``AWS_REGION`` and the
endpoint from ``AWS_ENDPOINT_URL_SQS``/``AWS_ENDPOINT_URL``; credentials from the URL
(``sqs://KEY:SECRET@``, URL-quoted) or botocore's usual chain.

Flow control: a ``ReceiveMessage`` is only sent while a slot is free, for at most
``min(10, free slots)`` messages, so nothing received waits for a slot. Several queues are
polled in turn, one receive each; once a whole round came back empty the long-poll wait is
shared between them, so a round lasts about ``wait_time_seconds``.

Visibility: SQS hides a received message for ``visibility_timeout`` and then hands it out
again. While a delivery is unsettled a heartbeat extends its visibility every half timeout,
so a task that runs longer is not run twice. Requeueing makes it visible at once (visibility
0), and so does :meth:`SqsTransport.aclose` for every delivery still unsettled, as a closed
AMQP connection returns its unacked messages. A receive cancelled by ``aclose`` may already
have taken messages on the server: SQS shows them again after their visibility timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from protocol import (
    CeleriacError,
    WireMessage,
    decode_sqs_body,
    encode_envelope,
    encode_sqs_body,
)
from runtime.errors import BrokerConnectionError, translate_aws_errors

from .base import BrokerHealth, Capacity, Delivery, QueueSpec, wait_free_unless_closed
from .reconnect import reconnect_delay
from .sqs_options import MAX_MESSAGES, MAX_WAIT_TIME_SECONDS, SqsOptions, sqs_queue_name

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.type_defs import MessageTypeDef

__all__ = ["MAX_MESSAGES", "SqsOptions", "SqsTransport", "sqs_queue_name"]

log = logging.getLogger(__name__)

#: The longest celeriac hides a received message to defer it: SQS allows 12 hours counted
#: from the receive, less a margin for the time since.
MAX_HIDDEN = 12 * 3600 - 300
#: Seconds one connection attempt may take.
CONNECT_TIMEOUT = 10.0

_T = TypeVar("_T")
_MISSING_QUEUE = {"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"}


@dataclass(eq=False, slots=True)
class _Receipt:
    """A received message: its queue, the client it came through, and its receipt handle."""

    queue: str
    url: str
    handle: str
    client: SQSClient
    settled: bool = False


class SqsTransport:
    """A :class:`~runtime.transports.base.Transport` for SQS; see the module docstring."""

    def __init__(
        self,
        url: str = "sqs://",
        options: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.options = SqsOptions.from_url(url, options, environ)
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[tuple[str, str | None, str | None], SQSClient] = {}
        self._urls: dict[str, str] = {}  # SQS name -> queue URL
        self._unsettled: set[_Receipt] = set()  # received, neither settled nor given back
        self._waiting: asyncio.Task[Any] | None = None  # the consumer's poll or idle sleep
        self._heartbeat: asyncio.Task[None] | None = None
        self._consuming = False
        self._closing = False
        self._closed = asyncio.Event()  # set with _closing: ends a wait for a free slot
        #: Whether SQS answers now, and how often it came back after an outage.
        self.health = BrokerHealth()

    async def connect(self) -> None:
        """Create the client and make one call, failing fast with :class:`BrokerConnectionError`
        naming the endpoint; start the visibility heartbeat."""
        with translate_aws_errors(f"connect to SQS at {self.options.where}"):
            if self.options.predefined_queues:
                name, entry = next(iter(self.options.predefined_queues.items()))
                client = await self._client_for(name)
                await client.get_queue_attributes(
                    QueueUrl=entry["url"], AttributeNames=["QueueArn"]
                )
            else:
                client = await self._client_for(None)
                await client.list_queues(MaxResults=1)
        self.health.up()
        if self._heartbeat is None and self.options.visibility_timeout >= 1:
            self._heartbeat = asyncio.create_task(self._extend(), name="celeriac-sqs-visibility")

    async def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Make sure each queue and its ``.dead`` queue exist (created as kombu creates them).

        SQS has no exchanges or priorities: ``max_priority`` and ``quorum`` are ignored.
        """
        for spec in queues:
            await self._queue_url(spec.name)
            await self._queue_url(f"{spec.name}.dead")

    async def consume(self, queues: Sequence[str], capacity: Capacity) -> AsyncIterator[Delivery]:
        """Receive from ``queues`` in turn, only into free slots, until :meth:`aclose`.

        A receive that fails (an outage, a deleted queue) is logged and retried with backoff.
        """
        if self._consuming:
            raise RuntimeError("this transport is already consuming")
        targets = [(queue, await self._queue_url(queue)) for queue in queues]
        self._consuming = True
        held: list[tuple[_Receipt, MessageTypeDef]] = []
        turn, empty, outage = 0, 0, None
        try:
            while await wait_free_unless_closed(capacity, self._closed):
                queue, url = targets[turn]
                turn = (turn + 1) % len(targets)
                wait = self._wait(empty, len(targets))
                try:
                    messages = await self._interruptible(
                        self._receive(queue, url, capacity.free, wait)
                    )
                except BrokerConnectionError as exc:
                    self.health.down()
                    outage = outage or time.monotonic()
                    delay = reconnect_delay(time.monotonic() - outage)
                    log.warning("SQS receive will retry in %.1fs: %s", delay, exc)
                    await self._interruptible(asyncio.sleep(delay))
                    continue
                if messages is None:
                    break  # closing
                if outage is not None:
                    outage = None
                    self.health.up()
                empty = 0 if messages else empty + 1
                if self._idle(empty, len(targets)):
                    await self._interruptible(asyncio.sleep(self.options.polling_interval))
                held = [(self._hold(queue, url, message), message) for message in messages]
                while held:
                    delivery = await self._delivery(*held.pop(0))
                    if delivery is not None:
                        yield delivery
        finally:
            self._consuming = False
            if held:  # the consumer stopped in the middle of a batch: give the rest back
                with contextlib.suppress(BrokerConnectionError):
                    await self._give_back([receipt for receipt, _ in held])

    def _wait(self, empty: int, queues: int) -> int:
        """Long-poll seconds for the next receive: none while other queues may have messages."""
        wait = self.options.wait_time_seconds
        if queues == 1 or wait == 0:
            return wait
        return math.ceil(wait / queues) if empty >= queues else 0

    def _idle(self, empty: int, queues: int) -> bool:
        """Whether a whole round of short polls came back empty (only without long polling)."""
        return self.options.wait_time_seconds == 0 and empty > 0 and empty % queues == 0

    async def _interruptible(self, aw: Awaitable[_T]) -> _T | None:
        """Await ``aw`` in a task that :meth:`aclose` cancels; ``None`` if it did."""
        self._waiting = waiting = asyncio.ensure_future(aw)
        try:
            return await waiting
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing and waiting.cancelled() and not (current and current.cancelling()):
                return None
            raise
        finally:
            waiting.cancel()
            self._waiting = None

    async def _receive(self, queue: str, url: str, free: int, wait: int) -> list[MessageTypeDef]:
        """One ``ReceiveMessage`` for at most ``min(10, free)`` messages."""
        name = self._name(queue)
        client = await self._client_for(name)
        with translate_aws_errors(f"receive from queue {name!r} at {self.options.where}"):
            response = await client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=max(1, min(MAX_MESSAGES, free)),
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        return response.get("Messages", [])

    def _hold(self, queue: str, url: str, message: MessageTypeDef) -> _Receipt:
        """Track a received message as unsettled (extended by the heartbeat, given back on
        close) from the moment it arrives."""
        client = self._clients[self._client_key(self._name(queue))]
        receipt = _Receipt(queue, url, message["ReceiptHandle"], client)
        self._unsettled.add(receipt)
        return receipt

    async def _delivery(self, receipt: _Receipt, message: MessageTypeDef) -> Delivery | None:
        """The delivery for ``message``; ``None`` if it was unreadable (and dead-lettered)."""
        body = message.get("Body", "")
        try:
            envelope = decode_sqs_body(body)
        except CeleriacError as exc:
            await self._drop_unreadable(receipt, body, exc)
            return None
        received = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return Delivery(
            message=envelope.message,
            queue=receipt.queue,
            exchange=envelope.exchange,
            routing_key=envelope.routing_key or receipt.queue,
            redelivered=envelope.redelivered or received > 1,
            handle=receipt,
        )

    async def ack(self, delivery: Delivery) -> None:
        """Delete the message (``DeleteMessage`` with its receipt handle)."""
        if (receipt := self._settle(delivery)) is not None:
            await self._delete(receipt, "ack")

    async def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Requeue: make the message visible again at once; else delete it."""
        if (receipt := self._settle(delivery)) is None:
            return
        if requeue:
            await self._change_visibility([receipt], 0)
        else:
            await self._delete(receipt, "reject")

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Send a copy to ``<queue>.dead`` with ``x-celeriac-reason`` and ``x-celeriac-queue``
        headers, then delete the message. If the copy cannot be sent the message is requeued
        and :class:`BrokerConnectionError` raised: nothing is lost."""
        receipt: _Receipt = delivery.handle
        if receipt.settled:
            return
        try:
            await self._publish_dead(delivery.message, receipt.queue, reason)
        except BrokerConnectionError:
            await self.reject(delivery, requeue=True)
            raise
        await self.ack(delivery)

    def delivery_ref(self, delivery: Delivery) -> str | None:
        """The queue and receipt handle: the controller makes a dead worker's message visible
        again by them."""
        receipt: _Receipt = delivery.handle
        return json.dumps([receipt.queue, receipt.handle])

    async def restore_now(self, ref: str) -> bool:
        """Make the message ``ref`` names visible at once (``ChangeMessageVisibility`` to 0),
        rather than at the end of its visibility timeout; ``False`` if SQS refuses (the message
        was deleted, or the receipt is no longer valid)."""
        queue, handle = json.loads(ref)
        url = await self._queue_url(queue, create=False)
        client = await self._client_for(self._name(queue))
        try:
            with translate_aws_errors(f"return a message to {self._name(queue)!r}"):
                await client.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=0
                )
        except BrokerConnectionError as exc:
            log.info("SQS did not return a message: %s", exc)
            return False
        return True

    async def defer(self, delivery: Delivery, eta: datetime) -> None:
        """Hide the message until ``eta`` (``ChangeMessageVisibility``; at most 12 hours at a
        time, SQS's limit per receive, after which it comes back and is deferred again).

        Nothing is copied, so nothing can be duplicated, and FIFO queues work too; the
        message stays in flight meanwhile (SQS allows 120,000 in flight per standard queue,
        20,000 per FIFO queue). It comes back counted as received once more.
        """
        if (receipt := self._settle(delivery)) is None:
            return
        remaining = (eta - datetime.now(UTC)).total_seconds()
        await self._change_visibility([receipt], max(0, min(math.floor(remaining), MAX_HIDDEN)))

    async def publish(self, message: WireMessage, *, routing_key: str, exchange: str = "") -> None:
        """Send ``message`` to queue ``routing_key`` (SQS has no exchanges: the default
        exchange's routing, which is also what Celery's direct exchange named like the queue
        does), created if missing; FIFO ids as kombu sets them."""
        await self._put(routing_key or exchange, message, exchange, routing_key)

    async def mirror(
        self, message: WireMessage, *, exchange: str, routing_key: str, queue: QueueSpec
    ) -> None:
        """Send ``message`` to monitor ``queue`` itself: kombu's SQS exchanges live only in a
        producer's memory, so each producer routes its topic exchange to the queue it binds
        with ``#``. The envelope names ``exchange`` and ``routing_key`` as kombu's does."""
        await self._put(queue.name, message, exchange, routing_key)

    async def _put(self, queue: str, message: WireMessage, exchange: str, routing_key: str) -> None:
        name = self._name(queue)
        extra: dict[str, str] = {}
        properties = message.properties
        if "MessageGroupId" in properties:
            extra["MessageGroupId"] = str(properties["MessageGroupId"])
        if name.endswith(".fifo"):
            extra.setdefault("MessageGroupId", "default")
            dedup = properties.get("MessageDeduplicationId") or uuid.uuid4()
            extra["MessageDeduplicationId"] = str(dedup)
        envelope = encode_envelope(
            message, exchange=exchange, routing_key=routing_key, delivery_tag=str(uuid.uuid4())
        )
        await self._send(queue, encode_sqs_body(envelope), extra)

    async def queue_depth(self, queue: str) -> tuple[int, None]:
        """``(ApproximateNumberOfMessages, None)``: SQS cannot count consumers."""
        name = self._name(queue)
        url = await self._queue_url(queue, create=False)
        client = await self._client_for(name)
        with translate_aws_errors(f"inspect queue {name!r} at {self.options.where}"):
            response = await client.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            )
        return int(response.get("Attributes", {}).get("ApproximateNumberOfMessages", 0)), None

    async def aclose(self) -> None:
        """Stop consuming (a long poll in flight is cancelled), make every unsettled delivery
        visible again at once, and close the clients."""
        self._closing = True
        self._closed.set()
        if self._waiting is not None:
            self._waiting.cancel()
        if (heartbeat := self._heartbeat) is not None:
            self._heartbeat = None
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
        if self._unsettled:
            try:
                await self._give_back(list(self._unsettled))
            except BrokerConnectionError as exc:
                log.warning("SQS shows the unsettled messages again after their timeout: %s", exc)
        self._clients.clear()
        await self._stack.aclose()

    def _name(self, queue: str) -> str:
        return sqs_queue_name(queue, self.options.queue_name_prefix)

    def _client_key(self, name: str | None) -> tuple[str, str | None, str | None]:
        """Region and credentials for SQS queue ``name`` (a predefined queue may have its own)."""
        entry = self.options.predefined_queues.get(name or "", {})
        return (
            str(entry.get("region") or self.options.region),
            entry.get("access_key_id") or self.options.access_key_id,
            entry.get("secret_access_key") or self.options.secret_access_key,
        )

    async def _client_for(self, name: str | None) -> SQSClient:
        """The client for SQS queue ``name``, created on first use and closed by aclose."""
        key = self._client_key(name)
        if (client := self._clients.get(key)) is None:
            region, access_key_id, secret_access_key = key
            config = AioConfig(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=MAX_WAIT_TIME_SECONDS + CONNECT_TIMEOUT,
                retries={"max_attempts": 3, "mode": "standard"},
            )
            creating = get_session().create_client(
                "sqs",
                region_name=region,
                endpoint_url=self.options.endpoint_url,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=config,
            )
            client = self._clients[key] = await self._stack.enter_async_context(creating)
        return client

    async def _queue_url(self, queue: str, *, create: bool = True) -> str:
        """The URL of ``queue``'s SQS queue; created (as kombu does) if missing and allowed."""
        name = self._name(queue)
        if (url := self._urls.get(name)) is not None:
            return url
        if self.options.predefined_queues:
            if (entry := self.options.predefined_queues.get(name)) is None:
                raise BrokerConnectionError(
                    f"broker: queue {name!r} (for {queue!r}) is not in predefined_queues; "
                    "with predefined_queues no queue is looked up or created"
                )
            url = str(entry["url"])
        else:
            url = await self._look_up(name, create=create)
        self._urls[name] = url
        return url

    async def _look_up(self, name: str, *, create: bool) -> str:
        client = await self._client_for(name)
        with translate_aws_errors(f"look up queue {name!r} at {self.options.where}"):
            try:
                return (await client.get_queue_url(QueueName=name))["QueueUrl"]
            except ClientError as exc:
                if not create or exc.response.get("Error", {}).get("Code") not in _MISSING_QUEUE:
                    raise
            attributes = {
                "VisibilityTimeout": str(self.options.visibility_timeout),
                **({"FifoQueue": "true"} if name.endswith(".fifo") else {}),
                **self.options.creation_attributes,
            }
            # The attribute names come from the user's sqs-creation-attributes, unchecked.
            created = await client.create_queue(
                QueueName=name,
                Attributes=attributes,  # type: ignore[arg-type]
            )
            return created["QueueUrl"]

    async def _send(self, queue: str, body: str, extra: Mapping[str, str]) -> None:
        name = self._name(queue)
        url = await self._queue_url(queue)
        client = await self._client_for(name)
        with translate_aws_errors(f"publish to queue {name!r} at {self.options.where}"):
            await client.send_message(QueueUrl=url, MessageBody=body, **extra)  # type: ignore[arg-type]

    async def _publish_dead(self, message: WireMessage, queue: str, reason: str) -> None:
        headers = {**message.headers, "x-celeriac-reason": reason, "x-celeriac-queue": queue}
        dead = f"{queue}.dead"
        envelope = encode_envelope(
            WireMessage(
                message.body, message.content_type, message.content_encoding, headers,
                message.properties,
            ),
            exchange="",
            routing_key=dead,
            delivery_tag=str(uuid.uuid4()),
        )  # fmt: skip
        await self._send(dead, encode_sqs_body(envelope), {})

    async def _drop_unreadable(self, receipt: _Receipt, body: str, exc: CeleriacError) -> None:
        """Dead-letter a message whose body is not kombu's: the copy carries the body as is."""
        log.error("dead-lettering an unreadable message from %r: %s", receipt.queue, exc)
        self._settle_receipt(receipt)
        raw = WireMessage(body.encode("utf-8", "surrogateescape"), None, None)
        try:
            await self._publish_dead(raw, receipt.queue, f"unreadable: {exc}")
        except BrokerConnectionError as failed:
            # Celery rejects an unknown format too; requeueing would redeliver it forever.
            log.error("dropping an unreadable message from %r: %s", receipt.queue, failed)
        with contextlib.suppress(BrokerConnectionError):
            await self._delete(receipt, "drop")

    def _settle(self, delivery: Delivery) -> _Receipt | None:
        receipt: _Receipt = delivery.handle
        return None if receipt.settled else self._settle_receipt(receipt)

    def _settle_receipt(self, receipt: _Receipt) -> _Receipt:
        receipt.settled = True
        self._unsettled.discard(receipt)
        return receipt

    async def _delete(self, receipt: _Receipt, action: str) -> None:
        with translate_aws_errors(f"{action} a message from {self._name(receipt.queue)!r}"):
            await receipt.client.delete_message(QueueUrl=receipt.url, ReceiptHandle=receipt.handle)

    async def _give_back(self, receipts: Iterable[_Receipt]) -> None:
        """Make ``receipts`` visible to other consumers now; they are settled for us."""
        given = [self._settle_receipt(receipt) for receipt in receipts]
        await self._change_visibility(given, 0)

    async def _change_visibility(self, receipts: Sequence[_Receipt], timeout: int) -> None:
        """Set the visibility of ``receipts``, ten per ``ChangeMessageVisibilityBatch``."""
        by_queue: dict[tuple[str, int], list[_Receipt]] = {}
        for receipt in receipts:
            by_queue.setdefault((receipt.url, id(receipt.client)), []).append(receipt)
        for group in by_queue.values():
            for start in range(0, len(group), MAX_MESSAGES):
                await self._change_batch(group[start : start + MAX_MESSAGES], timeout)

    async def _change_batch(self, batch: Sequence[_Receipt], timeout: int) -> None:
        first = batch[0]
        entries = [
            {"Id": str(n), "ReceiptHandle": receipt.handle, "VisibilityTimeout": timeout}
            for n, receipt in enumerate(batch)
        ]
        with translate_aws_errors(f"change visibility in {self._name(first.queue)!r}"):
            response = await first.client.change_message_visibility_batch(
                QueueUrl=first.url,
                Entries=entries,  # type: ignore[arg-type]
            )
        for failed in response.get("Failed", []):
            # Typically a receipt settled meanwhile, or one SQS already gave to someone else.
            log.info("SQS kept a message's visibility: %s", failed.get("Message", failed))

    async def _extend(self) -> None:
        """The heartbeat: every half visibility timeout, extend every unsettled delivery."""
        period = self.options.visibility_timeout / 2
        while True:
            await asyncio.sleep(period)
            if not (receipts := [r for r in self._unsettled if not r.settled]):
                continue
            try:
                await self._change_visibility(receipts, self.options.visibility_timeout)
            except BrokerConnectionError as exc:
                log.warning("SQS visibility heartbeat will retry: %s", exc)

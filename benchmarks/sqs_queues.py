"""Filling, watching and removing the benchmark queues on SQS (aiobotocore; the sqs extra).

A celeriac queue ``q`` is kombu's SQS queue ``sqs_queue_name(q)``; its messages are kombu's
envelope, base64-encoded once more, exactly as :class:`runtime.transports.sqs.SqsTransport`
publishes them. Pre-loading sends ``SendMessageBatch`` calls of ten, a few at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING

from aiobotocore.session import get_session

from protocol import WireMessage, encode_envelope, encode_sqs_body
from runtime.transports.base import QueueSpec
from runtime.transports.sqs import MAX_MESSAGES, SqsOptions, SqsTransport, sqs_queue_name

if TYPE_CHECKING:
    from types_aiobotocore_sqs import SQSClient

__all__ = ["delete", "depth", "preload", "queue_url", "sqs_client"]

#: ``SendMessageBatch`` calls in flight while pre-loading.
_SENDERS = 4


@contextlib.asynccontextmanager
async def sqs_client(broker: str) -> AsyncIterator[SQSClient]:
    """An aiobotocore SQS client for the ``sqs://`` URL ``broker`` (endpoint, region, keys)."""
    options = SqsOptions.from_url(broker)
    async with get_session().create_client(
        "sqs", region_name=options.region, endpoint_url=options.endpoint_url,
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
    ) as client:  # fmt: skip
        yield client


async def queue_url(client: SQSClient, queue: str) -> str:
    """The SQS URL of celeriac queue ``queue``."""
    return (await client.get_queue_url(QueueName=sqs_queue_name(queue)))["QueueUrl"]


async def preload(broker: str, queue: str, messages: Iterable[WireMessage]) -> int:
    """Create ``queue`` (and its ``.dead`` queue) as the worker does, then send ``messages``
    into it in batches of ten; returns how many."""
    transport = SqsTransport(broker)
    try:
        await transport.declare([QueueSpec(queue)])
    finally:
        await transport.aclose()
    bodies = [
        encode_sqs_body(encode_envelope(m, exchange="", routing_key=queue, delivery_tag=_tag()))
        for m in messages
    ]
    gate = asyncio.Semaphore(_SENDERS)
    async with sqs_client(broker) as client:
        url = await queue_url(client, queue)

        async def send(batch: list[str]) -> None:
            entries = [{"Id": str(n), "MessageBody": body} for n, body in enumerate(batch)]
            async with gate:
                sent = await client.send_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
            if failed := sent.get("Failed"):
                raise RuntimeError(f"SQS refused {len(failed)} pre-loaded messages: {failed[0]}")

        await asyncio.gather(*(
            send(bodies[start : start + MAX_MESSAGES])
            for start in range(0, len(bodies), MAX_MESSAGES)
        ))  # fmt: skip
    return len(bodies)


async def depth(client: SQSClient, url: str) -> int:
    """Messages in the queue at ``url`` not deleted yet: visible, or received and in flight."""
    found = await client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    return sum(int(count) for count in found.get("Attributes", {}).values())


async def delete(broker: str, queues: Sequence[str]) -> None:
    """Delete the SQS queues of ``queues`` and of their ``.dead`` queues (missing ones too)."""
    async with sqs_client(broker) as client:
        for queue in queues:
            for name in (queue, f"{queue}.dead"):
                with contextlib.suppress(client.exceptions.QueueDoesNotExist):
                    await client.delete_queue(QueueUrl=await queue_url(client, name))


def _tag() -> str:
    return str(uuid.uuid4())

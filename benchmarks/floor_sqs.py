"""The floor on SQS: receive and delete, nothing else, with a worker's prefetch.

``prefetch`` N is split into receive loops of at most ten messages (SQS's most per call):
N = 2 is one loop receiving two at a time, N = 100 ten loops of ten, so at most N messages are
in flight, as in a celeriac worker with N slots. Each loop long-polls ``ReceiveMessage`` (1 s)
and deletes what it got with one ``DeleteMessageBatch``: the fewest calls per message an SQS
consumer can make, which is what makes it the floor (celeriac deletes message by message).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from runtime.transports.sqs import MAX_MESSAGES

from .sqs_queues import queue_url, sqs_client

if TYPE_CHECKING:
    from .floor import Tally

__all__ = ["consume_sqs"]

#: Seconds each ``ReceiveMessage`` long-polls before the loop asks again.
WAIT_SECONDS = 1


async def consume_sqs(
    url: str, queue: str, prefetch: int, tally: Tally, stop: asyncio.Event
) -> None:
    """Receive and delete ``queue``'s messages on the SQS server of ``url`` until ``stop``."""
    async with sqs_client(url) as client:
        address = await queue_url(client, queue)

        async def loop(size: int) -> None:
            while not stop.is_set():
                received = await client.receive_message(
                    QueueUrl=address, MaxNumberOfMessages=size, WaitTimeSeconds=WAIT_SECONDS
                )
                if messages := received.get("Messages", []):
                    entries = [{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]}
                               for n, m in enumerate(messages)]  # fmt: skip
                    await client.delete_message_batch(QueueUrl=address, Entries=entries)  # type: ignore[arg-type]
                    tally.consumed += len(messages)

        sizes = [min(MAX_MESSAGES, prefetch - start) for start in range(0, prefetch, MAX_MESSAGES)]
        async with asyncio.TaskGroup() as group:
            loops = [group.create_task(loop(size), name=f"floor-sqs-{n}")
                     for n, size in enumerate(sizes)]  # fmt: skip
            await stop.wait()
            for task in loops:
                task.cancel()

"""The floor: a bare client that only consumes and acknowledges, with a worker's prefetch.

    python -m benchmarks.floor --broker URL --queue Q --prefetch N

No worker can drain a queue faster than its broker client can take messages off it, so the
suite runs this beside the workers on the same queue and broker:

* ``amqp://``: aio-pika, one connection and one channel, ``basic.qos(prefetch_count=N)``, a
  consumer on ``Q`` (declared as Celery declares it: durable, no arguments) that acks each
  message and does nothing else. The consumer sits on the channel's aiormq layer: by hand,
  skipping aio-pika's ``IncomingMessage`` and its extra task per message drained 10-20% faster
  than ``queue.consume`` with ``await message.ack()``.
* ``redis://``: redis.asyncio, N coroutines on a pool of at most N connections, each looping
  ``BRPOP`` (1 s timeout) over kombu's lists of ``Q`` in kombu's order (``Q``, then the priority
  steps ``Q\\x06\\x163``, ``6``, ``9``) and discarding what it pops: no ``unacked`` bookkeeping,
  which is exactly what makes it the floor.
* ``sqs://``: aiobotocore, receive and ``DeleteMessageBatch`` loops of up to ten messages with
  N in flight at most (:mod:`benchmarks.floor_sqs`).

It runs until SIGTERM or SIGINT, closes its connections, and prints one JSON line on stdout,
``{"consumed": n}``, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass

import aio_pika
import aiormq.abc
import redis.asyncio

#: kombu's Redis priority steps above 0 and its list-name separator (WIRE.md section 4.1).
PRIORITY_STEPS = (3, 6, 9)
SEP = "\x06\x16"
#: Seconds each ``BRPOP`` blocks before the slot loops again.
BRPOP_TIMEOUT = 1


@dataclass
class Tally:
    """Messages consumed (and, on AMQP, acknowledged) so far."""

    consumed: int = 0


def redis_lists(queue: str) -> list[str]:
    """kombu's Redis lists for ``queue``, in the order its consumer's ``BRPOP`` names them."""
    return [queue, *(f"{queue}{SEP}{step}" for step in PRIORITY_STEPS)]


async def consume_amqp(
    url: str, queue: str, prefetch: int, tally: Tally, stop: asyncio.Event
) -> None:
    """Consume and ack ``queue`` on the AMQP broker at ``url`` until ``stop`` is set."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        await channel.declare_queue(queue, durable=True)
        underlay = await channel.get_underlay_channel()

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            # A Basic.Deliver always carries its tag; the type covers Basic.GetEmpty too.
            await underlay.basic_ack(message.delivery_tag)  # type: ignore[arg-type]
            tally.consumed += 1

        await underlay.basic_consume(queue, on_message, no_ack=False)
        await stop.wait()


async def consume_redis(
    url: str, queue: str, prefetch: int, tally: Tally, stop: asyncio.Event
) -> None:
    """Pop ``queue``'s kombu lists on the Redis server at ``url`` with ``prefetch`` concurrent
    ``BRPOP`` loops until ``stop`` is set; the loops are cancelled, not left to time out (a
    message popped by a cancelled ``BRPOP`` is lost uncounted: the floor keeps no bookkeeping)."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=prefetch)
    async with redis.asyncio.Redis.from_pool(pool) as client:
        keys = redis_lists(queue)

        async def slot() -> None:
            # Checking ``stop`` as well as cancelling: redis-py 8.1 sometimes swallows a
            # cancellation that lands as a BRPOP reply arrives, and returns the reply instead.
            while not stop.is_set():
                if await client.brpop(keys, timeout=BRPOP_TIMEOUT) is not None:
                    tally.consumed += 1

        async with asyncio.TaskGroup() as group:
            slots = [group.create_task(slot(), name=f"floor-brpop-{i}") for i in range(prefetch)]
            await stop.wait()
            for task in slots:
                task.cancel()


async def run(url: str, queue: str, prefetch: int) -> int:
    """Consume until SIGTERM or SIGINT; return how many messages were consumed."""
    consume = consume_redis if url.startswith(("redis://", "rediss://")) else consume_amqp
    if url.startswith("sqs://"):
        from .floor_sqs import consume_sqs  # noqa: PLC0415 - needs the sqs extra

        consume = consume_sqs
    tally, stop = Tally(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await consume(url, queue, prefetch, tally, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return tally.consumed


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (as the celeriac worker's ``--loop auto``)."""
    try:
        import uvloop  # noqa: PLC0415 - optional at run time
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    """Parse the command line, consume until signalled, print ``{"consumed": n}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, help="amqp://..., redis://... or sqs://...")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--prefetch", type=int, required=True,
                        help="QoS, BRPOP slots, or SQS messages in flight")  # fmt: skip
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        consumed = runner.run(run(args.broker, args.queue, args.prefetch))
    print(json.dumps({"consumed": consumed}), flush=True)


if __name__ == "__main__":
    main()

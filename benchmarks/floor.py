"""The floor: a bare client that only consumes and acknowledges, with a worker's prefetch.

    python -m benchmarks.floor --broker URL --queue Q --prefetch N [--processes P]

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

``--processes P`` runs P such consumers, each a child process with its own connection, that
this one starts, stops when signalled, and counts: what the machine lets P bare clients drain,
beside a worker's ``--processes P``. The line then adds each one's count,
``{"consumed": n, "by_process": [...]}``; a child that dies ends the run with an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
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


async def run_processes(url: str, queue: str, prefetch: int, processes: int) -> list[int]:
    """Run ``processes`` floor processes until SIGTERM or SIGINT, then stop them; how many
    messages each consumed. This process only supervises them, as a worker's ``--processes``
    supervisor does, so that they all start alike."""
    command = [sys.executable, "-m", "benchmarks.floor", "--broker", url, "--queue", queue,
               "--prefetch", str(prefetch)]  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    children = []
    try:
        for _ in range(processes):
            children.append(
                await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
            )
        exits = [asyncio.ensure_future(child.wait()) for child in children]
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        for child in children:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
    counts = []
    for child in children:
        out, _ = await child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"a floor process exited {child.returncode}")
        counts.append(int(json.loads(out)["consumed"]))
    return counts


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
    parser.add_argument("--processes", type=int, default=1,
                        help="consumers, each in a process of its own")  # fmt: skip
    args = parser.parse_args()
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    report: dict[str, int | list[int]]
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if args.processes == 1:
            report = {"consumed": runner.run(run(args.broker, args.queue, args.prefetch))}
        else:
            counts = runner.run(
                run_processes(args.broker, args.queue, args.prefetch, args.processes)
            )
            report = {"consumed": sum(counts), "by_process": counts}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()

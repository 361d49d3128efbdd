"""celeriac's worker with no broker at all: a ``memory://`` queue filled and drained in-process.

    python -m benchmarks.embedded --queue Q -c N --tasks T [--sleep SECONDS [--rate R]]

Puts T messages in queue Q of an in-process memory broker (``runtime.transports.memory``):
``noop``, or ``bench.sleep(SECONDS)`` with ``--sleep``; with ``--rate`` they are sent once
the worker is ready, R a second, each at its due time (the io scenario), instead of before.
Then runs celeriac's :class:`~runtime.worker.Worker` (the class ``celeriac worker`` runs, on
the benchmark app) with N slots on that queue until it has handled all T, and prints one JSON
line on stdout::

    {"tasks": T, "seconds": ..., "cpu_seconds": ..., "rss_ready_bytes": ...}

timed from the worker being ready to the last message handled (CPU: this process's), with the
process's peak RSS when the worker was ready (the pre-loaded messages in, none taken). What
is left is celeriac's own per-task cost, with no broker client and no network: a ceiling for
the rows measured on real brokers. One run per process, so the caller's RSS samples are this
row's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

from protocol import WireMessage
from runtime.load import paced
from runtime.serve import configure_logging
from runtime.transports.memory import MemoryTransport
from runtime.worker import Worker

from .celeriac_app import app
from .floor import loop_factory
from .queues import task

__all__ = ["drain"]

#: How often the finish is looked at (the worker's counter, in the same event loop).
POLL = 0.005


async def drain(
    queue: str, concurrency: int, total: int, sleep: float | None, rate: float | None = None
) -> dict[str, float]:
    """Fill ``queue`` with ``total`` messages (or send them at ``rate`` once the worker is
    ready), run a worker on it until all are handled, and return ``tasks``, ``seconds`` and
    ``cpu_seconds`` of the drain."""
    transport = MemoryTransport(f"memory://{queue}")
    message = task("noop") if sleep is None else task("bench.sleep", sleep, None)
    if rate is None:
        for _ in range(total):
            await transport.publish(message, routing_key=queue)
    worker = Worker(app, queues=[queue], concurrency=concurrency, hostname="bench@embedded",
                    transport=transport, grace=5)  # fmt: skip
    running = asyncio.create_task(worker.run(), name="embedded-worker")
    await worker.ready.wait()
    ready_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    began, cpu = time.monotonic(), time.process_time()
    sending = None
    if rate is not None:
        sending = asyncio.create_task(_send(transport, queue, message, total=total, rate=rate))
    while worker.processed < total:
        if running.done():  # it failed: say why
            running.result()
            raise RuntimeError("the worker stopped before the queue was drained")
        if sending is not None and sending.done():
            sending.result()
        await asyncio.sleep(POLL)
    seconds, cpu = time.monotonic() - began, time.process_time() - cpu
    worker.stop()
    await running
    return {"tasks": total, "seconds": seconds, "cpu_seconds": cpu, "rss_ready_bytes": ready_rss}


async def _send(
    transport: MemoryTransport,
    queue: str,
    message: WireMessage,
    *,
    total: int,
    rate: float,
) -> None:
    """Publish ``message`` ``total`` times, ``rate`` a second from now (open loop)."""
    async for _ in paced(rate, total):
        await transport.publish(message, routing_key=queue)


def main() -> None:
    """Parse the command line, drain, print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", required=True)
    parser.add_argument("-c", "--concurrency", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--sleep", type=float, help="bench.sleep(SECONDS) instead of noop")
    parser.add_argument("--rate", type=float, help="send R a second once the worker is ready")
    args = parser.parse_args()
    configure_logging("warning", "json")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        found = runner.run(drain(args.queue, args.concurrency, args.tasks, args.sleep, args.rate))
    print(json.dumps(found), flush=True)


if __name__ == "__main__":
    main()

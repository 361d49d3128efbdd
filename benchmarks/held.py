"""What celeriac's worker holds for each task that waits, by source line.

    python -m benchmarks.held [--tasks 2000] [--sleeps] [--lines 25]

The worker runs embedded with the memory transport, ``--tasks`` coroutine tasks waiting at
once (on an event, or in ``asyncio.sleep`` as the io scenario's ``bench.sleep`` does with
``--sleeps``). Each message is what a Celery client sends (:func:`benchmarks.queues.task`),
read back from the bytes of kombu's Redis envelope inside the tracing window, as a broker's
delivery is, so what the worker keeps of it counts, string by string. tracemalloc gives the
bytes allocated and still held once every task waits, per task: in all, and by the line that
allocated them. The memory test (``tests/runtime/test_waiting_memory.py``) holds the total
to a budget; this shows where it goes. Run it in an interpreter of its own: state left by
earlier code in the same process is counted too.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import logging
import tracemalloc
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from protocol import WireMessage, decode_envelope, encode_envelope
from runtime import App
from runtime.transports.memory import MemoryTransport
from runtime.worker import Worker

from .queues import task

__all__ = ["Held", "held", "main"]


@dataclass(frozen=True)
class Held:
    """Bytes held per waiting task: ``total``, and ``by_line`` (``file:line`` -> bytes),
    the largest first."""

    total: float
    by_line: list[tuple[str, float]]


async def held(tasks: int, *, sleeps: bool = False) -> Held:
    """Measure what the worker holds for each of ``tasks`` tasks waiting at once."""
    app = App("held")
    release = asyncio.Event()

    @app.task(name="waits")
    async def waits() -> None:
        if sleeps:
            await asyncio.sleep(3600)
        else:
            await release.wait()

    transport = MemoryTransport("memory://held")
    # Events below warning dropped: what is measured is the worker's, not its log's.
    quiet = structlog.wrap_logger(
        structlog.PrintLogger(io.StringIO()), processors=[structlog.processors.KeyValueRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )  # fmt: skip
    worker = Worker(app, queues=["q"], concurrency=tasks, hostname="held@memory",
                    transport=transport, grace=5, logger=quiet)  # fmt: skip
    running = asyncio.create_task(worker.run())
    await worker.ready.wait()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        messages = [_delivered(task("waits")) for _ in range(tasks)]
        for message in messages:
            await transport.publish(message, routing_key="q")
        while len(worker.running) < tasks:
            if running.done():
                running.result()  # the worker stopped: say why rather than hang
                raise RuntimeError("the worker stopped before every task waited")
            await asyncio.sleep(0.01)
        del messages, message  # this function's own references: only the worker's count
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    by_line = [(str(stat.traceback[0]), stat.size_diff / tasks) for stat in stats]
    if sleeps:
        worker.terminate()
    else:
        release.set()
        worker.stop()
    await running
    return Held(sum(stat.size_diff for stat in stats) / tasks, by_line)


def _delivered(message: WireMessage) -> WireMessage:
    """``message`` read back from the bytes a broker carries (kombu's Redis envelope), so that
    its strings are the reader's own objects, one set per message, as a delivery's are."""
    raw = encode_envelope(message, exchange="", routing_key="q", delivery_tag=str(uuid.uuid4()))
    return decode_envelope(raw).message


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.held``: print the bytes per waiting task, in all and by line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.held", description=__doc__)
    parser.add_argument("--tasks", type=int, default=2_000)
    parser.add_argument("--sleeps", action="store_true", help="wait in asyncio.sleep")
    parser.add_argument("--lines", type=int, default=25, help="the largest lines shown")
    args = parser.parse_args(argv)
    found = asyncio.run(held(args.tasks, sleeps=args.sleeps))
    for where, size in found.by_line[: args.lines]:
        print(f"{size:8.0f}  {where}")
    print(f"{found.total:8.0f}  bytes held per waiting task, in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

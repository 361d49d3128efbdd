"""What the worker keeps for each task that waits, and the logger it keeps it with.

At 10,000 coroutine tasks waiting at once (the io scenario), each object the worker keeps
per run is 10,000 objects. The budget below is the worker's own share, measured with
tracemalloc over 2,000 waiting tasks on the memory transport, each message made as a
broker's delivery would be: bytes allocated and still held while they wait, divided by the
tasks. It was 6,884 bytes (2026-12-05, ea82c33) with five coroutine frames of the worker's
between the handler and the task, a bound logger per message, and the message kept for the
whole run; 4,723 with one frame and :class:`~runtime.worker.tasklog.TaskLog` (db5fc8a);
3,702 with the message let go after its early ack (3,604 in an interpreter of its own, as the
test measures since); 3,292 with the run its own iterator rather than a generator's frame;
3,234 with one name for every handler task. The budget leaves about 250 bytes: a frame kept per
run (~300) coming back fails it.

The measurement runs in an interpreter of its own: inside the whole suite, in pytest's
process, it measured about 900 bytes more (4,624 in CI at 3,702 alone), state left by
earlier tests that a budget should not have to absorb.
"""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from protocol import TaskMessage, encode_task
from runtime import App
from runtime.transports.memory import MemoryTransport
from runtime.worker import Worker
from runtime.worker.tasklog import TaskLog

#: Bytes the worker may keep for each task waiting (see the module docstring).
BUDGET = 3_500
TASKS = 2_000
ROOT = Path(__file__).resolve().parents[2]


def test_a_waiting_task_costs_the_worker_little_memory() -> None:
    probe = f"import asyncio, {__name__} as m; print(asyncio.run(m.held_per_waiting_task()))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=90,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    per_task = float(done.stdout.splitlines()[-1])  # after the worker's own log lines
    assert 1_000 < per_task < BUDGET, f"{per_task:.0f} bytes a waiting task"


async def held_per_waiting_task() -> float:
    """Bytes the worker holds for each of :data:`TASKS` tasks waiting at once."""
    app = App("memory")
    release = asyncio.Event()

    @app.task(name="waits")
    async def waits() -> None:
        await release.wait()

    transport = MemoryTransport("memory://waiting-memory")
    # Events below warning dropped: what is measured is the worker's, not its log's.
    quiet = structlog.wrap_logger(
        structlog.PrintLogger(io.StringIO()), processors=[structlog.processors.KeyValueRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )  # fmt: skip
    worker = Worker(app, queues=["q"], concurrency=TASKS, hostname="memory@test",
                    transport=transport, grace=5, logger=quiet)  # fmt: skip
    running = asyncio.create_task(worker.run())
    await worker.ready.wait()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        # Each message made here, as a broker's delivery is: what the worker keeps of it counts.
        messages = [
            encode_task(TaskMessage(id=f"id-{i}", task="waits"), now=datetime.now(UTC))
            for i in range(TASKS)
        ]
        for message in messages:
            await transport.publish(message, routing_key="q")
        while len(worker.running) < TASKS:
            assert not running.done(), running  # the worker stopped: say why, do not hang
            await asyncio.sleep(0.01)
        del messages, message  # the test's own references: only the worker's are counted
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    release.set()
    while worker.processed < TASKS:
        await asyncio.sleep(0.01)
    worker.stop()
    await running

    return held / TASKS


def test_the_task_log_adds_the_message_fields_to_every_event() -> None:
    log = TaskLog(_Recording(), task_id="id-1", task="t.add", queue="q")
    fields = {"task_id": "id-1", "task": "t.add", "queue": "q"}

    with capture_logs() as logs:
        log.info("task_started", hard_limit=300.0)
        log.warning("task_dropped", queue="other")  # an event's own field wins
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("delivery_failed")
        log.bind(retries=2).error("task_failed")

    assert logs == [
        {**fields, "hard_limit": 300.0, "event": "task_started", "log_level": "info"},
        {**fields, "queue": "other", "event": "task_dropped", "log_level": "warning"},
        {**fields, "event": "delivery_failed", "log_level": "error", "exc_info": True},
        {**fields, "retries": 2, "event": "task_failed", "log_level": "error"},
    ]


class _Recording:
    """The worker's logger as the test sees it: structlog's, captured."""

    def __getattr__(self, name: str) -> object:
        import structlog  # noqa: PLC0415 - configured by capture_logs at call time

        return getattr(structlog.get_logger(), name)

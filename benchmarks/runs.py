"""Running one system as a subprocess for one measurement, and timing how it drains a queue.

Every measurement starts a fresh process on a fresh queue: nothing warms up across rows, and
a row that crashes cannot skew the next. The process's stderr goes to a temporary file, whose
end is shown if the process dies before the measurement is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .measure import TreeSampler, Usage
from .queues import POLL, Watch
from .systems import System

__all__ = [
    "ROOT", "Running", "WorkerDied", "collector_held_off", "drain", "first_taken", "running",
]  # fmt: skip

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def collector_held_off() -> Iterator[None]:
    """The harness's own cyclic garbage collector off for one row (collected just before).

    The harness times the system under test: its sends are due on a schedule, its polls end
    the clock. It holds every earlier row's imports and results, and after the noop, results
    and io rows a full collection of its heap took 19-55 ms here; every send due meanwhile
    went out late and was counted as the worker's latency. What one row allocates is small.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class WorkerDied(RuntimeError):
    """The system under test exited before the measurement was over."""


@dataclass
class Running:
    """A started system: its process, its resource sampler, and its log."""

    system: System
    process: subprocess.Popen[bytes]
    sampler: TreeSampler
    log: IO[bytes]

    def check(self) -> None:
        """Raise :class:`WorkerDied` (with the end of its log) if the process has exited."""
        if (code := self.process.poll()) is not None:
            self.log.seek(0)
            tail = self.log.read().decode("utf-8", "replace")[-2000:]
            raise WorkerDied(f"{self.system.label} exited with status {code}:\n{tail}")

    def usage(self) -> Usage:
        """Resources used so far (samples now first)."""
        self.sampler.sample()
        return self.sampler.usage()


@contextlib.asynccontextmanager
async def running(
    system: System, broker: str, queue: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[Running]:
    """Start ``system`` on ``queue``; SIGTERM it (SIGKILL after 20 s) on the way out."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CELERIAC_BROKER_URL": broker,
                   **system.environment(broker, queue), **(env or {})}  # fmt: skip
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            system.command(broker, queue), cwd=ROOT, env=environment,
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            async with TreeSampler(process.pid) as sampler:
                yield Running(system, process, sampler, log)
        finally:
            await _stop(process)


async def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, 20)
    except subprocess.TimeoutExpired:
        process.kill()
        await asyncio.to_thread(process.wait)


async def until(
    condition: Callable[[], Awaitable[bool]], run: Running, timeout: float, what: str,
    interval: Callable[[], float] = lambda: POLL,
) -> None:  # fmt: skip
    """Poll ``condition`` (waiting ``interval()`` seconds between looks) until it holds; fail
    if the process dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not await condition():
        run.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{run.system.label}: {what} not within {timeout:.0f} s")
        await asyncio.sleep(interval())


async def first_taken(watch: Watch, queue: str, total: int, run: Running, timeout: float) -> None:
    """Wait until the first of ``total`` pre-loaded messages has left ``queue``."""

    async def started() -> bool:
        return await watch.depth(queue) < total

    await until(started, run, timeout, "the first message taken", watch.interval)


async def drain(
    watch: Watch, queue: str, total: int, run: Running, timeout: float = 300
) -> tuple[float, float]:
    """Wait for the first message to leave ``queue`` and then for it to be empty.

    Returns ``(seconds from first taken to empty, CPU seconds the tree used meanwhile)``;
    start-up is not counted, in time or CPU.
    """

    async def empty() -> bool:
        return await watch.depth(queue) == 0

    await first_taken(watch, queue, total, run, timeout)
    began, cpu_before = time.monotonic(), run.usage().cpu_seconds
    await until(empty, run, timeout, "the queue drained", watch.interval)
    return time.monotonic() - began, run.usage().cpu_seconds - cpu_before

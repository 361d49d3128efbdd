"""The celeriac side of the benchmarks: the suite's three tasks, run by ``celeriac worker``.

The same names exist for Celery (``benchmarks/celery_app.py``) and aio-celery
(``benchmarks/aio_celery_app.py``), so every system runs the same messages. The broker comes
from the worker's ``--broker``; results go to ``BENCH_RESULT_BACKEND`` when it is set.
"""

from __future__ import annotations

import asyncio
import os
import time

from runtime import App

from .tally import Tally, shared_client

app = App("bench", result_backend=os.environ.get("BENCH_RESULT_BACKEND") or None)


@app.task(name="noop")
async def noop() -> None:
    """Does nothing: the unit of work of the drain scenarios."""


_done = Tally(shared_client)


@app.task(name="bench.sleep")
async def sleep(seconds: float, key: str | None = None) -> None:
    """Waits ``seconds`` without using the CPU, then counts itself done in Redis ``key``
    (when given; :mod:`benchmarks.tally` writes the count): the unit of the I/O scenario."""
    await asyncio.sleep(seconds)
    if key is not None:
        _done.add(key)


@app.task(name="bench.stamp")
async def stamp(sent: float, key: str) -> None:
    """Records ``"<sent>,<started>"`` in Redis list ``key``: publish-to-start latency."""
    started = time.time()
    await shared_client().rpush(key, f"{sent},{started}")

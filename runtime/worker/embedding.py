"""A worker inside the caller's own event loop: what ``async with app.worker(...)`` runs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from runtime.app import App

from .loop import DEFAULT_MAX_HELD_ETA, Worker

__all__ = ["embedded"]


@asynccontextmanager
async def embedded(
    app: App,
    queues: Sequence[str] | None = None,
    *,
    concurrency: int = 10,
    hostname: str | None = None,
    grace: float = 30.0,
    max_held_eta: int | None = None,
) -> AsyncIterator[Worker]:
    """Run a worker of ``app`` in this event loop for the ``async with`` block.

    It installs no signal handlers; leaving the block stops it as SIGTERM would (running tasks
    get ``grace`` seconds). Raises at once if the broker cannot be reached.
    """
    worker = Worker(
        app,
        queues=queues or [app.default_queue],
        concurrency=concurrency,
        hostname=hostname or f"celeriac@{socket.gethostname()}",
        grace=grace,
        max_held_eta=DEFAULT_MAX_HELD_ETA if max_held_eta is None else max_held_eta,
    )
    running = asyncio.create_task(worker.run(), name="celeriac-worker")
    ready = asyncio.create_task(worker.ready.wait())
    await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        ready.cancel()
        running.result()  # the reason it could not start
    try:
        yield worker
    finally:
        worker.stop()
        await running

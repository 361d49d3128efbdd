"""A worker's heartbeat in the run registry: that it is alive, and how it is doing.

Every ``interval`` seconds the worker records its name, queues, slots (total and busy), the
event loop's lag (how late the beat's own timer fired: a loop blocked by a task that never
yields shows here first), its pid and celeriac's version (:meth:`RunRegistry.beat`). The
controller takes a worker whose heart stopped for 1.5 intervals as dead and recovers its runs.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

from runtime.errors import BackendError
from runtime.redis_client import stop_if_cancelled
from runtime.results.runs import RunRegistry

__all__ = ["DEFAULT_HEARTBEAT_INTERVAL", "beat_forever"]

#: Seconds between two heartbeats (Celery's worker heartbeat is 2 s; this one writes Redis).
DEFAULT_HEARTBEAT_INTERVAL = 5.0


async def beat_forever(
    runs: RunRegistry,
    name: str,
    *,
    queues: Sequence[str],
    concurrency: int,
    busy: Callable[[], int],
    interval: float,
    log: Any,
) -> None:
    """Beat every ``interval`` seconds until cancelled; a failed beat is logged and retried."""
    lag = 0.0
    release = version("celeriac")
    while True:
        try:
            await runs.beat(
                name, interval, queues=",".join(queues), concurrency=concurrency, busy=busy(),
                loop_lag_ms=round(lag * 1000, 1), pid=os.getpid(), version=release,
            )  # fmt: skip
        except BackendError as exc:
            log.warning("heartbeat_failed", error=str(exc))
        stop_if_cancelled("heartbeat")
        due = time.monotonic() + interval
        await asyncio.sleep(interval)
        lag = max(0.0, time.monotonic() - due)

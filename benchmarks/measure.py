"""What a worker costs while it runs: peak memory and CPU time of its whole process tree.

A Celery prefork worker is a parent and its children; celeriac is one process (or one per
``--processes``). Both are measured the same way: every ``interval`` the tree under the
started process is listed, resident memory summed (the peak of those sums is reported) and
each process's own user+system CPU time remembered, so a child that exits still counts.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import psutil

__all__ = ["TreeSampler", "Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Peak resident memory (bytes) and CPU seconds of a process tree."""

    peak_rss: int
    cpu_seconds: float

    @property
    def peak_rss_mib(self) -> float:
        """Peak resident memory in MiB."""
        return self.peak_rss / 2**20


class TreeSampler:
    """Samples the tree under ``pid`` until stopped (``async with TreeSampler(pid)``)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self._peak = 0
        self._cpu: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TreeSampler:
        self.sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    def sample(self) -> None:
        """Take one sample now (also call it just before stopping the process)."""
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for process in tree:
            with contextlib.suppress(psutil.Error), process.oneshot():
                rss += process.memory_info().rss
                times = process.cpu_times()
                self._cpu[process.pid] = times.user + times.system
        self._peak = max(self._peak, rss)

    def usage(self) -> Usage:
        """What was seen so far."""
        return Usage(peak_rss=self._peak, cpu_seconds=sum(self._cpu.values()))

"""The scenarios on ``memory://``: each row is one ``python -m benchmarks.embedded`` process.

A memory broker exists inside one process, so nothing outside can fill or watch it: the
process fills it, drains it with celeriac's worker and reports its own timing; this side
samples its resident memory (which includes the pre-loaded messages: no broker holds them).
Only ``noop`` and ``io`` apply: the other scenarios need a publisher outside the worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

from .measure import TreeSampler
from .runs import ROOT, WorkerDied
from .scenarios import Context, Row, Scenario, io_row, noop_row, queue_name
from .systems import System

__all__ = ["IN_PROCESS"]

#: Seconds one embedded run may take.
TIMEOUT = 300


async def noop(ctx: Context, kind: str, system: System) -> Row:
    """N pre-loaded no-op messages drained in-process."""
    total = ctx.scale.noop_tasks
    found, peak = await _embedded(ctx.brokers[kind], system, ["--tasks", str(total)])
    return noop_row(total, found["seconds"], found["cpu_seconds"], peak)


async def io(ctx: Context, kind: str, system: System) -> Row:
    """Tasks awaiting ``concurrency / io_rate`` seconds each, sent in-process at ``io_rate``;
    efficiency against the ideal duration, and the memory each waiting task holds."""
    scale = ctx.scale
    total = max(scale.io_min, scale.io_rounds * system.concurrency)
    extra = ["--tasks", str(total), "--sleep", str(scale.io_seconds(system.concurrency)),
             "--rate", str(scale.io_rate)]  # fmt: skip
    found, peak = await _embedded(ctx.brokers[kind], system, extra)
    ready = found["rss_ready_bytes"] / 2**20
    return io_row(system.concurrency, total, found["seconds"], scale.io_rate, (ready, peak))


async def _embedded(
    broker: str, system: System, extra: list[str]
) -> tuple[dict[str, float], float]:
    """Run one embedded drain; its JSON line and the peak RSS (MiB) of its process."""
    command = [*system.command(broker, queue_name()), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        async with TreeSampler(process.pid) as sampler:
            out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        tail = err.decode("utf-8", "replace")[-2000:]
        raise WorkerDied(f"{system.label} exited with status {process.returncode}:\n{tail}")
    found: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return found, sampler.usage().peak_rss_mib


IN_PROCESS: dict[str, Scenario] = {"noop": noop, "io": io}

"""The controller's state for people: ``celeriac runs list``, ``celeriac queues`` and
``celeriac workers`` print tables on a terminal, and JSON with ``--json``.

They read what workers, producers and the controller keep in Redis (``--redis``, else
``CELERIAC_RUN_REGISTRY`` or ``CELERIAC_CONTROLLER_REDIS``; ``--prefix`` as the controller's):
runs from the run registry, heartbeats from the workers, and the queue watch's last look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from runtime.errors import BackendError, translate_redis_errors
from runtime.results.runs import RunRegistry
from runtime.serve import first_env

from .recovery import DEAD_AFTER_BEATS

__all__ = ["add_commands", "table"]

T = TypeVar("T")


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``rows`` under ``columns``, aligned, for a terminal."""
    cells = [list(columns), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in cells]  # fmt: skip
    return "\n".join(line.rstrip() for line in lines)


def _when(stamp: str | float | None) -> str:
    if not stamp:
        return ""
    return datetime.fromtimestamp(float(stamp), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _show(
    args: argparse.Namespace,
    read: Callable[[RunRegistry], Awaitable[T]],
    render: Callable[[T], tuple[Any, str]],
) -> int:
    """Read with a registry on the Redis the flags name; print JSON or a table."""
    url = args.redis or first_env(os.environ, "CELERIAC_RUN_REGISTRY", "CELERIAC_CONTROLLER_REDIS")
    if not url:
        print("celeriac: give --redis URL (or CELERIAC_RUN_REGISTRY)", file=sys.stderr)
        return 2

    async def reading() -> T:
        registry = RunRegistry.from_url(url, prefix=args.prefix)
        try:
            return await read(registry)
        finally:
            await registry.aclose()

    try:
        found = asyncio.run(reading())
    except BackendError as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 1
    data, text = render(found)
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _cmd_runs_list(args: argparse.Namespace) -> int:
    async def read(registry: RunRegistry) -> list[Any]:
        return await registry.runs(state=args.state, queue=args.queue, limit=args.limit)

    def render(runs: list[Any]) -> tuple[Any, str]:
        columns = ("task_id", "task", "queue", "state", "attempt", "worker", "updated")
        rows = [
            (run.task_id, run.get("task") or "", run.get("queue") or "", run.state,
             run.get("attempt") or "", run.get("worker") or "", _when(run.get("updated_at")))
            for run in runs
        ]  # fmt: skip
        return [run.as_dict() for run in runs], table(columns, rows)

    return _show(args, read, render)


def _cmd_workers(args: argparse.Namespace) -> int:
    def render(workers: list[Any]) -> tuple[Any, str]:
        now = time.time()
        data = []
        for worker in workers:
            beat_at = float(worker.get("beat_at") or 0)
            alive = now - beat_at <= DEAD_AFTER_BEATS * float(worker.get("interval") or 0)
            data.append({"worker": worker.task_id, **worker.fields, "alive": alive,
                         "last_beat_s": round(now - beat_at, 1)})  # fmt: skip
        columns = ("worker", "queues", "slots", "busy", "loop_lag_ms", "version", "last_beat",
                   "alive")  # fmt: skip
        rows = [
            (w["worker"], w.get("queues", ""), w.get("concurrency", ""), w.get("busy", ""),
             w.get("loop_lag_ms", ""), w.get("version", ""), f"{w['last_beat_s']}s ago",
             "yes" if w["alive"] else "NO")
            for w in data
        ]  # fmt: skip
        return data, table(columns, rows)

    return _show(args, lambda registry: registry.workers(), render)


def _cmd_queues(args: argparse.Namespace) -> int:
    async def read(registry: RunRegistry) -> dict[Any, Any]:
        with translate_redis_errors("read the queue watch", what="controller state"):
            found: Any = await registry.client.hgetall(f"{registry.prefix}queues")
            return found  # type: ignore[no-any-return]

    def render(snapshot: dict[Any, Any]) -> tuple[Any, str]:
        states = sorted((json.loads(v) for v in snapshot.values()), key=lambda s: s["queue"])
        now = time.time()
        columns = ("queue", "depth", "consumers", "oldest_age_s", "unconsumed_for_s", "alert",
                   "seen")  # fmt: skip
        rows = [
            (s["queue"], s["depth"], "?" if s["consumers"] is None else s["consumers"],
             "" if s["oldest_age"] is None else s["oldest_age"],
             "" if s["unconsumed_since"] is None else round(now - s["unconsumed_since"], 1),
             "ALERT" if s["alert"] else "", _when(s["seen_at"]))
            for s in states
        ]  # fmt: skip
        return states, table(columns, rows)

    return _show(args, read, render)


def _common(command: Any) -> None:
    command.add_argument("--redis", metavar="URL", help="the Redis (CELERIAC_RUN_REGISTRY)")
    command.add_argument("--prefix", default="celeriac:", help="Redis key prefix")
    command.add_argument("--json", action="store_true", help="JSON instead of a table")


def add_commands(commands: Any) -> None:
    """``runs list``, ``queues`` and ``workers``, added to ``celeriac``'s commands."""
    runs = commands.add_parser("runs", help="the run registry: what ran, where, how it ended")
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the newest runs first")
    listing.add_argument("--state", help="queued, received, started, succeeded, failed, ...")
    listing.add_argument("--queue", help="only runs of this queue")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    _common(listing)
    listing.set_defaults(run=_cmd_runs_list)
    queues = commands.add_parser(
        "queues", help="depth, consumers, oldest message and alerts of every watched queue"
    )
    _common(queues)
    queues.set_defaults(run=_cmd_queues)
    workers = commands.add_parser("workers", help="the workers' last heartbeats")
    _common(workers)
    workers.set_defaults(run=_cmd_workers)

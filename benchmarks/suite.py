"""Which systems run in which scenario, and running them all, one after another.

Rows run one at a time (two cores: a row running beside another would measure both), each on
its own fresh queue. A row that fails is recorded with its error and the suite goes on. A
system runs on the brokers it supports, and only the scenarios that apply to a broker run on it
(:func:`benchmarks.brokers.runs_on`); on ``memory://`` the rows run in-process.
"""

from __future__ import annotations

import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import psutil

from .brokers import runs_on
from .in_process import IN_PROCESS
from .runs import collector_held_off
from .scenarios import SCENARIOS, Context
from .systems import System, aio_celery, celeriac, celeriac_in_process, celery, floor, taskiq

__all__ = ["Plan", "Step", "default_plan", "machine", "run", "steps", "version_of"]


@dataclass(frozen=True, slots=True)
class Step:
    """One row to measure: a scenario, a broker kind, a system."""

    scenario: str
    broker: str
    system: System


def _throughput_systems() -> list[System]:
    return [celeriac(100), celery("prefork", 2), celery("threads", 100), aio_celery(100),
            taskiq(100)]  # fmt: skip


def _noop_extra_systems() -> list[System]:
    """The cost of task events, two processes, the bare clients' floors (in one process and
    in two), and no broker."""
    return [celeriac(100, events=True), celeriac(100, processes=2), floor(2), floor(100),
            floor(100, processes=2), celeriac_in_process(100)]  # fmt: skip


#: scenario -> the systems it measures (each on the brokers it supports).
Plan = dict[str, Callable[[], list[System]]]


def default_plan(io_concurrency: Sequence[int] = (100, 1_000, 10_000)) -> Plan:
    """Every scenario with the rows the issue asks for."""

    def io() -> list[System]:
        peers = (celeriac, aio_celery, taskiq, celeriac_in_process)
        rows = [peer(c) for c in io_concurrency for peer in peers]
        return [*rows, celery("threads", min(io_concurrency))]

    return {
        "noop": lambda: [*_throughput_systems(), *_noop_extra_systems()],
        "results": _throughput_systems,
        "io": io,
        "latency": _throughput_systems,
        "mixed": lambda: [celeriac(2), celery("prefork", 2), aio_celery(2), taskiq(2)],
        # aio-celery holds an ETA task's slot until it is due: it cannot take a thousand in;
        # taskiq's messages carry no due time (it delays through a queue of its own).
        "eta": lambda: [celeriac(2), celery("prefork", 2)],
    }


def steps(plan: Plan, scenarios: Sequence[str], brokers: Sequence[str],
          families: Sequence[str] | None = None) -> list[Step]:  # fmt: skip
    """The rows to measure, scenario by scenario, broker by broker."""
    found = []
    for scenario in scenarios:
        for broker in (b for b in brokers if runs_on(scenario, b)):
            for system in plan[scenario]():
                if broker in system.brokers and (families is None or system.family in families):
                    found.append(Step(scenario, broker, system))
    return found


async def run(ctx: Context, todo: Sequence[Step], *, show: bool = True) -> list[dict[str, Any]]:
    """Measure every step in order; one row per step (``error`` set where one failed).

    With ``show``, a line on standard error as each step begins and the traceback of each
    that failed.
    """
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for number, step in enumerate(todo, 1):
        if show:
            elapsed = time.monotonic() - started
            print(f"[{number}/{len(todo)} {elapsed:5.0f} s] {step.scenario} · {step.broker} · "
                  f"{step.system.label}", file=sys.stderr, flush=True)  # fmt: skip
        row: dict[str, Any] = {
            "scenario": step.scenario, "broker": step.broker, "system": step.system.label,
            "family": step.system.family, "concurrency": step.system.concurrency,
        }  # fmt: skip
        began = time.monotonic()
        try:
            scenario = (IN_PROCESS if step.broker == "memory" else SCENARIOS)[step.scenario]
            with collector_held_off():
                row.update(await scenario(ctx, step.broker, step.system))
        except Exception as exc:  # a failed row is reported, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}"
            if show:
                print(f"{row['system']} failed: {row['error']}", file=sys.stderr)
                print(traceback.format_exc(limit=3), file=sys.stderr, flush=True)
        row["wall_seconds"] = round(time.monotonic() - began, 1)
        rows.append(row)
    return rows


def machine() -> dict[str, Any]:
    """The facts a reader needs to weigh the numbers: CPUs, memory, versions."""
    packages = ("celery", "kombu", "aio-pika", "redis", "aio-celery", "taskiq", "taskiq-aio-pika",
                "taskiq-redis", "aiobotocore", "moto", "celeriac")  # fmt: skip
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": {name: version_of(name) for name in packages},
    }


def version_of(name: str) -> str | None:
    """The installed version of distribution ``name``, or ``None``."""
    try:
        return version(name)
    except Exception:
        return None

"""The rows of every table: which worker, started how, at what concurrency and prefetch.

Each system is a command line started as a subprocess on a queue and broker. Celery's rows
use ``--prefetch-multiplier=1`` (so a prefork ``-c 2`` worker's QoS is 2, a threads ``-c 100``
worker's is 100), aio-celery's app sets the same, celeriac's prefetch is always one per slot,
and the floor is a bare consumer that acks and does nothing else, at the same prefetch.
taskiq's worker reads taskiq's own messages (``speaks``; :mod:`benchmarks.dialects`), its
QoS on RabbitMQ equal to its ``--max-async-tasks``. On ``memory://`` only celeriac runs,
embedded in the process that fills the broker (``benchmarks/embedded.py``): a memory broker
lives in one process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = [
    "System", "aio_celery", "celeriac", "celeriac_in_process", "celery", "floor", "taskiq",
]  # fmt: skip

_CELERY_QUIET = ["--without-heartbeat", "--without-gossip", "--without-mingle"]


@dataclass(frozen=True, slots=True)
class System:
    """One row: a label, the family it belongs to, how to start it (its command's arguments
    and environment, each formatted with ``{broker}`` and ``{queue}``), and the message
    format it reads."""

    label: str
    family: str  # "celeriac", "celery", "aio-celery", "taskiq" or "floor"
    concurrency: int
    args: tuple[str, ...]
    brokers: tuple[str, ...] = ("amqp", "redis")
    env: tuple[tuple[str, str], ...] = ()
    speaks: str = "celery"  # or "taskiq"

    @property
    def runs_tasks(self) -> bool:
        """Floors only consume: they cannot run the scenarios that need a task's effect."""
        return self.family != "floor"

    def command(self, broker: str, queue: str) -> list[str]:
        """The command line that runs this system on ``queue`` of ``broker``."""
        args = [part.format(broker=broker, queue=queue) for part in self.args]
        return [sys.executable, *args]

    def environment(self, broker: str, queue: str) -> dict[str, str]:
        """The variables this system's command is started with, beside the harness's."""
        return {name: value.format(broker=broker, queue=queue) for name, value in self.env}


def celeriac(concurrency: int, *, processes: int = 1, events: bool = False) -> System:
    """``celeriac worker -c N`` on the benchmark app (``events``: with ``-E``, task events
    sent, which SQS cannot carry; ``processes``: under the supervisor, not on SQS, where moto
    is the bottleneck)."""
    label = f"celeriac -c {concurrency}"
    extra: tuple[str, ...] = ()
    if processes > 1:
        label = f"celeriac --processes {processes} -c {concurrency}"
        extra = ("--processes", str(processes))
    if events:
        label = label.replace("celeriac ", "celeriac -E ", 1)
        extra = (*extra, "-E")
    return System(
        label, "celeriac", concurrency,
        ("-m", "runtime.cli", "worker", "-A", "benchmarks.celeriac_app:app", "--broker",
         "{broker}", "-Q", "{queue}", "-c", str(concurrency), "--loglevel", "warning",
         "--log-format", "json", *extra),
        brokers=("amqp", "redis") if events or processes > 1 else ("amqp", "redis", "sqs"),
    )  # fmt: skip


def celeriac_in_process(concurrency: int) -> System:
    """celeriac's worker embedded with a ``memory://`` broker it fills itself (no broker)."""
    return System(
        f"celeriac in-process -c {concurrency}", "celeriac", concurrency,
        ("-m", "benchmarks.embedded", "--queue", "{queue}", "-c", str(concurrency)),
        brokers=("memory",),
    )  # fmt: skip


def celery(pool: str, concurrency: int) -> System:
    """Celery 5.7's own worker with ``pool`` (prefork, threads), prefetch multiplier 1."""
    return System(
        f"celery {pool} -c {concurrency}", "celery", concurrency,
        ("-m", "celery", "-A", "benchmarks.celery_app", "worker", "-Q", "{queue}", "-P", pool,
         "-c", str(concurrency), "--prefetch-multiplier=1", "-l", "warning", *_CELERY_QUIET),
    )  # fmt: skip


def aio_celery(concurrency: int) -> System:
    """aio-celery (RabbitMQ only), prefetch equal to its concurrency."""
    return System(
        f"aio-celery -c {concurrency}", "aio-celery", concurrency,
        ("-m", "aio_celery", "worker", "-Q", "{queue}", "--concurrency", str(concurrency),
         "benchmarks.aio_celery_app:app"),
        brokers=("amqp",),
    )  # fmt: skip


def taskiq(concurrency: int) -> System:
    """taskiq's worker, one child process (``--workers 1``) running ``concurrency`` tasks at
    once, on RabbitMQ (QoS ``concurrency``, acknowledged when done) or Redis (a list, never
    acknowledged): :mod:`benchmarks.taskiq_app`."""
    return System(
        f"taskiq -c {concurrency}", "taskiq", concurrency,
        ("-m", "taskiq", "worker", "benchmarks.taskiq_app:broker", "--workers", "1",
         "--max-async-tasks", str(concurrency), "--log-level", "WARNING"),
        env=(("BENCH_TASKIQ_QUEUE", "{queue}"), ("BENCH_TASKIQ_QOS", str(concurrency))),
        speaks="taskiq",
    )  # fmt: skip


def floor(prefetch: int, *, processes: int = 1) -> System:
    """The floor: consume and ack only (aio-pika QoS N; redis-py N BRPOP loops; SQS receive
    and batch delete with N in flight); ``processes``: that many such consumers, each in a
    process of its own (beside a worker's ``--processes``; not on SQS)."""
    label = f"floor, prefetch {prefetch}"
    extra: tuple[str, ...] = ()
    if processes > 1:
        label = f"floor --processes {processes}, prefetch {prefetch}"
        extra = ("--processes", str(processes))
    return System(
        label, "floor", prefetch,
        ("-m", "benchmarks.floor", "--broker", "{broker}", "--queue", "{queue}",
         "--prefetch", str(prefetch), *extra),
        brokers=("amqp", "redis") if processes > 1 else ("amqp", "redis", "sqs"),
    )  # fmt: skip

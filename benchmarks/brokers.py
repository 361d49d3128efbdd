"""The brokers the suite runs on, the scenarios that make sense on each, and why rows are absent.

* ``amqp``, ``redis``: the local RabbitMQ and Redis (``CELERIAC_BENCH_AMQP_URL``,
  ``CELERIAC_BENCH_REDIS_URL``); every scenario and every row.
* ``sqs``: ``CELERIAC_BENCH_SQS_URL``, else a moto server the suite starts for the run and
  stops after (:mod:`benchmarks.sqs_server`); on by default only where one of them is possible.
* ``memory``: no server; celeriac's worker embedded with the ``memory://`` transport
  (:mod:`benchmarks.in_process`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence

from . import sqs_server

__all__ = ["KINDS", "NOTES", "REDIS_URL", "default_kinds", "runs_on", "urls"]

KINDS = ("amqp", "redis", "sqs", "memory")
REDIS_URL = os.environ.get("CELERIAC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_FIXED = {
    "amqp": os.environ.get("CELERIAC_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    "redis": REDIS_URL,
    "memory": "memory://bench",
}
#: Scenarios left out on a broker (the rest run everywhere).
_LEFT_OUT = {
    "sqs": ("io", "eta"),
    "memory": ("results", "latency", "mixed", "eta"),
}
#: Why a broker has fewer rows; printed under the tables and kept in the JSON.
NOTES = {
    "sqs": "sqs is moto's server on this machine: it spends time in proportion to the queue's "
    "length on every call, so the SQS rows are small and measure moto as much as the client "
    "(compare celeriac with the floor, not with the other brokers). No Celery rows: Celery's "
    "SQS consumer (kombu's) needs pycurl, which is not installed; aio-celery is AMQP only. "
    "No io: moto serves far fewer messages per second than the ideal rate. No eta: a "
    "deferred SQS message stays in its queue, hidden (ChangeMessageVisibility), with no "
    "Celery row to compare.",
    "memory": "memory is celeriac's worker embedded with "
    "runtime.transports.memory.MemoryTransport in its own process, the noop tasks pre-loaded "
    "and the io tasks sent at the offered rate: celeriac's per-task cost with no broker at "
    "all, a ceiling. Its noop RSS includes the pre-loaded messages; its io tasks all share "
    "one message object. No other system has this row.",
}


def runs_on(scenario: str, kind: str) -> bool:
    """Whether ``scenario`` is measured on broker ``kind``."""
    return scenario not in _LEFT_OUT.get(kind, ())


def default_kinds() -> list[str]:
    """Every broker, SQS only where it can be reached or started."""
    return [kind for kind in KINDS if kind != "sqs" or sqs_server.available()]


@contextlib.asynccontextmanager
async def urls(kinds: Sequence[str]) -> AsyncIterator[dict[str, str]]:
    """The URL of each broker in ``kinds``, a moto server running meanwhile if SQS needs one."""
    found = {kind: _FIXED[kind] for kind in kinds if kind != "sqs"}
    if "sqs" not in kinds:
        yield found
    elif given := os.environ.get(sqs_server.ENV_URL):
        yield {**found, "sqs": given}
    else:
        async with sqs_server.moto_server() as url:
            yield {**found, "sqs": url}

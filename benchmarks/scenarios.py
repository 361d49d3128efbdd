"""The six scenarios, each measuring one system on one broker and returning one row.

* ``noop``: N no-op messages pre-loaded, results ignored; drain rate, CPU per task, peak RSS.
* ``results``: N no-op tasks pre-loaded, results stored in Redis; from the first taken to the
  last result stored.
* ``io``: N tasks sent open-loop at ``io_rate`` (1,000/s, below every floor) to concurrency
  C in one process, each awaiting ``C / io_rate`` seconds, so that every slot holds a waiting
  task; efficiency is the ideal duration over the measured one (:func:`io_row`). Completion
  is counted in Redis by the tasks (:mod:`benchmarks.tally`).
* ``latency``: ``bench.stamp`` messages published open-loop at half the system's measured
  no-op rate (capped); publish-to-start from the stamps, publish-to-result from ``date_done``,
  both from the *intended* send time, so a system that falls behind shows it.
* ``mixed``: two workers of the system; long tasks first, then short ones: how long the short
  ones wait (prefetch-1 fairness: a busy worker must not hold a message an idle one could run).
* ``eta``: N tasks due in an hour pre-loaded at ``-c 2``: how long until every one is taken in
  (Celery holds them in memory, celeriac defers them to the broker), and how soon a plain task
  sent then starts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import redis.asyncio

from runtime.load import paced, percentiles

from . import dialects
from .dialects import Call, Dialect, Publisher
from .queues import POLL, Watch, delete
from .runs import Running, drain, first_taken, running, until
from .systems import System

__all__ = ["SCENARIOS", "Context", "Row", "Scale", "Scenario", "io_row", "noop_row", "queue_name"]

Row = dict[str, Any]
Scenario = Callable[["Context", str, System], Awaitable[Row]]
_PERCENTILES = (50, 90, 99, 100)


@dataclass(frozen=True, slots=True)
class Scale:
    """How much work each scenario does."""

    noop_tasks: int = 10_000
    results_tasks: int = 10_000
    # Every io row's ideal rate: concurrency / task seconds. Below every floor, so a row that
    # misses it is held back by the worker, not by the client or the broker.
    io_rate: float = 1_000.0
    io_rounds: int = 2  # each io run has max(io_min, io_rounds x concurrency) tasks
    io_min: int = 2_000
    latency_seconds: float = 3.0
    latency_share: float = 0.5  # of the system's measured no-op rate
    latency_rate_cap: float = 1_000.0
    mixed_long: int = 3
    mixed_long_seconds: float = 2.0
    mixed_short: int = 30
    eta_tasks: int = 1_000
    eta_seconds: float = 30.0  # a row that has not taken every ETA task in by then stops there
    # moto spends time in proportion to the queue's length on every call: SQS runs stay small.
    sqs_noop_tasks: int = 500
    sqs_results_tasks: int = 500
    sqs_latency_rate_cap: float = 50.0

    def noop_tasks_on(self, kind: str) -> int:
        """No-op messages to drain on broker ``kind``."""
        return self.sqs_noop_tasks if kind == "sqs" else self.noop_tasks

    def results_tasks_on(self, kind: str) -> int:
        """Round trips to make on broker ``kind``."""
        return self.sqs_results_tasks if kind == "sqs" else self.results_tasks

    def io_seconds(self, concurrency: int) -> float:
        """How long each io task awaits at ``concurrency``: the ideal rate is ``io_rate``."""
        return concurrency / self.io_rate

    def latency_rate_cap_on(self, kind: str) -> float:
        """The highest rate the latency scenario offers on broker ``kind``."""
        cap = self.latency_rate_cap
        return min(cap, self.sqs_latency_rate_cap) if kind == "sqs" else cap


#: A scale small enough for a test to prove the harness works.
TINY = Scale(
    noop_tasks=200, results_tasks=30, io_rounds=2, io_min=100, latency_seconds=1.0,
    latency_rate_cap=40.0, mixed_long=3, mixed_long_seconds=1.0, mixed_short=6, eta_tasks=50,
    sqs_noop_tasks=30, sqs_results_tasks=10, sqs_latency_rate_cap=20.0,
)  # fmt: skip


@dataclass
class Context:
    """What every scenario needs: the brokers by kind, the Redis for results and stamps, the
    scale, and the no-op rates measured so far (the latency scenario's offered rate)."""

    brokers: dict[str, str]
    redis: str
    scale: Scale = field(default_factory=Scale)
    noop_rates: dict[tuple[str, str], float] = field(default_factory=dict)


def queue_name() -> str:
    """A fresh queue name: every row runs on its own queue."""
    return f"bench-{uuid.uuid4().hex[:10]}"


def _spread(prefix: str, values: list[float]) -> Row:
    """``{prefix}_p50`` ... ``{prefix}_max`` in milliseconds."""
    found = percentiles(values, _PERCENTILES) if values else {}
    names: dict[float, str] = {50: "p50", 90: "p90", 99: "p99", 100: "max"}
    return {f"{prefix}_{names[p]}_ms": round(found[p] * 1000, 2) for p in found}


async def noop(ctx: Context, kind: str, system: System) -> Row:
    """Drain N pre-loaded no-op messages."""
    broker, queue, total = ctx.brokers[kind], queue_name(), ctx.scale.noop_tasks_on(kind)
    await dialects.of(system).preload(broker, queue, (Call("noop") for _ in range(total)))
    try:
        async with Watch(broker) as watch, running(system, broker, queue) as run:
            seconds, cpu = await drain(watch, queue, total, run)
            peak = run.usage().peak_rss_mib
    finally:
        await delete(broker, [queue])
    row = noop_row(total, seconds, cpu, peak)
    ctx.noop_rates[(kind, system.label)] = row["rate"]
    return row


def noop_row(total: int, seconds: float, cpu: float, peak_mib: float) -> Row:
    """A noop row: ``total`` tasks drained in ``seconds`` using ``cpu`` CPU seconds."""
    return {"tasks": total, "rate": round(total / seconds, 1),
            "cpu_ms_per_task": round(1000 * cpu / total, 3),
            "peak_rss_mib": round(peak_mib, 1)}  # fmt: skip


async def results(ctx: Context, kind: str, system: System) -> Row:
    """N pre-loaded no-op tasks whose results are stored: from the first taken to the last
    result in Redis.

    Pre-loaded rather than sent by a Celery client as it waits: a client's ``send_task`` passes
    about 1,500 tasks/s here, so a client-driven run measures the client, not the worker.
    Results are polled (``MGET`` of the pending keys): Celery's ``get()`` waits for a PUBLISH,
    which aio-celery never sends; polling treats every system alike.
    """
    broker, queue, total = ctx.brokers[kind], queue_name(), ctx.scale.results_tasks_on(kind)
    dialect, calls = dialects.of(system), [Call("noop", result=True) for _ in range(total)]
    await dialect.preload(broker, queue, calls)
    pending = [dialect.result_key(call.id) for call in calls]
    try:
        async with (
            Watch(broker) as watch,
            running(system, broker, queue, {"BENCH_RESULT_BACKEND": ctx.redis}) as run,
            redis.asyncio.Redis.from_url(ctx.redis) as client,
        ):
            await first_taken(watch, queue, total, run, timeout=300)
            began, cpu_before = time.monotonic(), run.usage().cpu_seconds
            while pending:
                run.check()
                head, rest = pending[:1000], pending[1000:]
                found = await client.mget(head)
                head = [key for key, raw in zip(head, found, strict=True) if raw is None]
                if head:  # the oldest are not all there yet: give the worker a moment
                    await asyncio.sleep(0.005)
                pending = head + rest
            seconds, cpu = time.monotonic() - began, run.usage().cpu_seconds - cpu_before
            peak = run.usage().peak_rss_mib
    finally:
        await delete(broker, [queue])
    return {"tasks": total, "rate": round(total / seconds, 1),
            "cpu_ms_per_task": round(1000 * cpu / total, 3),
            "peak_rss_mib": round(peak, 1)}  # fmt: skip


async def io(ctx: Context, kind: str, system: System) -> Row:
    """``bench.sleep`` tasks sent open-loop at ``io_rate``, each awaiting ``concurrency /
    io_rate`` seconds: once the first have run their time, every slot holds a waiting task,
    and a worker that is late in refilling one falls behind for good. Efficiency is the
    ideal duration over the one measured; the RSS at the peak over when it was idle."""
    scale = ctx.scale
    broker, queue = ctx.brokers[kind], queue_name()
    total = max(scale.io_min, scale.io_rounds * system.concurrency)
    seconds_each = scale.io_seconds(system.concurrency)
    counter = f"{queue}:done"
    env = {"BENCH_REDIS_URL": ctx.redis}
    try:
        async with (
            redis.asyncio.Redis.from_url(ctx.redis) as client,
            running(system, broker, queue, env) as run,
            dialects.of(system).publisher(broker, queue) as publisher,
        ):

            async def counted(expected: int, sending: asyncio.Task[Any]) -> bool:
                if sending.done():
                    sending.result()  # a send failed: say so rather than time out
                return int(await client.get(counter) or 0) >= expected

            await _warm_up(publisher, client, f"{queue}:stamps", run)
            idle = run.usage().peak_rss_mib
            began = time.monotonic()
            sending = asyncio.create_task(
                _open_loop(publisher, scale.io_rate, total, name="bench.sleep",
                           arguments=lambda _due: (seconds_each, counter))
            )  # fmt: skip
            try:
                # Ten times the ideal duration, and some: a task that fails never counts.
                deadline = 30 + 10 * (total / scale.io_rate + seconds_each)
                await until(partial(counted, total, sending), run, deadline, "every task done")
                seconds = time.monotonic() - began
            finally:
                await asyncio.gather(sending, return_exceptions=True)
            peak = run.usage().peak_rss_mib
            await client.delete(counter)
    finally:
        await delete(broker, [queue])
    return io_row(system.concurrency, total, seconds, scale.io_rate, (idle, peak))


def io_row(
    concurrency: int, total: int, seconds: float, rate: float, rss_mib: tuple[float, float]
) -> Row:
    """An io row: ``total`` tasks sent at ``rate`` from the start of ``seconds`` until the last
    was done, each awaiting ``concurrency / rate``; ``rss_mib`` is the RSS before the first
    was sent and its peak, whose difference over ``concurrency`` is what one waiting task
    holds (at the peak every slot holds one).

    The ideal: the last task is sent at ``(total - 1) / rate`` and done its own time later.
    """
    task_seconds = concurrency / rate
    ideal = (total - 1) / rate + task_seconds
    idle, peak = rss_mib
    per_task = max(0.0, peak - idle) * 1024 / concurrency
    return {"tasks": total, "task_seconds": round(task_seconds, 3),
            "offered_rate": round(rate, 1), "seconds": round(seconds, 3),
            "ideal_seconds": round(ideal, 3), "efficiency": round(ideal / seconds, 3),
            "peak_rss_mib": round(peak, 1), "kib_per_waiting_task": round(per_task, 2)}  # fmt: skip


async def latency(ctx: Context, kind: str, system: System) -> Row:
    """Open-loop stamps at a share of the measured no-op rate."""
    scale = ctx.scale
    broker, queue = ctx.brokers[kind], queue_name()
    cap = scale.latency_rate_cap_on(kind)
    measured = ctx.noop_rates.get((kind, system.label), cap / scale.latency_share)
    rate = min(scale.latency_share * measured, cap)
    key = f"{queue}:stamps"
    env = {"BENCH_REDIS_URL": ctx.redis, "BENCH_RESULT_BACKEND": ctx.redis}
    dialect = dialects.of(system)
    try:
        async with (
            redis.asyncio.Redis.from_url(ctx.redis) as client,
            running(system, broker, queue, env) as run,
            dialect.publisher(broker, queue) as publisher,
        ):
            await _warm_up(publisher, client, key, run)
            total = max(1, round(rate * scale.latency_seconds))
            intended, late = await _open_loop(
                publisher, rate, total, name="bench.stamp", arguments=lambda due: (due, key),
                result=True,
            )  # fmt: skip

            async def stamped() -> bool:
                return int(await client.llen(key)) >= len(intended)

            await until(stamped, run, 60 + scale.latency_seconds, "every stamp")
            starts = [_stamp_latency(raw) for raw in await client.lrange(key, 0, -1)]
            done = await _result_latencies(client, dialect, intended)
            await client.delete(key)
    finally:
        await delete(broker, [queue])
    return {"offered_rate": round(rate, 1), "sent": len(intended),
            **_spread("start", starts), **_spread("result", done),
            **_spread("send_late", late)}  # fmt: skip


async def _warm_up(
    publisher: Publisher, client: redis.asyncio.Redis, key: str, run: Running
) -> None:
    """One stamp through the worker (then forgotten): it is up and consuming."""
    await _one_stamp(publisher, client, key, run, timeout=120)


async def _one_stamp(
    publisher: Publisher, client: redis.asyncio.Redis, key: str, run: Running, *, timeout: float
) -> float:
    """Send one ``bench.stamp`` and wait for it to run: its publish-to-start in seconds."""
    await publisher.send(Call("bench.stamp", (time.time(), key)))

    async def arrived() -> bool:
        return int(await client.llen(key)) >= 1

    await until(arrived, run, timeout, "the stamp")
    (started,) = [_stamp_latency(raw) for raw in await client.lrange(key, 0, -1)]
    await client.delete(key)
    return started


async def _open_loop(
    publisher: Publisher,
    rate: float,
    total: int,
    *,
    name: str,
    arguments: Callable[[float], tuple[Any, ...]],
    result: bool = False,
) -> tuple[dict[str, float], list[float]]:
    """Send ``total`` tasks ``name`` at ``rate``, each at its due time whatever the others do,
    with the ``arguments`` for its due (wall-clock) time (their results kept if ``result``).
    Returns that time by task id, and
    how late the harness was in starting each send (seconds): lateness that is the client's,
    not the worker's, though the latencies count it."""
    intended: dict[str, float] = {}
    late: list[float] = []
    sends: set[asyncio.Task[Any]] = set()
    start_wall = time.time()
    async for due in paced(rate, total):
        call = Call(name, arguments(start_wall + due), result=result)
        intended[call.id] = start_wall + due
        send = publisher.send(call)
        late.append(time.time() - intended[call.id])
        sends.add(asyncio.ensure_future(send))
    await asyncio.gather(*sends)
    return intended, late


def _stamp_latency(raw: bytes | str) -> float:
    text = raw.decode() if isinstance(raw, bytes) else raw
    sent, started = (float(part) for part in text.split(","))
    return started - sent


async def _result_latencies(
    client: redis.asyncio.Redis, dialect: Dialect, intended: dict[str, float]
) -> list[float]:
    """Publish-to-result of every stored result that says when it was stored."""
    ids = list(intended)
    found: list[float] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        stored = await client.mget([dialect.result_key(i) for i in chunk])
        for task_id, raw in zip(chunk, stored, strict=True):
            if raw is None:
                continue
            at = dialect.stored_at(raw if isinstance(raw, bytes) else raw.encode())
            if at is not None:
                found.append(at - intended[task_id])
    return found


async def mixed(ctx: Context, kind: str, system: System) -> Row:
    """Two workers; long tasks, then short ones: the short ones' wait."""
    scale = ctx.scale
    broker, queue = ctx.brokers[kind], queue_name()
    key = f"{queue}:stamps"
    env = {"BENCH_REDIS_URL": ctx.redis}
    try:
        async with (
            redis.asyncio.Redis.from_url(ctx.redis) as client,
            running(system, broker, queue, env) as first,
            running(system, broker, queue, env) as second,
            dialects.of(system).publisher(broker, queue) as publisher,
        ):
            await _warm_up(publisher, client, key, first)
            await asyncio.sleep(3)  # both started (Celery's prefork pool takes a while)
            first.check()
            second.check()
            for _ in range(scale.mixed_long):
                await publisher.send(Call("bench.sleep", (scale.mixed_long_seconds, None)))
            await asyncio.sleep(0.3)
            for _ in range(scale.mixed_short):
                await publisher.send(Call("bench.stamp", (time.time(), key)))
                await asyncio.sleep(0.02)

            async def stamped() -> bool:
                return int(await client.llen(key)) >= scale.mixed_short

            await until(stamped, first, 60 + scale.mixed_long_seconds * 3, "every short task")
            waits = [_stamp_latency(raw) for raw in await client.lrange(key, 0, -1)]
            await client.delete(key)
    finally:
        await delete(broker, [queue])
    return {"long": scale.mixed_long, "long_seconds": scale.mixed_long_seconds,
            "short": scale.mixed_short, **_spread("short_wait", waits)}  # fmt: skip


async def eta(ctx: Context, kind: str, system: System) -> Row:
    """N pre-loaded tasks due in an hour: from the first taken until the queue is empty (or
    ``eta_seconds`` have passed); then, if it emptied, one plain task's publish-to-start,
    which before would have waited behind them.

    Celery holds what it takes in (raising its prefetch for each); celeriac defers each to the
    broker's delay without keeping a slot, at most ``max_held`` unacknowledged meanwhile, most
    confirmed and acked within a few milliseconds (traced on RabbitMQ: p50 1.6 ms, p90 32 ms):
    the queue empty is where both have, or nearly have, taken them in.
    """
    scale = ctx.scale
    broker, queue, total = ctx.brokers[kind], queue_name(), scale.eta_tasks
    key = f"{queue}:stamps"
    due = datetime.now(UTC) + timedelta(hours=1)
    dialect = dialects.of(system)
    await dialect.preload(broker, queue, (Call("noop", eta=due) for _ in range(total)))
    try:
        async with (
            Watch(broker) as watch,
            redis.asyncio.Redis.from_url(ctx.redis) as client,
            running(system, broker, queue, {"BENCH_REDIS_URL": ctx.redis}) as run,
        ):
            await first_taken(watch, queue, total, run, timeout=120)
            began = time.monotonic()
            while (
                left := await watch.depth(queue)
            ) and time.monotonic() - began < scale.eta_seconds:
                run.check()
                await asyncio.sleep(POLL)
            seconds, plain = time.monotonic() - began, None
            if not left:
                async with dialect.publisher(broker, queue) as publisher:
                    plain = await _one_stamp(publisher, client, key, run, timeout=30)
    finally:
        await delete(broker, [queue])
    return {"tasks": total, "taken_in": total - left, "seconds": round(seconds, 3),
            "rate": round((total - left) / seconds, 1),
            "plain_start_ms": None if plain is None else round(plain * 1000, 1)}  # fmt: skip


SCENARIOS: dict[str, Scenario] = {
    "noop": noop, "results": results, "io": io, "latency": latency, "mixed": mixed, "eta": eta,
}  # fmt: skip

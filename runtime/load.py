"""``celeriac load``: an open-loop load generator for any Celery deployment.

Message *i* of a plan is due at ``t0 + i / rate`` and its publish starts at that time in a task
of its own, whatever happened to the publishes before it (open loop): a slow broker or worker
never slows the schedule down, so the latency measured from each message's *intended* send time
includes every delay the system under test caused (no coordinated omission). A publish that has
to wait for one of ``max_in_flight`` slots is counted as *behind*, and the wait shows in the
schedule lag.

Latency is the result record's ``date_done`` (written by the worker, wall clock) minus the
message's intended send time (this machine's wall clock), so it includes any clock skew between
the two machines. Results are read from a Redis result backend with batched ``MGET`` of
Celery's keys, every :data:`POLL_INTERVAL` seconds, until every message is done or the
result timeout passes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio

from protocol import READY_STATES, MalformedMessage, ResultKeys, State, decode_result

from .app import App
from .errors import translate_redis_errors
from .transports.urls import masked_url

__all__ = [
    "POLL_INTERVAL",
    "LoadPlan",
    "LoadReport",
    "paced",
    "parse_duration",
    "parse_rate",
    "percentiles",
    "redact",
    "render",
    "run_load",
]

#: Seconds between two reads of the results still outstanding.
POLL_INTERVAL = 0.1
#: Result keys per ``MGET``: big enough to be few round trips, small enough not to stall Redis.
_MGET_BATCH = 1000
#: The percentiles a report gives, and their labels.
_REPORTED = ((50.0, "p50"), (90.0, "p90"), (99.0, "p99"), (100.0, "max"))

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_RATE = re.compile(rf"{_NUMBER}\s*(?:/\s*(s|m|h))?")
_DURATION = re.compile(rf"{_NUMBER}\s*(ms|s|m|h)?")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """Messages per second from ``500/s``, ``30000/m``, ``10/h`` or a bare number (per second).

    Raises ``ValueError`` naming ``text`` if it is none of those or not above zero.
    """
    match = _RATE.fullmatch(text.strip())
    if match is None or not float(match[1]) > 0:
        raise ValueError(f"rate must be a positive N/s, N/m, N/h or N (per second), not {text!r}")
    return float(match[1]) / _SECONDS[match[2] or "s"]


def parse_duration(text: str) -> float:
    """Seconds from ``60s``, ``2m``, ``500ms``, ``1h`` or a bare number (seconds).

    Raises ``ValueError`` naming ``text`` if it is none of those or not above zero.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None or not float(match[1]) > 0:
        raise ValueError(f"duration must be a positive N, Nms, Ns, Nm or Nh, not {text!r}")
    return float(match[1]) * _SECONDS[match[2] or "s"]


def percentiles(values: Iterable[float], ps: Sequence[float]) -> dict[float, float]:
    """The nearest-rank percentiles ``ps`` (each in 0..100) of ``values``.

    The p-th percentile of n sorted values is the one at rank ``ceil(p / 100 * n)`` (counting
    from 1; rank 1 for p = 0): always one of the values, never an interpolation; p = 100 is the
    maximum. Raises ``ValueError`` for no values or a p outside 0..100.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values to take percentiles of")
    found = {}
    for p in ps:
        if not 0 <= p <= 100:
            raise ValueError(f"a percentile is between 0 and 100, not {p!r}")
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        found[p] = ordered[rank - 1]
    return found


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    found = percentiles(values, [p for p, _ in _REPORTED])
    return {label: found[p] for p, label in _REPORTED}


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPlan:
    """What to send, where, how fast and for how long; validated on construction.

    ``rate`` is messages per second, ``duration`` and ``result_timeout`` seconds;
    ``result_backend`` is a Redis URL, or ``None`` to measure publishing only. At most
    ``max_in_flight`` publishes run at once.
    """

    broker: str
    task: str
    rate: float
    duration: float
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "celery"
    result_backend: str | None = None
    result_timeout: float = 30.0
    max_in_flight: int = 1000

    def __post_init__(self) -> None:
        for name in ("rate", "duration", "result_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {self.max_in_flight!r}")
        if self.planned < 1:
            raise ValueError(
                f"{self.rate:g}/s for {self.duration:g}s is less than one message: "
                "raise the rate or the duration"
            )
        scheme = urlsplit(self.result_backend or "redis:").scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"result backend must be redis://, rediss:// or unix://, not {scheme or '?'}://"
            )

    @property
    def planned(self) -> int:
        """How many messages the plan sends: ``rate * duration``, rounded."""
        return round(self.rate * self.duration)


@dataclass(slots=True)
class _Send:
    """One message: its id and, in seconds from the schedule's start, when it was due, when
    its publish started and when it finished."""

    task_id: str
    due: float
    started: float | None = None
    finished: float | None = None
    error: str | None = None


@dataclass(slots=True)
class _Schedule:
    """The publishing phase: its clocks at the start and every message sent."""

    wall0: float
    t0: float
    sends: list[_Send] = field(default_factory=list)
    behind: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A message's final state and, once it is done, its ``date_done``."""

    state: str
    date_done: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadReport:
    """What a load run achieved. Times are seconds; rates are per second.

    ``schedule_lag`` (publish start - intended send time) and ``latency`` (``date_done`` -
    intended send time) map ``p50``, ``p90``, ``p99`` and ``max`` to seconds (nearest rank).
    The result fields are ``None`` when results were not read, and ``results_note`` says why.
    ``completed`` counts SUCCESS, ``failed`` FAILURE, ``other`` any other state (REVOKED, or
    STARTED/RETRY when the timeout passed), ``missing`` messages with no record at all;
    ``states`` has every state seen. ``completion_rate`` is the finished (ready) results per
    second from the first intended send to the last ``date_done``.
    """

    task: str
    queue: str
    broker: str
    target_rate: float
    duration: float
    planned: int
    sent: int
    publish_errors: int
    first_error: str | None
    behind: int
    publish_seconds: float
    publish_rate: float
    schedule_lag: dict[str, float] | None
    results_note: str | None = None
    completed: int | None = None
    failed: int | None = None
    other: int | None = None
    missing: int | None = None
    states: dict[str, int] | None = None
    completion_rate: float | None = None
    latency: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        return dataclasses.asdict(self)


async def run_load(plan: LoadPlan) -> LoadReport:
    """Publish ``plan``'s messages on its open-loop schedule, then read their results.

    Raises :class:`~runtime.errors.BrokerConnectionError` (or ``BackendError``) if the broker
    (or result backend) cannot be reached at the start; failures of single publishes later are
    counted in the report instead.
    """
    app = App("celeriac-load", broker=plan.broker, default_queue=plan.queue)
    reader = None if plan.result_backend is None else _ResultReader(plan.result_backend)
    try:
        if reader is not None:
            await reader.ping()
        await _connect(app, plan.queue)
        schedule = await _publish(app, plan)
        outcomes = None
        if reader is not None:
            sent = [s.task_id for s in schedule.sends if s.error is None]
            outcomes = await reader.collect(sent, plan.result_timeout)
    finally:
        await app.aclose()
        if reader is not None:
            await reader.aclose()
    return _report(plan, schedule, outcomes)


async def _connect(app: App, queue: str) -> None:
    """Connect and declare before the clock starts, so that the first messages do not wait
    for it."""
    await app.connect([queue])


async def paced(rate: float, total: int, *, start: float | None = None) -> AsyncIterator[float]:
    """Yield the due time of each of ``total`` sends, ``n / rate`` seconds after ``start``
    (the event loop's clock; default now), once that time has come: an open-loop schedule.
    A consumer that is slow with one yield does not move the due times after it; those
    already past come at once."""
    clock = asyncio.get_running_loop().time
    t0 = clock() if start is None else start
    for n in range(total):
        due = n / rate
        if (delay := t0 + due - clock()) > 0:
            await asyncio.sleep(delay)
        yield due


async def _publish(app: App, plan: LoadPlan) -> _Schedule:
    slots = asyncio.Semaphore(plan.max_in_flight)
    # Wall clock first: a later reading would make intended times late, latencies too short.
    schedule = _Schedule(wall0=time.time(), t0=asyncio.get_running_loop().time())
    async with asyncio.TaskGroup() as tasks:
        async for due in paced(plan.rate, plan.planned, start=schedule.t0):
            send = _Send(str(uuid.uuid4()), due)
            tasks.create_task(
                _send_one(app, plan, schedule, send, slots), name=f"load-{len(schedule.sends)}"
            )
            schedule.sends.append(send)
    return schedule


async def _send_one(
    app: App, plan: LoadPlan, schedule: _Schedule, send: _Send, slots: asyncio.Semaphore
) -> None:
    clock = asyncio.get_running_loop().time
    if slots.locked():
        schedule.behind += 1
    async with slots:
        send.started = clock() - schedule.t0
        try:
            await app.send_task(
                plan.task,
                args=list(plan.args),
                kwargs=dict(plan.kwargs),
                queue=plan.queue,
                task_id=send.task_id,
            )
        except Exception as exc:  # counted and reported; the schedule goes on
            send.error = f"{type(exc).__name__}: {exc}"
        send.finished = clock() - schedule.t0


class _ResultReader:
    """Reads many results from a Redis result backend, Celery's keys, no prefix."""

    def __init__(self, url: str) -> None:
        self._client = redis.asyncio.Redis.from_url(url)
        self._keys = ResultKeys()

    async def ping(self) -> None:
        with translate_redis_errors("connect"):
            await self._client.ping()

    async def collect(self, task_ids: Sequence[str], timeout: float) -> dict[str, _Outcome]:
        """The last record seen of each of ``task_ids``, polling for those not yet ready
        until none is left or ``timeout`` seconds pass; no entry for an id never seen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        found: dict[str, _Outcome] = {}
        pending = list(task_ids)
        while pending:
            pending = await self._read(pending, found)
            if not pending or loop.time() >= deadline:
                break
            await asyncio.sleep(POLL_INTERVAL)
        return found

    async def _read(self, task_ids: list[str], found: dict[str, _Outcome]) -> list[str]:
        """Read ``task_ids`` into ``found``; return those not done yet."""
        pending = []
        for start in range(0, len(task_ids), _MGET_BATCH):
            batch = task_ids[start : start + _MGET_BATCH]
            with translate_redis_errors("read results"):
                values = await self._client.mget([self._keys.task(i) for i in batch])
            for task_id, data in zip(batch, values, strict=True):
                if data is not None:
                    found[task_id] = _outcome(data)
                if data is None or found[task_id].state not in _FINAL:
                    pending.append(task_id)
        return pending

    async def aclose(self) -> None:
        await self._client.aclose()


#: States after which a result is not read again: Celery's ready states, and a record that
#: cannot be decoded (reading it again would not help).
_FINAL = frozenset(s.value for s in READY_STATES) | {"MALFORMED"}


def _outcome(data: bytes | str) -> _Outcome:
    """A stored record's state, whichever of Celery's result serializers wrote it."""
    raw = data.encode() if isinstance(data, str) else data
    for serializer in ("json", "msgpack"):
        try:
            meta = decode_result(raw, serializer=serializer)
        except MalformedMessage:
            continue
        return _Outcome(meta.status.value, meta.date_done)
    return _Outcome("MALFORMED", None)


def _report(
    plan: LoadPlan, schedule: _Schedule, outcomes: dict[str, _Outcome] | None
) -> LoadReport:
    sent = [s for s in schedule.sends if s.error is None]
    errors = [s.error for s in schedule.sends if s.error is not None]
    last = max((s.finished or 0.0 for s in schedule.sends), default=0.0)
    publish_seconds = max(plan.duration, last)
    report = LoadReport(
        task=plan.task,
        queue=plan.queue,
        broker=redact(plan.broker),
        target_rate=plan.rate,
        duration=plan.duration,
        planned=plan.planned,
        sent=len(sent),
        publish_errors=len(errors),
        first_error=errors[0] if errors else None,
        behind=schedule.behind,
        publish_seconds=publish_seconds,
        publish_rate=len(sent) / publish_seconds,
        schedule_lag=_summary([s.started - s.due for s in sent if s.started is not None]),
        results_note="no result backend: latency not measured (pass --result-backend URL)",
    )
    if outcomes is None:
        return report
    return dataclasses.replace(report, results_note=None, **_results(schedule, sent, outcomes))


def _results(
    schedule: _Schedule, sent: list[_Send], outcomes: dict[str, _Outcome]
) -> dict[str, Any]:
    states = Counter(outcomes[s.task_id].state for s in sent if s.task_id in outcomes)
    done = [
        (s, outcome.date_done.timestamp())
        for s in sent
        if (outcome := outcomes.get(s.task_id)) is not None
        and outcome.state in _FINAL
        and outcome.date_done is not None
    ]
    latencies = [finished - (schedule.wall0 + s.due) for s, finished in done]
    span = max((finished for _, finished in done), default=schedule.wall0) - schedule.wall0
    completed, failed = states[State.SUCCESS.value], states[State.FAILURE.value]
    return {
        "completed": completed,
        "failed": failed,
        "other": sum(states.values()) - completed - failed,
        "missing": len(sent) - sum(states.values()),
        "states": dict(states),
        "completion_rate": len(done) / span if span > 0 else None,
        "latency": _summary(latencies),
    }


def redact(url: str) -> str:
    """``url`` with its password, if any, masked: :func:`runtime.transports.urls.masked_url`,
    the one masking every log line, reply and report uses."""
    return masked_url(url)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if abs(seconds) >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def render(report: LoadReport) -> str:
    """The report as an aligned text table for a terminal."""
    rows = [
        ("task", f"{report.task} on queue {report.queue} at {report.broker}"),
        ("target", f"{report.target_rate:g}/s for {report.duration:g} s ({report.planned} msgs)"),
        ("sent", f"{report.sent} ({report.publish_errors} publish errors, {report.behind} behind)"),
        ("publish rate", f"{report.publish_rate:.1f}/s over {report.publish_seconds:.2f} s"),
    ]
    if report.first_error is not None:
        rows.append(("first error", report.first_error))
    if report.results_note is not None:
        rows.append(("results", report.results_note))
    else:
        rows.append(
            (
                "results",
                f"{report.completed} completed, {report.failed} failed, "
                f"{report.other} other, {report.missing} missing",
            )
        )
        rate = report.completion_rate
        rows.append(("completion rate", "-" if rate is None else f"{rate:.1f}/s"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join([*lines, "", *_percentile_table(report)])


def _percentile_table(report: LoadReport) -> list[str]:
    series = [("schedule lag", report.schedule_lag)]
    if report.results_note is None:
        series.append(("latency", report.latency))
    labels = [label for _, label in _REPORTED]
    width = max(len(name) for name, _ in series)
    header = f"{'':<{width}}" + "".join(f"{label:>11}" for label in labels)
    lines = [header]
    for name, values in series:
        cells = [_time(None if values is None else values[label]) for label in labels]
        lines.append(f"{name:<{width}}" + "".join(f"{cell:>11}" for cell in cells))
    return lines

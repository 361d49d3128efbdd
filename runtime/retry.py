"""Retrying a task as Celery 5.7 does: ``Task.retry``, ``autoretry_for`` with backoff, and the
message that runs the task again.

``Task.retry`` runs inside the task (in its thread, for a plain function), where nothing can be
awaited: it plans the retry's message on the run's request (:attr:`Request.outbox`) and raises
:class:`~runtime.exceptions.Retry`; the worker publishes what the run planned once it is over
(:class:`RetryPublisher`), then records RETRY. The message is the one Celery's worker publishes
for the same retry (``signature_from_request`` then ``apply_async``): same id, ``retries + 1``,
the ETA, the run's arguments unless new ones are given, its time limits, expiry, priority,
custom headers, links, chain, chord and stamps, this task as its parent, to the exchange and
routing key it came from, serialised with the task's serializer.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import sys
import traceback
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from protocol import State, TaskMessage, WireMessage, encode_task

from .arguments import retry_arguments
from .exceptions import MaxRetriesExceededError, Retry, TaskCancelled

if TYPE_CHECKING:
    from .execution import Outcome
    from .request import Request
    from .task import Task, TaskOptions
    from .transport import QueueSpec, Transport

__all__ = [
    "Republish",
    "RetryPublisher",
    "autoretry_countdown",
    "backoff_delay",
    "plan_retry",
    "resolve_retry",
]

# What retry(**options) may change in the message, as apply_async options.
_OPTIONS = frozenset(
    ("queue", "exchange", "routing_key", "priority", "time_limit", "soft_time_limit",
     "expires", "serializer")
)  # fmt: skip


def backoff_delay(
    factor: int,
    retries: int,
    maximum: int,
    *,
    jitter: bool,
    randrange: Callable[[int], int] = random.randrange,
) -> int:
    """Celery's exponential backoff: ``factor * 2**retries`` seconds, at most ``maximum``;
    with ``jitter`` a random whole number of seconds from 0 up to that ("full jitter")."""
    countdown: int = min(maximum, factor * 2**retries)
    if jitter and countdown > 0:
        countdown = randrange(countdown + 1)
    return max(0, countdown)


def autoretry_countdown(
    options: TaskOptions, retries: int, randrange: Callable[[int], int] = random.randrange
) -> int | None:
    """The countdown ``autoretry_for`` gives the retry after ``retries`` retries: the backoff
    with ``retry_backoff`` (``True`` is a factor of 1, a number is a factor, at least 1 and
    whole, as Celery reads it), else ``None`` (``retry_kwargs`` or ``default_retry_delay``)."""
    if not options.retry_backoff:
        return None
    return backoff_delay(
        int(max(1.0, float(options.retry_backoff))),
        retries,
        int(options.retry_backoff_max),
        jitter=options.retry_jitter,
        randrange=randrange,
    )


def _now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class Republish:
    """A retry's message, and where it goes: published by the worker once the run is over.

    ``declare`` names a queue to declare first (``retry(queue=...)``), as Celery creates a
    missing queue it is asked to send to.
    """

    message: TaskMessage
    serializer: str
    exchange: str
    routing_key: str
    declare: str | None = None

    def encode(self, now: datetime) -> WireMessage:
        """The wire message, as Celery's worker publishes a retry.

        Celery passes the run's ``origin`` to kombu as a publish option too, which kombu keeps
        as a message property (after ``reply_to``): the Redis envelope carries it, AMQP drops it.
        """
        wire = encode_task(self.message, serializer=self.serializer, now=now)
        properties: dict[str, Any] = {}
        for name, value in wire.properties.items():
            properties[name] = value
            if name == "reply_to":
                properties["origin"] = self.message.origin
        return dataclasses.replace(wire, properties=properties)


def plan_retry(
    task: Task[Any, Any],
    request: Request,
    *,
    args: tuple[Any, ...] | list[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    exc: BaseException | None = None,
    eta: datetime | None = None,
    countdown: float | None = None,
    max_retries: int | None = None,
    options: Mapping[str, Any] = MappingProxyType({}),
) -> Retry:
    """What ``Task.retry`` does in a worker: the :class:`Retry` to raise, its message planned
    on ``request.outbox``. Raises ``exc`` (or ``MaxRetriesExceededError``) with no retry left,
    ``TypeError`` for an unknown option or arguments that do not fit (with ``typing``)."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise TypeError(f"retry() got unknown option(s) {', '.join(unknown)}")
    retries = request.retries + 1
    limit = task.max_retries if max_retries is None else max_retries
    if not eta and countdown is None:
        countdown = task.default_retry_delay
    inherited = (request.args, request.kwargs)
    new_args, new_kwargs = retry_arguments(task.parameters, inherited, args, kwargs)
    if limit is not None and retries > limit:
        if exc is not None:
            handling = sys.exc_info()[1]
            if handling is None or handling is exc:
                raise exc
            raise exc from handling  # as Celery's raise_with_context
        raise MaxRetriesExceededError(
            f"Can't retry {task.name}[{request.id}] args:{new_args} kwargs:{new_kwargs}",
            task_args=new_args,
            task_kwargs=new_kwargs,
        )
    task.bind_arguments(new_args, new_kwargs)  # Celery checks the retry when it sends it
    now = _now()
    due = now + timedelta(seconds=countdown) if countdown else eta  # 0: no ETA, as Celery
    message = _retry_message(
        task, request, args=new_args, kwargs=new_kwargs, retries=retries, eta=due,
        options=options, now=now,
    )  # fmt: skip
    request.outbox.append(_route(task, request, message, options))
    return Retry(exc=exc, when=eta or countdown)


def _retry_message(
    task: Task[Any, Any],
    request: Request,
    *,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retries: int,
    eta: datetime | None,
    options: Mapping[str, Any],
    now: datetime,
) -> TaskMessage:
    message = request.message
    expires = options.get("expires", message.expires)
    if isinstance(expires, int | float):
        expires = now + timedelta(seconds=expires)
    priority = message.priority if message.priority is not None else task.options.priority
    return dataclasses.replace(
        message,
        args=args,
        kwargs=kwargs,
        retries=retries,
        eta=eta,
        expires=expires,
        time_limit=options.get("time_limit", message.time_limit),
        soft_time_limit=options.get("soft_time_limit", message.soft_time_limit),
        priority=options.get("priority", priority),
        ignore_result=task.options.ignore_result
        if message.ignore_result is None
        else message.ignore_result,
        root_id=message.root_id or message.id,
        parent_id=message.parent_id or message.id,  # sent from the run: its child
        origin=message.origin or f"gen{os.getpid()}@{socket.gethostname()}",
        reply_to=message.reply_to or task.app.oid,
        correlation_id=None,
        argsrepr=None,
        kwargsrepr=None,
        headers=MappingProxyType({k: v for k, v in message.headers.items() if k != "x-death"}),
        protocol=2,
    )


def _route(
    task: Task[Any, Any], request: Request, message: TaskMessage, options: Mapping[str, Any]
) -> Republish:
    """Where Celery sends a retry: ``queue=``, else back where the message came from."""
    serializer = options.get("serializer") or task.options.serializer or task.app.task_serializer
    queue = options.get("queue")
    if queue:
        return Republish(message, serializer, "", queue, declare=queue)
    info = request.delivery_info
    exchange = options.get("exchange", info.get("exchange") or "")
    routing_key = options.get("routing_key", info.get("routing_key"))
    if not routing_key:
        queue = task.options.queue or task.app.default_queue
        return Republish(message, serializer, "", queue, declare=queue)
    return Republish(message, serializer, exchange, routing_key)


def resolve_retry(task: Task[Any, Any], request: Request, outcome: Outcome) -> Outcome:
    """``outcome`` with retries applied: a ``Retry`` raised makes it RETRY, and so does an
    exception ``autoretry_for`` names while retries are left; when none is left the task's
    exception stays the FAILURE, as in Celery."""
    exc = outcome.exception
    if outcome.state is not State.FAILURE or exc is None:
        return outcome
    if isinstance(exc, Retry):
        return dataclasses.replace(outcome, state=State.RETRY)
    options = task.options
    if (
        not isinstance(exc, options.autoretry_for)
        or isinstance(exc, (*options.dont_autoretry_for, TaskCancelled))
        or outcome.timed_out
    ):
        return outcome
    retry_kwargs = dict(options.retry_kwargs)
    countdown = autoretry_countdown(options, request.retries)
    if countdown is not None:
        retry_kwargs["countdown"] = countdown
    try:
        retry = plan_retry(task, request, exc=exc, **retry_kwargs)
    except Exception as raised:
        return outcome if raised is exc else type(outcome).failed(raised, runtime=outcome.runtime)
    retry.__context__ = exc  # as raised from the handler of exc
    text = "".join(traceback.format_exception(retry))
    return dataclasses.replace(outcome, state=State.RETRY, exception=retry, traceback=text)


class RetryPublisher:
    """Publishes the retries runs planned, through the worker's own broker connection."""

    def __init__(self, transport: Transport, queue_spec: Callable[[str], QueueSpec]) -> None:
        self._transport = transport
        self._queue_spec = queue_spec
        self._declared: set[str] = set()

    async def send(self, request: Request, outcome: Outcome, log: Any) -> Outcome:
        """Publish what the run planned (``request.outbox``) and log it; the outcome, which is
        FAILURE with the error if a retry could not be sent (the task will not run again)."""
        if not request.outbox:
            return outcome
        try:
            await self.publish(request.outbox)
        except Exception as exc:  # the broker, or an argument the serializer refuses
            log.error("task_retry_not_sent", error=repr(exc))
            if outcome.state is State.RETRY:
                return type(outcome).failed(exc, runtime=outcome.runtime)
            return outcome
        retry = request.outbox[-1].message
        eta = retry.eta.isoformat() if retry.eta else None
        log.info("task_retried", retries=retry.retries, eta=eta, reason=str(outcome.exception))
        return outcome

    async def publish(self, outbox: list[Republish]) -> None:
        """Publish every message in ``outbox``, declaring a queue named by ``queue=`` once."""
        now = _now()
        for retry in outbox:
            if retry.declare is not None and retry.declare not in self._declared:
                await self._transport.declare([self._queue_spec(retry.declare)])
                self._declared.add(retry.declare)
            wire = retry.encode(now)
            await self._transport.publish(
                wire, routing_key=retry.routing_key, exchange=retry.exchange
            )

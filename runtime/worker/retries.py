"""What the worker does about retries once a run is over, as Celery 5.7's worker does.

``Task.retry`` (:func:`runtime.task.plan_retry`) runs inside the task, where nothing can be
awaited: it plans the retry's message on the run's request (:attr:`Request.outbox`) and raises
:class:`~runtime.exceptions.Retry`. Here, after the run: :func:`resolve_retry` turns a raised
``Retry``, or an exception ``autoretry_for`` names (with Celery's backoff), into RETRY, and
:class:`RetryPublisher` publishes what the run planned through the worker's own broker
connection, before RETRY is recorded.
"""

from __future__ import annotations

import dataclasses
import random
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from protocol import State
from runtime.exceptions import Retry, TaskCancelled
from runtime.monitor import TaskMonitor, publish_task
from runtime.task import plan_retry

from .outcome import Outcome

if TYPE_CHECKING:
    from runtime.request import Republish, Request
    from runtime.task import Task, TaskOptions
    from runtime.transports.base import QueueSpec, Transport

__all__ = ["RetryPublisher", "autoretry_countdown", "backoff_delay", "resolve_retry"]


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
        return outcome if raised is exc else Outcome.failed(raised, runtime=outcome.runtime)
    retry.__context__ = exc  # as raised from the handler of exc
    text = "".join(traceback.format_exception(retry))
    return dataclasses.replace(outcome, state=State.RETRY, exception=retry, traceback=text)


class RetryPublisher:
    """Publishes the retries runs planned, through the worker's own broker connection, each
    copied to ``monitor`` if given (:mod:`runtime.monitor`)."""

    def __init__(
        self,
        transport: Transport,
        queue_spec: Callable[[str], QueueSpec],
        monitor: TaskMonitor | None = None,
    ) -> None:
        self._transport = transport
        self._queue_spec = queue_spec
        self._monitor = monitor
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
                return Outcome.failed(exc, runtime=outcome.runtime)
            return outcome
        retry = request.outbox[-1].message
        eta = retry.eta.isoformat() if retry.eta else None
        log.info("task_retried", retries=retry.retries, eta=eta, reason=str(outcome.exception))
        return outcome

    async def publish(self, outbox: Sequence[Republish]) -> None:
        """Publish every message in ``outbox``, declaring a queue named by ``queue=`` once."""
        now = _now()
        for retry in outbox:
            if retry.declare is not None and retry.declare not in self._declared:
                await self._transport.declare([self._queue_spec(retry.declare)])
                self._declared.add(retry.declare)
            wire = retry.encode(now)
            await publish_task(
                self._transport, wire, routing_key=retry.routing_key, exchange=retry.exchange,
                monitor=self._monitor,
            )  # fmt: skip

"""The worker: consume queues, run each task in a slot, store its result, settle its message.

Flow control lives in the transport (it never holds more unsettled deliveries than there are
free slots); the worker takes a slot for each delivery and gives it back when the message is
settled and the result stored. Lifecycle: :meth:`Worker.stop` stops consuming and lets running
tasks finish within ``grace`` seconds (what they have not started goes back to the broker);
:meth:`Worker.terminate` ends at once, so ``acks_late`` messages are redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from protocol import (
    READY_STATES,
    EncodeError,
    ExceptionInfo,
    ExtendedInfo,
    MalformedMessage,
    ResultMeta,
    ResultRef,
    State,
    TaskMessage,
    decode_task,
)

from .app import App
from .backend import RedisResultBackend
from .brokers import transport_for_url
from .capacity import Slots
from .errors import BackendError
from .exceptions import NotRegistered
from .execution import Executor, Outcome
from .policy import TimeLimits
from .request import Request
from .task import Task
from .transport import Delivery, Transport
from .workflow import Workflow

__all__ = ["Worker"]


class _Handling:
    """One delivery being handled: the slot it holds (given back once) and whether it is
    settled, so that an unexpected error can still settle it."""

    def __init__(self, delivery: Delivery, slots: Slots) -> None:
        self.delivery = delivery
        self.settled = False
        self._slots = slots
        self._held = True

    def release(self) -> None:
        """Give the slot back, if not done already."""
        if self._held:
            self._held = False
            self._slots.give_back()


class Worker:
    """Runs the tasks of ``app`` from ``queues`` with ``concurrency`` slots."""

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str],
        concurrency: int,
        hostname: str,
        transport: Transport | None = None,
        backend: RedisResultBackend | None = None,
        grace: float = 30.0,
        logger: Any = None,
    ) -> None:
        self.app = app
        self.queues = list(queues)
        self.hostname = hostname
        self.slots = Slots(concurrency)
        self.transport = transport or transport_for_url(
            app.broker_url, app.broker_transport_options
        )
        self.backend = backend if backend is not None else app.backend
        self.grace = grace
        self.log = logger or structlog.get_logger("celeriac.worker")
        self.workflow = Workflow(app, self.backend, hostname=hostname, log=self.log)
        self._executor = Executor(threads=concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._consuming: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._waiting_eta: set[asyncio.Task[Any]] = set()
        self.ready = asyncio.Event()
        self.processed = 0

    async def run(self) -> None:
        """Connect, declare the queues, and work until :meth:`stop` or :meth:`terminate`."""
        await self.transport.connect()
        try:
            await self.transport.declare([self.app.queue_spec(q) for q in self.queues])
            self.log.info(
                "worker_ready",
                hostname=self.hostname,
                queues=self.queues,
                concurrency=self.slots.total,
                broker=_redact(self.app.broker_url),
                result_backend=_redact(self.app.result_backend_url) if self.backend else None,
            )
            if self.backend is None:
                self.log.warning("no_result_backend", detail="results are not stored")
            self.ready.set()
            if not self._stopped.is_set():  # a stop during start-up means: do not start
                self._consuming = asyncio.create_task(self._consume(), name="celeriac-consume")
                try:
                    await self._consuming
                except asyncio.CancelledError:
                    if not self._stopped.is_set():
                        raise
            await self._drain()
        finally:
            await self.transport.aclose()
            self._executor.shutdown()
            self.log.info("worker_stopped", processed=self.processed)

    @property
    def unfinished(self) -> int:
        """Handlers still alive after :meth:`run` returned (they ignored cancellation)."""
        return sum(not handler.done() for handler in self._running)

    def stop(self) -> None:
        """Stop consuming; running tasks get ``grace`` seconds to finish (warm shutdown)."""
        if not self._stopped.is_set():
            self._stopped.set()
            self.log.info("worker_stopping", running=len(self._running), grace=self.grace)
            if self._consuming is not None:
                self._consuming.cancel()
            # Tasks still waiting for their ETA have not started: their messages go back.
            for waiting in self._waiting_eta:
                waiting.cancel()

    def terminate(self) -> None:
        """End at once: running tasks are cancelled and unsettled messages redelivered."""
        self.grace = 0
        self.stop()
        for running in self._running:
            running.cancel()

    async def _consume(self) -> None:
        async for delivery in self.transport.consume(self.queues, self.slots):
            self.slots.take()
            handler = asyncio.create_task(self._handle(delivery))
            self._running.add(handler)
            handler.add_done_callback(self._running.discard)

    async def _drain(self) -> None:
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=self.grace)
            for running in late:
                running.cancel()
            if late:
                await asyncio.wait(late, timeout=1)

    async def _handle(self, delivery: Delivery) -> None:
        handling = _Handling(delivery, self.slots)
        try:
            await self._process(handling)
        except Exception as exc:  # a bug or a broker error here must not lose the message
            self.log.exception("delivery_failed", queue=delivery.queue, error=repr(exc))
            await self._settle_after_error(handling, exc)
        finally:
            handling.release()
            self.processed += 1

    async def _settle_after_error(self, handling: _Handling, exc: Exception) -> None:
        if handling.settled:
            return
        try:
            await self._dead_letter(handling, f"worker error: {exc!r}")
        except Exception:
            with contextlib.suppress(Exception):  # last resort: give it back to the broker
                await self.transport.reject(handling.delivery, requeue=True)

    async def _ack(self, handling: _Handling) -> None:
        handling.settled = True
        await self.transport.ack(handling.delivery)

    async def _reject(self, handling: _Handling, *, requeue: bool) -> None:
        handling.settled = True
        await self.transport.reject(handling.delivery, requeue=requeue)

    async def _dead_letter(self, handling: _Handling, reason: str) -> None:
        await self.transport.dead_letter(handling.delivery, reason)
        handling.settled = True

    async def _process(self, handling: _Handling) -> None:
        delivery = handling.delivery
        try:
            message = decode_task(delivery.message, accept=self.app.accept)
        except MalformedMessage as exc:
            self.log.error("message_malformed", queue=delivery.queue, reason=str(exc))
            await self._dead_letter(handling, f"malformed: {exc}")
            return
        log = self.log.bind(task_id=message.id, task=message.task, queue=delivery.queue)
        task = self.app.tasks.get(message.task)
        if task is None:
            log.error("task_unknown")
            await self._store(
                message,
                delivery,
                State.FAILURE,
                ExceptionInfo.from_exception(NotRegistered(message.task)),
            )
            await self._dead_letter(handling, f"unknown task {message.task!r}")
            return
        try:
            task.bind_arguments(message.args, dict(message.kwargs))
        except TypeError as exc:
            log.error("task_arguments_invalid", error=str(exc))
            await self._ack(handling)
            await self._record(task, message, delivery, Outcome.failed(exc))
            return
        if message.eta is not None:
            await self._wait_for_eta(message.eta)
        if message.expires is not None and message.expires <= datetime.now(UTC):
            log.info("task_expired", expires=message.expires.isoformat())
            expired = ExceptionInfo("TaskRevokedError", ("expired",), "celery.exceptions")
            await self._store(message, delivery, State.REVOKED, expired)
            await self.workflow.ended(message, State.REVOKED, expired)
            await self._ack(handling)
            return
        await self._run(task, message, handling, log)

    async def _wait_for_eta(self, eta: datetime) -> None:
        """Hold the delivery, unacknowledged, until it is due (a delay store comes later).

        :meth:`stop` cancels the wait, so the message goes back to the broker unstarted.
        """
        delay = (eta - datetime.now(UTC)).total_seconds()
        if delay <= 0:
            return
        current = asyncio.current_task()
        assert current is not None
        self._waiting_eta.add(current)
        try:
            await asyncio.sleep(delay)
        finally:
            self._waiting_eta.discard(current)

    async def _run(
        self, task: Task[Any, Any], message: TaskMessage, handling: _Handling, log: Any
    ) -> None:
        delivery = handling.delivery
        acks_late = task.options.acks_late
        if not acks_late:
            await self._ack(handling)
        ignore = _ignores_result(task, message)
        if task.options.track_started and not ignore and self.backend is not None:
            await self._store(
                message, delivery, State.STARTED, {"pid": os.getpid(), "hostname": self.hostname}
            )
        # The message's limits, else the task's; 0 means none, as Celery reads it.
        requested = TimeLimits.lenient(
            soft=message.soft_time_limit or task.options.soft_time_limit,
            hard=message.time_limit or task.options.time_limit,
        )
        limits = self.app.queue_policy.effective(delivery.queue, requested)
        request = Request(
            message,
            hostname=self.hostname,
            delivery_info={
                "exchange": delivery.exchange,
                "routing_key": delivery.routing_key,
                "priority": message.priority,
                "redelivered": delivery.redelivered,
            },
        )
        log.info("task_started", soft_limit=limits.soft, hard_limit=limits.hard)
        outcome = await self._executor.run(task, request, limits)
        if outcome.state is State.SUCCESS:
            log.info("task_succeeded", runtime=round(outcome.runtime, 6))
        else:
            log.error(
                "task_failed", exception=repr(outcome.exception), runtime=round(outcome.runtime, 6)
            )
        await self._record(task, message, delivery, outcome)
        if acks_late:
            # The task is over: free the slot first, so settling needs no prefetch change.
            handling.release()
            await self._settle_late(task, handling, outcome)

    async def _settle_late(
        self, task: Task[Any, Any], handling: _Handling, outcome: Outcome
    ) -> None:
        """Ack or reject an ``acks_late`` message as Celery 5.7 does after the task ended."""
        options = task.options
        if outcome.state is State.SUCCESS:
            await self._ack(handling)
        elif outcome.timed_out and not options.acks_on_timeout:
            await self._reject(handling, requeue=True)
        elif not outcome.timed_out and not options.acks_on_failure:
            await self._reject(handling, requeue=False)
        else:
            await self._ack(handling)

    async def _record(
        self, task: Task[Any, Any], message: TaskMessage, delivery: Delivery, outcome: Outcome
    ) -> None:
        """Store the outcome; around it, what the canvas needs (:mod:`runtime.workflow`)."""
        children: tuple[ResultRef, ...] = ()
        if outcome.state is State.SUCCESS:
            try:  # callbacks and the chain's next step go first: they are the children
                children = await self.workflow.succeeded(message, outcome.value)
            except Exception as exc:  # as in Celery, what cannot be sent fails the task
                outcome = Outcome.failed(exc)
        if outcome.state is State.SUCCESS:
            try:
                if not _ignores_result(task, message):
                    value = outcome.value
                    await self._store(message, delivery, State.SUCCESS, value, children=children)
            except EncodeError as exc:  # the value cannot be serialised: say so, as Celery does
                outcome = Outcome(State.FAILURE, exception=exc)
            else:
                await self.workflow.ended(message, State.SUCCESS, outcome.value)
                return
        assert outcome.exception is not None
        error, traceback = outcome.exception, outcome.traceback
        info = ExceptionInfo.from_exception(error, serializer=self.app.result_serializer)
        stored = not _ignores_result(task, message) or task.options.store_errors_even_if_ignored
        if stored:
            await self._store(message, delivery, State.FAILURE, info, traceback)
        await self.workflow.failed(message, info, error, traceback, stored=stored)

    async def _store(
        self,
        message: TaskMessage,
        delivery: Delivery,
        status: State,
        result: Any,
        traceback: str | None = None,
        *,
        children: tuple[ResultRef, ...] = (),
    ) -> None:
        if self.backend is None:
            return
        extended = None
        if self.app.result_extended:
            extended = ExtendedInfo(
                name=message.task,
                args=list(message.args),
                kwargs=dict(message.kwargs),
                worker=self.hostname,
                retries=message.retries,
                queue=delivery.routing_key,
            )
        meta = ResultMeta(
            task_id=message.id,
            status=status,
            result=result,
            traceback=traceback,
            children=children,
            date_done=datetime.now(UTC) if status in READY_STATES else None,
            group_id=message.group_id,
            parent_id=message.parent_id,
            extended=extended,
        )
        try:
            await self.backend.store(meta)
        except BackendError as exc:
            self.log.error(
                "result_not_stored", task_id=message.id, status=status.value, error=str(exc)
            )


def _ignores_result(task: Task[Any, Any], message: TaskMessage) -> bool:
    return task.options.ignore_result if message.ignore_result is None else message.ignore_result


def _redact(url: str | None) -> str | None:
    """``url`` without its password, for logs."""
    if not url or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"

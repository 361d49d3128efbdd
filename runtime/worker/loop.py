"""The worker: consume queues, run each task in a slot, store its result, settle its message.

Flow control lives in the transport (it never holds more unsettled deliveries than there are
free slots); the worker takes a slot for each delivery and gives it back when the message is
settled and the result stored. A task due later (``eta``/``countdown``) never keeps a slot:
it waits unacknowledged and slot-free, or goes back to the broker until shortly before it is
due (:mod:`runtime.worker.waiting`).

Lifecycle: :meth:`Worker.stop` stops consuming and lets running tasks finish within ``grace``
seconds (what they have not started goes back to the broker); :meth:`Worker.terminate` ends
at once, so ``acks_late`` messages are redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import structlog

from protocol import (
    ExceptionInfo,
    MalformedMessage,
    ResultRef,
    State,
    TaskMessage,
    decode_task,
)
from runtime.app import App
from runtime.canvas.workflow import Workflow
from runtime.control.commands import COMMANDS
from runtime.control.controlled import RunningTask
from runtime.control.mailbox import RemoteControl
from runtime.exceptions import NotRegistered
from runtime.policy import TimeLimits
from runtime.ratelimit import RateLimits
from runtime.request import Request, current_request
from runtime.results.backend import RedisResultBackend
from runtime.results.revoked import Revocations, RevokedStore
from runtime.running_loop import HeldLoop
from runtime.task import Task
from runtime.transports.base import Broadcasting, Delivery, Recovering, Transport
from runtime.transports.urls import masked_url

from .consuming import Consumers
from .execution import Executor
from .heartbeat import DEFAULT_HEARTBEAT_INTERVAL, beat_forever
from .hooks import call_hooks
from .leases import DEFAULT_CONSUMER_TIMEOUT, Leases
from .observers import TaskObserver, WorkerEvents
from .outcome import Outcome
from .recording import Recorder, ignores_result
from .retries import RetryPublisher, resolve_retry
from .settling import Settler
from .slots import Handling, Slots
from .tasklog import TaskLog
from .waiting import DEFAULT_MAX_HELD_ETA, ETA_HOLD_WINDOW, Waiting

__all__ = ["DEFAULT_MAX_HELD_ETA", "ETA_HOLD_WINDOW", "Worker"]


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
        max_held_eta: int = DEFAULT_MAX_HELD_ETA,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        task_events: bool | None = None,
        worker_heartbeats: bool = True,
        consumer_timeout: float | None = DEFAULT_CONSUMER_TIMEOUT,
        logger: Any = None,
    ) -> None:
        self.app = app
        self.hostname = hostname
        self.slots = Slots(concurrency)
        self.transport = transport or app.broker_transport()
        self.backend = backend if backend is not None else app.backend
        self.grace = grace
        self.log = (logger or structlog.get_logger("celeriac.worker")).bind(worker=hostname)
        self.workflow = Workflow(app, self.backend, hostname=hostname, log=self.log)
        self.recorder = Recorder(
            app, self.backend, self.workflow, runs=app.run_registry, hostname=hostname, log=self.log
        )
        # Without a run registry the per-message bookkeeping calls are skipped, not awaited.
        self._recording = app.run_registry is not None
        self._recovering: Recovering | None = None
        if isinstance(self.transport, Recovering) and app.run_registry is not None:
            self._recovering = self.transport
        self._executor = Executor(threads=concurrency)
        #: The queues consumed; ``add_consumer`` and ``cancel_consumer`` change them.
        self.consumers = Consumers(self.transport, queues, self.slots, app.queue_spec, log=self.log)
        self.queues = self.consumers.queues  # the same list: it follows the changes
        #: ``autoscale``'s ``(max, min)`` once it was called (celeriac then runs ``max`` slots).
        self.autoscale_limits: tuple[int, int] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._forget_handler = self._running.discard  # one bound method for every handler
        # The context it runs in: asyncio copies the caller's for each callback given none
        # (64 B kept per waiting task), and discarding from a set reads no context variable.
        self._forget_context = contextvars.Context()
        self._consuming: asyncio.Task[None] | None = None
        #: The loop :meth:`run` runs on, while it runs (else the running one: a handler
        #: started by hand).
        self._loop = HeldLoop()
        self._stopped = asyncio.Event()
        self.rate_limits = RateLimits()
        self._waiting = Waiting(self.transport, self.rate_limits, max_held=max_held_eta)
        self._retries = RetryPublisher(self.transport, app.queue_spec, app.monitor)
        self.ready = asyncio.Event()
        self.processed = 0
        self.started_at = time.time()
        #: Tasks started, by name (``inspect stats``' ``total``).
        self.total: Counter[str] = Counter()
        #: The tasks executing now, by id (``inspect active``, ``revoke(terminate=True)``).
        self.running: dict[str, RunningTask] = {}
        self.revocations = Revocations(
            RevokedStore.for_backend(self.backend) if self.backend is not None else None
        )
        self._control: RemoteControl | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        #: Seconds between two heartbeats in the run registry (when the app keeps one).
        self.heartbeat_interval = heartbeat_interval
        #: Who is told what happens to each message (:meth:`observe`).
        self.observers: list[TaskObserver] = []
        self._settler = Settler(self.transport, self.observers)
        self._events: WorkerEvents | None = None
        self._task_events = app.worker_send_task_events if task_events is None else task_events
        self._worker_heartbeats = worker_heartbeats
        #: Where long ``acks_late`` runs keep their message past the broker's
        #: ``consumer_timeout`` (RabbitMQ); ``None`` where it is not needed or cannot be.
        self._leases = Leases.for_worker(self.transport, self.backend, consumer_timeout, self.log)

    async def run(self) -> None:
        """Connect, declare the queues, and work until :meth:`stop` or :meth:`terminate`."""
        self._loop.hold()
        await self.transport.connect()
        try:
            await self.transport.declare([self.app.queue_spec(q) for q in self.queues])
            await self.revocations.load()
            await self._start_remote_control()
            self._start_events()
            self.log.info(
                "worker_ready",
                hostname=self.hostname,
                queues=self.queues,
                concurrency=self.slots.total,
                broker=masked_url(self.app.broker_url),
                result_backend=masked_url(self.app.result_backend_url) if self.backend else None,
            )
            if self.backend is None:
                self.log.warning("no_result_backend", detail="results are not stored")
            self.ready.set()
            self._start_heartbeat()
            if not self._stopped.is_set():  # a stop during start-up means: do not start
                self._consuming = asyncio.create_task(self._consume(), name="celeriac-consume")
                try:
                    await self._consuming
                except asyncio.CancelledError:
                    if not self._stopped.is_set():
                        raise
            await self._drain()
        finally:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._heartbeat
            if self._control is not None:
                await self._control.aclose()
            if self._events is not None:
                await self._events.aclose()
            await self.transport.aclose()
            self._executor.shutdown()
            self._loop.release()
            self.log.info("worker_stopped", processed=self.processed)

    def _start_heartbeat(self) -> None:
        runs = self.app.run_registry
        if runs is None:
            return
        beating = beat_forever(
            runs, self.hostname, queues=self.queues, concurrency=self.slots.total,
            busy=lambda: self.slots.busy, interval=self.heartbeat_interval, log=self.log,
        )  # fmt: skip
        self._heartbeat = asyncio.create_task(beating, name="celeriac-heartbeat")

    async def _start_remote_control(self) -> None:
        if not isinstance(self.transport, Broadcasting):
            self.log.warning("remote_control_unavailable", reason="the broker has no fanout")
            return
        control = RemoteControl(self, self.transport, COMMANDS)
        if await control.start():
            self._control = control

    def _start_events(self) -> None:
        if not isinstance(self.transport, Broadcasting):
            if self._task_events:
                self.log.warning("events_unavailable", reason="the broker has no fanout")
            return
        self._events = WorkerEvents(
            self.transport, self.hostname, task_events=self._task_events,
            heartbeats=self._worker_heartbeats, active=lambda: len(self.running),
            processed=lambda: self.processed,
        )  # fmt: skip
        self._events.start()
        self.observers.append(self._events)

    def observe(self, observer: TaskObserver) -> None:
        """Tell ``observer`` what happens to each message from now on."""
        self.observers.append(observer)

    @property
    def task_events(self) -> bool:
        """Whether Celery's ``task-*`` events are sent (``-E``; ``enable_events``)."""
        return self._events.task_events if self._events is not None else self._task_events

    @task_events.setter
    def task_events(self, enabled: bool) -> None:
        self._task_events = enabled
        if self._events is not None:
            self._events.task_events = enabled

    def send_heartbeat(self) -> bool:
        """Send a ``worker-heartbeat`` event now; ``False`` if this broker carries no events."""
        if self._events is None:
            return False
        self._events.heartbeat()
        return True

    @property
    def consuming(self) -> bool:
        """Whether the worker is taking messages from its queues now."""
        return self._consuming is not None and not self._consuming.done()

    def is_revoked(self, task_id: str) -> bool:
        """Whether ``task_id`` is revoked: a message for it is acked and never run."""
        return task_id in self.revocations

    def terminate_task(self, task_id: str, signal: str = "SIGTERM") -> bool:
        """End the running task ``task_id`` (``revoke(terminate=True)``); ``False`` if it is
        not running here.

        A coroutine is cancelled whatever ``signal`` says. A thread gets ``TimeLimitExceeded``
        raised at its next Python bytecode, so one blocked in C code runs on until it returns
        to Python; its slot is freed at once either way. REVOKED ``terminated`` is stored.
        """
        running = self.running.get(task_id)
        if running is None:
            return False
        if not running.terminated:
            self.log.info("task_terminating", task_id=task_id, signal=signal)
            running.terminated = True
            running.runner.cancel()
        return True

    def scheduled_requests(self) -> list[Request]:
        """The requests this worker holds for their ETA (``inspect scheduled``); those
        deferred to the broker are the broker's, not listed."""
        return self._waiting.held()

    def _accept(self, delivery: Delivery) -> None:
        """Start handling ``delivery``, in the slot it takes now (before the transport runs)."""
        # Not held when a task that waited without its slot took the free one meanwhile.
        handling = Handling(delivery, self.slots, held=self.slots.try_take())
        # One name for every handler: Python 3.11's asyncio makes a string for each
        # unnamed task (~60 B kept per waiting task).
        handler = self._loop.get().create_task(self._handle(handling), name="celeriac-handler")
        self._running.add(handler)
        handler.add_done_callback(self._forget_handler, context=self._forget_context)

    def resize(self, concurrency: int) -> None:
        """Run ``concurrency`` tasks at once from now on (``pool_grow``, ``pool_shrink``,
        ``autoscale``): its slots and its threads for plain functions. Below the tasks running
        now, they run on and nothing new starts until fewer run than there are slots."""
        self.slots.resize(concurrency)
        self._executor.resize(concurrency)
        self.log.info("worker_resized", concurrency=concurrency, busy=self.slots.busy)

    @property
    def concurrency(self) -> int:
        """How many tasks run at once: the number of slots."""
        return self.slots.total

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
            self._waiting.cancel_all()

    def terminate(self) -> None:
        """End at once: running tasks are cancelled and unsettled messages redelivered."""
        self.grace = 0
        self.stop()
        for running in self._running:
            running.cancel()

    async def _consume(self) -> None:
        await self.consumers.run(self._accept)

    async def _drain(self) -> None:
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=self.grace)
            for running in late:
                running.cancel()
            if late:
                await asyncio.wait(late, timeout=1)

    async def _handle(self, handling: Handling) -> None:
        # The steps before and after a run return here rather than wrap it: while a task waits
        # this is the worker's only frame above it (a frame is ~300 B per waiting task).
        try:
            if not handling.held:
                await handling.reacquire()
            admitted = await self._process(handling)
            if admitted is not None:
                task, message, log = admitted
                request, limits, isolated, running = await self._begin(task, message, handling, log)
                # Nothing kept twice while the task runs; _end makes its own log (64 B a run).
                del admitted, log
                executed: Outcome | None
                try:
                    if task.options.acks_late and self._leases is not None:
                        async with self._leases.hold(message.id, handling):
                            executed = await self._executor.start(
                                task, request, limits, isolated=isolated, runner=running.runner
                            )
                    else:
                        executed = await self._executor.start(
                            task, request, limits, isolated=isolated, runner=running.runner
                        )
                except asyncio.CancelledError:
                    if not running.terminated:
                        raise
                    running.runner.uncancel()
                    executed = None  # terminate_task ended it
                finally:
                    if self.running.get(request.id) is running:
                        del self.running[request.id]
                await self._end(task, handling, request, executed)
        except Exception as exc:  # a bug or a broker error here must not lose the message
            self.log.exception("delivery_failed", queue=handling.delivery.queue, error=repr(exc))
            await self._settler.after_error(handling, exc)
        finally:
            handling.release()
            self.processed += 1

    async def _process(self, handling: Handling) -> tuple[Task[Any, Any], TaskMessage, Any] | None:
        """Decode the message and decide whether its task runs now: the task, the message and
        its logger if so; ``None`` if the message was settled or deferred instead."""
        delivery = handling.delivery
        try:
            message = decode_task(delivery.message, accept=self.app.accept)
        except MalformedMessage as exc:
            self.log.error("message_malformed", queue=delivery.queue, reason=str(exc))
            await self._settler.dead_letter(handling, f"malformed: {exc}", cause="malformed")
            return None
        log = TaskLog(self.log, task_id=message.id, task=message.task, queue=delivery.queue)
        # ...and every event while this message is handled (this handler's own asyncio task),
        # the task's own included: the run copies the context into its task or thread.
        structlog.contextvars.bind_contextvars(
            task_id=message.id, task=message.task, queue=delivery.queue
        )
        task = self.app.tasks.get(message.task)
        if task is None:
            log.error("task_unknown")
            await self.recorder.store(
                message,
                delivery,
                State.FAILURE,
                ExceptionInfo.from_exception(NotRegistered(message.task)),
            )
            await self._settler.dead_letter(
                handling, f"unknown task {message.task!r}", cause="unknown_task"
            )
            if self.observers:
                unknown = Outcome.failed(NotRegistered(message.task))
                for observer in self.observers:
                    observer.finished(message, delivery.queue, unknown)
            return None
        for observer in self.observers:
            observer.received(message, delivery.queue)
        try:
            task.bind_arguments(message.args, dict(message.kwargs))
        except TypeError as exc:
            log.error("task_arguments_invalid", error=str(exc))
            await self._settler.ack(handling)
            request = Request.delivered(message, delivery, self.hostname)
            await self._conclude(task, request, delivery, Outcome.failed(exc), log)
            return None
        if self._recording and not await self.recorder.received(message, delivery.queue):
            log.warning("task_dropped", reason="the controller skipped this run")
            await self._settler.ack(handling)
            return None
        if self._leases is not None and not await self._leases.admit(message.id, delivery):
            log.info("lease_superseded", detail="a later copy, or the run ended")
            await self._settler.ack(handling)
            return None
        return (task, message, log) if await self._admitted(task, message, handling, log) else None

    async def _admitted(
        self, task: Task[Any, Any], message: TaskMessage, handling: Handling, log: Any
    ) -> bool:
        """Whether the task may start now: not revoked or expired (checked on arrival and
        again just before it starts, as Celery does), due, and within its rate limit. When
        not, the message has been settled or deferred here."""
        if await self._revoked_or_expired(task, message, handling, log):
            return False
        if message.eta is not None:
            request = partial(Request.delivered, message, handling.delivery, self.hostname)
            if not await self._waiting.until_due(message, handling, request, log):
                return False
        if task.options.rate_limit:
            await self._waiting.for_rate_limit(task, handling)
        return not await self._revoked_or_expired(task, message, handling, log)

    async def _revoked_or_expired(
        self, task: Task[Any, Any], message: TaskMessage, handling: Handling, log: Any
    ) -> bool:
        if self.is_revoked(message.id):
            await self._revoked(task, message, handling, log, reason="revoked")
            return True
        return await self._expired(message, handling, log)

    async def _expired(self, message: TaskMessage, handling: Handling, log: Any) -> bool:
        """If ``message`` has expired: store REVOKED ``expired`` as Celery does, ack it."""
        if message.expires is None or message.expires > datetime.now(UTC):
            return False
        log.info("task_expired", expires=message.expires.isoformat())
        expired = ExceptionInfo("TaskRevokedError", ("expired",), "celery.exceptions")
        await self.recorder.store(message, handling.delivery, State.REVOKED, expired)
        await self.recorder.ended(message, State.REVOKED)
        await self.workflow.ended(message, State.REVOKED, expired)
        await self._settler.ack(handling)
        for observer in self.observers:
            observer.revoked(message, handling.delivery.queue, reason="expired")
        return True

    async def _begin(
        self, task: Task[Any, Any], message: TaskMessage, handling: Handling, log: Any
    ) -> tuple[Request, TimeLimits, bool, RunningTask]:
        """Before a run: ack (unless ``acks_late``), STARTED, the run recorded, announced and
        listed in :attr:`running`; its request, limits, process or not, and that entry."""
        delivery = handling.delivery
        acks_late = task.options.acks_late
        if not acks_late:
            await self._settler.ack(handling)
            handling.delivery = delivery.settled()  # the run need not keep the message
        ignore = ignores_result(task, message)
        if task.options.track_started and not ignore and self.backend is not None:
            await self.recorder.store(
                message, delivery, State.STARTED, {"pid": os.getpid(), "hostname": self.hostname}
            )
        # The message's limits, else the task's; 0 means none, as Celery reads it.
        requested = TimeLimits.lenient(
            soft=message.soft_time_limit or task.options.soft_time_limit,
            hard=message.time_limit or task.options.time_limit,
        )
        limits = self.app.queue_policy.effective(delivery.queue, requested)
        isolated = self.app.queue_policy.isolates(delivery.queue)
        request = Request.delivered(message, delivery, self.hostname)
        # In this handler's own context, beside the message's log fields: the run's copy of it
        # then shares one mapping of context variables rather than making another per run.
        current_request.set(request)
        if self._recording:
            ref = self._recovering.delivery_ref(delivery) if self._recovering else None
            await self.recorder.started(
                message, acks_late=acks_late, ref=ref, hard_limit=limits.hard
            )
        for observer in self.observers:
            observer.started(message, delivery.queue)
        log.info("task_started", soft_limit=limits.soft, hard_limit=limits.hard)
        runner = asyncio.current_task(self._loop.get())
        assert runner is not None
        running = RunningTask(request, runner, time.time(), not acks_late)
        self.running[request.id] = running
        self.total[task.name] += 1
        return request, limits, isolated, running

    async def _end(
        self,
        task: Task[Any, Any],
        handling: Handling,
        request: Request,
        executed: Outcome | None,
    ) -> None:
        """What comes after a run (``executed``: its outcome, ``None`` if it was terminated):
        retries, the result, the hooks, and settling an ``acks_late`` message."""
        log = TaskLog(
            self.log, task_id=request.id, task=request.task, queue=handling.delivery.queue
        )
        if executed is None:
            await self._revoked(task, request.message, handling, log, reason="terminated")
            return
        outcome = resolve_retry(task, request, executed)
        if outcome.state is State.SUCCESS:
            log.info("task_succeeded", runtime=round(outcome.runtime, 6))
        elif outcome.state is State.FAILURE:
            log.error(
                "task_failed", exception=repr(outcome.exception), runtime=round(outcome.runtime, 6)
            )
        outcome = await self._conclude(task, request, handling.delivery, outcome, log)
        if task.options.acks_late:
            # The task is over: free the slot first, so settling needs no prefetch change.
            handling.release()
            await self._settler.after_late_run(task.options, request.message, handling, outcome)

    async def _revoked(
        self, task: Task[Any, Any], message: TaskMessage, handling: Handling, log: Any, *,
        reason: str,
    ) -> None:  # fmt: skip
        """Store REVOKED ``TaskRevokedError(reason)`` and ack, as Celery's ``_announce_revoked``."""
        log.info("task_revoked", reason=reason)
        revoked = ExceptionInfo("TaskRevokedError", (reason,), "celery.exceptions")
        if not ignores_result(task, message) or task.options.store_errors_even_if_ignored:
            await self.recorder.store(message, handling.delivery, State.REVOKED, revoked)
        await self.recorder.ended(message, State.REVOKED)
        await self.workflow.ended(message, State.REVOKED, revoked)
        if not handling.settled:
            await self._settler.ack(handling)
        for observer in self.observers:
            observer.revoked(message, handling.delivery.queue, reason=reason)

    async def _conclude(
        self,
        task: Task[Any, Any],
        request: Request,
        delivery: Delivery,
        outcome: Outcome,
        log: Any,
    ) -> Outcome:
        """After a run: send the retries it asked for, store its outcome, call the task's
        hooks. The outcome is FAILURE instead of RETRY if the retry could not be sent."""
        outcome = await self._retries.send(request, outcome, log)
        sent = tuple(ResultRef(retry.message.id) for retry in request.outbox)
        outcome = await self.recorder.record(
            task, request.message, delivery, outcome, children=sent
        )
        if self._recording:
            await self.recorder.ended(request.message, outcome.state)
        for observer in self.observers:
            observer.finished(request.message, delivery.queue, outcome)
        await call_hooks(task, request, outcome, self._executor.call, log)
        return outcome

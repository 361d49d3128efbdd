"""The application: configuration, the task registry and the producer."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

import structlog

from protocol import AcceptPolicy, ResultRef, Signature, TaskMessage, encode_task
from protocol.control import ControlRequest, LamportClock, Mailbox, encode_control
from protocol.events import EVENT_EXCHANGE, encode_events, event, task_sent_fields
from runtime.canvas.chords import RedisChords
from runtime.canvas.planner import Planner
from runtime.canvas.signatures import signatures
from runtime.canvas.workflow import carry_out, context_for
from runtime.events import local_utcoffset
from runtime.results import handles as result
from runtime.results.backend import DEFAULT_RESULT_EXPIRES, RedisResultBackend
from runtime.results.retrying import StoreRetry
from runtime.results.revoked import RevokedStore
from runtime.results.runs import RunRegistry
from runtime.transports.base import Broadcasting, QueueSpec, Transport
from runtime.transports.urls import DEFAULT_BROKER, transport_for_url

from .errors import BackendError, BrokerConnectionError
from .monitor import DEFAULT_MONITOR_EXCHANGE, TaskMonitor, publish_task
from .policy import DEFAULT_POLICY, QueuePolicy
from .request import current_request
from .task import Task, TaskOptions
from .tls import with_tls

if TYPE_CHECKING:
    from runtime.worker import Worker

__all__ = ["App"]

P = ParamSpec("P")
R = TypeVar("R")


class App:
    """A celeriac application: where tasks are registered and sent from.

    ``broker`` and ``result_backend`` are URLs (``amqp://``, ``redis://``); with no broker the
    local RabbitMQ is used, as Celery does; with no result backend results are not stored.
    ``broker_transport_options`` is Celery's setting of that name (``visibility_timeout``,
    ``global_keyprefix``, ...; see :mod:`runtime.transports.urls`). Nothing connects until something
    is sent or a worker starts.
    """

    def __init__(
        self,
        main: str = "celeriac",
        *,
        broker: str | None = None,
        result_backend: str | None = None,
        queue_policy: QueuePolicy = DEFAULT_POLICY,
        default_queue: str = "celery",
        task_serializer: str = "json",
        accept_content: Iterable[str] = ("json", "msgpack"),
        result_serializer: str = "json",
        result_expires: float | None = DEFAULT_RESULT_EXPIRES,
        result_extended: bool = False,
        task_queue_max_priority: int | None = None,
        task_default_queue_type: str = "classic",
        broker_transport_options: Mapping[str, Any] | None = None,
        broker_use_ssl: Mapping[str, Any] | bool | None = None,
        redis_backend_use_ssl: Mapping[str, Any] | None = None,
        beat_schedule: Mapping[str, Mapping[str, Any]] | None = None,
        timezone: str = "UTC",
        run_registry: str | None = None,
        run_registry_prefix: str = "celeriac:",
        worker_send_task_events: bool = False,
        task_send_sent_event: bool = False,
        task_monitor_queue: str | None = None,
        task_monitor_exchange: str = DEFAULT_MONITOR_EXCHANGE,
        result_backend_always_retry: bool = True,
        result_backend_max_retries: float = math.inf,
        result_backend_base_sleep_between_retries_ms: float = 10,
        result_backend_max_sleep_between_retries_ms: float = 10_000,
    ) -> None:
        self.main = main
        self.broker_url = broker or DEFAULT_BROKER
        self.broker_transport_options: dict[str, Any] = dict(broker_transport_options or {})
        self.result_backend_url = result_backend
        #: TLS for the broker and the Redis result backend, as Celery's settings
        #: (:mod:`runtime.tls`); the URLs may carry their options themselves instead.
        self.broker_use_ssl = broker_use_ssl
        self.redis_backend_use_ssl = redis_backend_use_ssl
        self.queue_policy = queue_policy
        self.default_queue = default_queue
        self.task_serializer = task_serializer
        self.accept = AcceptPolicy.of(accept_content)
        self.result_serializer = result_serializer
        self.result_expires = result_expires
        self.result_extended = result_extended
        self.task_queue_max_priority = task_queue_max_priority
        if task_default_queue_type not in ("classic", "quorum"):
            raise ValueError(
                f"queue type must be classic or quorum, not {task_default_queue_type!r}"
            )
        self.task_default_queue_type = task_default_queue_type
        self.tasks: dict[str, Task[Any, Any]] = {}
        #: Periodic tasks, as Celery's ``beat_schedule``: name -> ``{"task", "schedule",
        #: "args", "kwargs", "options"}``, fired by ``celeriac controller`` (or ``beat``).
        self.beat_schedule: dict[str, dict[str, Any]] = {
            name: dict(entry) for name, entry in (beat_schedule or {}).items()
        }
        #: The time zone cron schedules run in (Celery's ``timezone``).
        self.timezone = timezone
        #: The Redis URL of the run registry the controller reconciles (``None``: no registry).
        self.run_registry_url = run_registry
        #: The registry's key prefix: the controller's ``--prefix``.
        self.run_registry_prefix = run_registry_prefix
        self._runs: RunRegistry | None = None
        #: Whether its workers send Celery's ``task-*`` events (``-E``), as Celery's setting.
        self.worker_send_task_events = worker_send_task_events
        #: Whether publishing a task sends a ``task-sent`` event, as Celery's setting.
        self.task_send_sent_event = task_send_sent_event
        #: The monitor queue every task message published is copied to (``None``: none), the
        #: Cadasta toolbox's ``platform.fifo``; see :mod:`runtime.monitor`.
        self.task_monitor_queue = task_monitor_queue
        #: The durable topic exchange the copies go through, the monitor queue bound with ``#``.
        self.task_monitor_exchange = task_monitor_exchange
        #: How a result write that finds the backend away is retried: Celery's four
        #: ``result_backend_*retr*`` settings, except that retrying is on by default (Celery's
        #: ``result_backend_always_retry`` is off, and an outage then loses the results of the
        #: tasks it catches mid-run).
        self.result_retry = StoreRetry(
            always_retry=result_backend_always_retry,
            max_retries=result_backend_max_retries,
            base_sleep_ms=result_backend_base_sleep_between_retries_ms,
            max_sleep_ms=result_backend_max_sleep_between_retries_ms,
        )
        # A stable reply address per app, as Celery's clients send (only rpc:// reads it).
        self.oid = str(uuid.uuid4())
        self.clock = LamportClock()  # kombu's logical clock, on the commands this app sends
        self._backend: RedisResultBackend | None = None
        self._producer: Transport | None = None
        self._declared: set[str] = set()
        self._connecting = asyncio.Lock()

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        base: type[Task[Any, Any]] = Task,
        bind: Literal[False] = False,
        **options: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        base: type[Task[Any, Any]] = Task,
        bind: Literal[True],
        **options: Any,
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        base: type[Task[Any, Any]] = Task,
        bind: bool,
        **options: Any,
    ) -> Callable[[Callable[..., R]], Task[..., R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        base: type[Task[Any, Any]] = Task,
        **options: Any,
    ) -> Task[Any, Any] | Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., **options)``.

        Options use Celery's names (``queue``, ``bind``, ``acks_late``, ``time_limit``, ...);
        an unknown one raises ``TypeError`` here, not when the first message arrives.
        ``base`` is a :class:`Task` subclass, with hooks and options as class attributes
        (which the keywords here override), as Celery's ``base=``. With ``bind=True`` the
        function's first parameter is the task itself, which callers do not pass: the
        task's parameters (``delay``, calling it) are the function's without the first.
        """
        parsed = TaskOptions.from_kwargs({**base.class_options(), **options})

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{function.__module__}.{function.__qualname__}"
            registered = base(self, function, task_name, parsed)
            self.tasks[task_name] = registered
            return registered

        return register(fn) if fn is not None else register

    def add_periodic_task(
        self, schedule: Any, signature: Signature, name: str | None = None, **options: Any
    ) -> str:
        """Fire ``signature`` on ``schedule``, as Celery's ``app.add_periodic_task``: seconds, a
        ``timedelta``, a cron expression (``"*/5 * * * *"``) or Celery's ``crontab(...)``;
        ``options`` as ``apply_async``'s (``queue``, ``expires``, ``priority``, ...). Returns
        the entry's name in :attr:`beat_schedule`."""
        key = name or f"{signature.task}{tuple(signature.args)!r}"
        self.beat_schedule[key] = {
            "task": signature.task,
            "schedule": schedule,
            "args": tuple(signature.args),
            "kwargs": dict(signature.kwargs),
            "options": {**signature.options, **options},
        }
        return key

    def queue_spec(self, name: str) -> QueueSpec:
        """How ``name`` is declared: Celery's defaults, this app's max priority and queue type."""
        return QueueSpec(
            name,
            max_priority=self.task_queue_max_priority,
            quorum=self.task_default_queue_type == "quorum",
        )

    @property
    def monitor(self) -> TaskMonitor | None:
        """Where copies of the task messages this app and its workers publish go
        (``task_monitor_queue``), or ``None`` when they are not copied."""
        if not self.task_monitor_queue:
            return None
        return TaskMonitor(self.queue_spec(self.task_monitor_queue), self.task_monitor_exchange)

    @property
    def backend(self) -> RedisResultBackend | None:
        """The result backend, or ``None`` when results are not stored."""
        if self._backend is None and self.result_backend_url:
            self._backend = RedisResultBackend.from_url(
                with_tls(self.result_backend_url, self.redis_backend_use_ssl),
                result_expires=self.result_expires,
                serializer=self.result_serializer,
                accept=self.accept,
                retry=self.result_retry,
            )
        return self._backend

    @property
    def run_registry(self) -> RunRegistry | None:
        """The run registry (:mod:`runtime.results.runs`), or ``None`` when runs are not
        recorded."""
        if self._runs is None and self.run_registry_url:
            self._runs = RunRegistry.from_url(
                self.run_registry_url, prefix=self.run_registry_prefix
            )
        return self._runs

    def AsyncResult(self, task_id: str) -> result.AsyncResult:
        """A handle on the result of ``task_id`` (Celery's ``app.AsyncResult``)."""
        return result.AsyncResult(task_id, self.backend)

    async def send_task(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        headers: dict[str, Any] | None = None,
        serializer: str | None = None,
        ignore_result: bool | None = None,
        link: Signature | Sequence[Signature] | None = None,
        link_error: Signature | Sequence[Signature] | None = None,
        chain: Sequence[Signature] = (),
    ) -> result.AsyncResult:
        """Send a task by name, as Celery's ``send_task`` does; return a handle on its result.

        Inside a running task the new task becomes its child (``parent_id``/``root_id``).
        ``link`` is applied with the result on success, ``link_error`` with the task's id on
        failure (see :mod:`runtime.canvas` for signatures: ``task.s(...)``). ``chain`` lists
        the signatures to run after this task, in the order they run, each given the result
        of the one before (the message carries them reversed, as Celery's does); to wait for
        the last one, give it a ``task_id`` (or send a :func:`~runtime.canvas.chain` with
        :meth:`send_signature`).
        """
        now = datetime.now(UTC)
        if countdown is not None:
            eta = now + timedelta(seconds=countdown)
        if isinstance(expires, int | float):
            expires = now + timedelta(seconds=expires)
        task_id = task_id or str(uuid.uuid4())
        parent = current_request.get()
        message = TaskMessage(
            id=task_id,
            task=name,
            args=tuple(args),
            kwargs=kwargs or {},
            eta=eta,
            expires=expires,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            root_id=parent.root_id or parent.id if parent else task_id,
            parent_id=parent.id if parent else None,
            reply_to=self.oid,
            priority=priority,
            ignore_result=ignore_result,
            origin=f"gen{os.getpid()}@{socket.gethostname()}",
            headers=headers or {},
            callbacks=signatures(link, "link"),
            errbacks=signatures(link_error, "link_error"),
            chain=tuple(reversed(signatures(chain, "chain"))),
        )
        await self.publish(message, queue=queue, serializer=serializer, now=now)
        return result.AsyncResult(task_id, self.backend)

    async def publish(
        self,
        message: TaskMessage,
        *,
        queue: str | None = None,
        serializer: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Encode ``message`` and publish it to ``queue`` (declared first, once), and a copy
        to the monitor queue if the app has one (:mod:`runtime.monitor`)."""
        wire = encode_task(
            message, serializer=serializer or self.task_serializer, now=now or datetime.now(UTC)
        )
        target = queue or self.default_queue
        producer = await self.connect([target])
        await publish_task(producer, wire, routing_key=target, monitor=self.monitor)
        if self.task_send_sent_event:
            await self._announce_sent(producer, message, target)
        if self.run_registry is not None:
            try:
                await self.run_registry.queued(message, target)
            except BackendError as exc:  # published all the same: only the record is missing
                structlog.get_logger("celeriac.producer").warning(
                    "run_not_recorded", task_id=message.id, error=str(exc)
                )

    async def _announce_sent(self, producer: Transport, message: TaskMessage, queue: str) -> None:
        """Send ``task-sent`` (``task_send_sent_event``) where the broker carries events; a
        failure is logged, never raised: the task itself is published."""
        if not isinstance(producer, Broadcasting):
            return
        pid = os.getpid()
        sent = event(
            "task-sent", hostname=f"gen{pid}@{socket.gethostname()}", clock=self.clock.forward(),
            pid=pid, timestamp=time.time(), offset=local_utcoffset(),
            **task_sent_fields(message, queue=queue, exchange="", routing_key=queue),
        )  # fmt: skip
        wire, key = encode_events([sent], hostname=sent["hostname"])
        try:
            await producer.emit(wire, exchange=EVENT_EXCHANGE, routing_key=key)
        except BrokerConnectionError as exc:
            structlog.get_logger("celeriac.producer").warning(
                "event_not_sent", task_id=message.id, error=str(exc)
            )

    async def send_signature(
        self,
        signature: Signature,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> result.AsyncResult | result.GroupResult:
        """Apply a task signature, or a chain, group or chord of them, as Celery's
        ``signature.apply_async(args, kwargs, **options)`` does; a handle on its result:
        the last task's for a chain, the body's for a chord, a :class:`GroupResult` for a
        group.
        """
        parent = current_request.get()
        planner = Planner(context_for(self, parent.message if parent else None))
        ref = planner.apply(signature, args, kwargs, **options)
        await carry_out(self, planner.actions, self._chords())
        if ref is None:
            raise ValueError("an empty chain has no result")
        return self._handle(ref)

    def _handle(self, ref: ResultRef) -> result.AsyncResult | result.GroupResult:
        if ref.children is None:
            return result.AsyncResult(ref.id, self.backend)
        return result.GroupResult(ref.id, [self._handle(child) for child in ref.children])

    def _chords(self) -> RedisChords | None:
        backend = self.backend
        return None if backend is None else RedisChords(backend)

    async def revoke(
        self, task_id: str | Sequence[str], *, terminate: bool = False, signal: str = "SIGTERM"
    ) -> None:
        """Revoke tasks as Celery's ``app.control.revoke`` does: no worker on the broker,
        Celery's included, starts them, and with ``terminate`` running ones are ended.

        The ids are also kept for 3 hours in the result backend's Redis, if there is one, so
        that celeriac workers started later obey too. Raises ``RuntimeError`` on a broker
        without fanout (SQS).
        """
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if self.backend is not None:
            await RevokedStore.for_backend(self.backend).add(ids)
        arguments = {"task_id": task_id if isinstance(task_id, str) else ids,
                     "terminate": terminate, "signal": signal}  # fmt: skip
        await self.broadcast("revoke", arguments)

    async def broadcast(
        self,
        command: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
    ) -> None:
        """Send remote-control ``command`` to every worker (or the node names in
        ``destination``) without waiting for replies, as Celery's ``app.control.broadcast``.

        Raises ``RuntimeError`` on a broker without fanout (SQS).
        """
        producer = await self.connect()
        if not isinstance(producer, Broadcasting):
            raise RuntimeError(
                f"remote control needs a broker with fanout; {self.broker_url.split(':')[0]}:// "
                "has none"
            )
        request = ControlRequest(
            command,
            arguments or {},
            destination=tuple(destination) if destination is not None else None,
            clock=self.clock.forward(),
        )
        message = encode_control(request, serializer=self.task_serializer)
        await producer.broadcast(message, exchange=Mailbox().exchange)

    def broker_transport(self) -> Transport:
        """A new, unconnected transport to this app's broker, with its transport and TLS
        options."""
        url = with_tls(self.broker_url, self.broker_use_ssl)
        return transport_for_url(url, self.broker_transport_options)

    async def connect(self, queues: Sequence[str] = ()) -> Transport:
        """Open the producer connection and declare ``queues``, once each; the producer.

        ``send_task`` does this on first use; call it first to pay for it before timing
        anything. Safe to call from concurrent tasks: one connection is ever opened.
        """
        if self._producer is not None and self._declared.issuperset(queues):
            return self._producer  # the common case: no lock taken
        async with self._connecting:
            if self._producer is None:
                producer = self.broker_transport()
                await producer.connect()
                self._producer = producer
            missing = [name for name in queues if name not in self._declared]
            if missing:
                await self._producer.declare([self.queue_spec(name) for name in missing])
                self._declared.update(missing)
            return self._producer

    def worker(
        self,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int = 10,
        hostname: str | None = None,
        grace: float = 30.0,
        max_held_eta: int | None = None,
    ) -> AbstractAsyncContextManager[Worker]:
        """Run a worker inside the caller's event loop for the ``async with`` block.

        It installs no signal handlers; leaving the block stops it as SIGTERM would (running
        tasks get ``grace`` seconds). Raises at once if the broker cannot be reached. This is
        :func:`runtime.worker.embedded` with this app.
        """
        # The one import that points up (the worker imports the app): see the README's layout.
        from runtime.worker import embedded  # noqa: PLC0415

        return embedded(
            self,
            queues,
            concurrency=concurrency,
            hostname=hostname,
            grace=grace,
            max_held_eta=max_held_eta,
        )

    async def aclose(self) -> None:
        """Close the producer connection and the result backend."""
        if self._producer is not None:
            await self._producer.aclose()
            self._producer = None
        if self._backend is not None:
            await self._backend.aclose()
            self._backend = None
        if self._runs is not None:
            await self._runs.aclose()
            self._runs = None

"""Tasks: a function registered under a name, with Celery's options, and what ``Task.retry``
plans.

``Task.retry`` runs inside the task (in its thread, for a plain function), where nothing can be
awaited: :func:`plan_retry` plans the retry's message on the run's request
(:attr:`Request.outbox`) and the task raises :class:`~runtime.exceptions.Retry`; the worker
publishes what the run planned once it is over (:mod:`runtime.worker.retries`), then records
RETRY. The message is the one Celery's worker publishes for the same retry
(``signature_from_request`` then ``apply_async``): same id, ``retries + 1``, the ETA, the run's
arguments unless new ones are given, its time limits, expiry, priority, custom headers, links,
chain, chord and stamps, this task as its parent, to the exchange and routing key it came from,
serialised with the task's serializer.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar

from protocol import Signature, TaskMessage

from .arguments import ArgumentCheck, retry_arguments
from .exceptions import MaxRetriesExceededError, Retry
from .ratelimit import parse_rate
from .request import Republish, Request, current_request

if TYPE_CHECKING:
    from .exceptions import ExcInfo
    from .results.handles import AsyncResult

__all__ = ["Task", "TaskApp", "TaskOptions", "plan_retry"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskOptions:
    """A task's options, with Celery's names and defaults (``celery.app.task.Task``)."""

    queue: str | None = None
    bind: bool = False
    acks_late: bool = False
    reject_on_worker_lost: bool = False
    acks_on_failure_or_timeout: bool = True
    acks_on_failure: bool | None = None
    acks_on_timeout: bool | None = None
    ignore_result: bool = False
    store_errors_even_if_ignored: bool = False
    track_started: bool = False
    soft_time_limit: float | None = None
    time_limit: float | None = None
    priority: int | None = None
    serializer: str | None = None
    typing: bool = True
    max_retries: int | None = 3
    default_retry_delay: float = 180
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: Mapping[str, Any] = field(default_factory=dict)
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    rate_limit: str | float | None = None

    def __post_init__(self) -> None:
        # Celery 5.7 split acks_on_failure_or_timeout in two; each defaults to the old one.
        for name in ("acks_on_failure", "acks_on_timeout"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.acks_on_failure_or_timeout)
        parse_rate(self.rate_limit)  # a bad rate fails where the task is declared

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> TaskOptions:
        """Build from decorator keywords; an unknown name is a ``TypeError`` naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"unknown task option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**options)


_OPTION_NAMES = frozenset(f.name for f in fields(TaskOptions))


class TaskApp(Protocol):
    """What a task needs of the app it is registered on: :class:`runtime.App` is one.

    A protocol, not the class, so that the arrow runs one way: the app module imports the task
    module, never the reverse. At run time ``task.app`` is the app itself.
    """

    @property
    def oid(self) -> str:
        """The app's reply address, which the messages it sends carry."""

    @property
    def default_queue(self) -> str:
        """Where a task with no queue of its own is sent."""

    @property
    def task_serializer(self) -> str:
        """The serializer of the messages the app sends."""

    @property
    def send_task(self) -> Callable[..., Awaitable[AsyncResult]]:
        """Send a task by name (:meth:`runtime.App.send_task`)."""

    def AsyncResult(self, task_id: str) -> AsyncResult:
        """A handle on the result of ``task_id``."""


class Task(Generic[P, R]):
    """A registered task. Call it to run the function here; ``delay``/``apply_async`` to send it.

    With ``bind=True`` the function receives the task as its first argument, so it can read
    ``self.request`` and call ``self.retry()`` as in Celery.

    As in Celery, a subclass passed as ``@app.task(base=...)`` can set options as class
    attributes (``acks_late = True``, ``max_retries = 5``, ...; the decorator's keywords win)
    and override the hooks :meth:`on_success`, :meth:`on_failure`, :meth:`on_retry` and
    :meth:`after_return`, with plain or ``async`` methods. A plain hook runs in the task
    thread pool, an ``async`` one on the event loop; ``self.request`` is the run's request.
    """

    #: How many times the task may be retried; ``None`` for no limit (option ``max_retries``).
    max_retries: int | None
    #: Seconds before a retry with neither countdown nor ETA (option ``default_retry_delay``).
    default_retry_delay: float

    def __init__(self, app: TaskApp, fn: Callable[P, R], name: str, options: TaskOptions) -> None:
        self.app = app
        #: The function; a bound task's takes the task first, before the parameters ``P``.
        self.fn: Callable[..., R] = fn
        self.name = name
        self.options = options
        self.max_retries = options.max_retries
        self.default_retry_delay = options.default_retry_delay
        self.is_coroutine = inspect.iscoroutinefunction(fn)
        self._check_arguments = ArgumentCheck(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @classmethod
    def class_options(cls) -> dict[str, Any]:
        """The options this class sets as class attributes (``max_retries = 5``), by name."""
        found: dict[str, Any] = {}
        for klass in reversed(cls.__mro__[: cls.__mro__.index(Task)]):
            found.update((k, v) for k, v in vars(klass).items() if k in _OPTION_NAMES)
        return found

    @functools.cached_property
    def parameters(self) -> inspect.Signature | None:
        """The function's signature as callers see it: without ``self`` for a bound task."""
        signature = self._check_arguments.signature
        if signature is None or not self.options.bind:
            return signature
        return signature.replace(parameters=list(signature.parameters.values())[1:])

    @property
    def request(self) -> Request:
        """The request of the task running now (Celery's ``self.request``)."""
        request = current_request.get()
        if request is None:
            raise RuntimeError(f"{self.name}: no task is running in this context")
        return request

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, as Celery's ``task(...)``: a bound task is given itself."""
        if self.options.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these arguments (Celery's ``task.s``), for
        ``link=``, ``chain=`` and the constructors of :mod:`runtime.canvas`."""
        return Signature(self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: it ignores the result a chain or callback would pass."""
        return Signature(self.name, args, kwargs, immutable=True)

    def signature(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A signature with options (``queue``, ``task_id``, ``link``, ...), as Celery's."""
        return Signature(self.name, tuple(args), kwargs or {}, options)

    def bind_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Check that the arguments fit the signature (Celery's ``typing=True``).

        Raises the ``TypeError`` calling the function would raise (what a Celery worker
        stores), without calling it.
        """
        if not self.options.typing:
            return
        if self.options.bind:
            self._check_arguments(self, *args, **kwargs)
        else:
            self._check_arguments(*args, **kwargs)

    def retry(  # noqa: PLR0917 - Celery's signature
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Run the task again later, as Celery's ``Task.retry``: ``raise self.retry(...)``.

        The retry is the same task id with ``retries + 1``, due ``countdown`` seconds from now
        (``default_retry_delay`` if neither it nor ``eta`` is given), with ``args``/``kwargs``
        in place of the current ones where given; the worker publishes it once this run is
        over, to the queue it came from (or ``queue=``), and records RETRY. ``options`` may
        also set ``priority``, ``time_limit``, ``soft_time_limit``, ``expires``,
        ``serializer``, ``exchange`` and ``routing_key``.

        Raises :class:`~runtime.exceptions.Retry`, or returns it with ``throw=False`` (the
        retry is sent all the same). With no retry left (``max_retries``, this call's or the
        task's; ``None`` is no limit) raises ``exc`` if given, else
        :class:`~runtime.exceptions.MaxRetriesExceededError`. Outside a worker's run of this
        task there is nothing to retry: raises ``exc``, or ``Retry``.
        """
        request = current_request.get()
        if request is None or request.task != self.name:
            raise exc if exc is not None else Retry("Task can be retried", None)
        retry = plan_retry(
            self,
            request,
            args=args,
            kwargs=kwargs,
            exc=exc,
            eta=eta,
            countdown=countdown,
            max_retries=max_retries,
            options=options,
        )
        if throw:
            raise retry
        return retry

    # -- hooks: override in a subclass; plain or async ----------------------------------------

    def on_success(
        self, retval: Any, task_id: str, args: Any, kwargs: Any
    ) -> Awaitable[None] | None:
        """Called after a successful run, once its result is stored."""
        return None

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: ExcInfo
    ) -> Awaitable[None] | None:
        """Called after a failed run (the time limit included), once the FAILURE is stored."""
        return None

    def on_retry(
        self, exc: BaseException | None, task_id: str, args: Any, kwargs: Any, einfo: ExcInfo
    ) -> Awaitable[None] | None:
        """Called after a run that ends in a retry, once RETRY is stored: ``exc`` is what
        ``retry(exc=...)`` was given, ``einfo`` describes the ``Retry``."""
        return None

    def after_return(  # noqa: PLR0917 - Celery's signature
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: None
    ) -> Awaitable[None] | None:
        """Called last after every run: ``retval`` is the return value, the exception, or the
        ``Retry``; ``einfo`` is always ``None``, as Celery 5.7 passes it."""
        return None

    async def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Send the task with these arguments; return a handle on its result."""
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task (options as :meth:`App.send_task`); return a handle on its result.

        With ``typing`` (the default) arguments that do not fit the signature raise
        ``TypeError`` here, before anything is sent, as in Celery.
        """
        self.bind_arguments(tuple(args), kwargs or {})
        options.setdefault("queue", self.options.queue)
        options.setdefault("ignore_result", self.options.ignore_result)
        options.setdefault("serializer", self.options.serializer)
        options.setdefault("priority", self.options.priority)
        options.setdefault("time_limit", self.options.time_limit)
        options.setdefault("soft_time_limit", self.options.soft_time_limit)
        return await self.app.send_task(self.name, args=args, kwargs=kwargs, **options)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


# What retry(**options) may change in the message, as apply_async options.
_OPTIONS = frozenset(
    ("queue", "exchange", "routing_key", "priority", "time_limit", "soft_time_limit",
     "expires", "serializer")
)  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


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
    request.plan(_route(task, request, message, options))
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

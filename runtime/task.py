"""Tasks: a function registered under a name, with Celery's options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from protocol import Signature

from .request import Request, current_request

if TYPE_CHECKING:
    from .app import App
    from .result import AsyncResult

__all__ = ["Task", "TaskOptions"]

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
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    rate_limit: str | None = None

    def __post_init__(self) -> None:
        # Celery 5.7 split acks_on_failure_or_timeout in two; each defaults to the old one.
        for name in ("acks_on_failure", "acks_on_timeout"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.acks_on_failure_or_timeout)

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


class Task(Generic[P, R]):
    """A registered task. Call it to run the function here; ``delay``/``apply_async`` to send it.

    With ``bind=True`` the function receives the task as its first argument, so it can read
    ``self.request`` as in Celery.
    """

    def __init__(self, app: App, fn: Callable[P, R], name: str, options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.is_coroutine = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def request(self) -> Request:
        """The request of the task running now (Celery's ``self.request``)."""
        request = current_request.get()
        if request is None:
            raise RuntimeError(f"{self.name}: no task is running in this context")
        return request

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
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

    def bind_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Check that the arguments fit the signature (Celery's ``typing=True``).

        Raises ``TypeError`` saying what does not fit, before the task runs.
        """
        if not self.options.typing:
            return
        call_args = (self, *args) if self.options.bind else args
        inspect.signature(self.fn).bind(*call_args, **kwargs)

    async def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult:
        """Send the task with these arguments; return a handle on its result."""
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task (options as :meth:`App.send_task`); return a handle on its result."""
        options.setdefault("queue", self.options.queue)
        options.setdefault("ignore_result", self.options.ignore_result)
        options.setdefault("serializer", self.options.serializer)
        options.setdefault("priority", self.options.priority)
        options.setdefault("time_limit", self.options.time_limit)
        options.setdefault("soft_time_limit", self.options.soft_time_limit)
        return await self.app.send_task(self.name, args=args, kwargs=kwargs, **options)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

"""Exceptions tasks see and results record, named as Celery's clients know them, and
:class:`ExcInfo`, a failed run's exception as a task's hooks receive it.

Each exception class takes the module of its Celery/billiard namesake, so a FAILURE record of it
(``{"exc_type": "TimeLimitExceeded", "exc_module": "billiard.exceptions", ...}``) is rebuilt
as Celery's own class by a Celery client, exactly as if a Celery worker had stored it.
"""

from __future__ import annotations

import numbers
import traceback
from datetime import datetime
from typing import Any

__all__ = [
    "ChordError",
    "ExcInfo",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskCancelled",
    "TimeLimitExceeded",
]


class SoftTimeLimitExceeded(Exception):
    """Raised inside a task when its soft time limit passes; the task may catch it."""

    __module__ = "billiard.exceptions"


class TimeLimitExceeded(Exception):
    """Recorded when a task's hard time limit passes; its argument is the limit in seconds."""

    __module__ = "billiard.exceptions"


class TaskCancelled(Exception):
    """Recorded when a task ended by cancellation rather than by returning or raising.

    ``asyncio.CancelledError`` is a ``BaseException``; stored as such, a client would rebuild
    something it cannot catch as a task failure.
    """


class NotRegistered(KeyError):
    """A message named a task this worker does not know."""

    __module__ = "celery.exceptions"


class ChordError(Exception):
    """Recorded for a chord's body when a header task failed, or the body could not be sent."""

    __module__ = "celery.exceptions"


class Retry(Exception):
    """Raised by ``self.retry()``: the task is to run again later (Celery's ``Retry``).

    ``exc`` is the exception that caused the retry (stored with the RETRY state), ``when`` the
    countdown in seconds or the ETA. Raising one by hand records RETRY but sends nothing: only
    ``Task.retry`` publishes the message that runs the task again.
    """

    __module__ = "celery.exceptions"

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | str | None = None,
        when: float | datetime | None = None,
    ) -> None:
        self.message = message
        if isinstance(exc, str):
            self.exc: BaseException | None = None
            self.excs: str | None = exc
        else:
            self.exc, self.excs = exc, repr(exc) if exc is not None else None
        self.when = when
        super().__init__(message, exc, when)

    def humanize(self) -> str:
        """``in 5s`` for a countdown, ``at <eta>`` for a time."""
        if isinstance(self.when, numbers.Number):
            return f"in {self.when}s"
        return f"at {self.when}"

    def __str__(self) -> str:
        if self.message:
            return self.message
        if self.excs:
            return f"Retry {self.humanize()}: {self.excs}"
        return f"Retry {self.humanize()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.message, self.exc, self.when)


class MaxRetriesExceededError(Exception):
    """Raised by ``self.retry()`` when no retry is left and no ``exc`` was given."""

    __module__ = "celery.exceptions"

    def __init__(
        self,
        *args: Any,
        task_args: Any = None,
        task_kwargs: Any = None,
    ) -> None:
        self.task_args = [] if task_args is None else task_args
        self.task_kwargs = {} if task_kwargs is None else task_kwargs
        super().__init__(*args)


class ExcInfo:
    """A failed run's exception, as Celery's hooks receive it (billiard's ``ExceptionInfo``):
    ``exception``, ``type``, ``tb`` (the traceback object) and ``traceback`` (the text)."""

    __slots__ = ("exception", "tb", "traceback", "type")

    def __init__(self, exception: BaseException, text: str | None = None) -> None:
        self.exception = exception
        self.type = type(exception)
        self.tb = exception.__traceback__
        self.traceback = text or "".join(traceback.format_exception(exception))

    @property
    def exc_info(self) -> tuple[type[BaseException], BaseException, Any]:
        """``(type, exception, traceback object)``, as ``sys.exc_info()`` gives them."""
        return (self.type, self.exception, self.tb)

    def __str__(self) -> str:
        return self.traceback

"""Exceptions tasks see and results record, named as Celery's clients know them.

Each class takes the module of its Celery/billiard namesake, so a FAILURE record of it
(``{"exc_type": "TimeLimitExceeded", "exc_module": "billiard.exceptions", ...}``) is rebuilt
as Celery's own class by a Celery client, exactly as if a Celery worker had stored it.
"""

from __future__ import annotations

__all__ = [
    "ChordError",
    "NotRegistered",
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

"""The logger of one message's events: the worker's, each event with the message's fields."""

from __future__ import annotations

from typing import Any

__all__ = ["TaskLog"]


class TaskLog:
    """What ``log.bind(task_id=..., task=..., queue=...)`` gives, for one message's events.

    The fields are added to each event as it is logged, rather than kept in a bound logger and
    its context dict: the worker makes one for every message, and holds it while the task runs,
    so at 10,000 tasks waiting at once every object per message counts. A field given to one
    event overrides the message's, as with a bound logger.
    """

    __slots__ = ("_log", "_queue", "_task", "_task_id")

    def __init__(self, log: Any, *, task_id: str, task: str, queue: str) -> None:
        self._log = log
        self._task_id = task_id
        self._task = task
        self._queue = queue

    def _fields(self, given: dict[str, Any]) -> dict[str, Any]:
        return {"task_id": self._task_id, "task": self._task, "queue": self._queue, **given}

    def debug(self, event: str, **fields: Any) -> Any:
        """Log ``event`` at debug level."""
        return self._log.debug(event, **self._fields(fields))

    def info(self, event: str, **fields: Any) -> Any:
        """Log ``event`` at info level."""
        return self._log.info(event, **self._fields(fields))

    def warning(self, event: str, **fields: Any) -> Any:
        """Log ``event`` at warning level."""
        return self._log.warning(event, **self._fields(fields))

    def error(self, event: str, **fields: Any) -> Any:
        """Log ``event`` at error level."""
        return self._log.error(event, **self._fields(fields))

    def exception(self, event: str, **fields: Any) -> Any:
        """Log ``event`` at error level with the exception being handled."""
        return self._log.exception(event, **self._fields(fields))

    def bind(self, **fields: Any) -> Any:
        """A bound logger with the message's fields and ``fields``."""
        return self._log.bind(**self._fields(fields))

"""celeriac's asyncio runtime: the app, tasks, worker, transports and result backend."""

from runtime.canvas.signatures import chain, chord, group
from runtime.results.handles import AsyncResult, GroupResult

from .app import App
from .exceptions import (
    ExcInfo,
    MaxRetriesExceededError,
    NotRegistered,
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)
from .request import Request, current_request
from .task import Task

__all__ = [
    "App",
    "AsyncResult",
    "ExcInfo",
    "GroupResult",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Request",
    "Retry",
    "SoftTimeLimitExceeded",
    "Task",
    "TimeLimitExceeded",
    "chain",
    "chord",
    "current_request",
    "group",
]

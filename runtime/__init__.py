"""celeriac's asyncio runtime: the app, tasks, worker, transports and result backend."""

from .app import App
from .exceptions import (
    MaxRetriesExceededError,
    NotRegistered,
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)
from .hooks import ExcInfo
from .request import Request, current_request
from .result import AsyncResult, GroupResult
from .signatures import chain, chord, group
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

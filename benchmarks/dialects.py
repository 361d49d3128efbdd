"""The message formats the rows read: Celery's protocol, or taskiq's own.

Every scenario sends the same :class:`Call`\\ s (a task name, its arguments, an id, whether its
result is kept). A :class:`Dialect` writes them as one system's messages: in bulk for the
pre-loaded scenarios, one at a time for the open-loop ones, and says where a result lands and
when it was stored. Celery, celeriac and aio-celery read Celery's protocol; taskiq's rows
read taskiq's (:mod:`benchmarks.taskiq_queues`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from protocol import ResultKeys, decode_result
from runtime import App

from .queues import preload, task
from .systems import System

__all__ = ["CELERY", "Call", "Dialect", "Publisher", "of"]


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Call:
    """One task to send: its name, positional arguments, whether its result is kept, when it
    is due (now if ``None``) and its id."""

    name: str
    args: tuple[Any, ...] = ()
    result: bool = False
    eta: datetime | None = None
    id: str = field(default_factory=_new_id)


class Publisher(Protocol):
    """Sends calls one at a time, as the system's own client would."""

    async def send(self, call: Call) -> None:
        """Publish ``call`` (confirmed by the broker when this returns)."""


class Dialect(Protocol):
    """One message format: how calls are written and where their results are found."""

    async def preload(self, broker: str, queue: str, calls: Iterable[Call]) -> int:
        """Declare ``queue`` as the system does and put ``calls`` in it; returns how many."""

    def publisher(
        self, broker: str, queue: str
    ) -> contextlib.AbstractAsyncContextManager[Publisher]:
        """A connected :class:`Publisher` to ``queue``, closed on the way out."""

    def result_key(self, task_id: str) -> str:
        """The Redis key a result of ``task_id`` is stored at."""

    def stored_at(self, raw: bytes) -> float | None:
        """When the stored result ``raw`` was written (epoch seconds), if it says."""


class _AppPublisher:
    """Celery's protocol sent by celeriac's client (which a Celery client cannot tell from
    Celery's own: the golden tests)."""

    def __init__(self, app: App, queue: str) -> None:
        self._app = app
        self._queue = queue

    async def send(self, call: Call) -> None:
        await self._app.send_task(
            call.name, args=call.args, queue=self._queue, task_id=call.id, eta=call.eta,
            ignore_result=not call.result,
        )  # fmt: skip


class _Celery:
    """Celery's protocol v2 (what Celery, celeriac and aio-celery read)."""

    _keys = ResultKeys()

    async def preload(self, broker: str, queue: str, calls: Iterable[Call]) -> int:
        messages = (task(c.name, *c.args, result=c.result, eta=c.eta, task_id=c.id) for c in calls)
        return await preload(broker, queue, messages)

    @contextlib.asynccontextmanager
    async def publisher(self, broker: str, queue: str) -> AsyncIterator[Publisher]:
        app = App("bench-client", broker=broker)
        try:
            await app.connect([queue])
            yield _AppPublisher(app, queue)
        finally:
            await app.aclose()

    def result_key(self, task_id: str) -> str:
        return self._keys.task(task_id)

    def stored_at(self, raw: bytes) -> float | None:
        done = decode_result(raw).date_done
        return None if done is None else done.timestamp()


#: Celery's protocol.
CELERY: Dialect = _Celery()


def of(system: System) -> Dialect:
    """The dialect ``system`` reads."""
    if system.speaks == "taskiq":
        from .taskiq_queues import TASKIQ  # noqa: PLC0415 - taskiq loads pydantic

        return TASKIQ
    return CELERY

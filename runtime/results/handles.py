"""The handle ``send_task``/``delay`` return: Celery's ``AsyncResult``, awaitable."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from protocol import PROPAGATE_STATES, READY_STATES, ResultMeta, State

from .backend import RedisResultBackend

__all__ = ["AsyncResult", "GroupResult"]


class AsyncResult:
    """A task's result, read from the result backend.

    ``await handle.get(timeout=10)`` returns the task's return value, or raises the task's
    exception (rebuilt from the record, as a Celery client does) for FAILURE and REVOKED.
    """

    def __init__(self, task_id: str, backend: RedisResultBackend | None) -> None:
        self.id = task_id
        self._backend = backend

    def _require_backend(self) -> RedisResultBackend:
        if self._backend is None:
            raise RuntimeError("no result backend is configured: results cannot be read")
        return self._backend

    async def state(self) -> State:
        """The current state; PENDING until a record exists."""
        meta = await self._require_backend().get(self.id)
        return State.PENDING if meta is None else meta.status

    async def ready(self) -> bool:
        """Whether the task has finished (SUCCESS, FAILURE or REVOKED)."""
        return await self.state() in READY_STATES

    async def meta(self) -> ResultMeta | None:
        """The stored record, or ``None`` while PENDING."""
        return await self._require_backend().get(self.id)

    async def get(self, timeout: float | None = None, *, propagate: bool = True) -> Any:
        """Wait for the task to finish; return its value or raise its exception.

        Raises ``TimeoutError`` if it does not finish within ``timeout`` seconds.
        """
        meta = await self._require_backend().wait_for(self.id, timeout=timeout)
        if meta.exception is not None and (propagate and meta.status in PROPAGATE_STATES):
            raise meta.exception.to_exception()
        return meta.result

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"


class GroupResult:
    """The results of a group's tasks (Celery's ``GroupResult``).

    ``await handle.get(timeout=10)`` returns their values in the group's order, or raises the
    first failed task's exception.
    """

    def __init__(self, group_id: str, results: Sequence[AsyncResult | GroupResult]) -> None:
        self.id = group_id
        self.results = list(results)

    async def get(self, timeout: float | None = None, *, propagate: bool = True) -> list[Any]:
        """Wait for every task; their values in order. Raises ``TimeoutError``."""
        async with asyncio.timeout(timeout):
            return [await result.get(propagate=propagate) for result in self.results]

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} {self.results!r}>"

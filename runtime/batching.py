"""Sending the requests of one event-loop turn together: one round trip instead of one each.

A hundred tasks that finish in the same turn each ask for a write; sent one by one they cost
a hundred round trips and a hundred pooled connections. A :class:`TurnBatch` collects what is
asked for until the loop comes round to the task that sends it, sends it in one call, and
hands each caller its own answer. While one batch is in flight the next one fills up, so
calls keep their order and at most one round trip is outstanding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from runtime.transports.base import detached_context

__all__ = ["TurnBatch"]

Item = TypeVar("Item")
Answer = TypeVar("Answer")


class TurnBatch(Generic[Item, Answer]):
    """Calls ``send(items)`` (which returns one answer per item, in order) for batches of at
    most ``most`` items; :meth:`submit` waits for one item's answer.

    If ``send`` raises, every caller of that batch gets the error: each decides whether to
    submit again. Cancelling a caller does not take its item back (it may already be sent).
    """

    def __init__(
        self, send: Callable[[list[Item]], Awaitable[Sequence[Answer]]], *, most: int, name: str
    ) -> None:
        self._send = send
        self._most = most
        self._name = name
        self._waiting: list[tuple[Item, asyncio.Future[Answer]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Answer:
        """Queue ``item`` for the next batch and return its answer."""
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, answer))
        if self._sender is None:
            # Detached: the sender must not inherit (and be cancelled with) the caller's
            # context, since it serves every caller of the batch.
            self._sender = asyncio.create_task(
                self._send_all(), name=self._name, context=detached_context()
            )
        # Not shielded: cancelling the caller cancels only its answer; the item is sent all
        # the same, as :meth:`_send_all` sends whatever was submitted.
        return await answer

    async def _send_all(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._most]
                del self._waiting[: self._most]
                try:
                    answers = await self._send([item for item, _ in batch])
                except BaseException as exc:
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, answer), value in zip(batch, answers, strict=True):
                    if not answer.done():
                        answer.set_result(value)
        finally:
            self._sender = None
            for _, answer in self._waiting:  # only if cancelled: nobody is left to send them
                answer.cancel()
            self._waiting.clear()

    async def drain(self) -> None:
        """Wait until everything submitted so far has been sent (or has failed)."""
        if (sender := self._sender) is not None:
            await asyncio.gather(sender, return_exceptions=True)

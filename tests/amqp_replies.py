"""Holding back the broker's replies on an aiormq channel, for AMQP transport tests."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["HeldReplies"]


class HeldReplies(asyncio.Queue[Any]):
    """Stands in for a channel's queue of RPC replies and hands none out until ``gate`` is
    set: what waits for the broker's reply shows as still waiting."""

    def __init__(self, replies: asyncio.Queue[Any]) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        while not replies.empty():
            self.put_nowait(replies.get_nowait())

    async def get(self) -> Any:
        """The next reply, once the gate is open."""
        await self.gate.wait()
        return await super().get()

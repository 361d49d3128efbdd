"""celeriac's delay store on Redis: where a deferred message waits until it is due.

A sorted set of ids by due time (``_celeriac.delayed``) and a hash of id -> the list to push
onto, NUL, the payload (``_celeriac.delayed.messages``), under the transport's
``global_keyprefix``. A message enters in one Lua step with the removal of its unacked record
(``lua/redis_defer.lua``), so it is never both or neither; every consuming celeriac worker
moves due messages back to the consuming end of their lists (``lua/redis_due.lua``), a second
before they are due, checking at least every half second. While no celeriac worker runs they
wait in the store; Celery workers do not read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import datetime
from importlib.resources import files
from typing import TYPE_CHECKING

import redis.exceptions

from protocol.kombu_redis import RedisLayout

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["DUE_AHEAD", "RedisDelayStore"]

log = logging.getLogger(__name__)

_DEFER = (files("runtime.transports.redis") / "lua" / "redis_defer.lua").read_text()
_DUE = (files("runtime.transports.redis") / "lua" / "redis_due.lua").read_text()
#: Delayed messages go back onto their lists this long before they are due (the worker holds
#: them the rest of the way), checked at least every ``_DUE_EVERY`` s, ``_DUE_PER_CALL`` a call.
DUE_AHEAD = 1.0
_DUE_EVERY = 0.5
_DUE_PER_CALL = 200


class RedisDelayStore:
    """The delay store of one Redis transport's ``client`` and key ``layout``."""

    def __init__(self, client: redis.asyncio.Redis, layout: RedisLayout) -> None:
        self._layout = layout
        self._defer = client.register_script(_DEFER)
        self._due = client.register_script(_DUE)

    async def defer(self, tag: bytes, eta: datetime, target: str, payload: bytes) -> None:
        """Move delivery ``tag`` from the unacked records into the store, to be pushed onto
        list ``target`` at ``eta`` (if it is still recorded as unacked: else another consumer
        has restored it already, and it must not be delayed as well)."""
        layout = self._layout
        keys = [layout.unacked, layout.unacked_index, layout.delayed, layout.delayed_messages]
        args: list[bytes | str | float] = [tag, eta.timestamp(), uuid.uuid4().hex, target, payload]
        await self._defer(keys=keys, args=args)

    async def move_due(self, closed: asyncio.Event) -> None:
        """Push messages back onto their lists as they fall due, until ``closed`` is set."""
        keys = [self._layout.delayed, self._layout.delayed_messages]
        while not closed.is_set():
            pause = _DUE_EVERY
            try:
                moved, following = await self._due(
                    keys=keys, args=[time.time() + DUE_AHEAD, _DUE_PER_CALL]
                )
                if int(moved) == _DUE_PER_CALL:
                    continue  # more are due
                if following is not None:
                    pause = max(0.01, min(pause, float(following) - DUE_AHEAD - time.time()))
            except redis.exceptions.RedisError as exc:
                log.warning("Redis delayed delivery will retry: %s", exc)
                pause = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), pause)

"""Putting unacked deliveries back on their queues: the stale ones, as kombu's
``restore_visible`` does, and a dead worker's at once, for the controller.

Each goes back atomically (``lua/redis_restore.lua``) to the consuming end of the queues its
exchange and routing key lead to, with kombu's redelivered flags, and only if its claim is still
the one read: a delivery its owner renewed or settled meanwhile stays where it is.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import cast

import redis.asyncio
import redis.exceptions

from protocol import CeleriacError
from protocol.kombu_redis import parse_unacked, payload_priority, redelivered_payload

from .options import RedisOptions

__all__ = ["Restorer"]

log = logging.getLogger(__name__)

_RESTORE = (files("runtime.transports.redis") / "lua" / "redis_restore.lua").read_text()
#: Stale deliveries examined per page of a sweep.
_SWEEP_PAGE = 100


class Restorer:
    """Restores deliveries recorded in ``unacked`` under ``options``' layout; ``lookup`` gives
    the queues an exchange and routing key lead to."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        options: RedisOptions,
        lookup: Callable[[str, str], Awaitable[list[str]]],
    ) -> None:
        self._client = client
        self._options = options
        self._layout = options.layout
        self._lookup = lookup
        self._script = client.register_script(_RESTORE)

    async def restore_visible(self) -> int:
        """Put back every delivery whose claim is older than ``visibility_timeout``.

        kombu's ``restore_visible``: under ``unacked_mutex``, each stale delivery goes back to
        the consuming end of the queues its exchange and routing key lead to, with kombu's
        redelivered flags. Returns how many were restored (0 if another consumer holds the
        mutex).
        """
        client = self._client
        lock = client.lock(self._layout.unacked_mutex, timeout=self._options.unacked_mutex_expire)
        if not await lock.acquire(blocking=False):
            return 0
        try:
            ceiling = time.time() - self._options.visibility_timeout
            restored, skipped = 0, 0
            while True:
                # The client does not decode responses: members and values are bytes.
                tags = cast("list[bytes]", await client.zrange(
                    self._layout.unacked_index, "-inf", ceiling,
                    byscore=True, offset=skipped, num=_SWEEP_PAGE,
                ))  # fmt: skip
                if not tags:
                    return restored
                values = cast("list[bytes | None]", await client.hmget(self._layout.unacked, tags))
                for tag, value in zip(tags, values, strict=True):
                    if await self._restore_one(tag, value, ceiling):
                        restored += 1
                    elif value is not None:
                        skipped += 1
        finally:
            with contextlib.suppress(redis.exceptions.LockError):
                await lock.release()

    async def _restore_one(self, tag: bytes, value: bytes | None, ceiling: float) -> bool:
        if value is None:  # an index entry without a record: drop it, as kombu does
            await self._script(keys=[self._layout.unacked, self._layout.unacked_index],
                                args=[tag, ceiling, b"", b""])  # fmt: skip
            return False
        try:
            payload, exchange, routing_key = parse_unacked(value)
        except CeleriacError as exc:
            log.error("cannot restore unacked delivery %r: %s", tag, exc)
            return False
        queues = await self._lookup(exchange, routing_key) or [routing_key]
        priority = payload_priority(payload)
        keys = [self._layout.queue_key(queue, priority) for queue in queues]
        done = await self._script(
            keys=[self._layout.unacked, self._layout.unacked_index, *keys],
            args=[tag, ceiling, value, redelivered_payload(payload)],
        )
        return bool(done)

    async def restore_now(self, tag: bytes) -> bool:
        """Put back the delivery ``tag`` whatever the age of its claim; ``False`` if it was
        settled or restored already."""
        value = cast("bytes | None", await self._client.hget(self._layout.unacked, tag))
        # Any claim is old enough: a ceiling far in the future.
        return value is not None and await self._restore_one(tag, value, time.time() + 1e9)

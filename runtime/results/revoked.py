"""Revoked task ids: a bounded, expiring set in memory, persisted in the result backend's Redis.

:class:`RevokedIds` follows Celery's ``LimitedSet`` for ``worker_state.revoked``: at most
50,000 ids (the oldest go first), each for 3 hours (``CELERY_WORKER_REVOKES_MAX`` and
``CELERY_WORKER_REVOKE_EXPIRES``'s defaults). One difference: Celery purges expired ids only
when its set is full, so an id can stay revoked there for longer; here an id is revoked for
exactly its lifetime, the same in memory and in Redis.

:class:`RevokedStore` keeps the ids where a worker started later finds them: a sorted set
(:attr:`protocol.ResultKeys.revoked`, ``celeriac-revoked``) scored by each id's expiry time,
trimmed to the same bound. Celery keeps revoked ids in worker memory (or a ``--statedb``
file) and hands them to a starting worker over mingle; celeriac answers mingle's ``hello``
too (:mod:`runtime.control.commands`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import structlog

from runtime.errors import BackendError, translate_redis_errors

if TYPE_CHECKING:
    import redis.asyncio

    from .backend import RedisResultBackend

__all__ = ["REVOKES_MAX", "REVOKE_EXPIRES", "Revocations", "RevokedIds", "RevokedStore"]

#: Celery's bound on the revoked set (``CELERY_WORKER_REVOKES_MAX``).
REVOKES_MAX = 50_000
#: Seconds an id stays revoked (Celery's ``CELERY_WORKER_REVOKE_EXPIRES``: 3 hours).
REVOKE_EXPIRES = 10_800.0


class RevokedIds:
    """Task ids revoked for ``expires`` seconds each, at most ``maxlen`` of them.

    ``clock`` is monotonic (``time.monotonic``); ids are kept oldest first.
    """

    def __init__(
        self,
        *,
        maxlen: int = REVOKES_MAX,
        expires: float = REVOKE_EXPIRES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maxlen = maxlen
        self.expires = expires
        self._clock = clock
        self._until: dict[str, float] = {}  # id -> when it stops being revoked, oldest first

    def add(self, task_id: str, *, lifetime: float | None = None) -> None:
        """Revoke ``task_id`` for ``lifetime`` seconds (default: ``expires``), from now."""
        self._until.pop(task_id, None)  # re-adding makes it the newest
        self._until[task_id] = self._clock() + (self.expires if lifetime is None else lifetime)
        self.purge()

    def update(self, task_ids: Iterable[str]) -> None:
        """Revoke each of ``task_ids`` for ``expires`` seconds."""
        for task_id in task_ids:
            self.add(task_id)

    def __contains__(self, task_id: object) -> bool:
        until = self._until.get(task_id) if isinstance(task_id, str) else None
        if until is None:
            return False
        if until > self._clock():
            return True
        del self._until[task_id]  # type: ignore[arg-type]  # a str: it was found
        return False

    def purge(self) -> None:
        """Drop the ids over ``maxlen`` and the expired ones, oldest first."""
        while len(self._until) > self.maxlen:
            del self._until[next(iter(self._until))]
        now = self._clock()
        while self._until:
            oldest = next(iter(self._until))
            if self._until[oldest] > now:
                break
            del self._until[oldest]

    def lifetimes(self) -> Iterator[tuple[str, float]]:
        """``(id, seconds left)`` for each id still revoked, oldest first."""
        now = self._clock()
        for task_id, until in list(self._until.items()):
            if until > now:
                yield task_id, until - now

    def __iter__(self) -> Iterator[str]:
        return (task_id for task_id, _ in self.lifetimes())

    def __len__(self) -> int:
        return sum(1 for _ in self.lifetimes())


class RevokedStore:
    """Revoked ids in Redis, so that they outlive the workers that heard of them.

    A sorted set at ``key``, each id scored by the Unix time its revocation expires; writes
    drop expired ids and trim the set to ``maxlen`` (oldest first), and the key itself expires
    with its newest id. ``clock`` is wall time (``time.time``): other hosts read the scores.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        key: str,
        *,
        maxlen: int = REVOKES_MAX,
        expires: float = REVOKE_EXPIRES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.key = key
        self.maxlen = maxlen
        self.expires = expires
        self._clock = clock

    @classmethod
    def for_backend(cls, backend: RedisResultBackend) -> RevokedStore:
        """The store beside ``backend``'s results (under its key prefix)."""
        return cls(backend.client, backend.keys.revoked)

    async def add(self, task_ids: Iterable[str]) -> None:
        """Record ``task_ids`` as revoked for ``expires`` seconds from now."""
        now = self._clock()
        scores = dict.fromkeys(task_ids, now + self.expires)
        if not scores:
            return
        with translate_redis_errors(f"record {len(scores)} revoked task ids"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(self.key, scores)
                pipe.zremrangebyscore(self.key, "-inf", now)
                pipe.zremrangebyrank(self.key, 0, -self.maxlen - 1)
                pipe.expire(self.key, math.ceil(self.expires))
                await pipe.execute()

    async def load(self) -> list[tuple[str, float]]:
        """``(id, seconds left)`` for every id still revoked, oldest first."""
        now = self._clock()
        with translate_redis_errors("read the revoked task ids"):
            found = cast("list[tuple[bytes, float]]", await self._client.zrange(
                self.key, now, "+inf", byscore=True, withscores=True
            ))  # fmt: skip
        return [(_text(member), float(score) - now) for member, score in found]


def _text(member: bytes) -> str:
    return member.decode("utf-8", "replace")


class Revocations:
    """The revoked ids a worker obeys: :class:`RevokedIds` in memory, written through to a
    :class:`RevokedStore` when there is one (a Redis result backend).

    Without a store, ids revoked while a worker runs are forgotten when it stops. A store that
    fails is logged and the ids are still revoked in memory.
    """

    def __init__(
        self, store: RevokedStore | None, *, ids: RevokedIds | None = None, logger: Any = None
    ) -> None:
        self.store = store
        self.ids = ids or RevokedIds()
        self.log = logger or structlog.get_logger("celeriac.revocation")

    def __contains__(self, task_id: object) -> bool:
        return task_id in self.ids

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    async def load(self) -> None:
        """Take in the ids the store holds (revoked before this worker started)."""
        if self.store is None:
            return
        try:
            found = await self.store.load()
        except BackendError as exc:
            self.log.warning("revoked_not_loaded", error=str(exc))
            return
        for task_id, lifetime in found:
            self.ids.add(task_id, lifetime=lifetime)
        self.log.info("revoked_loaded", count=len(found))

    async def revoke(self, task_ids: Iterable[str]) -> None:
        """Revoke ``task_ids`` here and in the store."""
        listed = list(task_ids)
        self.ids.update(listed)
        if self.store is None:
            return
        try:
            await self.store.add(listed)
        except BackendError as exc:
            self.log.warning("revoked_not_stored", count=len(listed), error=str(exc))

    def merge(self, task_ids: Iterable[str]) -> None:
        """Revoke ids another worker sent (mingle), here only: that worker has stored them."""
        self.ids.update(task_ids)

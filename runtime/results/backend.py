"""The Redis result backend, byte-compatible with Celery's.

Records are what :mod:`protocol.results` encodes, under Celery's keys; every write is
followed by a ``PUBLISH`` of the same bytes on a channel named like the key, which is how a
Celery client's ``AsyncResult.get()`` learns of it without polling. A SUCCESS record is never
overwritten (a redelivered duplicate must not replace a result a client may have read). The
writes asked for in one turn of the event loop go to Redis in one script call
(:class:`~runtime.batching.TurnBatch`): one round trip for a turn's results.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from protocol import (
    DEFAULT_ACCEPT,
    READY_STATES,
    AcceptPolicy,
    ResultKeys,
    ResultMeta,
    State,
    decode_result,
    encode_result,
)
from runtime.batching import TurnBatch
from runtime.errors import translate_redis_errors
from runtime.results.retrying import NO_RETRY, StoreRetry

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["DEFAULT_RESULT_EXPIRES", "RedisResultBackend"]

#: Celery's ``result_expires`` default: one day.
DEFAULT_RESULT_EXPIRES = 86_400.0

_STORE_SCRIPT = (files("runtime.results") / "lua" / "store_results.lua").read_text()
#: The most results one script call stores: a long script would hold up every other client.
_STORES_PER_CALL = 200


class RedisResultBackend:
    """Stores and reads task results in Redis exactly as Celery's Redis backend does.

    ``result_expires`` (seconds, ``None`` for never) is Celery's setting of the same name;
    ``failure_expires`` overrides it for FAILURE records (Celery 5.7's
    ``result_failure_expires``). ``global_keyprefix`` is the backend's transport option.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        result_expires: float | None = DEFAULT_RESULT_EXPIRES,
        failure_expires: float | None = None,
        serializer: str = "json",
        accept: AcceptPolicy = DEFAULT_ACCEPT,
        global_keyprefix: str = "",
        retry: StoreRetry = NO_RETRY,
    ) -> None:
        self._client = client
        self._store = client.register_script(_STORE_SCRIPT)
        self._writes: TurnBatch[tuple[str, bytes, int], int] = TurnBatch(
            self._write_batch, most=_STORES_PER_CALL, name="celeriac-results"
        )
        self.result_expires = result_expires
        self.failure_expires = failure_expires
        self.serializer = serializer
        self.accept = accept
        self.keys = ResultKeys(global_keyprefix)
        #: How a write that finds the backend away is retried.
        self.retry = retry

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisResultBackend:
        """Connect lazily to the Redis server at ``url`` (``redis://``, ``rediss://``)."""
        from runtime.redis_client import client_for  # noqa: PLC0415 - loads redis-py, only if used

        return cls(client_for(url), **options)

    @property
    def client(self) -> redis.asyncio.Redis:
        """The Redis client the results are stored with."""
        return self._client

    def _ttl(self, status: State) -> int:
        expires = self.result_expires
        if status is State.FAILURE and self.failure_expires is not None:
            expires = self.failure_expires
        return int(expires) if expires else 0

    async def store(self, meta: ResultMeta) -> bool:
        """Write ``meta`` and publish it; ``False`` if a SUCCESS record was kept instead. A
        backend that does not answer is retried as :attr:`retry` says (each retry joins the
        batch of its turn)."""
        write = (self.keys.task(meta.task_id), encode_result(meta, serializer=self.serializer),
                 self._ttl(meta.status))  # fmt: skip
        action = f"store the result of {meta.task_id}"
        return bool(await self.retry.call(lambda: self._writes.submit(write), what=action))

    async def _write_batch(self, writes: list[tuple[str, bytes, int]]) -> list[int]:
        args: list[bytes | int | str] = [self.serializer]
        for _, data, ttl in writes:
            args += (data, ttl)
        what = f"store {len(writes)} results" if len(writes) > 1 else f"store {writes[0][0]}"
        with translate_redis_errors(what):
            written = await self._store(keys=[key for key, _, _ in writes], args=args)
        return [int(flag) for flag in written]

    async def get(self, task_id: str) -> ResultMeta | None:
        """The stored record of ``task_id``, or ``None`` while it is PENDING.

        Raises :class:`protocol.MalformedMessage` if the stored value is not a record.
        """
        with translate_redis_errors(f"read the result of {task_id}"):
            data = await self._client.get(self.keys.task(task_id))
        return None if data is None else self._decode(data)

    def _decode(self, data: bytes | str) -> ResultMeta:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        return decode_result(raw, serializer=self.serializer, accept=self.accept)

    async def wait_for(self, task_id: str, *, timeout: float | None = None) -> ResultMeta:
        """Wait until ``task_id`` reaches a ready state and return its record.

        Subscribes to the result's channel before reading the key, so a result stored in
        between is not missed, as Celery's client does. Raises :class:`TimeoutError`.
        """
        key = self.keys.task(task_id)
        with translate_redis_errors(f"wait for the result of {task_id}"):
            async with self._client.pubsub() as pubsub, asyncio.timeout(timeout):
                await pubsub.subscribe(key)
                meta = await self.get(task_id)
                while meta is None or meta.status not in READY_STATES:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    if message is not None and message["type"] == "message":
                        meta = self._decode(message["data"])
                return meta

    async def aclose(self) -> None:
        """Send the writes already asked for, then close the connection pool."""
        await self._writes.drain()
        await self._client.aclose()

"""Fanout for remote control on Redis, as kombu does it: PUBLISH and PSUBSCRIBE.

:class:`RedisFanout` gives :class:`~runtime.transports.redis.transport.RedisTransport` the
:class:`~runtime.transports.base.Broadcasting` methods. kombu publishes a fanout message as its JSON
envelope on channel ``/<db>.<exchange>`` (:meth:`protocol.kombu_redis.RedisLayout.fanout_channel`,
``global_keyprefix`` included), and a listener PSUBSCRIBEs to it. Nothing is stored: a message
published while nobody listens is lost, as on kombu.

The listener holds one pooled connection. If Redis goes away it retries with backoff; redis-py
subscribes again on the new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import redis.exceptions

from protocol import CeleriacError, WireMessage, decode_envelope, encode_envelope
from protocol.kombu_redis import RedisLayout
from runtime.errors import BrokerConnectionError, translate_redis_errors

if TYPE_CHECKING:
    import redis.asyncio
    from redis.asyncio.client import PubSub

__all__ = ["RedisFanout", "listen"]

log = logging.getLogger(__name__)

#: Longest one wait for a message lasts, so that a closed transport is noticed.
_POLL = 1.0
#: Longest wait for Redis to confirm a new subscription.
_CONFIRM_WAIT = 10.0
_RETRY_MIN, _RETRY_MAX = 0.5, 10.0


class RedisFanout:
    """The :class:`~runtime.transports.base.Broadcasting` methods of the Redis transport.

    A mixin: the transport provides ``layout``, ``_closed``, its client (``_require``) and its
    direct-exchange routing (``_lookup``).
    """

    layout: RedisLayout
    _closed: asyncio.Event

    def _require(self) -> redis.asyncio.Redis:
        raise NotImplementedError

    async def _lookup(self, exchange: str, routing_key: str) -> list[str]:
        raise NotImplementedError

    async def broadcasts(self, exchange: str, queue: str) -> AsyncGenerator[WireMessage, None]:
        """PSUBSCRIBE to fanout ``exchange`` as kombu does (no ``queue`` is needed here)."""
        with _translate(f"listen to {exchange!r}"):
            return await listen(self._require(), self._channel(exchange), self._closed)

    async def broadcast(self, message: WireMessage, *, exchange: str) -> None:
        """PUBLISH kombu's envelope on fanout ``exchange``'s channel."""
        payload = _envelope(message, exchange, "")
        with _translate(f"broadcast to {exchange!r}"):
            await self._require().publish(self._channel(exchange), payload)

    async def reply(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        """LPUSH onto the queues bound to ``exchange`` with ``routing_key``; with none (the
        sender stopped waiting and its binding expired), nothing, as kombu does."""
        payload = _envelope(message, exchange, routing_key)
        with _translate(f"reply to {exchange!r} with key {routing_key!r}"):
            for queue in await self._lookup(exchange, routing_key):
                await self._require().lpush(self.layout.queue_key(queue), payload)

    async def emit(self, message: WireMessage, *, exchange: str, routing_key: str) -> None:
        """PUBLISH kombu's envelope on ``/<db>.<exchange>/<routing_key>``: kombu switches
        Celery's topic event exchange to fanout on Redis, one channel per routing key, which
        monitors PSUBSCRIBE to as ``/<db>.celeryev/*``."""
        payload = _envelope(message, exchange, routing_key)
        with _translate(f"emit to {exchange!r} with key {routing_key!r}"):
            await self._require().publish(self._channel(exchange, routing_key), payload)

    def _channel(self, exchange: str, routing_key: str = "") -> str:
        db = self._require().connection_pool.connection_kwargs.get("db") or 0
        return self.layout.fanout_channel(exchange, db=int(db), routing_key=routing_key)


def _envelope(message: WireMessage, exchange: str, routing_key: str) -> bytes:
    return encode_envelope(
        message, exchange=exchange, routing_key=routing_key, delivery_tag=str(uuid.uuid4())
    )


def _translate(action: str) -> contextlib.AbstractContextManager[None]:
    return translate_redis_errors(action, error=BrokerConnectionError, what="broker")


async def listen(
    client: redis.asyncio.Redis, channel: str, closed: asyncio.Event
) -> AsyncGenerator[WireMessage, None]:
    """PSUBSCRIBE to ``channel``; the messages published on it, until ``closed`` is set.

    Returns once Redis has confirmed the subscription: redis-py's ``psubscribe`` returns when
    the command is written, and a message published on another connection before Redis has
    read it is not delivered (a broadcast sent right after the listener was set up was lost).
    """
    pubsub = client.pubsub()
    try:
        await pubsub.psubscribe(channel)
        async with asyncio.timeout(_CONFIRM_WAIT):
            while True:
                reply = await pubsub.get_message(timeout=_POLL)
                if reply is not None and reply.get("type") == "psubscribe":
                    break
    except TimeoutError as exc:
        await _close(pubsub)
        raise redis.exceptions.TimeoutError(
            f"Redis did not confirm the subscription to {channel!r} in {_CONFIRM_WAIT:.0f} s"
        ) from exc
    except BaseException:
        await _close(pubsub)
        raise
    return _receive(pubsub, channel, closed)


async def _receive(
    pubsub: PubSub, channel: str, closed: asyncio.Event
) -> AsyncGenerator[WireMessage, None]:
    retry = _RETRY_MIN
    try:
        while not closed.is_set():
            # redis-py 8.1 can swallow a cancellation that lands while it reads: look again.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise asyncio.CancelledError
            try:
                received = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("Redis broadcasts on %r: retrying in %.1f s: %s", channel, retry, exc)
                await asyncio.sleep(retry)
                retry = min(retry * 2, _RETRY_MAX)
                continue
            retry = _RETRY_MIN
            if received is None or received.get("type") != "pmessage":
                continue
            try:
                envelope = decode_envelope(received["data"])
            except CeleriacError as exc:
                log.warning("dropping an unreadable broadcast on %r: %s", channel, exc)
                continue
            yield envelope.message
    finally:
        await _close(pubsub)


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(redis.exceptions.RedisError, OSError):
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8.2

"""Monitor-queue mirroring on Redis: copies of task messages routed as kombu routes a topic
exchange.

kombu keeps no exchange type in Redis: a producer that declared an exchange ``topic`` routes a
message by reading the exchange's binding set ``_kombu.binding.<exchange>`` (WIRE.md 4.3) and
pushing it to every queue whose member's pattern, a regular expression made from the binding
key (``*`` one word, ``#`` any), matches the routing key. Here the monitor queue's member
(``#``, its pattern ``^.*?$``) is added, as kombu's ``queue_bind`` adds it (to the permanent
set too), the table read, and the envelope LPUSHed to each matching queue's list for the
message's priority, with ``delivery_info`` naming the exchange and routing key as kombu's does.
A kombu or Celery consumer of the monitor queue reads it as any message of its own.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from typing import TYPE_CHECKING

from protocol import CeleriacError, WireMessage, encode_envelope
from protocol.kombu_redis import RedisLayout, parse_binding_member

if TYPE_CHECKING:
    import redis.asyncio

    from runtime.transports.base import QueueSpec

__all__ = ["MONITOR_BINDING_KEY", "RedisMirroring", "topic_matches", "topic_pattern"]

#: What the monitor queue is bound with: every routing key.
MONITOR_BINDING_KEY = "#"
#: kombu's ``TopicExchange.wildcards``.
_WILDCARDS = {"*": r"[^\.]+", "#": r".*?"}


def topic_pattern(binding_key: str) -> str:
    """The regular expression kombu stores for a topic binding (``key_to_pattern``)."""
    escaped = "".join(
        c if c.isalnum() or c in ".#*" else ("\\000" if c == "\000" else "\\" + c)
        for c in binding_key
    )
    words = r"\.".join(_WILDCARDS.get(word, word) for word in escaped.split("."))
    return f"^{words}$"


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a binding's ``pattern`` takes ``routing_key``, as kombu's ``re.match``; a
    pattern that is not a regular expression takes nothing."""
    try:
        return re.match(pattern, routing_key) is not None
    except re.error:
        return False


class RedisMirroring:
    """The :class:`~runtime.transports.base.Mirroring` method of the Redis transport.

    A mixin: the transport provides its client (``_require``), its ``layout`` and its error
    translation (``_translate``).
    """

    layout: RedisLayout

    def _require(self) -> redis.asyncio.Redis:
        raise NotImplementedError

    @staticmethod
    def _translate(action: str) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    async def mirror(
        self, message: WireMessage, *, exchange: str, routing_key: str, queue: QueueSpec
    ) -> None:
        """Bind ``queue`` to ``exchange`` with ``#`` and push ``message`` to every queue of
        the exchange whose binding matches ``routing_key`` (see the module docstring)."""
        layout = self.layout
        client = self._require()
        member = layout.binding_member(
            MONITOR_BINDING_KEY, queue.name, topic_pattern(MONITOR_BINDING_KEY)
        )
        payload = encode_envelope(
            message, exchange=exchange, routing_key=routing_key, delivery_tag=str(uuid.uuid4())
        )
        priority = int(message.properties.get("priority") or 0)
        with self._translate(f"mirror to exchange {exchange!r}"):
            # Bound on every copy (SADD is idempotent): a binding deleted meanwhile comes back.
            async with client.pipeline(transaction=False) as pipe:
                pipe.sadd(layout.binding_key(exchange), member)
                pipe.sadd(layout.permanent_binding_key(exchange), member)
                pipe.smembers(layout.binding_key(exchange))
                *_, members = await pipe.execute()
            targets = set()
            for found in members:
                with contextlib.suppress(CeleriacError):
                    _key, pattern, target = parse_binding_member(found, layout.sep)
                    if target and topic_matches(pattern, routing_key):
                        targets.add(target)
            for target in sorted(targets):
                await client.lpush(layout.queue_key(target, priority), payload)

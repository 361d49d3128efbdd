"""RabbitMQ's native delayed delivery as Celery 5.5+ lays it out (kombu's
``transport/native_delayed_delivery.py``): the names, arguments and routing keys.

A message delayed by *n* seconds is published to the topic exchange ``celery_delayed_27`` with
the routing key made of *n*'s 28 bits, most significant first, then the destination's routing
key: ``0.0. … .1.0.1.celery``. Level *k* (exchange and queue ``celery_delayed_<k>``) routes a
message whose bit *k* is 1 into its queue, where it waits ``2**k`` seconds (the queue's TTL) and
is dead-lettered to level *k-1*; a 0 bit skips straight to the next level's exchange. Level 0
dead-letters to ``celery_delayed_delivery``, where each destination queue is bound with
``#.<its routing key>``. Every level queue has a single TTL, so messages expire in arrival order
and the delay is exact to the second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["LEVELS", "DelayedDelivery", "Topology", "delay_routing_key", "strip_delay"]

#: Bits of the delay in seconds, so at most ``2**28 - 1`` s (8.5 years).
LEVELS = 28
_PREFIX = re.compile(r"^(?:[01]\.){%d}" % LEVELS)  # noqa: UP031 - a regex, not a message


def delay_routing_key(seconds: int, routing_key: str) -> str:
    """The routing key that delays a message by ``seconds`` on its way to ``routing_key``.

    A key that already carries a delay (a message that came back and is delayed again) has
    it replaced, as kombu does, so the key never grows past AMQP's 255 bytes.
    """
    if not 1 <= seconds < 2**LEVELS:
        raise ValueError(f"a delay must be 1 to {2**LEVELS - 1} seconds, not {seconds}")
    if not routing_key:
        raise ValueError("routing_key must not be empty")
    bits = ".".join(f"{seconds:0{LEVELS}b}")
    return f"{bits}.{strip_delay(routing_key)}"


def strip_delay(routing_key: str) -> str:
    """``routing_key`` without the delay bits a delayed message arrives with."""
    return _PREFIX.sub("", routing_key, count=1)


@dataclass(frozen=True, slots=True)
class DelayedDelivery:
    """The topology's names and arguments; ``prefix`` is kombu's optional name prefix."""

    prefix: str = ""
    queue_type: str = "quorum"

    def __post_init__(self) -> None:
        if self.queue_type not in ("classic", "quorum"):
            raise ValueError(f"queue_type must be classic or quorum, not {self.queue_type!r}")

    def level(self, level: int) -> str:
        """The exchange and queue of ``level``: ``[<prefix>_]celery_delayed_<level>``."""
        name = f"celery_delayed_{level}"
        return f"{self.prefix}_{name}" if self.prefix else name

    @property
    def entry(self) -> str:
        """The exchange a delayed message is published to: the highest level's."""
        return self.level(LEVELS - 1)

    def first_stop(self, seconds: int) -> str:
        """The exchange to publish a message delayed ``seconds`` to: the level of its highest
        1 bit. From :attr:`entry` the broker would route it down through every level above,
        whose bit is 0, one topic-exchange hop each, to the same place: here it starts there.
        """
        if not 1 <= seconds < 2**LEVELS:
            raise ValueError(f"a delay must be 1 to {2**LEVELS - 1} seconds, not {seconds}")
        return self.level(seconds.bit_length() - 1)

    @property
    def delivery(self) -> str:
        """The topic exchange delayed messages leave through, to their destination."""
        name = "celery_delayed_delivery"
        return f"{self.prefix}_{name}" if self.prefix else name

    def queue_arguments(self, level: int) -> dict[str, Any]:
        """The arguments level ``level``'s queue is declared with (as kombu declares it)."""
        arguments: dict[str, Any] = {
            "x-queue-type": self.queue_type,
            "x-overflow": "reject-publish",
            "x-message-ttl": 2**level * 1000,
            "x-dead-letter-exchange": self.level(level - 1) if level > 0 else self.delivery,
        }
        if self.queue_type == "quorum":
            arguments["x-dead-letter-strategy"] = "at-least-once"
        return arguments

    def topology(self) -> Topology:
        """Everything to declare, in kombu's order: each level's exchange, queue and binding
        from the highest level down, then the skips from one level's exchange to the next
        lower, then the delivery exchange and its binding to level 0."""
        exchanges, queues, queue_bindings = [], [], []
        for level in range(LEVELS - 1, -1, -1):
            exchanges.append(self.level(level))
            queues.append((self.level(level), self.queue_arguments(level)))
            queue_bindings.append((self.level(level), self.level(level), _bit_key(level, "1")))
        exchange_bindings = [
            (self.level(level - 1), self.level(level), _bit_key(level, "0"))
            for level in range(LEVELS - 1, 0, -1)
        ]
        exchanges.append(self.delivery)
        exchange_bindings.append((self.delivery, self.level(0), _bit_key(0, "0")))
        return Topology(exchanges, queues, queue_bindings, exchange_bindings)

    @staticmethod
    def destination_binding(routing_key: str) -> str:
        """The key binding a destination queue to :attr:`delivery`."""
        return routing_key if routing_key.startswith("#") else f"#.{routing_key}"


@dataclass(frozen=True, slots=True)
class Topology:
    """What :meth:`DelayedDelivery.topology` declares. Every exchange is a durable topic
    exchange and every queue durable; bindings are ``(destination, source, routing key)``."""

    exchanges: list[str]
    queues: list[tuple[str, dict[str, Any]]]
    queue_bindings: list[tuple[str, str, str]]
    exchange_bindings: list[tuple[str, str, str]]


def _bit_key(level: int, bit: str) -> str:
    """The topic pattern matching keys whose bit ``level`` is ``bit``."""
    return "*." * (LEVELS - 1 - level) + f"{bit}.#"

"""Brokers, behind one interface.

Owns: the :class:`~runtime.transports.base.Transport` interface and the delivery it hands out
(:mod:`.base`), the URL-to-transport table (:mod:`.urls`), reconnection with backoff
(:mod:`.reconnect`), and one module or sub-package per broker: :mod:`.amqp` (with its delayed
delivery and fanout), :mod:`.redis` (options, claims, delay store, fanout and its Lua
scripts), :mod:`.sqs` and :mod:`.memory`.

May import: :mod:`protocol`, :mod:`runtime.errors` and :mod:`runtime.redis_client`; never the
worker, the app or anything else above it. No transport imports the table: the table imports
each transport when a URL names it.
"""

from .base import Broadcasting, Capacity, Delivery, QueueSpec, Transport
from .urls import DEFAULT_BROKER, transport_for_url

__all__ = [
    "DEFAULT_BROKER",
    "Broadcasting",
    "Capacity",
    "Delivery",
    "QueueSpec",
    "Transport",
    "transport_for_url",
]

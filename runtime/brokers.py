"""Broker URL to transport: ``amqp://``, ``amqps://`` and ``memory://`` today."""

from __future__ import annotations

from urllib.parse import urlsplit

from .transport import Transport

__all__ = ["DEFAULT_BROKER", "transport_for_url"]

#: Celery's default broker: RabbitMQ on this machine as guest.
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def transport_for_url(url: str) -> Transport:
    """A transport for ``url``; ``ValueError`` naming the scheme if none handles it."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryTransport  # noqa: PLC0415 - imported only when used

        return MemoryTransport(url)
    if scheme in ("amqp", "amqps", "pyamqp"):
        from .amqp import AmqpTransport  # noqa: PLC0415 - imported only when used

        return AmqpTransport(url.replace("pyamqp://", "amqp://", 1))
    raise ValueError(
        f"no transport for {scheme or url!r} URLs (supported: amqp://, amqps://, memory://)"
    )

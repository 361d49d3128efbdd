"""Broker URL to transport: ``amqp://``, ``amqps://``, ``redis://``, ``rediss://``,
``unix://``, ``sqs://``, ``memory://``.

``sqs://`` needs the optional extra ``celeriac[sqs]`` (aiobotocore); the others need nothing
more. Transport options are Celery's ``broker_transport_options`` (``visibility_timeout``,
``global_keyprefix``, ``queue_name_prefix``, ...): what each transport reads is in its own
module (:mod:`runtime.transports.sqs` for SQS). As kombu does,
options given in the URL's query string (``redis://host/0?visibility_timeout=60``) are read
too, and win over the mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, overload
from urllib.parse import urlsplit

from runtime.errors import MASK, mask_secrets

from .base import Transport, transport_options

__all__ = ["DEFAULT_BROKER", "MASK", "mask_secrets", "masked_url", "transport_for_url"]

#: Celery's default broker: RabbitMQ on this machine as guest.
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def transport_for_url(url: str, options: Mapping[str, Any] | None = None) -> Transport:
    """A transport for ``url`` with transport ``options``; ``ValueError`` naming the scheme
    if none handles it."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryTransport  # noqa: PLC0415 - imported only when used

        return MemoryTransport(url)
    if scheme in ("amqp", "amqps", "pyamqp"):
        from runtime.transports.amqp.transport import AmqpTransport  # noqa: PLC0415 - imported only when used

        return AmqpTransport(url.replace("pyamqp://", "amqp://", 1))
    if scheme in ("redis", "rediss", "unix"):
        from runtime.transports.redis.transport import RedisTransport  # noqa: PLC0415 - imported only when used

        return RedisTransport(url, options)
    if scheme == "sqs":
        return _sqs_transport(url, transport_options(url, options))
    raise ValueError(
        f"no transport for {scheme or url!r} URLs "
        "(supported: amqp://, amqps://, redis://, rediss://, unix://, sqs://, memory://)"
    )


def _sqs_transport(url: str, options: Mapping[str, Any]) -> Transport:
    try:
        from .sqs import SqsTransport  # noqa: PLC0415 - an optional extra, imported when used
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("aiobotocore", "botocore", "aiohttp"):
            raise
        raise ImportError(
            f"sqs:// brokers need aiobotocore ({exc.name} is missing): pip install 'celeriac[sqs]'"
        ) from exc
    return SqsTransport(url, options)


@overload
def masked_url(url: str) -> str: ...
@overload
def masked_url(url: None) -> None: ...
def masked_url(url: str | None) -> str | None:
    """``url`` with its password masked as Celery masks it (``amqp://guest:********@host//``),
    for logs, replies and tables (:func:`mask_secrets` on one URL)."""
    return mask_secrets(url) if url else url

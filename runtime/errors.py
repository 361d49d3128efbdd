"""Errors the runtime raises, and the translation of third-party ones at its boundary.

Tree (below :class:`protocol.CeleriacError`)::

    CeleriacError
    ├── BackendError (also ConnectionError)            the result backend failed or is unreachable
    └── BrokerConnectionError (also ConnectionError)   the message broker failed or is unreachable

Neither ever carries a password: :func:`mask_secrets` masks every ``scheme://user:password@``
in their messages (the one masking function of the runtime; log lines, control replies and
load reports use it too, through :func:`runtime.transports.urls.masked_url`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from protocol import CeleriacError

__all__ = [
    "MASK",
    "BackendError",
    "BrokerConnectionError",
    "mask_secrets",
    "translate_amqp_errors",
    "translate_aws_errors",
    "translate_redis_errors",
]


#: What a password is shown as: Celery's mask (``amqp://guest:********@host//``).
MASK = "********"

#: A URL's scheme and authority (``scheme://user:password@host:port``), wherever it is in a
#: text: up to the first character that cannot be in an authority.
_AUTHORITY = re.compile(r"""([A-Za-z][A-Za-z0-9+.\-]*://)([^\s/?#'"<>()\[\],;]*)""")


def _mask_authority(match: re.Match[str]) -> str:
    scheme, authority = match.groups()
    userinfo, at, host = authority.rpartition("@")  # a password may hold an unescaped "@"
    user, colon, _password = userinfo.partition(":")
    if not at or not colon:
        return match.group(0)
    return f"{scheme}{user}:{MASK}@{host}"


def mask_secrets(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it masked
    (``********``): for URLs, error messages and log lines alike."""
    return _AUTHORITY.sub(_mask_authority, text) if "://" in text else text


class _Masked(Exception):
    """An exception whose text arguments have every password in a URL masked."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(mask_secrets(a) if isinstance(a, str) else a for a in args))


class BackendError(_Masked, CeleriacError, ConnectionError):
    """The result backend could not be reached or refused an operation."""


class BackendUnavailable(BackendError):
    """The result backend did not answer (refused, lost, timed out, still loading its data):
    the same call may succeed later."""


class BrokerConnectionError(_Masked, CeleriacError, ConnectionError):
    """The message broker could not be reached or refused an operation."""


@contextmanager
def translate_redis_errors(
    action: str, *, error: type[CeleriacError] = BackendError, what: str = "result backend"
) -> Iterator[None]:
    """Re-raise redis-py's exceptions as ``error`` (:class:`BackendError` by default, the
    broker's :class:`BrokerConnectionError` for the Redis transport), naming ``what`` failed
    and the ``action`` attempted."""
    import redis.exceptions  # noqa: PLC0415 - a worker that never talks to Redis never loads it

    try:
        yield
    except redis.exceptions.RedisError as exc:
        lost = isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))
        raised = BackendUnavailable if lost and error is BackendError else error
        raise raised(f"{what}: cannot {action}: {exc}") from exc


@contextmanager
def translate_amqp_errors(action: str) -> Iterator[None]:
    """Re-raise aio-pika's, aiormq's and socket errors as :class:`BrokerConnectionError`.

    aiormq raises its ``AMQPError`` tree for broker refusals (``ChannelClosed`` with the
    reply code, e.g. 406 PRECONDITION_FAILED), ``ChannelInvalidStateError`` (a
    ``RuntimeError``) on a closed channel, and plain ``OSError``\\ s from the socket.
    """
    import aiormq.exceptions  # noqa: PLC0415 - a worker on Redis or SQS never loads aiormq

    try:
        yield
    except BrokerConnectionError:
        raise
    except (
        aiormq.exceptions.AMQPError,
        aiormq.exceptions.ChannelInvalidStateError,
        OSError,
    ) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BrokerConnectionError(f"broker: cannot {action}: {reason}") from exc


@contextmanager
def translate_aws_errors(action: str) -> Iterator[None]:
    """Re-raise botocore's, aiohttp's and socket errors as :class:`BrokerConnectionError`.

    botocore raises ``ClientError`` for refusals (its message names the operation and the
    error code, e.g. ``AWS.SimpleQueueService.NonExistentQueue``) and ``BotoCoreError``
    subclasses for the rest (no endpoint, no credentials); aiohttp's and ``OSError``\\ s come
    from the connection; ``TimeoutError`` from a read that took too long. botocore is an
    optional dependency (``celeriac[sqs]``), so it is imported only here.
    """
    import aiohttp  # noqa: PLC0415 - only installed with the sqs extra
    import botocore.exceptions  # noqa: PLC0415 - only installed with the sqs extra

    try:
        yield
    except BrokerConnectionError:
        raise
    except (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        aiohttp.ClientError,
        OSError,
    ) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BrokerConnectionError(f"broker: cannot {action}: {reason}") from exc

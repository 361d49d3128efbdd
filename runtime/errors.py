"""Errors the runtime raises, and the translation of third-party ones at its boundary.

Tree (below :class:`protocol.CeleriacError`)::

    CeleriacError
    └── BackendError (also ConnectionError)    the result backend failed or is unreachable
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions

from protocol import CeleriacError

__all__ = ["BackendError", "translate_redis_errors"]


class BackendError(CeleriacError, ConnectionError):
    """The result backend could not be reached or refused an operation."""


@contextmanager
def translate_redis_errors(action: str) -> Iterator[None]:
    """Re-raise redis-py's exceptions as :class:`BackendError`, naming what was attempted."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise BackendError(f"result backend: cannot {action}: {exc}") from exc

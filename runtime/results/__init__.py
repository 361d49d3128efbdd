"""What runs leave behind: the Redis result backend, byte-compatible with Celery's
(:mod:`.backend`, with its Lua script), the handles a producer waits on (:mod:`.handles`), and
revoked task ids, kept in the backend's Redis (:mod:`.revoked`).

May import: :mod:`protocol`, :mod:`runtime.errors` and :mod:`runtime.redis_client`.
"""

from .backend import DEFAULT_RESULT_EXPIRES, RedisResultBackend
from .handles import AsyncResult, GroupResult
from .revoked import Revocations, RevokedStore

__all__ = [
    "DEFAULT_RESULT_EXPIRES",
    "AsyncResult",
    "GroupResult",
    "RedisResultBackend",
    "Revocations",
    "RevokedStore",
]

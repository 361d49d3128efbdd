"""Redis with kombu's layout: the transport (:mod:`.transport`), its options (:mod:`.options`),
a claimed delivery (:mod:`.claims`), the delay store (:mod:`.delayed`), the remote-control
fanout (:mod:`.fanout`) and the Lua scripts that keep each step atomic (``lua/``). Imports only
:mod:`runtime.transports.base` of the transports, :mod:`runtime.errors` and
:mod:`runtime.redis_client`."""

from .options import RedisOptions
from .transport import RedisTransport

__all__ = ["RedisOptions", "RedisTransport"]

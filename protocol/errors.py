"""The exceptions celeriac raises, rooted at :class:`CeleriacError`.

Tree::

    CeleriacError
    └── ProtocolError                 anything wrong with bytes or values on the wire
        ├── EncodeError               a value this side wants to send cannot be serialised
        └── MalformedMessage          an input cannot be decoded; carries ``reason``
            ├── ContentDisallowed     a content type the accept policy refuses
            └── LimitExceeded         an input is larger or deeper than a configured limit

Every decoder in :mod:`protocol` raises :class:`MalformedMessage` (or a subclass) and nothing
else, whatever the bytes. Callers that only need to know "this message is bad" catch
``MalformedMessage``; the subclasses exist so that a dead-letter reason can say why.
"""

from __future__ import annotations

__all__ = [
    "CeleriacError",
    "ContentDisallowed",
    "EncodeError",
    "LimitExceeded",
    "MalformedMessage",
    "ProtocolError",
]


class CeleriacError(Exception):
    """Root of every exception celeriac defines."""


class ProtocolError(CeleriacError):
    """A value or a byte string does not follow Celery's wire protocol."""


class EncodeError(ProtocolError):
    """A value cannot be serialised with the chosen serializer (a datetime in msgpack, say)."""


class MalformedMessage(ProtocolError):
    """An input could not be decoded.

    ``reason`` is a short, human-readable sentence fit for a log line or a dead-letter header;
    ``field`` names the part of the message at fault when one is known (``"headers.eta"``).
    """

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class ContentDisallowed(MalformedMessage):
    """The message's content type is not in the accept policy (pickle and yaml by default)."""

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type
        super().__init__(f"refused content type {content_type!r}", field="content_type")


class LimitExceeded(MalformedMessage):
    """An input is over one of the :class:`protocol.Limits`."""

    def __init__(self, limit: str, value: int, maximum: int, *, field: str | None = None) -> None:
        self.limit = limit
        self.value = value
        self.maximum = maximum
        super().__init__(f"{limit} {value} is over the limit of {maximum}", field=field)

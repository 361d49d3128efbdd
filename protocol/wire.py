"""The transport-neutral message: what kombu calls a ``Message`` before it is decoded.

Every transport envelope (AMQP frames, kombu's Redis JSON, the SQS body) converts to and from
:class:`WireMessage`, and the task codec only ever sees this value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _fields
from .limits import Limits

__all__ = ["WireMessage"]


@dataclass(frozen=True, slots=True)
class WireMessage:
    """A serialised body with its content type, encoding, headers and properties.

    ``properties`` holds the AMQP basic properties Celery uses (``correlation_id``,
    ``reply_to``, ``delivery_mode``, ``priority``, ``expiration``); ``headers`` the
    application headers (task metadata in protocol v2).
    """

    body: bytes
    content_type: str | None
    content_encoding: str | None
    headers: Mapping[str, Any] = field(default_factory=_fields.empty_mapping)
    properties: Mapping[str, Any] = field(default_factory=_fields.empty_mapping)
    #: The limits the envelope decoder already checked ``headers`` against (a read-only
    #: copy), so that :func:`~protocol.decode_task` does not walk them a second time.
    headers_checked_with: Limits | None = field(default=None, compare=False, repr=False)

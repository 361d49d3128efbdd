"""Remote control ("pidbox") messages: the requests a worker obeys and the replies it sends.

kombu's ``Mailbox`` (``kombu/pidbox.py``), as Celery's ``app.control`` uses it (``WIRE.md``
section 9):

* a request is broadcast on the fanout exchange ``<namespace>.pidbox`` (``celery.pidbox``):
  body ``{method, arguments, destination, pattern, matcher}``, plus ``ticket`` and
  ``reply_to {exchange, routing_key}`` when the sender waits for replies; headers
  ``{clock, expires}`` (``expires`` 0 when the sender waits for none);
* each worker reads it through its own queue ``<nodename>.<namespace>.pidbox``;
* a reply goes to the direct exchange ``reply.<namespace>.pidbox`` with the request's routing
  key: body ``{nodename: value}``, headers ``{ticket, clock}``, transient.

Bodies use the sender's serializer (Celery's ``task_serializer``). :class:`LamportClock` is
kombu's logical clock, which every request and reply carries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

from . import _fields
from .limits import DEFAULT_LIMITS, Limits
from .serialization import DEFAULT_ACCEPT, AcceptPolicy, dumps, loads
from .wire import WireMessage

__all__ = [
    "NODE_QUEUE_ARGUMENTS",
    "ControlRequest",
    "LamportClock",
    "Mailbox",
    "ReplyTo",
    "decode_control",
    "encode_control",
    "encode_control_reply",
]

#: The arguments of a node's queue: Celery's ``control_queue_expires`` (10 s) and
#: ``control_queue_ttl`` (300 s), in milliseconds as kombu sends them to RabbitMQ.
NODE_QUEUE_ARGUMENTS: Mapping[str, int] = {"x-expires": 10_000, "x-message-ttl": 300_000}

_PERSISTENT, _TRANSIENT = 2, 1


@dataclass(frozen=True, slots=True)
class Mailbox:
    """The names of the remote-control entities for Celery's ``control_exchange``."""

    namespace: str = "celery"

    @property
    def exchange(self) -> str:
        """The fanout exchange requests are broadcast on."""
        return f"{self.namespace}.pidbox"

    @property
    def reply_exchange(self) -> str:
        """The direct exchange replies go to."""
        return f"reply.{self.namespace}.pidbox"

    def node_queue(self, hostname: str) -> str:
        """The queue through which node ``hostname`` reads the requests."""
        return f"{hostname}.{self.namespace}.pidbox"


@dataclass(frozen=True, slots=True)
class ReplyTo:
    """Where the sender of a request waits for replies."""

    exchange: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """One remote-control request. ``expires`` is the sender's deadline (a Unix time), if any."""

    method: str
    arguments: Mapping[str, Any] = field(default_factory=_fields.empty_mapping)
    destination: tuple[str, ...] | None = None
    pattern: str | None = None
    matcher: str | None = None
    ticket: str | None = None
    reply_to: ReplyTo | None = None
    clock: int = 0
    expires: float | None = None

    def addressed_to(self, hostname: str) -> bool:
        """Whether node ``hostname`` must act, as kombu's ``Node.handle_message`` decides.

        Named in ``destination``; else matched by ``pattern`` with ``matcher`` (``glob`` or
        ``pcre``; an unknown matcher or a bad expression matches nothing); else everyone.
        """
        if self.destination:
            return hostname in self.destination
        if self.pattern and self.matcher:
            if self.matcher == "glob":
                return fnmatch(hostname, self.pattern)
            if self.matcher == "pcre":
                try:
                    return re.match(self.pattern, hostname) is not None
                except re.error:
                    return False
            return False
        return True


class LamportClock:
    """kombu's logical clock: ``forward`` for each event sent, ``adjust`` to each received."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def forward(self) -> int:
        """Count one event; the new value."""
        self.value += 1
        return self.value

    def adjust(self, other: int) -> int:
        """Move past a value received from elsewhere; the new value."""
        self.value = max(self.value, other) + 1
        return self.value


def _reply_to(value: Any) -> ReplyTo | None:
    if value is None:
        return None
    address = _fields.mapping(value, "reply_to")
    return ReplyTo(
        exchange=_fields.text(address.get("exchange"), "reply_to.exchange"),
        routing_key=_fields.text(address.get("routing_key"), "reply_to.routing_key"),
    )


def decode_control(
    message: WireMessage, *, accept: AcceptPolicy = DEFAULT_ACCEPT, limits: Limits = DEFAULT_LIMITS
) -> ControlRequest:
    """Read a request; raise :class:`MalformedMessage` if it is not one."""
    body = _fields.mapping(
        loads(
            message.body,
            message.content_type,
            message.content_encoding,
            accept=accept,
            limits=limits,
        ),
        "body",
    )
    expires = _fields.optional_seconds(message.headers.get("expires"), "headers.expires")
    destination = body.get("destination")
    if isinstance(destination, str):  # kombu's clients refuse it; a lone name is still a name
        destination = [destination]
    return ControlRequest(
        method=_fields.text(body.get("method"), "method"),
        arguments=_fields.mapping(body.get("arguments"), "arguments", null_is_empty=True),
        destination=_fields.optional_strings(destination, "destination"),
        pattern=_fields.optional_text(body.get("pattern"), "pattern"),
        matcher=_fields.optional_text(body.get("matcher"), "matcher"),
        ticket=_fields.optional_text(body.get("ticket"), "ticket"),
        reply_to=_reply_to(body.get("reply_to")),
        clock=_fields.optional_integer(message.headers.get("clock"), "headers.clock", minimum=0)
        or 0,
        expires=expires or None,
    )


def encode_control(request: ControlRequest, *, serializer: str = "json") -> WireMessage:
    """The message kombu's ``Mailbox._publish`` sends for ``request``, key for key."""
    document: dict[str, Any] = {
        "method": request.method,
        "arguments": dict(request.arguments),
        "destination": list(request.destination) if request.destination is not None else None,
        "pattern": request.pattern,
        "matcher": request.matcher,
    }
    if request.ticket is not None:
        document["ticket"] = request.ticket
        if request.reply_to is not None:
            document["reply_to"] = {
                "exchange": request.reply_to.exchange,
                "routing_key": request.reply_to.routing_key,
            }
    body, content_type, content_encoding = dumps(document, serializer)
    return WireMessage(
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        headers={"clock": request.clock, "expires": request.expires or 0},
        properties={"delivery_mode": _PERSISTENT},
    )


def encode_control_reply(
    hostname: str, value: Any, *, ticket: str | None, clock: int, serializer: str = "json"
) -> WireMessage:
    """The reply kombu's ``Node.reply`` sends: ``{hostname: value}``, transient."""
    body, content_type, content_encoding = dumps({hostname: value}, serializer)
    return WireMessage(
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        headers={"ticket": ticket, "clock": clock},
        properties={"delivery_mode": _TRANSIENT},
    )

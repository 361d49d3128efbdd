"""Transport envelopes: AMQP properties, kombu's JSON envelope (Redis, SQS), the SQS body.

AMQP carries the parts of a :class:`WireMessage` natively (body, content type and encoding,
application headers, basic properties). kombu's *virtual* transports (Redis, SQS, memory)
wrap them in one JSON document instead, with the body base64-encoded and delivery metadata in
``properties`` (``kombu/transport/virtual/base.py``); SQS base64-encodes that document once
more into ``MessageBody``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from . import _fields, jsontags
from .errors import LimitExceeded, MalformedMessage
from .limits import DEFAULT_LIMITS, Limits, json_nests_within
from .wire import WireMessage

__all__ = [
    "AMQP_PROPERTY_NAMES",
    "Envelope",
    "amqp_properties",
    "decode_envelope",
    "decode_sqs_body",
    "encode_envelope",
    "encode_sqs_body",
    "from_amqp",
    "max_envelope_bytes",
]

# The AMQP basic properties Celery sets, as aio-pika's ``Message`` keywords.
AMQP_PROPERTY_NAMES = ("correlation_id", "reply_to", "delivery_mode", "priority", "expiration")


def amqp_properties(message: WireMessage) -> dict[str, Any]:
    """The AMQP basic properties for ``message`` (aio-pika ``Message`` keyword arguments)."""
    props: dict[str, Any] = {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": dict(message.headers),
    }
    for name in AMQP_PROPERTY_NAMES:
        if message.properties.get(name) is not None:
            props[name] = message.properties[name]
    if "expiration" in props:  # kombu's milliseconds string; aio-pika takes seconds
        props["expiration"] = int(props["expiration"]) / 1000
    return props


def from_amqp(
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[str, Any] | None,
    properties: Mapping[str, Any],
    limits: Limits = DEFAULT_LIMITS,
    headers_nest_within: int | None = None,
) -> WireMessage:
    """Build a :class:`WireMessage` from what an AMQP client delivered, checking its size.

    ``expiration`` may come as seconds (aio-pika's number) or kombu's milliseconds string;
    it is kept as the latter, the form every other envelope carries.

    ``headers_nest_within``: set by a reader that read ``headers`` itself, with string keys,
    for nobody else to hold, bounding how deep they nest: they are then used without a copy,
    and walked for their depth only if ``limits`` allows less.
    """
    limits.check_size(body, field="body")
    if headers_nest_within is None:
        checked = _fields.mapping(headers or {}, "headers")
        limits.check_headers(checked)
    else:
        checked = MappingProxyType(headers) if headers else _fields.EMPTY
        limits.check_headers(checked, shallow=headers_nest_within <= limits.max_depth)
    kept = {k: v for k, v in properties.items() if k in AMQP_PROPERTY_NAMES and v is not None}
    expiration = kept.get("expiration")
    if isinstance(expiration, int | float) and not isinstance(expiration, bool):
        kept["expiration"] = str(round(expiration * 1000))
    return WireMessage(
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        headers=checked,
        properties=kept,
        headers_checked_with=limits,
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message in kombu's virtual-transport envelope, with its delivery metadata."""

    message: WireMessage
    delivery_tag: str
    exchange: str
    routing_key: str
    priority: int = 0
    redelivered: bool = False


# Room for the headers and properties around a body that is at the size limit.
_ENVELOPE_OVERHEAD = 64 * 1024


def max_envelope_bytes(limits: Limits = DEFAULT_LIMITS) -> int:
    """The largest kombu Redis envelope :func:`decode_envelope` reads: its body is base64 (4/3
    of the raw body) and it carries headers and properties around the body (the bound
    ``_check_envelope_size`` applies there)."""
    return limits.max_body_bytes * 4 // 3 + _ENVELOPE_OVERHEAD


def _check_envelope_size(data: bytes | str, body_maximum: int, *, field: str) -> None:
    maximum = body_maximum + _ENVELOPE_OVERHEAD
    if len(data) > maximum:
        raise LimitExceeded("size", len(data), maximum, field=field)


def encode_envelope(
    message: WireMessage, *, exchange: str, routing_key: str, delivery_tag: str
) -> bytes:
    """The JSON document kombu's Redis transport LPUSHes, key for key in kombu's order."""
    properties = dict(message.properties)
    priority = properties.pop("priority", 0) or 0
    properties["delivery_info"] = {"exchange": exchange, "routing_key": routing_key}
    properties["priority"] = priority
    properties["body_encoding"] = "base64"
    properties["delivery_tag"] = delivery_tag
    document = {
        "body": base64.b64encode(message.body).decode("ascii"),
        "content-encoding": message.content_encoding,
        "content-type": message.content_type,
        "headers": dict(message.headers),
        "properties": properties,
    }
    return jsontags.dumps(document).encode("utf-8")


def decode_envelope(data: bytes | str, *, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Parse kombu's JSON envelope; raise :class:`MalformedMessage` if it is not one.

    The size limit applies to the envelope, whose body is base64 (4/3 of the raw body), so the
    envelope may be a third larger than ``limits.max_body_bytes``.
    """
    _check_envelope_size(data, limits.max_body_bytes * 4 // 3, field="envelope")
    # JSON objects just decoded: string keys, and no one else holds them (no copies).
    document = _fields.json_object(jsontags.loads(data), "envelope")
    shallow = json_nests_within(data, limits.max_depth)
    properties = _fields.json_object(document.get("properties"), "envelope.properties")
    limits.check_headers(properties, field="envelope.properties", shallow=shallow)
    headers = _fields.json_object(document.get("headers") or {}, "envelope.headers")
    limits.check_headers(headers, shallow=shallow)
    delivery_info = _fields.json_object(
        properties.pop("delivery_info", None) or {}, "envelope.properties.delivery_info"
    )
    body_encoding = properties.pop("body_encoding", None)
    raw_body = document.get("body")
    if raw_body is None:
        body = b""
    elif body_encoding == "base64":
        try:
            body = base64.b64decode(_fields.text(raw_body, "envelope.body"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MalformedMessage(f"body is not base64: {exc}", field="envelope.body") from exc
    elif body_encoding is None:
        body = _fields.utf8(_fields.text(raw_body, "envelope.body"), "envelope.body")
    else:
        raise MalformedMessage(
            f"unknown body_encoding {_fields.short(body_encoding)}",
            field="envelope.properties.body_encoding",
        )
    limits.check_size(body, field="body")
    delivery_tag = _fields.text(properties.pop("delivery_tag", None), "envelope.delivery_tag")
    priority = _fields.optional_integer(
        properties.get("priority"), "envelope.properties.priority", minimum=0
    )
    redelivered = bool(delivery_info.get("redelivered")) or headers.get("redelivered") is True
    return Envelope(
        message=WireMessage(
            body=body,
            content_type=_fields.optional_text(document.get("content-type"), "content-type"),
            content_encoding=_fields.optional_text(
                document.get("content-encoding"), "content-encoding"
            ),
            headers=MappingProxyType(headers) if headers else _fields.EMPTY,
            properties=properties,
            headers_checked_with=limits,
        ),
        delivery_tag=delivery_tag,
        exchange=_fields.shared_text(
            _fields.text(delivery_info.get("exchange") or "", "delivery_info.exchange")
        ),
        routing_key=_fields.shared_text(
            _fields.text(delivery_info.get("routing_key") or "", "delivery_info.routing_key")
        ),
        priority=priority or 0,
        redelivered=redelivered,
    )


def encode_sqs_body(envelope: bytes) -> str:
    """The ``MessageBody`` kombu's SQS transport sends: the envelope, base64 again."""
    return base64.b64encode(envelope).decode("ascii")


_BASE64 = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")


def decode_sqs_body(body: str | bytes, *, limits: Limits = DEFAULT_LIMITS) -> Envelope:
    """Parse an SQS ``MessageBody`` as kombu does: base64 if it cleanly is, else plain JSON."""
    raw = _fields.utf8(body, "sqs body") if isinstance(body, str) else body
    # Two base64 layers around the body: 16/9 of its size.
    _check_envelope_size(raw, limits.max_body_bytes * 16 // 9, field="sqs body")
    candidate = raw.strip()
    if _BASE64.fullmatch(candidate):
        try:
            decoded = base64.b64decode(candidate, validate=True)
            decoded.decode("utf-8")
        except (binascii.Error, ValueError):
            pass  # not base64 after all (kombu falls back the same way)
        else:
            raw = decoded
    return decode_envelope(raw, limits=limits)

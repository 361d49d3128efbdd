"""kombu's Redis transport layout: key names, priority steps, bindings and payload rewrites.

What a Redis peer must agree on to share queues with Celery (``WIRE.md`` section 4): queue
lists per priority step, the ``_kombu.binding.<exchange>`` sets, the ``unacked`` hash whose
values are ``[payload, exchange, routing_key]``, and the flags kombu sets on a message it puts
back. Keys carry ``global_keyprefix`` verbatim, as kombu prefixes them.
"""

from __future__ import annotations

import json
from bisect import bisect
from dataclasses import dataclass
from typing import Any

from .errors import MalformedMessage

__all__ = [
    "DEFAULT_FANOUT_PREFIX",
    "DEFAULT_PRIORITY_STEPS",
    "SEP",
    "RedisLayout",
    "dead_letter_payload",
    "parse_binding_member",
    "parse_unacked",
    "payload_priority",
    "redelivered_payload",
]

#: kombu's separator inside priority list names and binding members.
SEP = "\x06\x16"
#: kombu's ``priority_steps``: priorities 0-2 share a list, 3-5 the next, and so on.
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
#: kombu's ``keyprefix_fanout``: fanout channels are named per database.
DEFAULT_FANOUT_PREFIX = "/{db}."


@dataclass(frozen=True, slots=True)
class RedisLayout:
    """Where kombu keeps each thing, given the transport options that move it."""

    global_keyprefix: str = ""
    sep: str = SEP
    priority_steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS
    unacked_key: str = "unacked"
    unacked_index_key: str = "unacked_index"
    unacked_mutex_key: str = "unacked_mutex"
    fanout_prefix: str = DEFAULT_FANOUT_PREFIX

    def __post_init__(self) -> None:
        steps = self.priority_steps
        if not steps or steps[0] != 0 or list(steps) != sorted(set(steps)):
            raise ValueError(f"priority_steps must rise from 0, not {list(steps)!r}")

    def step(self, priority: int) -> int:
        """The step a message priority (clamped to 0-9) is stored under."""
        clamped = max(0, min(priority, 9))
        return self.priority_steps[bisect(self.priority_steps, clamped) - 1]

    def queue_key(self, queue: str, priority: int = 0) -> str:
        """The list holding ``queue``'s messages of ``priority``; step 0 is the bare name."""
        step = self.step(priority)
        return f"{self.global_keyprefix}{queue}{self.sep}{step}" if step else self.key(queue)

    def step_keys(self, queue: str) -> list[str]:
        """Every list of ``queue``, the one consumed first (step 0) first."""
        return [self.queue_key(queue, step) for step in self.priority_steps]

    def key(self, name: str) -> str:
        """``name`` under the global key prefix."""
        return f"{self.global_keyprefix}{name}"

    def binding_key(self, exchange: str) -> str:
        """The set of bindings of ``exchange``."""
        return self.key(f"_kombu.binding.{exchange}")

    def permanent_binding_key(self, exchange: str) -> str:
        """kombu 5.7's set of bindings that its expiry sweep must keep."""
        return self.key(f"_kombu.binding_permanent.{exchange}")

    def binding_member(self, routing_key: str, queue: str, pattern: str = "") -> str:
        """The set member binding ``queue`` to an exchange with ``routing_key``."""
        return self.sep.join((routing_key, pattern, queue))

    def fanout_channel(self, exchange: str, *, db: int, routing_key: str = "") -> str:
        """The PUBLISH channel of fanout ``exchange`` (kombu's ``_get_publish_topic``).

        kombu's client prefixes PUBLISH and PSUBSCRIBE with ``global_keyprefix`` too.
        """
        prefix = self.fanout_prefix.format(db=db)
        topic = f"{prefix}{exchange}/{routing_key}" if routing_key else f"{prefix}{exchange}"
        return self.key(topic)

    def dead_key(self, queue: str) -> str:
        """The list celeriac moves ``queue``'s dead letters to."""
        return self.key(f"{queue}.dead")

    def consumers_key(self, queue: str) -> str:
        """celeriac's sorted set of live consumers of ``queue`` (score: when each lapses)."""
        return self.key(f"_celeriac.consumers.{queue}")

    @property
    def delayed(self) -> str:
        """celeriac's delay store: the sorted set of deferred message ids by due time."""
        return self.key("_celeriac.delayed")

    @property
    def delayed_messages(self) -> str:
        """The delay store's hash: id -> the list to push onto when due, NUL, the payload."""
        return self.key("_celeriac.delayed.messages")

    @property
    def unacked(self) -> str:
        """The hash of delivered, unacknowledged payloads by delivery tag."""
        return self.key(self.unacked_key)

    @property
    def unacked_index(self) -> str:
        """The sorted set of delivery tags by time of delivery (or of the last renewal)."""
        return self.key(self.unacked_index_key)

    @property
    def unacked_mutex(self) -> str:
        """The lock whoever restores stale deliveries holds."""
        return self.key(self.unacked_mutex_key)


def parse_binding_member(member: bytes | str, sep: str = SEP) -> tuple[str, str, str]:
    """``(routing_key, pattern, queue)`` of a binding set member."""
    text = member.decode("utf-8", "replace") if isinstance(member, bytes) else member
    parts = text.split(sep)
    if len(parts) != 3:
        raise MalformedMessage(f"not a kombu binding: {text[:80]!r}", field="binding")
    return parts[0], parts[1], parts[2]


def _load(data: bytes | str, field: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"not JSON: {type(exc).__name__}", field=field) from None


def parse_unacked(value: bytes | str) -> tuple[dict[str, Any], str, str]:
    """``(payload, exchange, routing_key)`` of an ``unacked`` hash value."""
    document = _load(value, "unacked")
    if (
        not isinstance(document, list)
        or len(document) != 3
        or not isinstance(document[0], dict)
        or not all(isinstance(part, str) for part in document[1:])
    ):
        raise MalformedMessage("not [payload, exchange, routing_key]", field="unacked")
    return document[0], document[1], document[2]


def payload_priority(payload: dict[str, Any]) -> int:
    """The priority kombu reads from a payload: ``properties.priority``, else 0."""
    properties = payload.get("properties")
    priority = properties.get("priority") if isinstance(properties, dict) else None
    if isinstance(priority, bool) or not isinstance(priority, int | float | str):
        return 0
    try:
        return int(priority)
    except (ValueError, OverflowError):
        return 0


def redelivered_payload(payload: dict[str, Any]) -> bytes:
    """``payload`` as kombu puts it back: ``redelivered`` set in headers and delivery_info."""
    headers = payload.get("headers")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    properties = payload.get("properties")
    info = properties.get("delivery_info") if isinstance(properties, dict) else None
    if isinstance(info, dict):
        info["redelivered"] = True
    return json.dumps(payload).encode("utf-8")


def dead_letter_payload(payload: bytes, reason: str, queue: str) -> bytes:
    """``payload`` with headers ``x-celeriac-reason`` and ``x-celeriac-queue`` added.

    A payload that is not a JSON object with a headers object is kept byte for byte: a dead
    letter must keep what arrived, whatever it was.
    """
    try:
        document = _load(payload, "payload")
    except MalformedMessage:
        return payload
    headers = document.get("headers") if isinstance(document, dict) else None
    if not isinstance(headers, dict):
        return payload
    headers["x-celeriac-reason"] = reason
    headers["x-celeriac-queue"] = queue
    return json.dumps(document).encode("utf-8")

"""What the Redis transport keeps of a delivery it claimed, and reads of its payload."""

from __future__ import annotations

import json
from dataclasses import dataclass

from protocol.kombu_redis import payload_priority, redelivered_payload

__all__ = ["Claim", "Settlement", "payload_priority_of", "with_redelivered_flags"]


@dataclass(slots=True, eq=False)
class Claim:
    """A delivery this transport recorded as unacked: its tag, queue and payload bytes.

    The tag stays the bytes Redis holds: a publisher's tag need not be UTF-8, and settling
    must name exactly the field the claim wrote.
    """

    tag: bytes
    queue: str
    payload: bytes
    settled: bool = False


@dataclass(slots=True)
class Settlement:
    """A settling to do (or to retry): ``command`` pushes ``payload`` onto ``keys`` (none for
    an ack) if ``claim`` is still recorded as unacked."""

    claim: Claim
    keys: list[str]
    command: str
    payload: bytes


def payload_priority_of(payload: bytes) -> int:
    """The priority kombu reads from a payload's properties; 0 if it is not a JSON object."""
    try:
        document = json.loads(payload)
    except ValueError:
        return 0
    return payload_priority(document) if isinstance(document, dict) else 0


def with_redelivered_flags(payload: bytes) -> tuple[bytes, int]:
    """``payload`` with kombu's redelivered flags, and its priority."""
    try:
        document = json.loads(payload)
    except ValueError:
        return payload, 0
    if not isinstance(document, dict):
        return payload, 0
    return redelivered_payload(document), payload_priority(document)

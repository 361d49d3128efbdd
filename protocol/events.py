"""Celery events: what a worker (and a producer) tells monitors such as Flower and
``celery events`` (``WIRE.md`` section 8).

An event is a flat dict: its ``type`` (``task-received``, ``worker-heartbeat``, ...), the
sender's ``hostname``, ``timestamp`` (Unix time), ``utcoffset`` (hours *west* of UTC, as
Celery's ``celery.utils.time.utcoffset``), ``pid`` and Lamport ``clock``, then the fields of
its type. It is published, JSON and transient, with header ``{"hostname": ...}`` to the topic
exchange ``celeryev`` with routing key ``type`` spelled with dots (``task.received``).
Several task events may go as one JSON list under routing key ``task.multi``, as Celery's
worker buffers them; every receiver Celery ships accepts both.

This module builds the dicts and the messages; sending them is the runtime's.
"""

from __future__ import annotations

import os
import platform
import reprlib
from collections.abc import Mapping, Sequence
from typing import Any

from .serialization import dumps
from .task import TaskMessage
from .wire import WireMessage

__all__ = [
    "EVENT_EXCHANGE",
    "HEARTBEAT_FREQ",
    "MULTI_ROUTING_KEY",
    "encode_events",
    "event",
    "routing_key",
    "task_received_fields",
    "task_sent_fields",
    "utcoffset",
    "worker_fields",
]

#: Celery's ``event_exchange``: a topic exchange on RabbitMQ, a fanout channel on Redis.
EVENT_EXCHANGE = "celeryev"
#: The routing key of a list of events (Celery's buffered task events).
MULTI_ROUTING_KEY = "task.multi"
#: Seconds between two ``worker-heartbeat`` events (Celery's ``--heartbeat-interval``).
HEARTBEAT_FREQ = 2.0
#: Longest ``args``/``kwargs``/``result`` repr an event carries (Celery's ``saferepr`` limit).
REPR_LIMIT = 1024

_TRANSIENT = 1
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = REPR_LIMIT
_repr.maxlevel = 10
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 100


def routing_key(event_type: str) -> str:
    """The routing key of an event of ``event_type``: ``task-received`` is ``task.received``."""
    return event_type.replace("-", ".")


def utcoffset(*, is_dst: bool, timezone: int, altzone: int) -> int:
    """Hours west of UTC (0 for UTC, -2 for UTC+2), as Celery computes it from the clock's
    ``time.timezone``/``time.altzone`` (seconds west) and whether summer time is in force: a
    wrong value shifts every timestamp a monitor shows, and Flower shows the worker offline.
    The caller reads the clock; this module does no I/O."""
    return (altzone if is_dst else timezone) // 3600


def safe_repr(value: Any) -> str:
    """``repr(value)``, shortened past :data:`REPR_LIMIT` characters and never raising
    (:mod:`reprlib` stands in for a broken ``__repr__``)."""
    text = _repr.repr(value)
    return text if len(text) <= REPR_LIMIT else text[: REPR_LIMIT - 3] + "..."


def event(
    event_type: str,
    *,
    hostname: str,
    clock: int,
    pid: int,
    timestamp: float,
    offset: int,
    **fields: Any,
) -> dict[str, Any]:
    """The event dict Celery's ``EventDispatcher.send`` publishes: the common fields, then
    ``fields``; ``timestamp`` (Unix time) and ``offset`` (:func:`utcoffset`) come from the
    caller's clock."""
    return {
        "hostname": hostname,
        "utcoffset": offset,
        "pid": pid,
        "clock": clock,
        **fields,
        "timestamp": timestamp,
        "type": event_type,
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def task_received_fields(message: TaskMessage) -> dict[str, Any]:
    """The fields of ``task-received`` for ``message`` (Celery's ``strategy.default``)."""
    return {
        "uuid": message.id,
        "name": message.name,
        "args": message.argsrepr if message.argsrepr is not None else safe_repr(message.args),
        "kwargs": (
            message.kwargsrepr if message.kwargsrepr is not None else safe_repr(message.kwargs)
        ),
        "root_id": message.root_id,
        "parent_id": message.parent_id,
        "retries": message.retries,
        "eta": _iso(message.eta),
        "expires": _iso(message.expires),
    }


def task_sent_fields(
    message: TaskMessage, *, queue: str, exchange: str, routing_key: str
) -> dict[str, Any]:
    """The fields of ``task-sent`` (``task_send_sent_event``): those of ``task-received``
    and where the message went."""
    return {
        **task_received_fields(message),
        "queue": queue,
        "exchange": exchange,
        "routing_key": routing_key,
    }


def worker_fields(*, freq: float, active: int, processed: int, version: str) -> dict[str, Any]:
    """The fields of ``worker-online``, ``worker-heartbeat`` and ``worker-offline``."""
    try:
        loadavg = [round(load, 2) for load in os.getloadavg()]
    except OSError:  # pragma: no cover - the load average is unobtainable here
        loadavg = [0.0, 0.0, 0.0]
    return {
        "freq": freq,
        "active": active,
        "processed": processed,
        "loadavg": loadavg,
        "sw_ident": "celeriac",
        "sw_ver": version,
        "sw_sys": platform.system(),
    }


def encode_events(events: Sequence[Mapping[str, Any]], *, hostname: str) -> tuple[WireMessage, str]:
    """The message carrying ``events`` and its routing key: one event as a dict under its
    own key, several as a list under :data:`MULTI_ROUTING_KEY`."""
    if not events:
        raise ValueError("no events to encode")
    if len(events) == 1:
        document: Any = dict(events[0])
        key = routing_key(str(document["type"]))
    else:
        document = [dict(one) for one in events]
        key = MULTI_ROUTING_KEY
    body, content_type, content_encoding = dumps(document, "json")
    message = WireMessage(
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        headers={"hostname": hostname},
        properties={"delivery_mode": _TRANSIENT},
    )
    return message, key

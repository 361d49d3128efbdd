"""Real Celery/kombu on the other side of the protocol tests: the oracle celeriac must match.

Messages are produced by a Celery app's own producer machinery (``send_task`` over kombu's
in-memory transport, which stores exactly the envelope the Redis transport would LPUSH) and
read back by Celery's own worker-side ``Request``. Nothing here talks to a network.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.worker.request import Request
from kombu import Connection
from kombu.message import Message
from kombu.transport.memory import Channel as MemoryChannel
from kombu.utils.json import dumps as kombu_dumps

from protocol import WireMessage, amqp_properties

#: The clock every oracle app reads, so eta/expires/date_done are known in advance.
NOW = datetime(2026, 11, 22, 15, 1, 30, 579418, tzinfo=UTC)

_apps = itertools.count()


def make_app(**conf: Any) -> Celery:
    """A Celery app on the in-memory broker, frozen at :data:`NOW`, with two tasks."""
    app = Celery(f"oracle{next(_apps)}", broker="memory://", set_as_current=False)
    app.conf.update(accept_content=["json", "msgpack"], **conf)
    app.now = lambda: NOW

    @app.task(name="proj.add", shared=False)
    def add(x: int, y: int, z: int = 0) -> int:
        return x + y + z

    @app.task(name="proj.cb", shared=False)
    def cb(*args: Any) -> Any:
        return args

    return app


@dataclass(frozen=True)
class Captured:
    """One message as kombu published it: the Redis envelope dict and its JSON bytes."""

    envelope: dict[str, Any]

    @property
    def redis_bytes(self) -> bytes:
        """What kombu's Redis transport LPUSHes (``dumps(message)`` in ``Channel._put``)."""
        text: str = kombu_dumps(self.envelope)
        return text.encode("utf-8")

    @property
    def headers(self) -> dict[str, Any]:
        """The application headers."""
        headers: dict[str, Any] = self.envelope["headers"]
        return headers

    @property
    def body(self) -> bytes:
        """The serialised body (base64-decoded)."""
        return base64.b64decode(self.envelope["body"])

    def wire(self) -> WireMessage:
        """The message as an AMQP client would deliver it."""
        props = self.envelope["properties"]
        keep = ("correlation_id", "reply_to", "delivery_mode", "priority", "expiration")
        return WireMessage(
            body=self.body,
            content_type=self.envelope["content-type"],
            content_encoding=self.envelope["content-encoding"],
            headers=self.headers,
            properties={k: props[k] for k in keep if k in props},
        )


def drain(queue: str) -> list[Captured]:
    """Every message kombu's in-memory transport holds for ``queue``, oldest first."""
    stored = MemoryChannel.queues.pop(queue, None)
    found: list[Captured] = []
    while stored is not None and not stored.empty():
        found.append(Captured(stored.get_nowait()))
    return found


def capture(app: Celery, name: str, queue: str = "celery", **options: Any) -> Captured:
    """Publish with ``app.send_task(name, **options)`` and return what reached ``queue``."""
    app.send_task(name, queue=queue, **options)
    (captured,) = drain(queue)
    return captured


@contextmanager
def memory_channel() -> Iterator[Any]:
    """A kombu in-memory channel, to build kombu ``Message`` objects from envelopes."""
    with Connection("memory://") as conn:
        yield conn.default_channel


def celery_request(app: Celery, message: Message) -> Request:
    """Celery's worker-side view of ``message`` (``celery.worker.request.Request``)."""
    return Request(message, app=app, task=app.tasks[message.headers["task"]])


def kombu_message_from_amqp(wire: WireMessage, routing_key: str = "celery") -> Message:
    """A kombu ``Message`` as py-amqp would build it from celeriac's AMQP properties."""
    props = amqp_properties(wire)
    return Message(
        body=wire.body,
        content_type=props.pop("content_type"),
        content_encoding=props.pop("content_encoding"),
        headers=props.pop("headers"),
        properties=props,
        delivery_info={"exchange": "", "routing_key": routing_key, "redelivered": False},
        accept=["application/json", "application/x-msgpack"],
    )

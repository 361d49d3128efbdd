"""The request a task runs for: what Celery calls ``task.request``, in a context variable, and
the messages a run asks to send once it is over (:class:`Republish`, from ``self.retry()``)."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from protocol import TaskMessage, WireMessage, encode_task

if TYPE_CHECKING:
    from runtime.transports.base import Delivery

__all__ = ["Republish", "Request", "current_request"]


@dataclass(frozen=True, slots=True)
class Republish:
    """A retry's message, and where it goes: published by the worker once the run is over.

    ``declare`` names a queue to declare first (``retry(queue=...)``), as Celery creates a
    missing queue it is asked to send to.
    """

    message: TaskMessage
    serializer: str
    exchange: str
    routing_key: str
    declare: str | None = None

    def encode(self, now: datetime) -> WireMessage:
        """The wire message, as Celery's worker publishes a retry.

        Celery passes the run's ``origin`` to kombu as a publish option too, which kombu keeps
        as a message property (after ``reply_to``): the Redis envelope carries it, AMQP drops it.
        """
        wire = encode_task(self.message, serializer=self.serializer, now=now)
        properties: dict[str, Any] = {}
        for name, value in wire.properties.items():
            properties[name] = value
            if name == "reply_to":
                properties["origin"] = self.message.origin
        return replace(wire, properties=properties)


@dataclass(frozen=True, slots=True)
class Request:
    """The running task's message and delivery, with Celery's attribute names."""

    message: TaskMessage
    hostname: str
    #: Where the broker delivered the message from (``delivery_info``'s own fields, kept as
    #: they are: a dict made for every run was 184 bytes of each waiting task).
    exchange: str = ""
    routing_key: str = ""
    redelivered: bool = False
    #: Messages the run asked to send once it is over (``self.retry()``), in order: see
    #: :meth:`plan`. A tuple, the one empty tuple until a run plans one.
    outbox: tuple[Republish, ...] = field(default=(), compare=False)

    @classmethod
    def delivered(cls, message: TaskMessage, delivery: Delivery, hostname: str) -> Request:
        """The request of ``message``, brought by ``delivery`` to worker ``hostname``."""
        return cls(message, hostname, delivery.exchange, delivery.routing_key,
                   delivery.redelivered)  # fmt: skip

    @property
    def delivery_info(self) -> dict[str, Any]:
        """Celery's ``request.delivery_info``: ``exchange``, ``routing_key``, ``priority``
        and ``redelivered``, made when asked for."""
        return {
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "priority": self.message.priority,
            "redelivered": self.redelivered,
        }

    def plan(self, *messages: Republish) -> None:
        """Add ``messages`` to :attr:`outbox`, for the worker to publish after the run."""
        # Frozen for everything else: the run's plans are the one thing that grows.
        object.__setattr__(self, "outbox", (*self.outbox, *messages))

    @property
    def id(self) -> str:
        """The task id."""
        return self.message.id

    @property
    def task(self) -> str:
        """The task name."""
        return self.message.task

    @property
    def args(self) -> tuple[Any, ...]:
        """Positional arguments."""
        return self.message.args

    @property
    def kwargs(self) -> Mapping[str, Any]:
        """Keyword arguments."""
        return self.message.kwargs

    @property
    def retries(self) -> int:
        """How many times the task has been retried."""
        return self.message.retries

    @property
    def root_id(self) -> str | None:
        """The id of the first task of the workflow."""
        return self.message.root_id

    @property
    def parent_id(self) -> str | None:
        """The id of the task that sent this one."""
        return self.message.parent_id

    @property
    def group(self) -> str | None:
        """The group id, if the task is part of one."""
        return self.message.group_id

    @property
    def eta(self) -> datetime | None:
        """When the task was due."""
        return self.message.eta

    @property
    def correlation_id(self) -> str | None:
        """The correlation id (the task id for Celery clients)."""
        return self.message.correlation_id

    @property
    def reply_to(self) -> str | None:
        """The client's reply address."""
        return self.message.reply_to


#: The request of the task running in this context, or ``None`` outside a task.
current_request: ContextVar[Request | None] = ContextVar("celeriac_request", default=None)

"""A worker's remote control: Celery's ``app.control`` and ``inspect`` commands over the broker.

:class:`RemoteControl` listens on Celery's mailbox (``celery.pidbox``, through the node queue
``<nodename>.celery.pidbox`` on RabbitMQ, or kombu's PSUBSCRIBE on Redis), acts on the
requests addressed to this node (destination, or pattern and matcher), runs the command
(:mod:`runtime.control.commands`) and, when the sender waits, replies ``{nodename: value}`` to its
reply queue, as kombu's ``Node`` does. A failing command replies ``{"error": repr(exc)}``; an
unknown one ``{"error": "KeyError('name')"}``; ``shutdown`` replies nothing.

Commands run one at a time, in the order they arrive. A broker without fanout (SQS) has no
remote control: the worker says so at start and runs without it, as it does when another
worker of the same node name already holds the node queue on RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import structlog

from protocol import EncodeError, MalformedMessage, WireMessage
from protocol.control import (
    LamportClock,
    Mailbox,
    decode_control,
    encode_control_reply,
)
from runtime.errors import BrokerConnectionError
from runtime.transports.base import Broadcasting

from .controlled import ControlledWorker

__all__ = ["NO_REPLY", "Command", "RemoteControl"]

#: What a command returns to send no reply (``shutdown``, as Celery's raises WorkerShutdown).
NO_REPLY: Any = object()

#: A command: called with the remote control and the request's arguments.
Command = Callable[..., Awaitable[Any]]


class RemoteControl:
    """Serves the remote-control mailbox of ``worker``; see the module docstring.

    ``commands`` maps method names to commands (:data:`runtime.control.commands.COMMANDS`).
    """

    def __init__(
        self,
        worker: ControlledWorker,
        transport: Broadcasting,
        commands: dict[str, Command],
        *,
        mailbox: Mailbox | None = None,
        logger: Any = None,
    ) -> None:
        self.worker = worker
        self.transport = transport
        self.commands = commands
        self.mailbox = mailbox or Mailbox()
        self.clock = LamportClock()
        self.log = logger or structlog.get_logger("celeriac.control")
        self._serving: asyncio.Task[None] | None = None

    @property
    def hostname(self) -> str:
        """This node's name."""
        return self.worker.hostname

    async def start(self) -> bool:
        """Start listening; ``False`` (and a warning logged) if this broker cannot."""
        queue = self.mailbox.node_queue(self.hostname)
        try:
            messages = await self.transport.broadcasts(self.mailbox.exchange, queue)
        except BrokerConnectionError as exc:
            self.log.warning("remote_control_unavailable", node=self.hostname, reason=str(exc))
            return False
        self._serving = asyncio.create_task(self._serve(messages), name="celeriac-control")
        self.log.info("remote_control_ready", node=self.hostname, exchange=self.mailbox.exchange)
        return True

    async def aclose(self) -> None:
        """Stop listening."""
        if (serving := self._serving) is not None:
            self._serving = None
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)

    async def _serve(self, messages: AsyncGenerator[WireMessage, None]) -> None:
        async with contextlib.aclosing(messages):
            async for message in messages:
                try:
                    await self.handle(message)
                except Exception as exc:  # a broken command must not end remote control
                    self.log.exception("control_failed", error=repr(exc))

    async def handle(self, message: WireMessage) -> None:
        """Act on one request, if it is addressed to this node, and reply if asked."""
        self.clock.forward()
        try:
            request = decode_control(message, accept=self.worker.app.accept)
        except MalformedMessage as exc:
            self.log.warning("control_message_malformed", reason=str(exc))
            return
        self.clock.adjust(request.clock)
        if not request.addressed_to(self.hostname):
            return
        reply = await self._run(request.method, request.arguments)
        if reply is NO_REPLY or request.reply_to is None:
            return
        try:
            wire = self._reply(reply, request.ticket)
        except EncodeError as exc:
            wire = self._reply({"error": repr(exc)}, request.ticket)
        try:
            await self.transport.reply(
                wire, exchange=request.reply_to.exchange, routing_key=request.reply_to.routing_key
            )
        except BrokerConnectionError as exc:
            self.log.warning("control_reply_failed", method=request.method, error=str(exc))

    async def _run(self, method: str, arguments: Any) -> Any:
        command = self.commands.get(method)
        if command is None:
            self.log.warning("control_command_unknown", method=method)
            return {"error": repr(KeyError(method))}
        self.log.debug("control_command", method=method)
        try:
            return await command(self, **arguments)
        except Exception as exc:
            self.log.exception("control_command_failed", method=method, error=repr(exc))
            return {"error": repr(exc)}

    def _reply(self, value: Any, ticket: str | None) -> WireMessage:
        return encode_control_reply(
            self.hostname,
            value,
            ticket=ticket,
            clock=self.clock.forward(),
            serializer=self.worker.app.task_serializer,
        )

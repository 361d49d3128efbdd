"""Reading AMQP frames off a connection: aiormq's frame reader, without its cost per frame,
handing deliveries to celeriac's consumers itself.

**Chunks.** aiormq's ``FrameReceiver`` reads every frame with three awaited ``readexactly``
calls into a ``BytesIO`` under an ``asyncio.Lock``, and copies the frame out of it three
times: 6.1-6.6 us of every no-op delivery's three frames (Deliver, content header, body)
before pamqp reads a byte of them (a stream pre-fed with 20,000 Celery no-op deliveries:
18.6-18.9 us a delivery against 12.3-12.5 here, of which pamqp's own reading is 11.6).
:class:`FrameReader` reads what the socket has, up to :data:`CHUNK` bytes at once, and cuts
whole frames out of it with no await between them; a frame larger than what is buffered is
read to its end in one call. The frames, and the errors for a connection that closes
mid-frame, a server that answers with its own protocol header, or a frame that does not end
where it says, are aiormq's own.

**Routed deliveries.** Every frame the reader returns goes through aiormq's connection reader
into its channel's queue, and out of it in the channel's reader: three times per delivery,
with the loop turns, futures and look-ups of each, before the delivery reaches its consumer.
A ``Basic.Deliver`` whose consumer tag :func:`~.dispatch.route` names, on that tag's open
channel, to a :class:`~.dispatch.DirectConsumer`, is not returned: the reader takes the
content header and body frames that follow on its channel (other channels' frames may come
between them, and are returned as they come), and calls the consumer with the whole
message, as aiormq's channel reader would. The worker's CPU per no-op task on RabbitMQ went
from 97-98 to 78-83 us (``cpuprobe``, two runs before and three after, in
``benchmarks/README.md``). aiormq closes a connection as stuck when no frame reaches its
reader for three heartbeats, and RabbitMQ sends none while it sends deliveries: so after
handing deliveries over, before it next waits on the socket (for more, or for the rest of a
frame), the reader returns a heartbeat frame, which aiormq ignores.

:func:`install` puts it in place of aiormq's, process-wide, for connections opened after it:
aiormq makes its reader by that module-level name and offers no other hook (as with
:mod:`runtime.transports.amqp.codec`). ``tests/runtime/test_amqp_frames.py`` compares both
readers on random streams of frames cut at random places, with and without routed
deliveries among them.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import aiormq.abc
import aiormq.connection
import pamqp.commands
import pamqp.frame
import pamqp.header
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.exceptions import PAMQPException
from pamqp.heartbeat import Heartbeat

from .dispatch import DirectConsumer, direct_consumer

log = logging.getLogger(__name__)

__all__ = ["AIORMQS_READER", "CHUNK", "FrameReader", "install", "installed", "uninstall"]

#: The most read from the socket at once.
CHUNK = 65_536
#: A frame's header: type, channel, payload size; the payload and the end octet follow.
_HEADER = struct.Struct(">BHI")
_HEADER_SIZE = _HEADER.size
_size_of = _HEADER.unpack_from
_METHOD, _CONTENT_HEADER, _BODY = 1, 2, 3  # frame types
_FRAME_END = 0xCE
#: A ``Basic.Deliver`` method frame's payload begins with class 60, method 60.
_DELIVER = b"\x00\x3c\x00\x3c"
#: What the connection's reader gets after deliveries handed over: aiormq times a connection
#: out when no frame reaches its reader, and a heartbeat frame is ignored.
_ALIVE: aiormq.connection.ReceivedFrame = (8, 0, Heartbeat())
#: aiormq's own reader, which :func:`uninstall` puts back.
AIORMQS_READER: type[aiormq.connection.FrameReceiver] = aiormq.connection.FrameReceiver


class _Assembling:
    """A routed delivery whose content is being read: its ``Basic.Deliver``, then its content
    header, then its body's frames."""

    __slots__ = ("body", "channel", "consumer", "deliver", "header", "read")

    def __init__(
        self,
        deliver: pamqp.commands.Basic.Deliver,
        channel: aiormq.abc.AbstractChannel,
        consumer: DirectConsumer,
    ) -> None:
        self.deliver, self.channel, self.consumer = deliver, channel, consumer
        self.header: pamqp.header.ContentHeader | None = None
        self.body: list[bytes] = []
        self.read = 0  # bytes of the body read so far


class FrameReader(aiormq.connection.FrameReceiver):
    """aiormq's ``FrameReceiver``, reading frames in chunks and handing routed deliveries to
    their consumers itself (see the module docstring).

    One task reads a connection's frames at a time (the handshake, then the connection's
    reader task), so the lock aiormq takes for each frame is not taken.
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._buffer = b""
        self._at = 0  # where the next frame begins in _buffer
        self._assembling: dict[int, _Assembling] = {}  # by channel number
        self._handed = False  # a delivery was handed over since a frame was last returned

    async def get_frame(self) -> aiormq.connection.ReceivedFrame:
        """The next frame, as ``(weight, channel, frame)``; ``StopAsyncIteration`` if the
        connection had closed after the last frame read, as aiormq's reader does."""
        buffer, at = self._buffer, self._at
        if len(buffer) == at and self.reader.at_eof():
            del self.reader
            raise StopAsyncIteration
        while True:
            if len(buffer) - at >= _HEADER_SIZE:
                if not self.started:
                    if buffer.startswith(b"AMQP", at):
                        raise ProtocolSyntaxError("Unexpected AMQP protocol header")
                    self.started = True
                kind, number, size = _size_of(buffer, at)
                end = at + _HEADER_SIZE + size + 1
                if end <= len(buffer):
                    self._at = end
                    if self._assembling and number in self._assembling:
                        self._assemble(number, kind, buffer, at, end)
                        at = end
                        continue
                    try:
                        frame = pamqp.frame.unmarshal(buffer[at:end])
                    except PAMQPException as exc:
                        raise InvalidFrameError(str(exc)) from exc
                    if buffer.startswith(_DELIVER, at + _HEADER_SIZE) and kind == _METHOD:
                        deliver = frame[2]
                        assert isinstance(deliver, pamqp.commands.Basic.Deliver)
                        routed = direct_consumer(deliver.consumer_tag, number)
                        if routed is not None:
                            self._assembling[number] = _Assembling(deliver, *routed)
                            at = end
                            continue
                    self._handed = False
                    return frame
                needed = end - len(buffer)  # the rest of this frame
            else:
                needed = 0  # what the socket has
            if self._handed:  # before any wait: the connection counts it as alive
                self._handed = False
                return _ALIVE
            more = await self._read(needed, len(buffer) - at)
            buffer, at = buffer[at:] + more, 0
            self._buffer, self._at = buffer, at

    def _assemble(self, number: int, kind: int, buffer: bytes, at: int, end: int) -> None:
        """Add the frame at ``buffer[at:end]`` to the delivery read on channel ``number``;
        hand the delivery to its consumer once it is whole."""
        assembling = self._assembling[number]
        if buffer[end - 1] != _FRAME_END:
            raise InvalidFrameError("Last byte error")  # as pamqp says it
        if kind == _BODY and assembling.header is not None:
            assembling.body.append(buffer[at + _HEADER_SIZE : end - 1])
            assembling.read += end - 1 - at - _HEADER_SIZE
        elif kind == _CONTENT_HEADER and assembling.header is None:
            try:
                read = pamqp.frame.unmarshal(buffer[at:end])[2]
            except PAMQPException as exc:
                raise InvalidFrameError(str(exc)) from exc
            assert isinstance(read, pamqp.header.ContentHeader)  # a frame of type 2 is one
            assembling.header = read
        else:
            raise InvalidFrameError(
                f"Unexpected frame of type {kind} on channel {number} in a delivery's content"
            )
        header = assembling.header
        if header is None or assembling.read < header.body_size:
            return
        del self._assembling[number]
        body = assembling.body
        message = aiormq.abc.DeliveredMessage(
            delivery=assembling.deliver,
            header=header,
            body=body[0] if len(body) == 1 else b"".join(body),
            channel=assembling.channel,
        )
        self._handed = True
        try:
            assembling.consumer.deliver(message)
        except Exception:  # the reader must go on, as aiormq's after a failed consumer task
            log.exception("AMQP consumer callback failed")

    async def _read(self, needed: int, have: int) -> bytes:
        """``needed`` bytes (all of them), or up to :data:`CHUNK` if ``needed`` is 0, with
        aiormq's errors for a connection that fails or closes mid-frame (``have`` bytes of the
        frame read)."""
        try:
            if needed:
                return await self.reader.readexactly(needed)
            more = await self.reader.read(CHUNK)
        except asyncio.IncompleteReadError as exc:
            raise AMQPConnectionError(
                "Server connection unexpectedly closed. "
                f"Read {have + len(exc.partial)} bytes but "
                f"{have + (exc.expected or 0)} bytes expected"
            ) from exc
        except ConnectionRefusedError as exc:
            raise AMQPConnectionError(f"Server connection refused: {exc!r}") from exc
        except ConnectionResetError as exc:
            raise AMQPConnectionError(f"Server connection reset: {exc!r}") from exc
        except ConnectionError as exc:
            raise AMQPConnectionError(f"Server connection error: {exc!r}") from exc
        except OSError as exc:
            raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
        if not more:  # closed while a frame was awaited: aiormq's readexactly() says so too
            raise AMQPConnectionError(
                f"Server connection unexpectedly closed. Read {have} bytes of a frame"
            )
        return more


def install() -> None:
    """Read the frames of every AMQP connection opened from now on with :class:`FrameReader`
    (idempotent)."""
    aiormq.connection.FrameReceiver = FrameReader  # type: ignore[misc]


def uninstall() -> None:
    """Let aiormq read frames itself again, on connections opened from now on."""
    aiormq.connection.FrameReceiver = AIORMQS_READER  # type: ignore[misc]


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return aiormq.connection.FrameReceiver is FrameReader

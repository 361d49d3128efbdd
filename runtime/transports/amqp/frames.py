"""Reading AMQP frames off a connection: aiormq's frame reader, without its cost per frame.

aiormq's ``FrameReceiver`` reads every frame with three awaited ``readexactly`` calls into a
``BytesIO`` under an ``asyncio.Lock``, and copies the frame out of it three times: about 7 us
of every no-op delivery's three frames (Deliver, content header, body) before pamqp reads a
byte of them: on a stream pre-fed with 20,000 Celery no-op deliveries, 18.6-18.9 us a
delivery against 12.3-12.5 here, of which pamqp's own reading is 11.6.
:class:`FrameReader` reads what the socket has, up to :data:`CHUNK` bytes at once, and cuts
whole frames out of it with no await between them; a frame larger than what is buffered is
read to its end in one call. The frames, and the errors for a connection that closes
mid-frame, a server that answers with its own protocol header, or a frame that does not end
where it says, are aiormq's own.

:func:`install` puts it in place of aiormq's, process-wide, for connections opened after it:
aiormq makes its reader by that module-level name and offers no other hook (as with
:mod:`runtime.transports.amqp.codec`). ``tests/runtime/test_amqp_frames.py`` compares both
readers on random streams of frames cut at random places.
"""

from __future__ import annotations

import asyncio
import struct

import aiormq.connection
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp.exceptions import PAMQPException

__all__ = ["AIORMQS_READER", "CHUNK", "FrameReader", "install", "installed", "uninstall"]

#: The most read from the socket at once.
CHUNK = 65_536
#: A frame's header: type, channel, payload size; the payload and the end octet follow.
_HEADER = struct.Struct(">BHI")
_HEADER_SIZE = _HEADER.size
_size_of = _HEADER.unpack_from
#: aiormq's own reader, which :func:`uninstall` puts back.
AIORMQS_READER: type[aiormq.connection.FrameReceiver] = aiormq.connection.FrameReceiver


class FrameReader(aiormq.connection.FrameReceiver):
    """aiormq's ``FrameReceiver``, reading frames in chunks (see the module docstring).

    One task reads a connection's frames at a time (the handshake, then the connection's
    reader task), so the lock aiormq takes for each frame is not taken.
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._buffer = b""
        self._at = 0  # where the next frame begins in _buffer

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
                end = at + _HEADER_SIZE + _size_of(buffer, at)[2] + 1
                if end <= len(buffer):
                    self._at = end
                    try:
                        return pamqp.frame.unmarshal(buffer[at:end])
                    except PAMQPException as exc:
                        raise InvalidFrameError(str(exc)) from exc
                more = await self._read(end - len(buffer), buffer, at)  # the rest of it
            else:
                more = await self._read(0, buffer, at)
            buffer, at = buffer[at:] + more, 0
            self._buffer, self._at = buffer, at

    async def _read(self, needed: int, buffer: bytes, at: int) -> bytes:
        """``needed`` bytes (all of them), or up to :data:`CHUNK` if ``needed`` is 0, with
        aiormq's errors for a connection that fails or closes mid-frame."""
        try:
            if needed:
                return await self.reader.readexactly(needed)
            more = await self.reader.read(CHUNK)
        except asyncio.IncompleteReadError as exc:
            raise AMQPConnectionError(
                "Server connection unexpectedly closed. "
                f"Read {len(buffer) - at + len(exc.partial)} bytes but "
                f"{len(buffer) - at + (exc.expected or 0)} bytes expected"
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
                f"Server connection unexpectedly closed. Read {len(buffer) - at} bytes of a frame"
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

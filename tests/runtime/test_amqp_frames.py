"""celeriac's AMQP frame reader against aiormq's own: the same frames from the same bytes,
however the bytes arrive, and the same errors when they go wrong."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from runtime.transports.amqp import AmqpTransport, frames

AIORMQS_OWN = frames.AIORMQS_READER


def _delivery(tag: int, body: bytes) -> list[tuple[int, Any]]:
    """A delivery's frames on channel 1, as RabbitMQ sends them (no body frame for an empty
    body: pamqp, like the protocol, has no body frame of size 0)."""
    properties = commands.Basic.Properties(
        content_type="application/json", headers={"id": f"task-{tag}", "task": "noop"}
    )
    return [
        (1, commands.Basic.Deliver("ctag", tag, False, "", "celery")),
        (1, ContentHeader(0, len(body), properties)),
        *([(1, ContentBody(body))] if body else []),
    ]


_FRAMES = st.one_of(
    st.builds(_delivery, st.integers(1, 2**40), st.binary(max_size=300)),
    st.just([(0, Heartbeat())]),
    st.just([(1, commands.Basic.QosOk())]),
    st.just([(2, commands.Channel.CloseOk())]),
    st.builds(lambda size: [(1, ContentBody(b"x" * size))], st.integers(1, 3 * frames.CHUNK)),
)


def _wire(sent: Sequence[tuple[int, Any]]) -> bytes:
    return b"".join(frame.marshal(value, channel) for channel, value in sent)


async def _read_all(
    reader_class: type, pieces: Sequence[bytes], *, end_apart: bool = False
) -> list[Any]:
    """Every frame ``reader_class`` reads from ``pieces`` arriving one after another, each in
    a loop turn of its own, and how its reading ended. The stream ends with the last piece,
    or with ``end_apart`` in a turn of its own, while the reader waits for more."""
    stream = asyncio.StreamReader(limit=2**30)
    receiver = reader_class(stream)

    async def arrive() -> None:
        for number, piece in enumerate(pieces, 1):
            stream.feed_data(piece)
            if end_apart or number < len(pieces):
                await asyncio.sleep(0)
        stream.feed_eof()

    arriving = asyncio.create_task(arrive())
    found: list[Any] = []
    try:
        async for weight, channel, value in receiver:
            found.append((weight, channel, frame.marshal(value, channel)))
    except Exception as exc:  # compared: both readers must raise alike
        found.append((type(exc), str(exc).split(".")[0]))
    await arriving
    return found


def _cut(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    at = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(at)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FRAMES, min_size=1, max_size=12), st.lists(st.integers(0, 10**6), max_size=20))
def test_both_readers_read_the_same_frames_however_the_bytes_arrive(
    batches: list[list[tuple[int, Any]]], cuts: list[int]
) -> None:
    data = _wire([sent for batch in batches for sent in batch])
    pieces = _cut(data, cuts)

    theirs = asyncio.run(_read_all(AIORMQS_OWN, pieces))
    ours = asyncio.run(_read_all(frames.FrameReader, pieces))

    assert ours == theirs
    assert [sent for _, _, sent in ours] == [
        frame.marshal(value, channel) for batch in batches for channel, value in batch
    ]


def test_a_frame_byte_by_byte() -> None:
    data = _wire(_delivery(7, b'[[], {}, {"callbacks": null}]'))

    found = asyncio.run(_read_all(frames.FrameReader, [bytes([b]) for b in data]))

    assert [type(frame.unmarshal(sent)[2]) for _, _, sent in found] == [
        commands.Basic.Deliver,
        ContentHeader,
        ContentBody,
    ]


@pytest.mark.parametrize("lost", [1, 7, 20])
def test_a_connection_closed_mid_frame_is_a_connection_error(lost: int) -> None:
    data = _wire(_delivery(1, b"body"))[:-lost]

    for reader_class in (AIORMQS_OWN, frames.FrameReader):
        *_, (error, message) = asyncio.run(_read_all(reader_class, [data]))
        assert error is AMQPConnectionError, reader_class
        assert message.startswith("Server connection unexpectedly closed")


def test_a_server_answering_with_its_protocol_header_is_refused() -> None:
    header = b"AMQP\x00\x00\x09\x01"

    for reader_class in (AIORMQS_OWN, frames.FrameReader):
        found = asyncio.run(_read_all(reader_class, [header]))
        assert found == [(ProtocolSyntaxError, "Unexpected AMQP protocol header")], reader_class


def test_a_frame_that_does_not_end_where_it_says_is_invalid() -> None:
    data = bytearray(_wire(_delivery(1, b"body")))
    data[-1] = 0  # the body's frame-end octet

    theirs = asyncio.run(_read_all(AIORMQS_OWN, [bytes(data)]))
    ours = asyncio.run(_read_all(frames.FrameReader, [bytes(data)]))

    assert ours == theirs
    assert len(ours) == 3  # the Deliver, the content header, and then the error
    assert ours[-1][0] is InvalidFrameError


def test_a_connection_closed_while_a_frame_is_awaited_is_a_connection_error() -> None:
    """The end of the stream arriving while the reader waits for the next frame is the
    server gone, not a clean end, for both readers: aiormq then closes the connection."""
    data = _wire(_delivery(1, b"body"))

    for reader_class in (AIORMQS_OWN, frames.FrameReader):
        *read, (error, message) = asyncio.run(_read_all(reader_class, [data], end_apart=True))
        assert len(read) == 3, reader_class
        assert error is AMQPConnectionError, reader_class
        assert message.startswith("Server connection unexpectedly closed")


async def test_a_body_keeps_none_of_the_chunk_it_came_in() -> None:
    """Frames are cut out of what was read, not views of it: a body a waiting run keeps must
    not keep the chunk of up to 64 KiB it arrived in."""
    stream = asyncio.StreamReader()
    stream.feed_data(_wire([sent for tag in range(50) for sent in _delivery(tag, b"b" * 100)]))
    reader = frames.FrameReader(stream)

    await reader.get_frame()  # the Deliver
    await reader.get_frame()  # the content header
    _, _, body = await reader.get_frame()

    assert isinstance(body, ContentBody)
    assert type(body.value) is bytes
    assert len(body.value) == 100


async def test_connecting_the_transport_installs_the_reader(amqp_url: str) -> None:
    frames.uninstall()
    try:
        transport = AmqpTransport(amqp_url)
        await transport.connect()
        try:
            assert frames.installed()
        finally:
            await transport.aclose()
    finally:
        frames.install()

"""celeriac's AMQP frame reader against aiormq's own: the same frames from the same bytes,
however the bytes arrive, and the same errors when they go wrong."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any, cast

import aiormq.abc
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands, frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from runtime.transports.amqp import dispatch, frames
from runtime.transports.amqp.dispatch import DirectConsumer

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
            if channel == 0 and value is frames._ALIVE[2]:
                found.append("alive")  # after deliveries handed over (dispatch.route)
                continue
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


# Deliveries the reader hands to their consumers itself (``dispatch.route``).


class _Channel:
    """What routing reads of an aiormq channel: its number, whether it is closed, and its
    consumers by tag."""

    def __init__(self, number: int = 1) -> None:
        self.number = number
        self.is_closed = False
        self.consumers: dict[str, Any] = {}


def _routed(
    channel: _Channel, tag: str
) -> tuple[list[aiormq.abc.DeliveredMessage], DirectConsumer]:
    """A direct consumer of ``tag`` on ``channel``, routed, and the messages it is handed."""
    handed: list[aiormq.abc.DeliveredMessage] = []
    consumer = channel.consumers[tag] = DirectConsumer(handed.append)
    dispatch.route(channel, tag)  # type: ignore[arg-type]  # what routing reads of one
    return handed, consumer


def _content(
    tag: str, delivery_tag: int, pieces: Sequence[bytes], channel: int = 1
) -> list[tuple[int, Any]]:
    """A delivery's frames, its body in ``pieces`` (a frame each; none for an empty body)."""
    properties = commands.Basic.Properties(
        content_type="application/json", headers={"id": f"task-{delivery_tag}", "task": "noop"}
    )
    return [
        (channel, commands.Basic.Deliver(tag, delivery_tag, False, "", "celery")),
        (channel, ContentHeader(0, sum(map(len, pieces)), properties)),
        *[(channel, ContentBody(piece)) for piece in pieces if piece],
    ]


_BODIES = st.lists(st.binary(min_size=1, max_size=200), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["routed", "other", "heartbeat", "qos"]), _BODIES),
        min_size=1,
        max_size=10,
    ),
    st.lists(st.integers(0, 10**6), max_size=20),
)
def test_routed_deliveries_are_handed_whole_and_every_other_frame_read_as_aiormq_does(
    batches: list[tuple[str, list[bytes]]], cuts: list[int]
) -> None:
    """However the bytes arrive: each routed delivery handed once, whole and in order, its
    body put together from its frames; every other frame returned exactly as aiormq's reader
    reads the stream without the routed deliveries."""
    channel = _Channel()
    handed, _ = _routed(channel, "ctag1.routed")
    sent: list[tuple[int, Any]] = []
    others: list[tuple[int, Any]] = []
    routed: list[tuple[int, bytes]] = []
    for number, (kind, body) in enumerate(batches, 1):
        if kind == "routed":
            sent += _content("ctag1.routed", number, body)
            routed.append((number, b"".join(body)))
            continue
        batch = {
            "other": _content("ctag1.other", number, body),
            "heartbeat": [(0, Heartbeat())],
            "qos": [(1, commands.Basic.QosOk())],
        }[kind]
        sent += batch
        others += batch
    pieces = _cut(_wire(sent), cuts)

    ours = asyncio.run(_read_all(frames.FrameReader, pieces))
    theirs = asyncio.run(_read_all(AIORMQS_OWN, [_wire(others)])) if others else []

    assert [found for found in ours if found != "alive"] == theirs
    assert [(m.delivery_tag, m.body) for m in handed] == routed
    assert all(m.channel is cast(Any, channel) for m in handed)
    assert all((m.header.properties.headers or {})["task"] == "noop" for m in handed)
    # The connection's reader is told frames came before the reader next waits for bytes.
    assert ours.count("alive") <= len(routed)
    if batches[-1][0] == "routed":
        assert ours[-1] == "alive"


async def test_a_delivery_is_put_together_across_frames_of_other_channels() -> None:
    """A delivery's content frames may interleave with other channels' frames (AMQP 0-9-1,
    4.2.6): those are returned as they come, and the delivery handed once it is whole."""
    channel = _Channel(1)
    handed, _ = _routed(channel, "ctag1.a")
    deliver, header, first, second = _content("ctag1.a", 1, [b"[[], ", b"{}, {}]"])
    wire = _wire([deliver, (2, commands.Basic.QosOk()), header, (0, Heartbeat()), first])
    wire += _wire([(2, commands.Basic.QosOk()), second])

    ours = await _read_all(frames.FrameReader, [wire])

    *returned, last = ours
    assert [(number, frame.unmarshal(sent)[2].name) for _, number, sent in returned] == [
        (2, "Basic.QosOk"),
        (0, "Heartbeat"),
        (2, "Basic.QosOk"),
    ]
    assert last == "alive"
    assert [m.body for m in handed] == [b"[[], {}, {}]"]


async def test_an_empty_body_is_handed_with_its_header() -> None:
    channel = _Channel()
    handed, _ = _routed(channel, "ctag1.empty")

    ours = await _read_all(frames.FrameReader, [_wire(_content("ctag1.empty", 3, []))])

    assert ours == ["alive"]
    assert [(m.delivery_tag, m.body, m.header.body_size) for m in handed] == [(3, b"", 0)]


@pytest.mark.parametrize("why", ["not routed", "closed", "other channel", "not direct"])
async def test_a_delivery_not_routed_to_an_open_direct_consumer_is_returned(why: str) -> None:
    """What the route does not cover goes to aiormq's readers, frame by frame, unchanged."""
    channel = _Channel(1)
    tag = f"ctag1.{why.replace(' ', '-')}"
    handed, _ = _routed(channel, tag) if why != "not routed" else ([], None)
    if why == "closed":
        channel.is_closed = True
    elif why == "other channel":
        channel.number = 2
    elif why == "not direct":

        async def plain(message: aiormq.abc.DeliveredMessage) -> None:
            """A plain aiormq callback."""

        channel.consumers[tag] = plain
    sent = _content(tag, 1, [b"body"])

    ours = await _read_all(frames.FrameReader, [_wire(sent)])

    assert ours == await _read_all(AIORMQS_OWN, [_wire(sent)])
    assert handed == []


async def test_a_frame_of_another_kind_inside_a_delivery_is_invalid() -> None:
    channel = _Channel()
    _routed(channel, "ctag1.broken")
    deliver, header, body = _content("ctag1.broken", 1, [b"body"])

    method_inside = [deliver, header, (1, commands.Basic.QosOk()), body]

    assert await _read_all(frames.FrameReader, [_wire(method_inside)]) == [
        (InvalidFrameError, "Unexpected frame of type 1 on channel 1 in a delivery's content")
    ]
    assert await _read_all(frames.FrameReader, [_wire([deliver, body])]) == [
        (InvalidFrameError, "Unexpected frame of type 3 on channel 1 in a delivery's content")
    ]


async def test_a_body_frame_that_does_not_end_where_it_says_is_invalid() -> None:
    channel = _Channel()
    _routed(channel, "ctag1.end")
    data = bytearray(_wire(_content("ctag1.end", 1, [b"body"])))
    data[-1] = 0

    assert await _read_all(frames.FrameReader, [bytes(data)]) == [
        (InvalidFrameError, "Last byte error")
    ]


async def test_the_reader_goes_on_after_a_direct_consumer_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = _Channel()
    handed: list[bytes] = []

    def deliver(message: aiormq.abc.DeliveredMessage) -> None:
        if message.body == b"0":
            raise RuntimeError("boom")
        handed.append(message.body)

    channel.consumers["ctag1.failing"] = DirectConsumer(deliver)
    dispatch.route(channel, "ctag1.failing")  # type: ignore[arg-type]

    await _read_all(
        frames.FrameReader,
        [_wire([*_content("ctag1.failing", 1, [b"0"]), *_content("ctag1.failing", 2, [b"1"])])],
    )

    assert handed == [b"1"]
    assert "AMQP consumer callback failed" in caplog.text


async def test_handed_deliveries_are_told_before_a_wait_mid_frame() -> None:
    """Deliveries handed over, then a frame whose rest has not arrived: the reader tells the
    connection that frames came before it waits for that rest, however long it takes."""
    channel = _Channel()
    handed, _ = _routed(channel, "ctag1.waiting")
    next_frame = _wire([(1, commands.Basic.QosOk())])
    stream = asyncio.StreamReader()
    stream.feed_data(_wire(_content("ctag1.waiting", 1, [b"body"])) + next_frame[:9])
    reader = frames.FrameReader(stream)

    first = await asyncio.wait_for(reader.get_frame(), 1)

    assert first is frames._ALIVE
    assert [m.body for m in handed] == [b"body"]
    stream.feed_data(next_frame[9:])
    _, number, frame_read = await asyncio.wait_for(reader.get_frame(), 1)
    assert (number, frame_read.name) == (1, "Basic.QosOk")

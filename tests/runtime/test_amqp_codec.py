"""celeriac's AMQP codec: it reads every frame exactly as pamqp does, and writes floats exactly.

:mod:`runtime.transports.amqp.codec` replaces pamqp's ``Basic.Properties.unmarshal`` and
``Basic.Deliver.unmarshal`` in the worker. Each reading test here reads the same bytes both ways,
pamqp's own reading and the installed one, and compares everything pamqp would set, types
included (``repr``): on a Celery message as RabbitMQ delivers it, on well-formed frames with
every field type AMQP 0-9-1 and RabbitMQ define, and on those same bytes cut short or with a
byte changed. The writing tests check floats arrive exactly where Celery's client reads them,
and that nothing else is written differently.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import struct
from collections.abc import Callable, Iterator
from typing import Any

import aiormq
import aiormq.abc
import kombu
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands, decode, encode, frame
from pamqp.common import FieldTable
from pamqp.header import ContentHeader

from benchmarks.quick_noop import preload
from runtime import App
from runtime.transports.amqp import AmqpTransport, codec, frames

Properties = commands.Basic.Properties
Deliver = commands.Basic.Deliver


@pytest.fixture(autouse=True, scope="module")
def _installed() -> None:
    """The codec in place, as a connected transport leaves it, whichever tests run."""
    codec.install()


def outcome(unmarshal: Any, flags: int, data: bytes) -> str:
    """What ``unmarshal`` sets on fresh properties, or the type of error it raises."""
    target = Properties()
    try:
        unmarshal(target, flags, data)
    except Exception as exc:  # the type is what is compared
        return f"raises {type(exc).__name__}"
    return repr({name: getattr(target, name) for name in Properties.__slots__})


def assert_read_alike(flags: int, data: bytes) -> None:
    """The installed reading and pamqp's agree on ``flags`` and ``data``."""
    assert outcome(codec._unmarshal_properties, flags, data) == outcome(
        codec._pamqp_properties, flags, data
    )


def _sized(prefix: bytes, payload: bytes) -> bytes:
    return prefix + struct.pack(">I", len(payload)) + payload


def _short(payload: bytes) -> bytes:
    return bytes([len(payload)]) + payload


def _prefixed(code: bytes) -> Callable[[bytes], bytes]:
    return lambda raw: code + raw


#: Every fixed-size field type and its size.
_FIXED_SIZES = [(b"b", 1), (b"B", 1), (b"s", 2), (b"u", 2), (b"I", 4), (b"i", 4), (b"l", 8),
                (b"L", 8), (b"f", 4), (b"d", 8), (b"D", 5)]  # fmt: skip
# Any text, and bytes that may not be UTF-8 (pamqp then gives a long string as bytes).
_strings = st.one_of(st.text(max_size=40).map(lambda text: text.encode()), st.binary(max_size=40))
_keys = st.text(max_size=12).map(str.encode).filter(lambda key: len(key) < 256)
_scalars = st.one_of(
    _strings.map(lambda raw: _sized(b"S", raw)),
    st.just(b"V"),
    st.just(b"\x00"),
    st.binary(min_size=1, max_size=1).map(lambda raw: b"t" + raw),
    *(st.binary(min_size=size, max_size=size).map(_prefixed(code)) for code, size in _FIXED_SIZES),
    # Timestamps up to the year 9999 in seconds, and some past 2106 (read as milliseconds).
    st.integers(0, 253_402_300_799).map(lambda value: b"T" + struct.pack(">Q", value)),
    st.binary(max_size=20).map(lambda raw: _sized(b"x", raw)),
)


def _table(entries: list[tuple[bytes, bytes]]) -> bytes:
    return _sized(b"", b"".join(_short(key) + value for key, value in entries))


_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(st.tuples(_keys, inner), max_size=5).map(lambda items: b"F" + _table(items)),
        st.lists(inner, max_size=5).map(lambda items: _sized(b"A", b"".join(items))),
    ),
    max_leaves=20,
)
_tables = st.lists(st.tuples(_keys, _values), max_size=12).map(_table)
_octets = st.integers(0, 255).map(lambda value: bytes([value]))
_ENCODED_AS = {
    "shortstr": st.text(max_size=30).map(str.encode).filter(lambda raw: len(raw) < 256).map(_short),
    "table": _tables,
    "octet": _octets,
    "timestamp": st.integers(0, 253_402_300_799).map(lambda value: struct.pack(">Q", value)),
}


@st.composite
def encoded_properties(draw: st.DrawFn) -> tuple[int, bytes]:
    """``(flags, data)`` of well-formed properties: any subset, any values of their types."""
    flags, data = 0, b""
    for name in Properties.__slots__:
        if draw(st.booleans()):
            flags |= Properties.flags[name]
            data += draw(_ENCODED_AS[getattr(Properties, f"_{name}")])
    return flags, data


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(encoded_properties())
def test_well_formed_properties_are_read_as_pamqp_reads_them(encoded: tuple[int, bytes]) -> None:
    assert_read_alike(*encoded)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(encoded_properties(), st.data())
def test_damaged_properties_are_read_as_pamqp_reads_them(
    encoded: tuple[int, bytes], data: st.DataObject
) -> None:
    flags, raw = encoded
    if raw:
        cut = data.draw(st.integers(0, len(raw) - 1), label="cut at")
        assert_read_alike(flags, raw[:cut])
        at = data.draw(st.integers(0, len(raw) - 1), label="changed at")
        byte = data.draw(st.integers(0, 255), label="changed to")
        assert_read_alike(flags, raw[:at] + bytes([byte]) + raw[at + 1 :])


@pytest.mark.parametrize(
    ("flags", "data"),
    [
        # A long string that is not UTF-8: pamqp gives bytes.
        (Properties.flags["headers"], _table([(b"k", _sized(b"S", b"\xff\xfe"))])),
        # A table whose last entry runs past the table's own length: pamqp reads past it.
        (Properties.flags["headers"], b"\x00\x00\x00\x07\x01kS\x00\x00\x00\x05abcde"),
        # A short string longer than what is left: pamqp cuts it short.
        (Properties.flags["content_type"], b"\x10app"),
        # An unknown field type, and a key that is not UTF-8: pamqp refuses both.
        (Properties.flags["headers"], _table([(b"k", b"Zjunk")])),
        (Properties.flags["headers"], _table([(b"\xff", b"V")])),
        # A timestamp past datetime's range.
        (Properties.flags["timestamp"], b"\xff" * 8),
        # Nothing at all where a property should be.
        (Properties.flags["priority"], b""),
    ],
    ids=[
        "not-utf8",
        "entry-past-table",
        "short-string-cut",
        "unknown-type",
        "key-not-utf8",
        "timestamp-out-of-range",
        "missing",
    ],
)
def test_malformed_properties_get_pamqps_own_answer(flags: int, data: bytes) -> None:
    assert_read_alike(flags, data)


def _nested_arrays(levels: int) -> bytes:
    """An empty field array inside ``levels - 1`` others, built without recursion."""
    value = _sized(b"A", b"")
    for _ in range(levels - 1):
        value = _sized(b"A", value)
    return value


def test_headers_nested_as_deep_as_celeriac_checks_are_read_as_pamqp_reads_them() -> None:
    # The table is the first level: 99 arrays inside it make 100, DEFAULT_MAX_DEPTH.
    assert_read_alike(Properties.flags["headers"], _table([(b"deep", _nested_arrays(99))]))


@pytest.mark.parametrize("levels", [100, 5_000])
def test_headers_nested_deeper_are_left_unread_and_the_properties_after_them_read(
    levels: int,
) -> None:
    flags = (
        Properties.flags["headers"]
        | Properties.flags["delivery_mode"]
        | Properties.flags["correlation_id"]
    )
    headers = _table([(b"task", _sized(b"S", b"noop")), (b"deep", _nested_arrays(levels))])
    data = headers + b"\x02" + _short(b"c-1")
    target = Properties()

    # pamqp's own reading of 5,000 levels exhausts the stack: it must not be asked.
    codec._unmarshal_properties(target, flags, data)

    assert isinstance(target.headers, codec.UnreadableTable)
    assert target.headers == {}
    assert target.headers.reason == "nested deeper than 100 levels of tables and arrays"
    assert (target.delivery_mode, target.correlation_id) == (2, "c-1")


def test_a_header_table_read_here_is_marked_as_read_here_and_its_inner_tables_are_not() -> None:
    data = _table([(b"stamps", b"F" + _table([(b"k", b"V")]))])
    headers = codec.read_properties(Properties.flags["headers"], data)["headers"]
    assert type(headers) is codec.ReadTable
    assert type(headers["stamps"]) is dict
    assert headers == {"stamps": {"k": None}}


def test_a_long_string_that_is_not_utf8_is_bytes() -> None:
    data = _table([(b"k", _sized(b"S", b"\xff\xfe"))])
    assert codec.read_properties(Properties.flags["headers"], data) == {
        "headers": {"k": b"\xff\xfe"}
    }


def test_what_the_installed_reading_refuses_goes_to_pamqp() -> None:
    data = b"\x00\x00\x00\x07\x01kS\x00\x00\x00\x05abcde"
    with pytest.raises(ValueError, match="past its table"):
        codec.read_properties(Properties.flags["headers"], data)
    target = Properties()
    codec._unmarshal_properties(target, Properties.flags["headers"], data)
    assert target.headers == {"k": "abcde"}  # pamqp's lenient reading, as before


def test_pamqps_encoding_of_a_celery_message_is_read_back() -> None:
    headers: FieldTable = {
        "lang": "py", "task": "tasks.add", "id": "0f4c", "shadow": None, "eta": None,
        "retries": 0, "timelimit": [None, 30.5], "ignore_result": False, "stamps": {},
        "group_index": 2, "origin": "gen1@host", "big": 2**40, "neg": -(2**20),
    }  # fmt: skip
    sent = Properties(
        content_type="application/json", content_encoding="utf-8", headers=headers,
        delivery_mode=2, priority=0, correlation_id="0f4c", reply_to="r",
    )  # fmt: skip
    payload = ContentHeader(body_size=10, properties=sent).marshal()
    flags = struct.unpack_from(">H", payload, 12)[0]
    assert codec.read_properties(flags, payload[14:])["headers"] == headers
    assert_read_alike(flags, payload[14:])


def _headers_read(headers: dict[str, Any]) -> dict[str, Any]:
    payload = ContentHeader(body_size=0, properties=Properties(headers=headers)).marshal()
    flags = struct.unpack_from(">H", payload, 12)[0]
    read: dict[str, Any] = codec.read_properties(flags, payload[14:])["headers"]
    return read


def test_messages_share_one_copy_of_each_header_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_KEYS", {})
    first, second = _headers_read({"task": "a", "id": "1"}), _headers_read({"task": "b"})

    def task_name_key(headers: dict[str, Any]) -> str:
        return next(name for name in headers if name == "task")

    assert task_name_key(second) is task_name_key(first)
    assert first == {"task": "a", "id": "1"}
    assert second == {"task": "b"}


def test_the_shared_header_names_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_KEYS", {})
    monkeypatch.setattr(codec, "_KEYS_MAX", 3)
    many = {f"name{n}": n for n in range(10)}

    assert _headers_read(many) == many
    assert _headers_read(many) == many  # the names past the bound are read each time
    assert list(codec._KEYS.values()) == ["name0", "name1", "name2"]


def test_the_names_remembered_for_writing_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_NAMES", {})
    monkeypatch.setattr(codec, "_KEYS_MAX", 3)
    many = Properties(headers={f"name{n}": n for n in range(10)})

    assert codec.write_properties(many) == codec._pamqp_marshal(many)
    assert codec.write_properties(many) == codec._pamqp_marshal(many)
    assert list(codec._NAMES) == ["name0", "name1", "name2"]


def deliver_outcome(unmarshal: Any, data: bytes) -> str:
    """What ``unmarshal`` sets on a fresh ``Basic.Deliver``, or the type of error it raises."""
    target = Deliver()
    try:
        unmarshal(target, data)
    except Exception as exc:  # the type is what is compared
        return f"raises {type(exc).__name__}"
    return repr({name: getattr(target, name) for name in Deliver.__slots__})


def assert_deliver_read_alike(data: bytes) -> None:
    """The installed reading of a ``Basic.Deliver`` and pamqp's agree on ``data``."""
    assert deliver_outcome(codec._unmarshal_deliver, data) == deliver_outcome(
        codec._pamqp_deliver, data
    )


_short_names = st.text(max_size=40).map(str.encode).filter(lambda raw: len(raw) < 256)


@st.composite
def encoded_deliver(draw: st.DrawFn) -> bytes:
    """A ``Basic.Deliver``'s arguments: any tags and names, any bits in the flags octet."""
    return b"".join(
        (
            _short(draw(_short_names)),
            struct.pack(">q", draw(st.integers(-(2**63), 2**63 - 1))),
            bytes([draw(st.integers(0, 255))]),
            _short(draw(_short_names)),
            _short(draw(_short_names)),
        )
    )


@settings(max_examples=300)
@given(encoded_deliver(), st.data())
def test_a_deliver_is_read_as_pamqp_reads_it_whole_and_damaged(
    raw: bytes, data: st.DataObject
) -> None:
    assert_deliver_read_alike(raw)
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut at")
    assert_deliver_read_alike(raw[:cut])
    at = data.draw(st.integers(0, len(raw) - 1), label="changed at")
    byte = data.draw(st.integers(0, 255), label="changed to")
    assert_deliver_read_alike(raw[:at] + bytes([byte]) + raw[at + 1 :])


def test_a_deliver_pamqp_wrote_is_read_back() -> None:
    sent = Deliver("ctag1.abc", 2**40, True, "celery", "celery.é")
    assert codec.read_deliver(sent.marshal()) == ("ctag1.abc", 2**40, True, "celery", "celery.é")
    received = frame.unmarshal(frame.marshal(sent, 1))[2]
    assert every_field(received, Deliver) == every_field(sent, Deliver)


@contextlib.contextmanager
def pamqps_own_reading() -> Iterator[None]:
    """pamqp's own reading and writing in place for the block, celeriac's after."""
    codec.uninstall()
    try:
        yield
    finally:
        codec.install()


async def test_connecting_the_transport_installs_the_codec_and_the_frame_reader(
    amqp_url: str,
) -> None:
    with pamqps_own_reading():
        frames.uninstall()
        try:
            assert not codec.installed()
            assert not frames.installed()
            transport = AmqpTransport(amqp_url)
            await transport.connect()
            try:
                assert codec.installed()
                assert frames.installed()
            finally:
                await transport.aclose()
        finally:
            frames.install()
    codec.install()  # idempotent
    assert codec.installed()


async def test_a_celery_message_from_rabbitmq_reads_alike_both_ways(
    amqp_url: str, unique_name: str
) -> None:
    """A message as a Celery client publishes it and RabbitMQ delivers it, frames and all."""
    await asyncio.to_thread(preload, unique_name, 1, amqp_url)
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        delivered: asyncio.Future[aiormq.abc.DeliveredMessage] = asyncio.Future()

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            if not delivered.done():
                delivered.set_result(message)

        await channel.basic_consume(unique_name, on_message, no_ack=True)
        got = await asyncio.wait_for(delivered, 10)
    finally:
        await connection.close()
    frames = frame.marshal(got.delivery, 1) + frame.marshal(got.header, 1)
    with pamqps_own_reading():
        by_pamqp = [read for _, _, read in _frames(frames)]
    by_celeriac = [read for _, _, read in _frames(frames)]
    assert isinstance(by_celeriac[0], Deliver)
    assert by_celeriac[0].routing_key == unique_name
    assert by_celeriac[1].properties.headers["task"] == "noop"
    assert repr(every_field(by_celeriac[0], Deliver)) == repr(every_field(by_pamqp[0], Deliver))
    assert repr(every_field(by_celeriac[1].properties)) == repr(every_field(by_pamqp[1].properties))


def _frames(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """The frames in ``data``, read by pamqp's ``frame.unmarshal`` one after the other."""
    while data:
        used, channel, read = frame.unmarshal(data)
        yield used, channel, read
        data = data[used:]


def every_field(read: Any, kind: Any = Properties) -> dict[str, Any]:
    """Every field of ``read``, a ``kind`` of pamqp frame, by name."""
    return {name: getattr(read, name) for name in kind.__slots__}


_FLOATS: FieldTable = {
    "ratio": 0.1,
    "limits": [None, 0.1, 1.3],
    "nested": {"tiny": -2.5e-300},
    "n": 3,
}


def test_floats_in_tables_are_written_as_doubles() -> None:
    written = encode.field_table(_FLOATS)
    assert decode.field_table(written) == (len(written), _FLOATS)
    assert b"d" + struct.pack(">d", 0.1) in written
    with pamqps_own_reading():  # pamqp alone writes 32-bit floats: 0.1 comes back changed
        assert decode.field_table(encode.field_table(_FLOATS))[1]["ratio"] != 0.1


@settings(max_examples=200)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_every_other_value_is_written_as_pamqp_writes_it(value: Any) -> None:
    with pamqps_own_reading():
        by_pamqp = encode.field_table({"v": value})
    assert encode.field_table({"v": value}) == by_pamqp


def written(marshal: Any, properties: Any) -> str:
    """What ``marshal`` writes for ``properties``, or the type of error it raises."""
    try:
        return repr(marshal(properties))
    except Exception as exc:  # the type is what is compared
        return f"raises {type(exc).__name__}"


def assert_written_alike(properties: Any) -> None:
    """The installed writing and pamqp's (with the installed float writer) agree."""
    assert written(codec._marshal_properties, properties) == written(
        codec._pamqp_marshal, properties
    )


_table_keys = st.one_of(
    st.text(max_size=12), st.text(min_size=129, max_size=140), st.just("é" * 65)
)
_table_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.decimals(places=2, min_value=-(10**6), max_value=10**6)
    | st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1))
    | st.binary(max_size=8).map(bytearray)
    | st.sampled_from([b"bytes", (1, 2), {3}, object]),  # pamqp refuses these
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_table_keys, inner, max_size=4),
    max_leaves=16,
)
_PROPERTY_VALUES = {
    "shortstr": st.text(max_size=20) | st.text(min_size=120, max_size=300) | st.integers(),
    "table": st.dictionaries(_table_keys, _table_values, max_size=12)
    | st.sampled_from([[], "", 0, ["not a table"]]),
    "octet": st.integers(-5, 300) | st.booleans(),
    "timestamp": st.datetimes(
        min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
    ),
}


@st.composite
def any_properties(draw: st.DrawFn) -> Any:
    """Properties with any subset set, to values of their types and some that are not."""
    properties = Properties()
    for name in Properties.__slots__:
        if draw(st.booleans()):
            kind = getattr(Properties, f"_{name}")
            setattr(properties, name, draw(_PROPERTY_VALUES[kind], label=name))
    return properties


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(any_properties())
def test_properties_are_written_as_pamqp_writes_them(properties: Any) -> None:
    assert_written_alike(properties)


def test_a_celery_message_is_written_as_pamqp_writes_it_and_read_back() -> None:
    headers: FieldTable = {
        "lang": "py", "task": "tasks.add", "id": "0f4c", "shadow": None, "eta": None,
        "retries": 0, "timelimit": [None, 30.5], "ignore_result": False, "stamps": {},
        "group_index": 2, "origin": "gen1@host", "big": 2**40, "neg": -(2**20), "é": "ü",
    }  # fmt: skip
    sent = Properties(
        content_type="application/json", content_encoding="utf-8", headers=headers,
        delivery_mode=2, priority=0, correlation_id="0f4c", reply_to="r",
    )  # fmt: skip
    assert_written_alike(sent)
    data = codec.write_properties(sent)
    assert codec.read_properties(struct.unpack_from(">H", data)[0], data[2:]) == {
        name: getattr(sent, name) for name in Properties.__slots__ if getattr(sent, name)
    } | {"priority": 0}


def test_what_the_installed_writing_refuses_goes_to_pamqp() -> None:
    long_key: FieldTable = {"k" * 129: 1}
    with pytest.raises(ValueError, match="truncates"):
        codec.write_properties(Properties(headers=long_key))
    assert_written_alike(Properties(headers=long_key))  # pamqp truncates it, with a warning
    with pytest.raises(ValueError, match="short string"):
        codec.write_properties(Properties(message_id="m" * 256))
    assert written(codec._marshal_properties, Properties(message_id="m" * 256)) == (
        "raises TypeError"  # pamqp's own error
    )


async def test_celerys_client_reads_the_floats_celeriac_sends(
    amqp_url: str, unique_name: str
) -> None:
    """A task sent by celeriac's ``App`` with float limits and headers, read by kombu."""
    app = App("producer", broker=amqp_url)
    try:
        await app.connect([unique_name])
        await app.send_task(
            "tasks.add", (1, 2), queue=unique_name, soft_time_limit=0.1, headers={"ratio": 1.3}
        )
    finally:
        await app.aclose()

    def read() -> Any:
        with kombu.Connection(amqp_url) as connection:
            return connection.default_channel.basic_get(unique_name, no_ack=True)

    message = await asyncio.to_thread(read)
    assert message.headers["timelimit"] == [None, 0.1]
    assert message.headers["ratio"] == 1.3

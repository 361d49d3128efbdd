"""Where celeriac reads and writes AMQP frames otherwise than pamqp, which aiormq is built on.

**Faster readings of the two frames every delivery starts with.** pamqp decodes a method's
fields and a message's properties generically: each field's decoder looked up by type name,
the rest of the frame copied (``value[offset:]``) after every field. A Celery message's
``headers`` property is a field table of about twenty entries, so its content header cost
45-63 us to read here and a ``Basic.Deliver`` 7-8 us: a fifth of the worker's CPU per no-op
task. :func:`read_properties` and :func:`read_deliver` walk the same bytes by offset, in front
of pamqp's own ``Basic.Properties.unmarshal`` and ``Basic.Deliver.unmarshal`` (a Celery
header frame 45 -> 25 us, a ``Basic.Deliver`` 7.1 -> 1.1 us, this machine, ``timeit``).
What they return is exactly what pamqp's reading would set (its types too: ``'x'`` byte
arrays as ``bytearray``, a long string that is not UTF-8 as ``bytes``, timestamps past 2106
read as milliseconds, ``Decimal``\\ s). They are stricter than pamqp about malformed frames (a
string or a table overrunning its bounds, which pamqp truncates or reads past), and whatever
they refuse, or any error at all, goes to pamqp's own reading, unchanged: so a frame is read
exactly as before, only faster.

**A faster writing of the content header.** Publishing a Celery message (an ETA deferral, a
retry, a canvas step, ``App.send_task``) had pamqp write its properties the same generic way:
45 us for a Celery header frame. :func:`write_properties` writes the same bytes in 16 us
(``timeit``), in front of pamqp's ``Basic.Properties.marshal``, and leaves what it does not
write itself (keys pamqp truncates, subclasses of the value types, values pamqp refuses) to
pamqp's own writing, unchanged.

**One copy of each table key.** Celery's twenty header names repeat in every message, and a
worker holding 10,000 waiting runs held 10,000 copies of each (about 1 KiB a message): keys
are looked up, by their bytes, among those read before (at most 4,096 of them).

**Floats in field tables written as doubles.** pamqp writes a Python float in a header table
as a 32-bit ``f``, so a soft time limit of 0.1 s arrived as 0.10000000149011612; Celery's
client (py-amqp) writes ``d``, a double, and so does celeriac with :func:`install`.

**Header tables nested too deep are not read.** A table or array nests in another as deep as
its sender likes, and pamqp reads them recursively: a Celery message whose headers nested
2,000 levels (10 KB) made every reading exhaust Python's stack, the frame reader died with
the connection, and the message, redelivered, did it again, forever. Past
:data:`~protocol.limits.DEFAULT_MAX_DEPTH` levels (where celeriac's own checks stop any
message) the headers property is an empty :class:`UnreadableTable` saying why, the reading
goes on after it, and the transport dead-letters the message.

:func:`install` (called when the transport connects) puts all four in place, process-wide, as
aiormq offers no other hook. ``tests/runtime/test_amqp_codec.py`` checks the readings against
pamqp's on random frames, whole and damaged, the writing against pamqp's on random
properties, and the floats as Celery's client reads them.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from collections.abc import Callable
from typing import Any

from pamqp import commands, encode
from pamqp.base import BasicProperties

from protocol.limits import DEFAULT_MAX_DEPTH

__all__ = [
    "MAX_NESTING",
    "ReadTable",
    "UnreadableTable",
    "encode_table_value",
    "install",
    "installed",
    "read_deliver",
    "read_properties",
    "uninstall",
    "write_properties",
]

_PROPERTIES = commands.Basic.Properties
_DELIVER = commands.Basic.Deliver
_LONG = struct.Struct(">i").unpack_from
_ULONG = struct.Struct(">I").unpack_from
_LONGLONG = struct.Struct(">q").unpack_from
_ULONGLONG = struct.Struct(">Q").unpack_from
_TEN = decimal.Decimal(10)
_UTC = datetime.UTC
#: ``(flag, attribute, AMQP type)`` of each property, in the order they are encoded.
_LAYOUT = tuple(
    (_PROPERTIES.flags[name], name, getattr(_PROPERTIES, f"_{name}"))
    for name in _PROPERTIES.__slots__
)

# pamqp's own readings, for what the faster ones refuse, and its own table-value writer.
_pamqp_properties: Callable[[Any, int, bytes], None] = _PROPERTIES.unmarshal
_pamqp_deliver: Callable[[Any, bytes], None] = _DELIVER.unmarshal
_pamqp_table_value = encode.encode_table_value
_DOUBLE = struct.Struct(">d").pack
_OCTET = struct.Struct(">B").pack
_BYTE = struct.Struct(">b").pack
_USHORT = struct.Struct(">H").pack
_ULONG_PACK = struct.Struct(">I").pack
_pamqp_marshal: Callable[[Any], bytes] = _PROPERTIES.marshal
#: Table keys as read before, so that every message shares one copy of each: Celery's twenty
#: header names repeat in every message, and a worker holding 10,000 waiting runs held 10,000
#: copies of each (about 1 KiB per message). Bounded, so that arbitrary keys cannot grow it.
_KEYS: dict[bytes, str] = {}
_KEYS_MAX = 4096
#: The other way round: keys as written before, with their length byte.
_NAMES: dict[str, bytes] = {}


class _Refused(ValueError):
    """Something :func:`write_properties` leaves to pamqp's own writing."""


class _Malformed(ValueError):
    """The bytes are not a well-formed encoding; pamqp's own reading decides what happens."""


class _TooDeep(Exception):
    """A table nests deeper than :data:`MAX_NESTING`: not read, by pamqp either."""


class UnreadableTable(dict[str, Any]):
    """A field table left unread (it is empty), and :attr:`reason`: the ``headers`` property
    of a message whose headers nest deeper than celeriac reads."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class ReadTable(dict[str, Any]):
    """A header table as :func:`read_properties` read it: string keys, tables and arrays
    nested at most :data:`MAX_NESTING` deep, held by nothing else. The transport uses it as
    it is, without a copy or another walk (``from_amqp(headers_nest_within=...)``)."""

    __slots__ = ()


#: How deep tables and arrays may nest, the outermost table counted as 1: as deep as
#: celeriac's checks let any part of a message nest (``check_depth``).
MAX_NESTING = DEFAULT_MAX_DEPTH


def read_deliver(data: bytes) -> tuple[str, int, bool, str, str]:
    """A ``Basic.Deliver``'s arguments (after the method id): ``(consumer_tag, delivery_tag,
    redelivered, exchange, routing_key)``, as pamqp would set them. Raises ``ValueError``
    (among others) for a malformed encoding."""
    end = 1 + data[0]
    consumer_tag = data[1:end].decode("utf-8")
    delivery_tag = _LONGLONG(data, end)[0]
    redelivered = bool(data[end + 8] & 1)
    start = end + 10
    end = start + data[end + 9]
    exchange = data[start:end].decode("utf-8")
    start = end + 1
    end = start + data[end]
    if end > len(data):
        raise _Malformed("routing key past the end")
    return consumer_tag, delivery_tag, redelivered, exchange, data[start:end].decode("utf-8")


def read_properties(flags: int, data: bytes) -> dict[str, Any]:
    """The properties ``flags`` names, read from ``data``: ``{attribute: value}``, as pamqp's
    ``Basic.Properties.unmarshal`` would set them. Raises ``ValueError`` (among others) for a
    malformed encoding."""
    values: dict[str, Any] = {}
    offset = 0
    for flag, name, kind in _LAYOUT:
        if not flags & flag:
            continue
        if kind == "shortstr":
            length = data[offset]
            end = offset + 1 + length
            if end > len(data):
                raise _Malformed("short string past the end")
            values[name] = data[offset + 1 : end].decode("utf-8")
            offset = end
        elif kind == "table":
            try:
                values[name], offset = _table(data, offset, 1)
            except _TooDeep:
                values[name], offset = _unreadable(data, offset)
        elif kind == "octet":
            values[name] = data[offset]
            offset += 1
        elif kind == "timestamp":
            values[name] = _timestamp(_ULONGLONG(data, offset)[0])
            offset += 8
        else:  # pragma: no cover - pamqp's Basic.Properties has no other type
            raise _Malformed(f"unknown property type {kind!r}")
    return values


def _unreadable(data: bytes, offset: int) -> tuple[UnreadableTable, int]:
    """The field table at ``offset`` left unread, and the offset after it."""
    end = offset + 4 + _ULONG(data, offset)[0]
    if end > len(data):
        raise _Malformed("field table past the end")
    reason = f"nested deeper than {MAX_NESTING} levels of tables and arrays"
    return UnreadableTable(reason), end


def _table(data: bytes, offset: int, depth: int) -> tuple[dict[str, Any], int]:
    """The field table at ``offset``, ``depth`` levels down, and the offset after it."""
    end = offset + 4 + _ULONG(data, offset)[0]
    if end > len(data):
        raise _Malformed("field table past the end")
    offset += 4
    table: dict[str, Any] = ReadTable() if depth == 1 else {}
    while offset < end:
        length = data[offset]
        offset += 1 + length
        raw = data[offset - length : offset]
        key = _KEYS.get(raw) or _key(raw)
        kind = data[offset]
        if kind == 83:  # S, a long string: inline, as most of Celery's headers are
            start = offset + 5
            offset = start + _ULONG(data, offset + 1)[0]
            if offset > end:
                raise _Malformed("long string past its table")
            try:
                table[key] = data[start:offset].decode("utf-8")
            except UnicodeDecodeError:
                table[key] = data[start:offset]
        elif kind == 86:  # V, void: the other half of them
            table[key] = None
            offset += 1
        else:
            table[key], offset = _value(data, offset, end, depth)
    if offset != end:
        raise _Malformed("field table entry past the table's end")
    return table, end


def _key(raw: bytes) -> str:
    """A table key read for the first time, remembered while the cache has room."""
    key = raw.decode("utf-8")
    if len(_KEYS) < _KEYS_MAX:
        _KEYS[raw] = key
    return key


def _array(data: bytes, offset: int, depth: int) -> tuple[list[Any], int]:
    """The field array at ``offset``, ``depth`` levels down, and the offset after it."""
    end = offset + 4 + _ULONG(data, offset)[0]
    if end > len(data):
        raise _Malformed("field array past the end")
    offset += 4
    array: list[Any] = []
    while offset < end:
        value, offset = _value(data, offset, end, depth)
        array.append(value)
    if offset != end:
        raise _Malformed("field array item past the array's end")
    return array, end


def _value(data: bytes, offset: int, limit: int, depth: int) -> tuple[Any, int]:
    """The typed field value at ``offset`` in a table or array ``depth`` levels down, and the
    offset after it, which must not pass ``limit`` (the end of that table or array)."""
    kind = data[offset]
    fixed = _FIXED.get(kind)
    if fixed is not None:
        unpack, size = fixed
        return unpack(data, offset + 1)[0], offset + 1 + size
    if kind in (70, 65):  # F, A: a table or an array; its own length bounds it
        if depth >= MAX_NESTING:
            raise _TooDeep
        if kind == 70:
            return _table(data, offset + 1, depth + 1)
        return _array(data, offset + 1, depth + 1)
    reader = _VARIABLE.get(kind)
    if reader is None:
        raise _Malformed(f"unknown field type {bytes([kind])!r}")
    return reader(data, offset + 1, limit)


def _long_string(data: bytes, offset: int, limit: int) -> tuple[str | bytes, int]:
    end = offset + 4 + _ULONG(data, offset)[0]
    if end > limit:
        raise _Malformed("long string past its table")
    raw = data[offset + 4 : end]
    try:
        return raw.decode("utf-8"), end
    except UnicodeDecodeError:
        return raw, end  # as pamqp gives it


def _byte_array(data: bytes, offset: int, limit: int) -> tuple[bytearray, int]:
    end = offset + 4 + _ULONG(data, offset)[0]
    if end > limit:
        raise _Malformed("byte array past its table")
    return bytearray(data[offset + 4 : end]), end


def _decimal(data: bytes, offset: int, _limit: int) -> tuple[decimal.Decimal, int]:
    places, raw = data[offset], _LONG(data, offset + 1)[0]  # signed, as pamqp reads it
    return decimal.Decimal(raw) * (_TEN**-places), offset + 5


def _void(_data: bytes, offset: int, _limit: int) -> tuple[None, int]:
    return None, offset


def _boolean(data: bytes, offset: int, _limit: int) -> tuple[bool, int]:
    return bool(data[offset]), offset + 1


def _stamp(data: bytes, offset: int, _limit: int) -> tuple[datetime.datetime, int]:
    return _timestamp(_ULONGLONG(data, offset)[0]), offset + 8


#: Fixed-size field types (the type byte): how to unpack them and their size. ``L`` is signed,
#: as in pamqp (and RabbitMQ, which sends ``l``).
_FIXED: dict[int, tuple[Callable[[bytes, int], tuple[Any, ...]], int]] = {
    ord("b"): (struct.Struct(">b").unpack_from, 1),
    ord("B"): (struct.Struct(">B").unpack_from, 1),
    ord("s"): (struct.Struct(">h").unpack_from, 2),
    ord("u"): (struct.Struct(">H").unpack_from, 2),
    ord("I"): (_LONG, 4),
    ord("i"): (_ULONG, 4),
    ord("l"): (_LONGLONG, 8),
    ord("L"): (_LONGLONG, 8),
    ord("f"): (struct.Struct(">f").unpack_from, 4),
    ord("d"): (struct.Struct(">d").unpack_from, 8),
}
#: The other field types but tables and arrays: their readers. ``NUL`` is read as void, as
#: pamqp does.
_VARIABLE: dict[int, Callable[[bytes, int, int], tuple[Any, int]]] = {
    ord("S"): _long_string,
    ord("V"): _void,
    0: _void,
    ord("t"): _boolean,
    ord("T"): _stamp,
    ord("D"): _decimal,
    ord("x"): _byte_array,
}


def _timestamp(value: int) -> datetime.datetime:
    # pamqp reads a value past 2106 (more than 32 bits) as milliseconds.
    seconds: float = value / 1000.0 if value > 0xFFFFFFFF else value
    return datetime.datetime.fromtimestamp(seconds, tz=_UTC)


def _unmarshal_properties(self: BasicProperties, flags: int, data: bytes) -> None:
    """``Basic.Properties.unmarshal`` by :func:`read_properties`, else by pamqp."""
    try:
        values = read_properties(flags, data)
    except Exception:  # whatever it is, pamqp's reading decides
        _pamqp_properties(self, flags, data)
        return
    for name, value in values.items():
        setattr(self, name, value)


def _unmarshal_deliver(self: commands.Basic.Deliver, data: bytes) -> None:
    """``Basic.Deliver.unmarshal`` by :func:`read_deliver`, else by pamqp."""
    try:
        (
            self.consumer_tag,
            self.delivery_tag,
            self.redelivered,
            self.exchange,
            self.routing_key,
        ) = read_deliver(data)
    except Exception:  # whatever it is, pamqp's reading decides
        _pamqp_deliver(self, data)


def write_properties(properties: BasicProperties) -> bytes:
    """``properties`` encoded for a content header (flags first), byte for byte as pamqp's
    ``Basic.Properties.marshal`` with :func:`encode_table_value` writes them. Raises
    ``_Refused`` (a ``ValueError``), or whatever else, for anything it leaves to pamqp: keys
    pamqp would truncate, a subclass of a value type, an unknown value."""
    flags = 0
    parts = [b""]
    for flag, name, kind in _LAYOUT:
        value = getattr(properties, name)
        if value is None or value == "":  # what pamqp leaves out
            continue
        flags |= flag
        if kind == "shortstr":
            if type(value) is not str:
                raise _Refused(f"{name} is not a str")
            raw = value.encode("utf-8")
            if len(raw) > 255:
                raise _Refused(f"{name} is longer than a short string")
            parts.append(_OCTET(len(raw)) + raw)
        elif kind == "table":
            parts.append(_write_table(value))
        else:
            parts.append(encode.by_type(value, kind))
    parts[0] = _USHORT(flags)
    return b"".join(parts)


def _write_table(table: Any) -> bytes:
    if not table:  # pamqp writes any empty value as an empty table
        return b"\x00\x00\x00\x00"
    if type(table) is not dict:
        raise _Refused("a field table is not a dict")
    parts = []
    for key, value in sorted(table.items()):
        name = _NAMES.get(key) or _name(key)
        kind = type(value)
        if kind is str:  # inline, as most of Celery's headers are strings or null
            raw = value.encode("utf-8")
            parts.append(name + b"S" + _ULONG_PACK(len(raw)) + raw)
        elif value is None:
            parts.append(name + b"V")
        else:
            parts.append(name + _write_value(value))
    data = b"".join(parts)
    return _ULONG_PACK(len(data)) + data


def _name(key: Any) -> bytes:
    """A table key written for the first time (as a short string), remembered while the
    cache has room."""
    if type(key) is not str:
        raise _Refused("a key is not a str")
    raw = key.encode("utf-8")
    if len(raw) > 128:
        raise _Refused("a key pamqp truncates")
    name = _OCTET(len(raw)) + raw
    if len(_NAMES) < _KEYS_MAX:
        _NAMES[key] = name
    return name


def _write_value(value: Any) -> bytes:
    kind = type(value)
    if kind is str:
        raw: bytes = value.encode("utf-8")
        return b"S" + _ULONG_PACK(len(raw)) + raw
    if value is None:
        return b"V"
    if kind is int and -128 <= value <= 127:
        return b"b" + _BYTE(value)
    if kind is dict:
        return b"F" + _write_table(value)
    if kind is list:
        data = b"".join([_write_value(item) for item in value])
        return b"A" + _ULONG_PACK(len(data)) + data
    return encode_table_value(value)  # bool, wider ints, floats and the rarer types


def _marshal_properties(self: BasicProperties) -> bytes:
    """``Basic.Properties.marshal`` by :func:`write_properties`, else by pamqp."""
    try:
        return write_properties(self)
    except Exception:  # whatever it is, pamqp's writing decides (and raises its own error)
        return _pamqp_marshal(self)


def encode_table_value(value: Any) -> bytes:
    """A field-table value as pamqp writes it, except a float: a double (``d``), as py-amqp
    writes it, not pamqp's 32-bit ``f``."""
    if isinstance(value, float):
        return b"d" + _DOUBLE(value)
    return _pamqp_table_value(value)


def install() -> None:
    """Read every ``Basic.Deliver`` and message properties of this process by this module,
    write message properties by it, and floats in field tables as doubles (idempotent).

    Process-wide, as aiormq offers no other hook: every reader of pamqp frames in the process,
    aio-pika included, gets the same values as before, and every writer the same bytes, but
    for exact floats.
    """
    _PROPERTIES.unmarshal = _unmarshal_properties  # type: ignore[method-assign]
    _PROPERTIES.marshal = _marshal_properties  # type: ignore[method-assign]
    _DELIVER.unmarshal = _unmarshal_deliver  # type: ignore[method-assign,assignment]
    encode.encode_table_value = encode_table_value


def uninstall() -> None:
    """Let pamqp read and write them itself again."""
    _PROPERTIES.unmarshal = _pamqp_properties  # type: ignore[method-assign,assignment]
    _PROPERTIES.marshal = _pamqp_marshal  # type: ignore[method-assign,assignment]
    _DELIVER.unmarshal = _pamqp_deliver  # type: ignore[method-assign,assignment]
    encode.encode_table_value = _pamqp_table_value


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return (
        _PROPERTIES.unmarshal is _unmarshal_properties
        and _PROPERTIES.marshal is _marshal_properties
        and _DELIVER.unmarshal is _unmarshal_deliver
        and encode.encode_table_value is encode_table_value
    )

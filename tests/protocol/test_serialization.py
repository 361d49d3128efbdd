"""Serializers, the accept policy and compression, checked against kombu's own."""

from __future__ import annotations

import json
import math
import sys
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu import compression as kombu_compression
from kombu import serialization as kombu_serialization
from kombu.utils.json import dumps as kombu_json_dumps

from protocol import (
    AcceptPolicy,
    EncodeError,
    ExceptionInfo,
    MalformedMessage,
    TaskMessage,
    decode_task,
    encode_task,
    jsontags,
    serialization,
    serializer_for,
)
from protocol.results import ResultRef

EVERYTHING = AcceptPolicy.of(["json", "msgpack", "yaml", "pickle"])

TAGGED = [
    datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    datetime(2024, 1, 2, 3, 4, 5),
    date(2024, 1, 2),
    time(3, 4, 5),
    Decimal("1.10"),
    uuid.UUID("12345678123456781234567812345678"),
    b"abc",
    b"\xff\x00",
    ("tuple", 1),
    {"nested": [1, 2.5, None, True, "ünï"]},
]


@pytest.mark.parametrize("value", TAGGED, ids=repr)
def test_json_tags_match_kombu(value: Any) -> None:
    ours = jsontags.dumps(value)

    assert ours == kombu_json_dumps(value)
    expected = list(value) if isinstance(value, tuple) else value
    assert jsontags.loads(ours) == expected


TAG = '{"__type__": "date", "__value__": "2024-01-02"}'
ESCAPED_TAG = '{"\\u005f_type__": "date", "\\u005f_value__": "2024-01-02"}'


@pytest.mark.parametrize(
    "document",
    [
        TAG,
        TAG.encode(),
        ESCAPED_TAG,  # a tag whose keys are spelled with escapes is still a tag
        ESCAPED_TAG.encode(),
        TAG.encode("utf-16"),  # json.loads reads UTF-16 bytes; the marker hides behind zeros
    ],
    ids=["str", "bytes", "escaped str", "escaped bytes", "utf-16 bytes"],
)
def test_json_tags_are_read_however_the_document_is_spelled(document: str | bytes) -> None:
    assert jsontags.loads(document) == date(2024, 1, 2)


@pytest.mark.parametrize("document", ['{"a": [1, {"b": 2}]}', b'{"a": [1, {"b": 2}]}'])
def test_json_without_tags_is_plain_json(document: str | bytes) -> None:
    assert jsontags.loads(document) == {"a": [1, {"b": 2}]}


_PLAIN_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: past 64 bits too
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()  # NaN and the infinities: json writes and reads them, orjson does not
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)


@given(_PLAIN_JSON, st.booleans(), st.booleans())
def test_json_is_read_exactly_as_the_json_module_reads_it(
    value: Any, ascii_only: bool, as_bytes: bool
) -> None:
    """Whichever parser reads it (orjson where it reads exactly, json otherwise)."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    document: str | bytes = text
    if as_bytes:
        try:
            document = text.encode()
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 spelling
            document = text.encode("utf-16")

    assert repr(jsontags.loads(document)) == repr(json.loads(document))


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (b"18446744073709551616", 18446744073709551616),  # past 64 bits: orjson makes it a float
        (b"[-9223372036854775809]", [-9223372036854775809]),
        (b'{"n": NaN}', {"n": math.nan}),
        (b"1e400", math.inf),
        (b'"\\ud800"', "\ud800"),
    ],
    ids=["2**64", "below -2**63", "NaN", "1e400", "lone surrogate"],
)
def test_json_that_orjson_reads_otherwise_is_read_by_json(document: bytes, expected: Any) -> None:
    assert repr(jsontags.loads(document)) == repr(expected)


def test_json_uses_dunder_json_and_read_only_mappings() -> None:
    class Reduces:
        def __json__(self) -> dict[str, int]:
            return {"a": 1}

    assert jsontags.dumps([Reduces(), MappingProxyType({"b": 2})]) == '[{"a": 1}, {"b": 2}]'


def test_json_refuses_unknown_objects() -> None:
    with pytest.raises(EncodeError, match="object is not JSON serializable"):
        jsontags.dumps(object())


@pytest.mark.parametrize("name", ["json", "msgpack", "yaml", "pickle"])
def test_every_serializer_matches_kombu_and_round_trips(name: str) -> None:
    value = {"args": [1, "two", None], "flag": True, "n": 1.5}

    body, content_type, encoding = serialization.dumps(value, name)

    kombu_type, kombu_encoding, kombu_body = kombu_serialization.dumps(value, serializer=name)
    assert (content_type, encoding) == (kombu_type, kombu_encoding)
    if name in ("json", "msgpack"):  # the formats celeriac writes: the same bytes as kombu
        assert body == (kombu_body.encode() if isinstance(kombu_body, str) else kombu_body)
    assert serialization.loads(body, content_type, encoding, accept=EVERYTHING) == value
    assert kombu_serialization.loads(body, content_type, encoding, accept={content_type}) == value


def test_msgpack_packs_read_only_mappings_and_refuses_others() -> None:
    body, _, _ = serialization.dumps({"k": MappingProxyType({"a": 1})}, "msgpack")

    assert serialization.loads(body, "application/x-msgpack", "binary") == {"k": {"a": 1}}
    with pytest.raises(EncodeError, match="msgpack"):
        serialization.dumps(datetime(2024, 1, 1), "msgpack")


def test_yaml_v1_body_with_datetimes() -> None:
    """A yaml producer may put real timestamps in a protocol v1 body."""
    body = b"task: proj.add\nid: i-1\nargs: [1]\nkwargs: {}\neta: 2030-01-02 03:04:05\n"
    wire = encode_task(TaskMessage(id="x", task="y"))
    message = type(wire)(body=body, content_type="application/x-yaml", content_encoding="utf-8")

    decoded = decode_task(message, accept=EVERYTHING)

    assert decoded.eta == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert decoded.protocol == 1


def test_yaml_without_pyyaml_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)

    with pytest.raises(MalformedMessage, match="PyYAML is not installed"):
        serialization.loads(b"a: 1", "application/x-yaml", "utf-8", accept=EVERYTHING)


def test_text_body_declared_binary_is_read_as_utf8() -> None:
    assert serialization.loads(b'{"a": 1}', "application/json", "binary") == {"a": 1}
    assert serialization.loads(b'{"a": 1}', "application/json", None) == {"a": 1}


def test_unknown_serializer_names() -> None:
    with pytest.raises(ValueError, match="unknown serializer"):
        serializer_for("bson")
    with pytest.raises(MalformedMessage, match="no serializer"):
        serialization.loads(b"", "text/csv", None, accept=AcceptPolicy(frozenset({"text/csv"})))


def test_serializer_by_content_type() -> None:
    assert serializer_for("application/x-msgpack").name == "msgpack"
    assert serializer_for("msgpack").is_binary
    assert not serializer_for("json").is_binary


@pytest.mark.parametrize(
    ("method", "mime"), [("zlib", "application/x-gzip"), ("xz", "application/x-lzma")]
)
def test_compression_aliases_match_kombu(method: str, mime: str) -> None:
    data, content_type = serialization.compress(b"payload" * 10, method)

    assert content_type == mime == kombu_compression.get_encoder(method)[1]
    assert kombu_compression.decompress(data, content_type) == b"payload" * 10


def test_unknown_compression_to_encode() -> None:
    with pytest.raises(ValueError, match="unsupported compression"):
        serialization.compress(b"", "brotli")


def test_exception_with_a_picky_constructor_falls_back_like_celery() -> None:
    class Picky(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(a + b)

    info = ExceptionInfo(exc_type="Picky", exc_message=(3,), exc_module=__name__)
    globals()["Picky"] = Picky
    try:
        rebuilt = info.to_exception()
    finally:
        del globals()["Picky"]

    assert type(rebuilt) is Exception
    assert "Picky" in str(rebuilt)
    assert str(info) == "Picky(3)"


def test_result_reference_given_as_a_bare_id() -> None:
    """Celery's result_from_tuple also takes ``[id, members]`` with a bare id."""
    assert ResultRef.from_wire(["a", None], "r") == ResultRef("a")

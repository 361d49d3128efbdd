"""Every kind of bad input gets MalformedMessage with a reason and the field at fault."""

from __future__ import annotations

import base64
import json
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aio_pika
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import (
    AcceptPolicy,
    ContentDisallowed,
    ExceptionInfo,
    LimitExceeded,
    Limits,
    MalformedMessage,
    TaskMessage,
    WireMessage,
    amqp_properties,
    decode_envelope,
    decode_group,
    decode_result,
    decode_sqs_body,
    decode_task,
    encode_envelope,
    encode_task,
    from_amqp,
)
from protocol.limits import DEFAULT_LIMITS, check_depth, json_nests_within

GOOD = encode_task(TaskMessage(id="id-1", task="proj.add", args=(1, 2)))


def _with_headers(**changes: Any) -> WireMessage:
    return WireMessage(
        body=GOOD.body,
        content_type=GOOD.content_type,
        content_encoding=GOOD.content_encoding,
        headers={**GOOD.headers, **changes},
        properties=GOOD.properties,
    )


def _with_body(payload: Any, **headers: Any) -> WireMessage:
    return WireMessage(
        body=json.dumps(payload).encode(),
        content_type="application/json",
        content_encoding="utf-8",
        headers={**GOOD.headers, **headers},
        properties=GOOD.properties,
    )


def _with(**changes: Any) -> WireMessage:
    parts = {
        "body": GOOD.body,
        "content_type": GOOD.content_type,
        "content_encoding": GOOD.content_encoding,
        "headers": GOOD.headers,
        "properties": GOOD.properties,
    }
    return WireMessage(**{**parts, **changes})


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}

BAD_TASKS = [
    ("empty task name", _with_headers(task=""), "headers.task"),
    ("task name not a string", _with_headers(task=5), "headers.task"),
    ("no id", _with_headers(id=None), "headers.id"),
    ("retries negative", _with_headers(retries=-1), "headers.retries"),
    ("retries a bool", _with_headers(retries=True), "headers.retries"),
    ("eta not ISO", _with_headers(eta="tomorrow"), "headers.eta"),
    ("eta a number", _with_headers(eta=12), "headers.eta"),
    ("timelimit one item", _with_headers(timelimit=[1]), "headers.timelimit"),
    ("timelimit negative", _with_headers(timelimit=[-1, None]), "headers.timelimit[0]"),
    ("timelimit infinite", _with_headers(timelimit=[None, float("inf")]), "headers.timelimit[1]"),
    ("timelimit a string", _with_headers(timelimit=["1", None]), "headers.timelimit[0]"),
    ("ignore_result not a bool", _with_headers(ignore_result="yes"), "headers.ignore_result"),
    ("group_index a string", _with_headers(group_index="1"), "headers.group_index"),
    ("stamped_headers of numbers", _with_headers(stamped_headers=[1]), "headers.stamped_headers"),
    ("stamps a list", _with_headers(stamps=[]), "headers.stamps"),
    ("headers not a mapping", _with(headers=[("task", "x")]), "headers"),
    ("header keys not strings", _with(headers={1: "x"}), "headers"),
    ("priority negative", _with(properties={"priority": -1}), "properties.priority"),
    ("reply_to a number", _with(properties={"reply_to": 5}), "properties.reply_to"),
    ("properties not a mapping", _with(properties=[("priority", 1)]), "properties"),
    ("property keys not strings", _with(properties={1: "x"}), "properties"),
    ("body not three items", _with_body([[1], {}]), "body"),
    ("body a string", _with_body("hello"), "body"),
    ("args a mapping", _with_body([{"a": 1}, {}, EMBED]), "args"),
    ("kwargs a list", _with_body([[], [1], EMBED]), "kwargs"),
    ("embed a list", _with_body([[], {}, []]), "body.embed"),
    ("callbacks not a list", _with_body([[], {}, {**EMBED, "callbacks": {}}]), "callbacks"),
    (
        "callback without task",
        _with_body([[], {}, {**EMBED, "callbacks": [{"args": []}]}]),
        "callbacks[0].task",
    ),
    (
        "chord with bad options",
        _with_body([[], {}, {**EMBED, "chord": {"task": "t", "options": []}}]),
        "chord.options",
    ),
    ("not JSON", _with(body=b"{nope"), "body"),
    ("not UTF-8", _with(body=b"\xff\xfe\x00"), "body"),
    ("timelimit a huge int", _with_headers(timelimit=[10**400, None]), "headers.timelimit[0]"),
    ("no content type", _with(content_type=None), "content_type"),
    ("unknown content type", _with(content_type="text/csv"), "content_type"),
    ("unknown JSON tag", _with(body=b'[[{"__type__": "x", "__value__": 1}], {}, null]'), "body"),
    (
        "bad JSON tag value",
        _with(body=b'[[{"__type__": "uuid", "__value__": 5}], {}, null]'),
        "body",
    ),
    (
        "bad base64 tag",
        _with(body=b'[[{"__type__": "base64", "__value__": "!!"}], {}, null]'),
        "body",
    ),
    ("bad msgpack", _with(body=b"\xc1", content_type="application/x-msgpack"), "body"),
    ("no task header, not v1", _with(headers={}), None),
    ("unknown compression", _with_headers(compression="application/zip"), "compression"),
    ("compression not a string", _with_headers(compression=1), "headers.compression"),
    ("corrupt compressed body", _with_headers(compression="application/x-gzip"), "body"),
    (
        "truncated compressed body",
        _with(
            body=zlib.compress(GOOD.body)[:-4],
            headers={**GOOD.headers, "compression": "application/x-gzip"},
        ),
        "body",
    ),
    ("v1 without id", _with(headers={}, body=json.dumps({"task": "t"}).encode()), "body.id"),
    (
        "hybrid with bad group",
        _with(
            headers={"task": "t"},
            body=json.dumps({"args": [], "kwargs": {}, "id": "i", "group": 5}).encode(),
        ),
        "body.group",
    ),
]


@pytest.mark.parametrize(("case", "message", "field"), BAD_TASKS, ids=[c[0] for c in BAD_TASKS])
def test_bad_task_messages(case: str, message: WireMessage, field: str | None) -> None:
    """Each case names the field at fault, so a dead-letter reason can point at it."""
    with pytest.raises(MalformedMessage) as caught:
        decode_task(message)

    assert caught.value.reason
    assert caught.value.field == field, caught.value
    assert str(caught.value).endswith(caught.value.reason)


@pytest.mark.parametrize("content_type", ["application/x-python-serialize", "application/x-yaml"])
def test_pickle_and_yaml_refused_by_default(content_type: str) -> None:
    with pytest.raises(ContentDisallowed) as caught:
        decode_task(_with(content_type=content_type))

    assert caught.value.content_type == content_type
    assert "refused content type" in caught.value.reason


def test_msgpack_refused_when_policy_says_json_only() -> None:
    wire = encode_task(TaskMessage(id="i", task="t"), serializer="msgpack")

    with pytest.raises(ContentDisallowed):
        decode_task(wire, accept=AcceptPolicy.of(["json"]))


SMALL = Limits(max_body_bytes=200, max_depth=4, max_headers=25)


@pytest.mark.parametrize(
    ("case", "message", "limit"),
    [
        ("body too large", _with_body([["x" * 300], {}, EMBED]), "size"),
        ("args too deep", _with_body([[[[[[1]]]]], {}, EMBED]), "nesting depth"),
        ("too many headers", _with_headers(**{f"h{i}": i for i in range(30)}), "header count"),
        ("headers too deep", _with_headers(stamps={"a": {"b": {"c": {"d": 1}}}}), "nesting depth"),
        (
            "decompression bomb",
            _with(
                body=zlib.compress(b"[" * 10_000),
                headers={**GOOD.headers, "compression": "application/x-gzip"},
            ),
            "decompressed size",
        ),
    ],
)
def test_limits(case: str, message: WireMessage, limit: str) -> None:
    with pytest.raises(LimitExceeded) as caught:
        decode_task(message, limits=SMALL)

    assert caught.value.limit == limit
    assert caught.value.value > caught.value.maximum


def test_default_limits_refuse_json_nested_past_the_recursion_limit() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(MalformedMessage):
        decode_task(_with(body=deep))


def _envelope(**changes: Any) -> bytes:
    document = json.loads(encode_envelope(GOOD, exchange="", routing_key="q", delivery_tag="tag"))
    for key, value in changes.items():
        if key.startswith("p_"):
            document["properties"][key[2:]] = value
        else:
            document[key] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("case", "data", "field"),
    [
        ("not JSON", b"nope", None),
        ("a list", b"[]", "envelope"),
        ("no properties", _envelope(properties=None), "envelope.properties"),
        ("no delivery tag", _envelope(p_delivery_tag=None), "envelope.delivery_tag"),
        ("body not base64", _envelope(body="@@@"), "envelope.body"),
        ("unknown body encoding", _envelope(p_body_encoding="rot13"), None),
        ("priority a string", _envelope(p_priority="high"), "envelope.properties.priority"),
        ("delivery_info a list", _envelope(p_delivery_info=[1]), None),
        ("headers a list", _envelope(headers=[1]), "envelope.headers"),
        ("content-type a number", _envelope(**{"content-type": 1}), "content-type"),
    ],
)
def test_bad_envelopes(case: str, data: bytes, field: str | None) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_envelope(data)

    if field is not None:
        assert caught.value.field == field


def test_envelope_without_body_encoding_or_body() -> None:
    plain = decode_envelope(_envelope(p_body_encoding=None, body="[[], {}, null]"))
    empty = decode_envelope(_envelope(body=None))

    assert plain.message.body == b"[[], {}, null]"
    assert empty.message.body == b""


def test_envelope_size_limit() -> None:
    with pytest.raises(LimitExceeded):
        decode_envelope(b" " * (SMALL.max_body_bytes * 2 + 70_000), limits=SMALL)
    with pytest.raises(LimitExceeded):
        decode_sqs_body("A" * (SMALL.max_body_bytes * 2 + 70_000), limits=SMALL)


def test_sqs_body_that_only_looks_like_base64() -> None:
    """Valid base64 alphabet but not decodable, or not UTF-8 after decoding: read as is."""
    for body in ("abc", base64.b64encode(b"\xff\xfe").decode()):
        with pytest.raises(MalformedMessage):
            decode_sqs_body(body)


def test_from_amqp_checks_size_and_headers() -> None:
    with pytest.raises(LimitExceeded):
        from_amqp(
            b"x" * 201,
            content_type=None,
            content_encoding=None,
            headers={},
            properties={},
            limits=SMALL,
        )
    with pytest.raises(MalformedMessage):
        from_amqp(
            b"",
            content_type=None,
            content_encoding=None,
            headers={1: 2},  # type: ignore[dict-item]  # a non-str key, refused on purpose
            properties={},
        )
    wire = from_amqp(
        b"",
        content_type="application/json",
        content_encoding="utf-8",
        headers=None,
        properties={"priority": 3, "app_id": "ignored"},
    )
    assert wire.properties == {"priority": 3}
    assert wire.headers == {}


def test_from_amqp_walks_headers_a_reader_bounded_only_if_the_limits_allow_less() -> None:
    nested = {"deep": [[["x"]]]}  # four levels, the headers counted

    def read(bound: int, limits: Limits = DEFAULT_LIMITS) -> WireMessage:
        return from_amqp(
            b"", content_type=None, content_encoding=None, headers=dict(nested),
            properties={}, limits=limits, headers_nest_within=bound,
        )  # fmt: skip

    assert read(4).headers == nested
    with pytest.raises(LimitExceeded, match="nesting depth"):
        read(4, Limits(max_depth=3))
    assert read(3, Limits(max_depth=3)).headers == nested  # the reader's word is taken
    with pytest.raises(LimitExceeded, match="header count"):
        read(4, Limits(max_headers=0))
    assert read(4).headers is not nested
    with pytest.raises(TypeError):
        read(4).headers["deep"] = None  # type: ignore[index]  # read-only, as every WireMessage's


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("not JSON", b"{"),
        ("a list", b"[]"),
        ("unknown status", b'{"status": "DONE", "task_id": "t"}'),
        ("status a number", b'{"status": 1, "task_id": "t"}'),
        ("no task id", b'{"status": "SUCCESS"}'),
        ("exception not a dict", b'{"status": "FAILURE", "result": 5, "task_id": "t"}'),
        ("exception without type", b'{"status": "FAILURE", "result": {"x": 1}, "task_id": "t"}'),
        ("bad date_done", b'{"status": "SUCCESS", "date_done": "x", "task_id": "t"}'),
        ("children a dict", b'{"status": "SUCCESS", "children": {}, "task_id": "t"}'),
        ("child of one item", b'{"status": "SUCCESS", "children": [[1]], "task_id": "t"}'),
        (
            "child head of three",
            b'{"status": "SUCCESS", "children": [[[1,2,3], null]], "task_id": "t"}',
        ),
        ("compressed, no type", b"\x00celery-compressed\x00application"),
        ("compressed, unknown type", b"\x00celery-compressed\x00application/zip\x00xx"),
    ],
)
def test_bad_result_records(case: str, data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_result(data)


def test_result_in_refused_serializer() -> None:
    with pytest.raises(ContentDisallowed):
        decode_result(b"x", serializer="pickle")


@pytest.mark.parametrize("data", [b'{"result": null}', b'{"result": [["g", null], null]}', b"[]"])
def test_bad_group_records(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_group(data)


def test_result_record_naming_a_non_exception_is_refused() -> None:
    """A stored record must not be able to make a reader call ``os.system``."""
    data = (
        b'{"status": "FAILURE", "result": {"exc_type": "system", "exc_message": ["id"],'
        b' "exc_module": "os"}, "task_id": "t"}'
    )
    info = decode_result(data).exception
    assert info is not None

    with pytest.raises(MalformedMessage, match="not an exception class"):
        info.to_exception()


def test_amqp_properties_leave_out_unset_values() -> None:
    wire = WireMessage(
        body=b"",
        content_type=None,
        content_encoding=None,
        properties={"priority": None, "reply_to": "r"},
    )

    assert amqp_properties(wire) == {
        "content_type": None,
        "content_encoding": None,
        "headers": {},
        "reply_to": "r",
    }


@pytest.mark.parametrize("label", ["klingon", "undefined", "punycode", "latin-1", None])
def test_content_encoding_label_is_not_applied_like_kombu(label: str | None) -> None:
    """kombu hands registered serializers the raw bytes; an odd label changes nothing."""
    assert decode_task(_with(content_encoding=label)).args == (1, 2)


def test_empty_eta_means_no_eta_as_in_celery() -> None:
    decoded = decode_task(_with_headers(eta="", expires=""))

    assert (decoded.eta, decoded.expires) == (None, None)


@pytest.mark.parametrize("data", [b'{"body": "\\ud800", "properties": {"delivery_tag": "t"}}'])
def test_lone_surrogates_are_malformed(data: bytes) -> None:
    with pytest.raises(MalformedMessage, match="not valid Unicode"):
        decode_envelope(data)
    with pytest.raises(MalformedMessage, match="not valid Unicode"):
        decode_sqs_body("\ud800")


def test_envelope_properties_are_bounded() -> None:
    deep: Any = 1
    for _ in range(120):
        deep = [deep]
    with pytest.raises(LimitExceeded):
        decode_envelope(_envelope(p_extra=deep))


def test_shared_references_are_measured_once() -> None:
    """A yaml alias bomb: 2**60 paths through 60 shared lists; measured in microseconds."""
    shared: Any = [1]
    for _ in range(60):
        shared = [shared, shared]
    with pytest.raises(LimitExceeded):
        check_depth(shared, 50, field="body")
    check_depth(shared, 100, field="body")


def test_depth_counts_containers_only() -> None:
    """Tagged JSON values (datetimes, decimals) and scalars hold nothing to descend into."""
    check_depth([datetime(2026, 1, 1, tzinfo=UTC), Decimal("1.5"), "x"], 1, field="body")
    check_depth(Decimal("1.5"), 0, field="body")

    with pytest.raises(LimitExceeded):
        check_depth([[Decimal("1.5")]], 1, field="body")


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


_JSON_VALUES = st.recursive(
    st.none() | st.integers() | st.text(alphabet='[]{}ab"\\'),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


@given(_JSON_VALUES, st.integers(min_value=0, max_value=12))
def test_counting_brackets_never_underestimates_the_depth(value: Any, max_depth: int) -> None:
    """Brackets inside strings, escaped quotes, UTF-16: the count may be too high, never low."""
    text = json.dumps(value, ensure_ascii=False)
    for document in (text, text.encode(), text.encode("utf-16")):
        if json_nests_within(document, max_depth):
            assert _depth(value) <= max_depth


def test_counting_brackets_is_exact_without_brackets_in_strings() -> None:
    nested: Any = {"a": 1}
    for _ in range(9):
        nested = [nested, "x"]
    document = json.dumps(nested).encode()

    assert json_nests_within(document, 10)
    assert not json_nests_within(document, 9)


def test_a_shallow_message_with_many_brackets_in_its_strings_is_still_read() -> None:
    """Too many brackets to skip the walk: the walk measures it, and it is not too deep."""
    brackets = "[" * 10
    message = _with(
        body=json.dumps([[brackets], {}, EMBED]).encode(),
        headers={**GOOD.headers, "argsrepr": brackets},
    )
    envelope = _envelope(headers={**GOOD.headers, "argsrepr": brackets}, p_extra=brackets)

    assert decode_task(message, limits=SMALL).args == (brackets,)
    assert decode_envelope(envelope, limits=Limits(max_depth=4)).message.headers["argsrepr"] == (
        brackets
    )


def test_envelope_headers_nested_too_deep_are_refused() -> None:
    deep: Any = 1
    for _ in range(5):
        deep = {"a": deep}

    with pytest.raises(LimitExceeded, match="nesting depth"):
        decode_envelope(
            _envelope(headers={**GOOD.headers, "stamps": deep}), limits=Limits(max_depth=4)
        )


def test_error_reasons_stay_short() -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_result(b'{"status": "' + b"X" * 1_000_000 + b'", "task_id": "t"}')

    assert len(caught.value.reason) < 200


@pytest.mark.parametrize(
    ("exc_type", "module"),
    [
        ("KeyboardInterrupt", "builtins"),
        ("SystemExit", "builtins"),
        ("A\x00B", "m"),
        ("\ud800", "m"),
    ],
)
def test_records_cannot_name_dangerous_or_unusable_classes(exc_type: str, module: str) -> None:
    with pytest.raises(MalformedMessage):
        ExceptionInfo(exc_type, (), module).to_exception()


def test_lookup_through_a_module_getattr_that_raises() -> None:
    """typing.io's module __getattr__ warns; under -W error that is an exception."""
    rebuilt = ExceptionInfo("IO", ("x",), "typing.io").to_exception()

    assert type(rebuilt).__name__ == "IO"


def test_falsy_failure_result_is_no_exception_as_in_celery() -> None:
    assert decode_result(b'{"status": "FAILURE", "result": null, "task_id": "t"}').exception is None
    assert decode_result(b'{"status": "FAILURE", "result": {}, "task_id": "t"}').result == {}


def test_amqp_properties_are_aio_pika_message_arguments() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    wire = encode_task(
        TaskMessage(id="i", task="t", expires=now + timedelta(seconds=60), priority=3), now=now
    )

    message = aio_pika.Message(wire.body, **amqp_properties(wire))
    back = from_amqp(
        message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=message.headers,
        properties={"expiration": message.expiration, "priority": message.priority},
    )

    assert message.expiration == 60
    assert back.properties == {"expiration": "60000", "priority": 3}


def test_standin_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("protocol.excinfo._MAX_STANDINS", 0)
    info = ExceptionInfo("NeverCached", (), "nowhere.at.all")

    assert type(info.to_exception()) is not type(info.to_exception())
    assert type(info.to_exception()).__name__ == "NeverCached"

"""The decoders' one invariant, fuzzed: any input decodes or raises MalformedMessage.

Inputs range from raw bytes to near-valid messages with one part replaced by an arbitrary
value, which reach far deeper into the decoders than random bytes do. A round-trip property
checks that whatever celeriac encodes it decodes to the same value.
"""

from __future__ import annotations

import base64
import json
import zlib
from datetime import UTC, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.utils.json import dumps as kombu_json_dumps

from protocol import (
    AcceptPolicy,
    Envelope,
    MalformedMessage,
    ResultMeta,
    ResultRef,
    Signature,
    TaskMessage,
    WireMessage,
    decode_envelope,
    decode_group,
    decode_result,
    decode_sqs_body,
    decode_task,
    encode_envelope,
    encode_task,
    jsontags,
)
from protocol.taskcodec import KNOWN_HEADERS

# 2,000 examples a property are CPU-bound by design: the suite's 120 s is for hangs, and the
# round trip alone takes about 50 s on an idle 2-core machine (over 120 s once, in a CI run).
pytestmark = pytest.mark.timeout(600)

# Everything but pickle: unpickling arbitrary bytes could call arbitrary functions.
SAFE_ACCEPT = AcceptPolicy.of(["json", "msgpack", "yaml"])

# Any code point, lone surrogates included (JSON can carry them as escapes), and integers far
# past 64 bits (JSON has no bound).
any_text = st.text(st.characters(exclude_categories=()), max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
header_names = st.sampled_from((*KNOWN_HEADERS, "compression", "x_custom")) | st.text(max_size=8)
content_types = st.sampled_from(
    ["application/json", "application/x-msgpack", "application/x-yaml", None, "text/plain"]
)
content_encodings = st.sampled_from(
    ["utf-8", "binary", None, "latin-1", "no-such-codec", "undefined", "punycode"]
)


def _decodes_or_is_malformed(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except MalformedMessage as exc:
        if not exc.reason:
            raise AssertionError("MalformedMessage without a reason") from exc
        return None


@given(
    body=st.binary(max_size=200),
    content_type=content_types,
    content_encoding=content_encodings,
    headers=st.dictionaries(header_names, json_values, max_size=6),
    properties=st.dictionaries(
        st.sampled_from(["priority", "reply_to", "correlation_id"]), json_values
    ),
)
def test_arbitrary_task_messages(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    headers: Any,
    properties: Any,
) -> None:
    message = WireMessage(body, content_type, content_encoding, headers, properties)
    result = _decodes_or_is_malformed(decode_task, message, accept=SAFE_ACCEPT)
    assert result is None or isinstance(result, TaskMessage)


VALID = encode_task(
    TaskMessage(
        id="id-1",
        task="proj.add",
        args=(1, 2),
        callbacks=(Signature(task="proj.cb", options={"task_id": "c"}),),
        chord=Signature(task="proj.body"),
    )
)
VALID_BODY = json.loads(VALID.body)


@given(name=st.sampled_from(KNOWN_HEADERS), value=json_values | st.text(max_size=40))
def test_one_header_replaced(name: str, value: Any) -> None:
    message = WireMessage(
        VALID.body, VALID.content_type, VALID.content_encoding, {**VALID.headers, name: value}
    )
    result = _decodes_or_is_malformed(decode_task, message)
    assert result is None or isinstance(result, TaskMessage)


@given(
    path=st.sampled_from(
        [(0,), (1,), (2,), (2, "callbacks"), (2, "errbacks"), (2, "chain"), (2, "chord")]
    ),
    value=json_values,
    protocol_v1=st.booleans(),
)
def test_one_body_part_replaced(path: tuple[Any, ...], value: Any, protocol_v1: bool) -> None:
    body: Any = json.loads(json.dumps(VALID_BODY))
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    headers = dict(VALID.headers)
    if protocol_v1:  # the same parts in a v1 body dict
        args, kwargs, embed = body
        body = {
            **headers,
            **(embed if isinstance(embed, dict) else {}),
            "args": args,
            "kwargs": kwargs,
        }
        headers = {}
    message = WireMessage(json.dumps(body).encode(), "application/json", "utf-8", headers)
    result = _decodes_or_is_malformed(decode_task, message)
    assert result is None or isinstance(result, TaskMessage)


@given(
    position=st.integers(min_value=0),
    data=st.binary(min_size=1, max_size=8),
    compress=st.booleans(),
)
def test_corrupted_bytes(position: int, data: bytes, compress: bool) -> None:
    body = VALID.body
    at = position % (len(body) + 1)
    body = body[:at] + data + body[at + len(data) :]
    headers = dict(VALID.headers)
    if compress:
        body = zlib.compress(VALID.body)
        body = body[:at] + data + body[at + len(data) :]
        headers["compression"] = "application/x-gzip"
    message = WireMessage(body, VALID.content_type, VALID.content_encoding, headers)
    result = _decodes_or_is_malformed(decode_task, message)
    assert result is None or isinstance(result, TaskMessage)


VALID_ENVELOPE = json.loads(encode_envelope(VALID, exchange="", routing_key="q", delivery_tag="t"))


@given(
    raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
    key=st.sampled_from(["body", "headers", "properties", "content-type", "content-encoding"]),
    prop=st.sampled_from(
        ["delivery_tag", "delivery_info", "priority", "body_encoding", "reply_to"]
    ),
    value=json_values,
)
def test_arbitrary_envelopes(raw: bytes, key: str, prop: str, value: Any) -> None:
    replaced = json.loads(json.dumps(VALID_ENVELOPE))
    replaced[key if key != "properties" else "properties"] = (
        {**replaced["properties"], prop: value} if key == "properties" else value
    )
    for data in (raw, json.dumps(replaced).encode()):
        for decode in (decode_envelope, decode_sqs_body):
            result = _decodes_or_is_malformed(decode, data)
            assert result is None or isinstance(result, Envelope)
        sqs = base64.b64encode(data).decode()
        result = _decodes_or_is_malformed(decode_sqs_body, sqs)
        assert result is None or isinstance(result, Envelope)


RESULT_KEYS = [
    "status",
    "result",
    "traceback",
    "children",
    "date_done",
    "task_id",
    "group_id",
    "parent_id",
    "name",
    "args",
    "kwargs",
    "worker",
    "retries",
    "queue",
    "stamped_headers",
]
STATUSES = st.sampled_from(["SUCCESS", "FAILURE", "RETRY", "REVOKED", "STARTED", "BOGUS"])


@given(
    raw=st.binary(max_size=200),
    fields=st.dictionaries(st.sampled_from(RESULT_KEYS), json_values),
    status=STATUSES,
    serializer=st.sampled_from(["json", "msgpack"]),
)
def test_arbitrary_result_records(raw: bytes, fields: Any, status: str, serializer: str) -> None:
    record = {"status": status, "task_id": "t", **fields}
    for data in (
        raw,
        json.dumps(record).encode(),
        json.dumps({"result": fields.get("result")}).encode(),
    ):
        result = _decodes_or_is_malformed(decode_result, data, serializer=serializer)
        assert result is None or isinstance(result, ResultMeta)
        group = _decodes_or_is_malformed(decode_group, data, serializer=serializer)
        assert group is None or isinstance(group, ResultRef)


# Round trip: what celeriac encodes, it decodes to the same value.
ids = st.text(min_size=1, max_size=36)
aware_times = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]))
seconds = (
    st.none() | st.integers(min_value=0, max_value=10**6) | st.floats(min_value=0, max_value=1e6)
)
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
signatures = st.builds(
    Signature,
    task=ids,
    args=st.lists(plain_values, max_size=2).map(tuple),
    kwargs=st.dictionaries(st.text(max_size=5), plain_values, max_size=2),
    options=st.dictionaries(st.text(max_size=5), plain_values, max_size=2),
    subtask_type=st.none() | st.sampled_from(["chain", "group", "chord"]),
    immutable=st.booleans(),
)
tasks = st.builds(
    TaskMessage,
    id=ids,
    task=ids,
    args=st.lists(plain_values, max_size=4).map(tuple),
    kwargs=st.dictionaries(st.text(max_size=8), plain_values, max_size=4),
    retries=st.integers(min_value=0, max_value=100),
    eta=st.none() | aware_times,
    expires=st.none() | aware_times,
    time_limit=seconds,
    soft_time_limit=seconds,
    root_id=ids,
    parent_id=st.none() | ids,
    group_id=st.none() | ids,
    group_index=st.none() | st.integers(min_value=0, max_value=1000),
    shadow=st.none() | ids,
    callbacks=st.lists(signatures, max_size=2).map(tuple),
    errbacks=st.lists(signatures, max_size=2).map(tuple),
    chain=st.lists(signatures, max_size=2).map(tuple),
    chord=st.none() | signatures,
    reply_to=ids,
    correlation_id=ids,
    priority=st.integers(min_value=0, max_value=255),
    ignore_result=st.none() | st.booleans(),
    origin=st.none() | ids,
    argsrepr=st.text(max_size=10),
    kwargsrepr=st.text(max_size=10),
    stamped_headers=st.none() | st.lists(st.text(max_size=5), min_size=1, max_size=2).map(tuple),
    headers=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(
            lambda k: (
                k not in KNOWN_HEADERS
                and k not in ("compression", "redelivered", "meth", "utc", "taskset")
            )
        ),
        plain_values,
        max_size=2,
    ),
)


@given(
    task=tasks,
    serializer=st.sampled_from(["json", "msgpack"]),
    compression=st.sampled_from([None, "gzip"]),
)
def test_round_trip(task: TaskMessage, serializer: str, compression: str | None) -> None:
    wire = encode_task(task, serializer=serializer, compression=compression)
    data = encode_envelope(wire, exchange="", routing_key="q", delivery_tag="t")

    assert decode_task(wire) == task
    assert decode_task(decode_envelope(data).message) == task


tagged = st.recursive(
    scalars
    | st.datetimes(timezones=st.none() | st.just(UTC))
    | st.dates()
    | st.times()
    | st.decimals(allow_nan=False)
    | st.uuids()
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(value=tagged)
def test_json_is_kombus_json(value: Any) -> None:
    ours = jsontags.dumps(value)

    assert ours == kombu_json_dumps(value)
    assert jsontags.dumps(jsontags.loads(ours)) == ours  # by bytes, so NaN compares too

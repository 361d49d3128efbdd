"""The other way: messages celeriac encodes, read by Celery's own worker-side code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from protocol import Signature, TaskMessage, decode_task, encode_envelope, encode_task

from .oracle import NOW, capture, celery_request, kombu_message_from_amqp, make_app, memory_channel

FULL = TaskMessage(
    id="6f2b1c3e-0000-4000-8000-000000000001",
    task="proj.add",
    args=(2, 3),
    kwargs={"z": 1},
    retries=1,
    eta=NOW + timedelta(seconds=10),
    expires=NOW + timedelta(seconds=60),
    time_limit=30.0,
    soft_time_limit=20.0,
    root_id="root-1",
    parent_id="parent-1",
    group_id="group-1",
    group_index=4,
    shadow="shadowed",
    callbacks=(Signature(task="proj.cb", options={"task_id": "cb-1"}),),
    errbacks=(Signature(task="proj.cb", args=(0,), immutable=True),),
    chain=(Signature(task="proj.add", args=(4,), options={"task_id": "last"}),),
    reply_to="reply-1",
    priority=7,
    ignore_result=False,
    origin="celeriac@test",
    headers={"x_custom": "v1"},
)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_celery_request_reads_every_field(serializer: str, compression: str | None) -> None:
    app = make_app()
    wire = encode_task(FULL, serializer=serializer, compression=compression, now=NOW)

    request = celery_request(app, kombu_message_from_amqp(wire, routing_key="standard"))

    assert request.id == FULL.id
    assert request.name == "shadowed"
    assert request.type == "proj.add"
    assert request.args == [2, 3]
    assert request.kwargs == {"z": 1}
    assert request.eta == FULL.eta
    assert request.expires == FULL.expires
    assert request.time_limits == [30.0, 20.0]  # read as [hard, soft]
    assert request.root_id == "root-1"
    assert request.parent_id == "parent-1"
    assert request.ignore_result is False
    assert request.reply_to == "reply-1"
    assert request.correlation_id == FULL.id
    assert request.delivery_info["priority"] == 7
    assert request.delivery_info["routing_key"] == "standard"
    ctx = request._context
    assert ctx.retries == 1
    assert ctx.group == "group-1"
    assert ctx.group_index == 4
    assert ctx.origin == "celeriac@test"
    assert ctx.x_custom == "v1"
    assert [s["options"]["task_id"] for s in ctx.callbacks] == ["cb-1"]
    assert ctx.errbacks[0]["immutable"] is True
    assert ctx.chain[0]["args"] == [4]
    assert wire.properties["expiration"] == "60000"


def test_celery_reads_celeriac_redis_envelope() -> None:
    app = make_app()
    wire = encode_task(FULL, now=NOW)
    data = encode_envelope(wire, exchange="", routing_key="celery", delivery_tag="tag-1")

    with memory_channel() as channel:
        message = channel.Message(json.loads(data), channel=channel)
        message.accept = {"application/json"}
        request = celery_request(app, message)

    assert request.id == FULL.id
    assert request.args == [2, 3]
    assert request.delivery_info == {
        "exchange": "",
        "routing_key": "celery",
        "priority": 7,
        "redelivered": False,
    }
    assert message.delivery_tag == "tag-1"


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_encoding_is_byte_identical_to_celery(serializer: str) -> None:
    """Same values in, same bytes out: body, headers, properties and the Redis envelope."""
    app = make_app(task_serializer=serializer)
    captured = capture(
        app,
        "proj.add",
        args=(2, 3),
        kwargs={"z": 1, "when": datetime(2024, 1, 1, tzinfo=UTC)} if serializer == "json" else {},
        task_id="6f2b1c3e-0000-4000-8000-000000000002",
        countdown=10,
        expires=60,
        priority=5,
        time_limit=30,
        serializer=serializer,
        queue="bytes",
    )
    decoded = decode_task(captured.wire())

    wire = encode_task(decoded, serializer=serializer, now=NOW)

    assert wire.body == captured.body
    assert wire.headers == captured.headers
    assert list(wire.headers) == list(captured.headers)  # same order too
    props = captured.envelope["properties"]
    ours = encode_envelope(
        wire, exchange="", routing_key="bytes", delivery_tag=props["delivery_tag"]
    )
    assert ours == captured.redis_bytes


def test_fresh_message_defaults_match_celery() -> None:
    """A minimal TaskMessage gets the defaults Celery's client would have sent."""
    wire = encode_task(TaskMessage(id="i-1", task="proj.add", args=(1,)))

    assert wire.headers["root_id"] == "i-1"
    assert wire.headers["timelimit"] == [None, None]
    assert wire.headers["argsrepr"] == "(1,)"
    assert wire.headers["kwargsrepr"] == "{}"
    assert wire.headers["stamps"] == {}
    assert wire.properties == {
        "correlation_id": "i-1",
        "reply_to": "",
        "delivery_mode": 2,
        "priority": 0,
    }
    assert json.loads(wire.body) == [
        [1],
        {},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]


def test_long_args_repr_is_cut_at_1024() -> None:
    """Celery's saferepr cuts near 1024 too (its exact text can differ; argsrepr is for logs)."""
    wire = encode_task(TaskMessage(id="i-2", task="proj.cb", args=("x" * 5000,)))

    assert len(wire.headers["argsrepr"]) == 1024


def test_past_expiry_gives_zero_expiration() -> None:
    task = TaskMessage(id="i-3", task="proj.add", expires=NOW - timedelta(seconds=5))

    assert encode_task(task, now=NOW).properties["expiration"] == "0"
    assert "expiration" not in encode_task(task).properties

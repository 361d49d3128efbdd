"""Golden vectors: messages real Celery 5.7 produces, decoded by celeriac, every field checked."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from celery import chain, chord, group

from protocol import (
    Signature,
    TaskMessage,
    decode_envelope,
    decode_sqs_body,
    decode_task,
    encode_sqs_body,
)

from .oracle import NOW, Captured, capture, drain, make_app


def _task_id() -> str:
    return str(uuid.uuid4())


def _expected(captured: Captured, **fields: object) -> TaskMessage:
    """The TaskMessage celeriac must produce: what the test asked Celery to send, plus the
    values only the producer knows (its node name and reply address)."""
    props = captured.envelope["properties"]
    defaults: dict[str, object] = {
        "origin": captured.headers["origin"],
        "reply_to": props["reply_to"],
        "correlation_id": fields["id"],
        "root_id": fields["id"],
        "priority": 0,
        "ignore_result": None,
        "stamped_headers": None,
    }
    return TaskMessage(**{**defaults, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_plain_call(serializer: str) -> None:
    app = make_app(task_serializer=serializer)
    task_id = _task_id()
    captured = capture(app, "proj.add", args=(4, 5), task_id=task_id, serializer=serializer)

    decoded = decode_task(captured.wire())

    assert decoded == _expected(
        captured, id=task_id, task="proj.add", args=(4, 5), argsrepr="(4, 5)", kwargsrepr="{}"
    )
    assert captured.headers["origin"].startswith("gen")


def test_empty_mappings_are_one_shared_read_only_mapping() -> None:
    """A run waiting for minutes holds its message: Celery's ``{}`` kwargs, stamps and
    custom headers cost nothing per message."""
    app = make_app()
    first, second = (
        decode_task(capture(app, "proj.add", args=(1,), task_id=_task_id()).wire())
        for _ in range(2)
    )

    for name in ("kwargs", "stamps", "headers"):
        assert getattr(first, name) == {}
        assert getattr(first, name) is getattr(second, name)
        with pytest.raises(TypeError):
            getattr(first, name)["added"] = 1


def test_strings_every_message_repeats_are_kept_once() -> None:
    """10,000 waiting runs hold 10,000 messages: a root task's ``root_id`` and
    ``correlation_id`` are its ``id`` itself, and the short strings that repeat from message to
    message (task name, ``lang``, ``origin``, ``kwargsrepr``, the Redis envelope's routing key)
    are one object for all of them. A long string stays each message's own."""
    app = make_app()
    long_args = ("x" * 100,)
    # Read from the bytes kombu wrote, so that no two values start as one Python object.
    one, other = (
        decode_envelope(capture(app, "proj.add", args=long_args, task_id=_task_id()).redis_bytes)
        for _ in range(2)
    )
    first, second = decode_task(one.message), decode_task(other.message)

    assert first.root_id == first.id
    assert first.root_id is first.id
    assert first.correlation_id == first.id
    assert first.correlation_id is first.id
    for name in ("task", "lang", "origin", "kwargsrepr"):
        assert getattr(first, name) is getattr(second, name), name
    assert first.argsrepr == second.argsrepr
    assert first.argsrepr is not second.argsrepr
    assert one.routing_key == "celery"
    assert one.routing_key is other.routing_key


def test_a_child_keeps_its_own_root_id() -> None:
    app = make_app()
    root, task_id = _task_id(), _task_id()
    captured = capture(app, "proj.add", args=(1,), task_id=task_id, root_id=root, parent_id=root)

    decoded = decode_task(captured.wire())

    assert (decoded.id, decoded.root_id, decoded.parent_id) == (task_id, root, root)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_every_option(serializer: str) -> None:
    """The WIRE.md capture: countdown, expires, priority, limits, link, link_error, headers."""
    app = make_app(task_serializer=serializer)
    add, cb = app.tasks["proj.add"], app.tasks["proj.cb"]
    task_id, parent, root = _task_id(), _task_id(), _task_id()
    captured = capture(
        app,
        "proj.add",
        args=(2, 3),
        kwargs={"z": 1},
        task_id=task_id,
        countdown=10,
        expires=60,
        priority=5,
        time_limit=30,
        soft_time_limit=20,
        link=cb.s(),
        link_error=cb.si(0),
        headers={"x_custom": "v1"},
        parent_id=parent,
        root_id=root,
        shadow="add-shadow",
        retries=2,
        ignore_result=True,
        serializer=serializer,
    )
    assert captured.headers["timelimit"] == [30, 20]  # Celery's order is [hard, soft]

    decoded = decode_task(captured.wire())

    assert decoded == _expected(
        captured,
        id=task_id,
        task="proj.add",
        args=(2, 3),
        kwargs={"z": 1},
        eta=NOW + timedelta(seconds=10),
        expires=NOW + timedelta(seconds=60),
        priority=5,
        time_limit=30.0,
        soft_time_limit=20.0,
        callbacks=(Signature(task="proj.cb"),),
        errbacks=(Signature(task="proj.cb", args=(0,), immutable=True),),
        headers={"x_custom": "v1"},
        parent_id=parent,
        root_id=root,
        shadow="add-shadow",
        retries=2,
        ignore_result=True,
        argsrepr="(2, 3)",
        kwargsrepr="{'z': 1}",
    )
    assert decoded.name == "add-shadow"
    assert decoded.timelimit == (30.0, 20.0)
    assert captured.envelope["properties"]["expiration"] == "60000"
    assert add.name == "proj.add"


def test_explicit_naive_eta_is_utc() -> None:
    app = make_app()
    naive = datetime(2030, 1, 2, 3, 4, 5)
    captured = capture(app, "proj.add", args=(1, 1), eta=naive, expires=naive)
    assert captured.headers["eta"] == "2030-01-02T03:04:05"

    decoded = decode_task(captured.wire())

    assert decoded.eta == naive.replace(tzinfo=UTC)
    assert decoded.expires == naive.replace(tzinfo=UTC)


def test_tagged_json_arguments() -> None:
    """kombu's JSON type tags and unicode survive the trip."""
    app = make_app()
    values = {
        "when": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "day": date(2024, 1, 2),
        "at": time(3, 4, 5),
        "amount": Decimal("1.10"),
        "ref": uuid.UUID("12345678123456781234567812345678"),
        "text": b"abc",
        "blob": b"\xff\x00",
        "name": "żółć ☃",
        "nested": {"a": [1, {"b": None}], "c": 1.5},
    }
    captured = capture(app, "proj.cb", args=("ünï",), kwargs=values)

    decoded = decode_task(captured.wire())

    assert decoded.kwargs == values
    assert decoded.args == ("ünï",)


def test_msgpack_bytes() -> None:
    app = make_app(task_serializer="msgpack")
    captured = capture(app, "proj.cb", args=(1, b"xy"), kwargs={"k": "v"})
    assert captured.envelope["content-type"] == "application/x-msgpack"

    decoded = decode_task(captured.wire())

    assert decoded.args == (1, b"xy")
    assert decoded.kwargs == {"k": "v"}


@pytest.mark.parametrize("method", ["gzip", "bzip2", "lzma"])
def test_compressed(method: str) -> None:
    app = make_app()
    captured = capture(app, "proj.add", args=(1, 2), compression=method)
    assert "compression" in captured.headers

    decoded = decode_task(captured.wire())

    assert decoded.args == (1, 2)
    assert "compression" not in decoded.headers


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_protocol_v1(serializer: str) -> None:
    app = make_app(task_protocol=1, task_serializer=serializer)
    task_id = _task_id()
    captured = capture(
        app,
        "proj.add",
        args=(1, 2),
        kwargs={"z": 3},
        task_id=task_id,
        countdown=5,
        expires=30,
        time_limit=9,
        soft_time_limit=4,
        group_id="g-1",
        group_index=3,
        serializer=serializer,
    )
    assert captured.headers == {}

    decoded = decode_task(captured.wire())

    assert decoded == TaskMessage(
        id=task_id,
        task="proj.add",
        args=(1, 2),
        kwargs={"z": 3},
        eta=NOW + timedelta(seconds=5),
        expires=NOW + timedelta(seconds=30),
        time_limit=9.0,
        soft_time_limit=4.0,
        group_id="g-1",
        group_index=3,
        reply_to=captured.envelope["properties"]["reply_to"],
        correlation_id=task_id,
        priority=0,
        protocol=1,
    )


def test_chain_embeds_the_rest_reversed() -> None:
    app = make_app()
    add = app.tasks["proj.add"]
    result = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async(queue="golden-chain")
    (captured,) = drain("golden-chain")

    decoded = decode_task(captured.wire())

    assert decoded.args == (1, 2)
    assert [s.args for s in decoded.chain] == [(4,), (3,)]  # next step is last
    assert decoded.chain[0].task_id == result.id  # the client waits on the last step
    assert decoded.chain[1].task_id == result.parent.id
    assert decoded.id == result.parent.parent.id


def test_group_members_carry_group_id_and_index() -> None:
    app = make_app()
    add = app.tasks["proj.add"]
    result = group(add.s(i, i) for i in range(3)).apply_async(queue="golden-group")
    captured = drain("golden-group")

    decoded = [decode_task(c.wire()) for c in captured]

    assert [d.args for d in decoded] == [(0, 0), (1, 1), (2, 2)]
    assert {d.group_id for d in decoded} == {result.id}
    assert [d.group_index for d in decoded] == [0, 1, 2]
    assert [d.id for d in decoded] == [r.id for r in result.results]


def test_chord_header_embeds_the_body() -> None:
    app = make_app(result_backend="cache+memory://")
    add, cb = app.tasks["proj.add"], app.tasks["proj.cb"]
    result = chord([add.s(1, 1), add.s(2, 2)], cb.s()).apply_async(queue="golden-chord")
    captured = drain("golden-chord")

    decoded = [decode_task(c.wire()) for c in captured]

    assert len(decoded) == 2
    for message in decoded:
        assert message.chord is not None
        assert message.chord.task == "proj.cb"
        assert message.chord.task_id == result.id
        assert message.group_id == message.chord.options["group_id"]
    assert [m.group_index for m in decoded] == [0, 1]


def test_stamped_headers() -> None:
    app = make_app()
    captured = capture(app, "proj.add", args=(1, 2), stamped_headers=["mystamp"], mystamp="v")

    decoded = decode_task(captured.wire())

    assert decoded.stamped_headers == ("mystamp",)
    assert decoded.stamps == {"mystamp": "v"}


def test_redis_envelope_bytes() -> None:
    """The exact bytes kombu's Redis transport stores decode, with delivery metadata."""
    app = make_app()
    captured = capture(app, "proj.add", args=(1, 2), priority=3, queue="golden-redis")

    envelope = decode_envelope(captured.redis_bytes)

    props = captured.envelope["properties"]
    assert envelope.delivery_tag == props["delivery_tag"]
    assert (envelope.exchange, envelope.routing_key) == ("", "golden-redis")
    assert envelope.priority == 3
    assert envelope.redelivered is False
    assert decode_task(envelope.message) == decode_task(captured.wire())


def test_sqs_body() -> None:
    """kombu's SQS ``MessageBody``: the same envelope, base64-encoded once more."""
    app = make_app()
    captured = capture(app, "proj.add", args=(7, 8), queue="golden-sqs")
    kombu_body = base64.b64encode(captured.redis_bytes).decode()

    envelope = decode_sqs_body(kombu_body)

    assert encode_sqs_body(captured.redis_bytes) == kombu_body
    assert decode_task(envelope.message).args == (7, 8)
    # kombu also accepts an SQS body that is plain JSON; so does celeriac.
    assert decode_sqs_body(captured.redis_bytes) == envelope

"""Remote-control messages, checked against kombu's own ``Mailbox`` on its in-memory transport."""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from typing import Any, cast

import pytest
from kombu import Connection
from kombu.pidbox import Mailbox as KombuMailbox
from kombu.transport import redis as kombu_redis
from kombu.transport.base import to_rabbitmq_queue_arguments

from protocol import MalformedMessage, WireMessage, encode_envelope
from protocol.control import (
    NODE_QUEUE_ARGUMENTS,
    ControlRequest,
    LamportClock,
    Mailbox,
    ReplyTo,
    decode_control,
    encode_control,
    encode_control_reply,
)
from protocol.kombu_redis import RedisLayout
from protocol.results import ResultKeys

NODE = "w1@vm"


@pytest.fixture
def kombu_mailbox() -> Iterator[Any]:
    """Celery's mailbox (``app.control.mailbox``) bound to kombu's in-memory transport."""
    with Connection("memory://") as conn:
        yield KombuMailbox(
            "celery", type="fanout", accept=["json"], serializer="json",
            queue_ttl=300.0, queue_expires=10.0,
        )(conn)  # fmt: skip


def _captured_request(mailbox: Any, **publish: Any) -> WireMessage:
    """What the mailbox broadcasts, as a worker's node queue receives it."""
    channel = mailbox.connection.default_channel
    queue = mailbox.get_queue(NODE)(channel)
    queue.declare()
    mailbox._publish(**publish)
    message = queue.get(no_ack=True)
    return WireMessage(
        message.body, message.content_type, message.content_encoding, message.headers,
        {"delivery_mode": message.properties["delivery_mode"]},
    )  # fmt: skip


def test_a_request_kombu_sends_is_read_field_by_field(kombu_mailbox: Any) -> None:
    wire = _captured_request(
        kombu_mailbox, type="ping", arguments={}, destination=[NODE], reply_ticket="t-1",
        timeout=1.0,
    )  # fmt: skip

    request = decode_control(wire)

    assert request.method == "ping"
    assert request.arguments == {}
    assert request.destination == (NODE,)
    assert (request.pattern, request.matcher) == (None, None)
    assert request.ticket == "t-1"
    assert request.reply_to == ReplyTo("reply.celery.pidbox", kombu_mailbox.oid)
    assert request.clock == kombu_mailbox.clock.value
    assert request.expires is not None
    assert request.addressed_to(NODE)
    assert not request.addressed_to("w2@vm")


def test_a_fire_and_forget_request_has_no_ticket_and_no_deadline(kombu_mailbox: Any) -> None:
    wire = _captured_request(
        kombu_mailbox, type="revoke", arguments={"task_id": ["a"], "terminate": False},
    )  # fmt: skip

    request = decode_control(wire)

    assert (request.ticket, request.reply_to, request.expires) == (None, None, None)
    assert request.arguments == {"task_id": ["a"], "terminate": False}
    assert request.addressed_to("anyone@anywhere")


def test_what_celeriac_broadcasts_is_what_kombu_broadcasts(kombu_mailbox: Any) -> None:
    wire = _captured_request(
        kombu_mailbox, type="revoke", arguments={"task_id": "a", "terminate": True},
        reply_ticket="t-2", timeout=2.5,
    )  # fmt: skip
    kombu_request = decode_control(wire)

    ours = encode_control(kombu_request)

    assert json.loads(ours.body) == json.loads(wire.body)
    assert list(json.loads(ours.body)) == list(json.loads(wire.body))  # same key order
    assert dict(ours.headers) == dict(wire.headers)
    assert ours.properties == {"delivery_mode": wire.properties["delivery_mode"]}
    assert (ours.content_type, ours.content_encoding) == ("application/json", "utf-8")


def test_a_reply_is_what_kombus_collector_reads(kombu_mailbox: Any) -> None:
    channel = kombu_mailbox.connection.default_channel
    reply_queue = kombu_mailbox.reply_queue(channel)
    reply_queue.declare()
    reply = encode_control_reply(NODE, {"ok": "pong"}, ticket="t-3", clock=7)
    envelope = encode_envelope(
        reply, exchange="reply.celery.pidbox", routing_key=kombu_mailbox.oid, delivery_tag="x"
    )
    channel._put(reply_queue.name, json.loads(envelope))

    collected = kombu_mailbox._collect("t-3", limit=1, timeout=1)

    assert collected == [{NODE: {"ok": "pong"}}]
    assert kombu_mailbox.clock.value > 7  # it adjusted to our clock
    assert reply.properties == {"delivery_mode": 1}
    assert reply.headers == {"ticket": "t-3", "clock": 7}


def test_the_entities_are_named_as_celerys() -> None:
    mailbox = Mailbox()
    kombu_mailbox = KombuMailbox(
        "celery", type="fanout", queue_ttl=300.0, queue_expires=10.0
    )  # fmt: skip
    kombu_queue = kombu_mailbox.get_queue(NODE)
    assert kombu_mailbox.exchange is not None
    assert kombu_mailbox.reply_exchange is not None

    assert mailbox.exchange == kombu_mailbox.exchange.name == "celery.pidbox"
    assert mailbox.reply_exchange == kombu_mailbox.reply_exchange.name
    assert mailbox.node_queue(NODE) == kombu_queue.name
    assert Mailbox("jobs").exchange == "jobs.pidbox"
    rabbitmq_arguments = to_rabbitmq_queue_arguments(
        {}, expires=kombu_queue.expires, message_ttl=kombu_queue.message_ttl
    )
    assert rabbitmq_arguments == NODE_QUEUE_ARGUMENTS


@pytest.mark.parametrize(
    ("request_fields", "addressed"),
    [
        ({"destination": (NODE, "w2@vm")}, True),
        ({"destination": ("w2@vm",)}, False),
        ({"pattern": "w*@vm", "matcher": "glob"}, True),
        ({"pattern": "x*", "matcher": "glob"}, False),
        ({"pattern": r"w\d@", "matcher": "pcre"}, True),
        ({"pattern": r"vm", "matcher": "pcre"}, False),  # re.match anchors at the start
        ({"pattern": "(", "matcher": "pcre"}, False),
        ({"pattern": "w1@vm", "matcher": "sql"}, False),
        ({"pattern": "nobody"}, True),  # a pattern without a matcher is ignored, as kombu does
        ({"destination": (), "pattern": "w*", "matcher": "glob"}, True),
        ({}, True),
    ],
)
def test_who_must_act(request_fields: dict[str, Any], addressed: bool) -> None:
    assert ControlRequest("ping", **request_fields).addressed_to(NODE) is addressed


def _wire(body: Any, headers: dict[str, Any] | None = None) -> WireMessage:
    return WireMessage(json.dumps(body).encode(), "application/json", "utf-8", headers or {})


def test_a_lone_destination_name_is_one_name() -> None:
    request = decode_control(_wire({"method": "ping", "destination": NODE, "arguments": None}))

    assert request.destination == (NODE,)
    assert request.arguments == {}
    assert request.clock == 0


@pytest.mark.parametrize(
    ("body", "headers", "field"),
    [
        ([1], {}, "body"),
        ({"arguments": {}}, {}, "method"),
        ({"method": "ping", "arguments": [1]}, {}, "arguments"),
        ({"method": "ping", "destination": [1]}, {}, "destination"),
        ({"method": "ping", "reply_to": "q"}, {}, "reply_to"),
        ({"method": "ping", "reply_to": {"exchange": "x"}}, {}, "reply_to.routing_key"),
        ({"method": "ping"}, {"clock": "7"}, "headers.clock"),
        ({"method": "ping"}, {"expires": "soon"}, "headers.expires"),
    ],
)
def test_malformed_requests(body: Any, headers: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_control(_wire(body, headers))

    assert caught.value.field == field


def test_a_request_without_ticket_keeps_no_reply_address() -> None:
    request = ControlRequest("ping", reply_to=ReplyTo("x", "y"), clock=3, expires=9.5)

    body = json.loads(encode_control(request).body)

    assert "ticket" not in body
    assert "reply_to" not in body
    assert encode_control(request).headers == {"clock": 3, "expires": 9.5}
    assert json.loads(encode_control(ControlRequest("ping", ticket="t")).body)["ticket"] == "t"


def test_lamport_clock() -> None:
    clock = LamportClock()

    assert clock.forward() == 1
    assert clock.adjust(10) == 11
    assert clock.adjust(3) == 12
    assert clock.value == 12


def test_fanout_channels_are_kombus() -> None:
    channel = types.SimpleNamespace(keyprefix_fanout="/3.", fanout_patterns=True)
    for routing_key in ("", "task.multi"):
        assert RedisLayout().fanout_channel(
            "celery.pidbox", db=3, routing_key=routing_key
        ) == kombu_redis.Channel._get_publish_topic(
            cast(kombu_redis.Channel, channel), "celery.pidbox", routing_key
        )
    assert (
        RedisLayout(global_keyprefix="p:").fanout_channel("celeryev", db=0, routing_key="task.x")
        == "p:/0.celeryev/task.x"
    )
    assert RedisLayout(fanout_prefix="").fanout_channel("celery.pidbox", db=1) == "celery.pidbox"


def test_the_revoked_set_key_takes_the_backend_prefix() -> None:
    assert ResultKeys().revoked == "celeriac-revoked"
    assert ResultKeys("app").revoked == "app_celeriac-revoked"

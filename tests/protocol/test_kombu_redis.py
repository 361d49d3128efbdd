"""kombu's Redis layout, checked against kombu's own code where kombu exposes it."""

from __future__ import annotations

import contextlib
import json
import types
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.transport import redis as kombu_redis

from protocol import MalformedMessage
from protocol.kombu_redis import (
    SEP,
    RedisLayout,
    dead_letter_payload,
    parse_binding_member,
    parse_unacked,
    payload_priority,
    redelivered_payload,
)


def _kombu_channel(steps: list[int]) -> Any:
    """Just enough of a kombu Redis channel to call its pure methods."""
    channel = types.SimpleNamespace(priority_steps=steps, sep=kombu_redis.Channel.sep)
    stand_in = cast(kombu_redis.Channel, channel)
    channel.priority = lambda n: kombu_redis.Channel.priority(stand_in, n)
    return channel


@pytest.mark.parametrize("steps", [[0, 3, 6, 9], [0, 5], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
def test_priority_lists_are_kombus(steps: list[int]) -> None:
    layout, channel = RedisLayout(priority_steps=tuple(steps)), _kombu_channel(steps)

    for priority in range(-3, 15):
        clamped = max(0, min(priority, 9))  # kombu clamps in _get_message_priority
        assert layout.queue_key("celery", priority) == kombu_redis.Channel._q_for_pri(
            channel, "celery", clamped
        )
    assert layout.step_keys("q") == [
        kombu_redis.Channel._q_for_pri(channel, "q", step) for step in steps
    ]


def test_the_captured_keys() -> None:
    """WIRE.md 4.1's captured names: priority 3 lands in ``celery\\x06\\x163``."""
    layout = RedisLayout()

    assert SEP == kombu_redis.Channel.sep == "\x06\x16"
    assert layout.queue_key("celery") == "celery"
    assert layout.queue_key("celery", 3) == "celery\x06\x163"
    assert layout.binding_key("celery") == "_kombu.binding.celery"
    assert layout.permanent_binding_key("celery") == "_kombu.binding_permanent.celery"
    assert layout.binding_member("celery", "celery") == "celery\x06\x16\x06\x16celery"
    assert (layout.unacked, layout.unacked_index, layout.unacked_mutex) == (
        "unacked", "unacked_index", "unacked_mutex",
    )  # fmt: skip


def test_global_keyprefix_goes_before_every_key() -> None:
    layout = RedisLayout(global_keyprefix="pfx:", unacked_key="u")
    keys = [
        layout.queue_key("q"), layout.queue_key("q", 9), layout.binding_key("q"),
        layout.permanent_binding_key("q"), layout.dead_key("q"), layout.consumers_key("q"),
        layout.unacked, layout.unacked_index, layout.unacked_mutex, *layout.step_keys("q"),
    ]  # fmt: skip

    assert all(key.startswith("pfx:") for key in keys)
    assert layout.unacked == "pfx:u"
    assert layout.dead_key("q") == "pfx:q.dead"
    # Binding members name queues, not keys: no prefix inside.
    assert layout.binding_member("q", "q") == f"q{SEP}{SEP}q"


@pytest.mark.parametrize("steps", [(), (1, 2), (0, 3, 3), (0, 6, 3)])
def test_priority_steps_must_rise_from_zero(steps: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="priority_steps must rise from 0"):
        RedisLayout(priority_steps=steps)


def test_binding_members() -> None:
    assert parse_binding_member(f"rk{SEP}pat{SEP}queue") == ("rk", "pat", "queue")
    assert parse_binding_member(f"rk{SEP}{SEP}q".encode()) == ("rk", "", "q")
    assert parse_binding_member("a|b|c", sep="|") == ("a", "b", "c")
    for bad in (f"rk{SEP}q", b"\xff\xfe", f"a{SEP}b{SEP}c{SEP}d"):
        with pytest.raises(MalformedMessage, match="not a kombu binding") as caught:
            parse_binding_member(bad)
        assert caught.value.field == "binding"


def _envelope(**headers: Any) -> dict[str, Any]:
    return {
        "body": "e30=",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "t", **headers},
        "properties": {
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "tag-1",
        },
    }


def test_unacked_values_as_kombu_writes_them() -> None:
    payload = _envelope()
    value = kombu_redis.dumps([payload, "", "celery"])  # kombu's QoS.append

    assert parse_unacked(value) == (payload, "", "celery")
    assert parse_unacked(value.encode()) == (payload, "", "celery")


@pytest.mark.parametrize(
    "value",
    [
        b"not json", b"{}", b"[]", b'[{}, "", "rk", 4]', b'["payload", "", "rk"]',
        b'[{}, 1, "rk"]', b'[{}, "", null]', b"[" * 100_000, b"\xff",
    ],
)  # fmt: skip
def test_unacked_values_that_are_not_kombus(value: bytes) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_unacked(value)
    assert caught.value.field == "unacked"


@pytest.mark.parametrize(
    ("properties", "priority"),
    [
        ({"priority": 5}, 5), ({"priority": 7.9}, 7), ({"priority": "3"}, 3),
        ({"priority": "high"}, 0), ({"priority": True}, 0), ({"priority": None}, 0),
        ({"priority": [1]}, 0), ({"priority": float("inf")}, 0), ({}, 0), (None, 0), ("x", 0),
    ],
)  # fmt: skip
def test_payload_priority_reads_what_kombu_reads(properties: Any, priority: int) -> None:
    assert payload_priority({"properties": properties}) == priority


def test_redelivered_payload_sets_kombus_two_flags() -> None:
    payload = _envelope()
    expected = json.loads(json.dumps(payload))
    expected["headers"]["redelivered"] = True
    expected["properties"]["delivery_info"]["redelivered"] = True

    assert json.loads(redelivered_payload(payload)) == expected


def test_redelivered_payload_without_headers_or_delivery_info() -> None:
    assert json.loads(redelivered_payload({"properties": {}})) == {"properties": {}}
    assert json.loads(redelivered_payload({"headers": 1, "properties": 2})) == {
        "headers": 1,
        "properties": 2,
    }


def test_dead_letters_carry_the_reason_in_their_headers() -> None:
    payload = json.dumps(_envelope(id="x")).encode()

    dead = json.loads(dead_letter_payload(payload, "unknown task 't'", "celery"))

    assert dead["headers"] == {
        "task": "t", "id": "x", "x-celeriac-reason": "unknown task 't'",
        "x-celeriac-queue": "celery",
    }  # fmt: skip
    assert dead["body"] == "e30="


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b'{"headers": [1]}', b"\xff"])
def test_a_dead_letter_that_is_not_an_envelope_is_kept_byte_for_byte(payload: bytes) -> None:
    assert dead_letter_payload(payload, "why", "q") == payload


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_parsers_raise_only_malformed_message(data: bytes | str) -> None:
    for parse in (parse_unacked, parse_binding_member):
        with contextlib.suppress(MalformedMessage):
            parse(data)
    assert isinstance(dead_letter_payload(data.encode() if isinstance(data, str) else data,
                                          "r", "q"), bytes)  # fmt: skip

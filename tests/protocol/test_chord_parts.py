"""Chord parts: the ``[1, id, state, result]`` entries of a chord's ``.j`` set are Celery's
bytes, and celeriac reads Celery's; signatures change by value."""

from __future__ import annotations

from typing import Any

import pytest
from celery.backends.redis import RedisBackend

from protocol import (
    ChordPart,
    ExceptionInfo,
    MalformedMessage,
    Signature,
    State,
    decode_chord_part,
    encode_chord_part,
)

from .oracle import make_app

TID = "b6b5e4c4-0000-4000-8000-000000000001"


class MyErr(Exception):
    """A task's own exception."""


def _celery_part(serializer: str, state: str, result: Any) -> bytes:
    """What Celery's Redis backend stores for one part (``on_chord_part_return``)."""
    backend = RedisBackend(app=make_app(result_serializer=serializer), url="redis://")
    data = backend.encode([1, TID, state, backend.encode_result(result, state)])
    return data.encode("utf-8") if isinstance(data, str) else data  # Redis stores str as UTF-8


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("value", [4, None, "ünï", [1, {"a": 2.5}]])
def test_a_success_part_is_celerys_bytes(serializer: str, value: Any) -> None:
    ours = encode_chord_part(ChordPart(TID, State.SUCCESS, value), serializer=serializer)

    assert ours == _celery_part(serializer, "SUCCESS", value)
    assert decode_chord_part(ours, serializer=serializer) == ChordPart(TID, State.SUCCESS, value)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_a_failed_part_is_celerys_bytes(serializer: str) -> None:
    info = ExceptionInfo("MyErr", ("bad", 42), __name__)
    ours = encode_chord_part(ChordPart(TID, State.FAILURE, info), serializer=serializer)

    assert ours == _celery_part(serializer, "FAILURE", MyErr("bad", 42))
    part = decode_chord_part(ours, serializer=serializer)
    assert part.exception == info
    assert part.status is State.FAILURE


def test_the_json_layout() -> None:
    assert (
        encode_chord_part(ChordPart(TID, State.SUCCESS, 4))
        == f'[1, "{TID}", "SUCCESS", 4]'.encode()
    )


def test_an_empty_exception_is_read_as_none() -> None:
    part = decode_chord_part(f'[1, "{TID}", "REVOKED", null]'.encode())

    assert part.exception is None
    assert part.status is State.REVOKED


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"a": 1}', "expected a list"),
        (b'[1, "x", "SUCCESS"]', "a chord part is"),
        (b'[1, "x", "DONE", 4]', "unknown state"),
        (b'[1, "x", 7, 4]', "expected a string"),
        (b'[1, null, "SUCCESS", 4]', "task_id"),
        (b'[1, "x", "FAILURE", 5]', "expected a mapping"),
    ],
)
def test_malformed_parts(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        decode_chord_part(data)


def test_set_returns_a_changed_copy() -> None:
    sig = Signature("proj.add", (1,), options={"queue": "q"})

    changed = sig.set(task_id="t", queue="r")
    frozen = sig.set(immutable=True)

    assert changed.options == {"queue": "r", "task_id": "t"}
    assert changed.immutable is False
    assert frozen.immutable is True
    assert frozen.set().immutable is True
    assert sig.options == {"queue": "q"}

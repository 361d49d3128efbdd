"""The retry message, byte for byte what Celery 5.7's worker publishes for the same retry.

Celery's side is real: its worker-side ``Request`` runs a task that calls ``self.retry(...)``
over kombu's in-memory transport (:mod:`tests.protocol.oracle`), and the message it publishes is
compared with what celeriac's ``Task.retry`` plans for the same incoming message, as the Redis
envelope (whose bytes carry every header, property and the body).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest

from protocol import decode_task, encode_envelope
from runtime import App, current_request
from runtime import task as task_module
from runtime.exceptions import MaxRetriesExceededError, Retry
from runtime.request import Republish, Request
from tests.protocol.oracle import (
    NOW,
    Captured,
    capture,
    celery_request,
    drain,
    make_app,
    memory_channel,
)

ACCEPT = ["application/json", "application/x-msgpack"]
FAR = 10**8  # seconds: an expiry Celery's worker (on the real clock) does not see as past


def celery_retry(send: dict[str, Any], retry: dict[str, Any], queue: str) -> tuple[Captured, ...]:
    """Celery's worker runs ``proj.flaky`` (sent with ``send``), which calls
    ``self.retry(**retry)``: the original message, and the retry published to ``queue``."""
    app = make_app()

    @app.task(name="proj.flaky", bind=True, shared=False)
    def flaky(self: Any, x: int, y: int = 1, *, z: int = 0) -> None:
        raise self.retry(**retry)

    original = capture(app, "proj.flaky", queue="q-orig", **send)
    with memory_channel() as channel:
        message = channel.message_to_python(original.envelope)
        message.accept = ACCEPT
        message.delivery_info.update({"exchange": "", "routing_key": "q-orig"})
        celery_request(app, message).execute()
    (retried,) = drain(queue)
    return original, retried


def celeriac_retry(
    original: Captured, retry: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[bytes, Request]:
    """celeriac's ``Task.retry(**retry)`` in a run of ``original``: the retry's Redis envelope
    (with Celery's delivery tag, to compare bytes) and the run's request."""
    app = App("golden")

    @app.task(name="proj.flaky", bind=True)
    def flaky(self: Any, x: int, y: int = 1, *, z: int = 0) -> None:
        raise AssertionError("not run here")

    monkeypatch.setattr(task_module, "_now", lambda: NOW)
    message = decode_task(original.wire(), accept=app.accept)
    request = Request(
        message,
        hostname="celeriac@test",
        exchange="",
        routing_key="q-orig",
    )
    token = current_request.set(request)
    try:
        with pytest.raises(Retry):
            flaky.retry(**retry)
    finally:
        current_request.reset(token)
    (planned,) = request.outbox
    return planned_envelope(planned, delivery_tag="tag"), request


def planned_envelope(planned: Republish, delivery_tag: str) -> bytes:
    return encode_envelope(
        planned.encode(NOW),
        exchange=planned.exchange,
        routing_key=planned.routing_key,
        delivery_tag=delivery_tag,
    )


def signature(task: str, args: list[Any], *, immutable: bool) -> dict[str, Any]:
    """A callback as a Celery client sends it in ``link``/``link_error``."""
    return {"task": task, "args": args, "kwargs": {}, "options": {}, "subtask_type": None,
            "immutable": immutable}  # fmt: skip


#: Per case: how the task is sent, what its run's ``retry`` is given, where the retry goes.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "countdown and exc": (
        {"args": (5,), "kwargs": {"y": 2}},
        {"exc": ValueError("boom", 3), "countdown": 60},
        "q-orig",
    ),
    "everything carried over": (
        {
            "args": (5,),
            "kwargs": {"z": 4},
            "expires": FAR,
            "time_limit": 30,
            "soft_time_limit": 20,
            "priority": 3,
            "headers": {"custom": "h1"},
            "link": {
                "task": "proj.cb",
                "args": [],
                "kwargs": {},
                "options": {},
                "subtask_type": None,
                "immutable": False,
            },
            "link_error": {
                "task": "proj.cb",
                "args": [0],
                "kwargs": {},
                "options": {},
                "subtask_type": None,
                "immutable": True,
            },
            "parent_id": "parent-1",
            "root_id": "root-1",
            "shadow": "shadowed",
            "reply_to": "client-oid",
        },
        {"countdown": 0},
        "q-orig",
    ),
    "msgpack in, the task's serializer out": (
        {"args": (5,), "serializer": "msgpack"},
        {"countdown": 1.5},
        "q-orig",
    ),
    "the default delay": ({"args": (5,)}, {}, "q-orig"),
    "an explicit eta": ({"args": (5,)}, {"eta": NOW + timedelta(hours=1)}, "q-orig"),
    "new positional arguments keep the other kwargs": (
        {"args": (), "kwargs": {"x": 1, "y": 2, "z": 3}},
        {"args": (7,), "countdown": 5},
        "q-orig",
    ),
    "a new keyword replaces a positional": (
        {"args": (1, 2)},
        {"kwargs": {"y": 9}, "countdown": 5},
        "q-orig",
    ),
    "to another queue": ({"args": (5,)}, {"queue": "q-other", "countdown": 5}, "q-other"),
    "new limits and priority": (
        {"args": (5,), "time_limit": 30},
        {"time_limit": 60, "soft_time_limit": 50, "priority": 9, "countdown": 5},
        "q-orig",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_retry_is_the_message_celery_publishes(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    send, retry, queue = CASES[case]
    original, retried = celery_retry(send, retry, queue)

    ours, request = celeriac_retry(original, retry, monkeypatch)

    tag = retried.envelope["properties"]["delivery_tag"]
    assert json.loads(planned_envelope(request.outbox[0], tag)) == retried.envelope
    assert planned_envelope(request.outbox[0], tag) == retried.redis_bytes
    assert ours != retried.redis_bytes  # the delivery tag alone differs (a sanity check)


def test_no_retry_left_raises_the_exception_given_or_max_retries_exceeded() -> None:
    app = App("golden")

    @app.task(name="proj.flaky", bind=True, max_retries=1)
    def flaky(self: Any, x: int) -> None:
        raise AssertionError("not run here")

    message = decode_task(
        capture(make_app(), "proj.flaky", queue="q", args=(5,)).wire(), accept=app.accept
    )
    request = Request(dataclasses.replace(message, retries=1), hostname="w")
    token = current_request.set(request)
    try:
        with pytest.raises(KeyError, match="gone"):
            flaky.retry(exc=KeyError("gone"))
        with pytest.raises(MaxRetriesExceededError) as caught:
            flaky.retry()
        assert flaky.retry(max_retries=2, throw=False).when == 180  # this call may go on
    finally:
        current_request.reset(token)
    assert str(caught.value) == f"Can't retry proj.flaky[{message.id}] args:(5,) kwargs:{{}}"
    assert caught.value.task_args == (5,)
    assert len(request.outbox) == 1  # the one that was allowed


def test_retry_outside_a_run_raises_what_it_was_given() -> None:
    app = App("golden")

    @app.task(bind=True)
    def bound(self: Any) -> None:
        return None

    with pytest.raises(LookupError, match="why"):
        bound.retry(exc=LookupError("why"))
    with pytest.raises(Retry, match="Task can be retried"):
        bound.retry()


def test_retry_refuses_options_it_does_not_know() -> None:
    app = App("golden")

    @app.task(name="proj.flaky", bind=True)
    def flaky(self: Any, x: int) -> None:
        raise AssertionError("not run here")

    message = decode_task(
        capture(make_app(), "proj.flaky", queue="q", args=(5,)).wire(), accept=app.accept
    )
    token = current_request.set(Request(message, hostname="w"))
    try:
        with pytest.raises(TypeError, match=r"unknown option.*colour"):
            flaky.retry(colour="blue")
        with pytest.raises(TypeError, match=r"flaky\(\) takes 2 positional arguments"):
            flaky.retry(args=(1, 2))  # typing: the retry would not bind
    finally:
        current_request.reset(token)


def test_retry_str_is_celerys() -> None:
    assert str(Retry(exc=ValueError("x"), when=5)) == "Retry in 5s: ValueError('x')"
    assert str(Retry(when=NOW)) == f"Retry at {NOW}"
    assert str(Retry("custom")) == "custom"
    assert str(Retry(exc="text", when=1)) == "Retry in 1s: text"
    assert Retry(exc="text").exc is None


def test_no_retry_left_inside_a_handler_chains_the_exception_as_celery() -> None:
    app = App("golden")

    @app.task(name="proj.flaky", bind=True, max_retries=0)
    def flaky(self: Any, x: int) -> None:
        raise AssertionError("not run here")

    message = decode_task(
        capture(make_app(), "proj.flaky", queue="q", args=(5,)).wire(), accept=app.accept
    )
    token = current_request.set(Request(message, hostname="w"))
    handled = OSError("handled")
    try:
        try:
            raise handled
        except OSError:
            with pytest.raises(KeyError) as caught:
                flaky.retry(exc=KeyError("given"))
            with pytest.raises(OSError, match="handled") as again:
                flaky.retry(exc=handled)  # the exception being handled: raised as it is
    finally:
        current_request.reset(token)
    assert caught.value.__cause__ is handled
    assert again.value.__cause__ is None

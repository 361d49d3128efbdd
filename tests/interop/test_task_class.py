"""A task class's hooks and argument typing, seen from a stock Celery 5.7 client, on RabbitMQ
and Redis: ``on_success``/``on_failure``/``on_retry``/``after_return`` in Celery's order and with
its arguments, a raising hook that loses nothing, and arguments that do not bind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from celery import Celery
from celery.exceptions import MaxRetriesExceededError

from .conftest import Broker, Marks, WorkerProcess
from .retry_app import Flaky

pytestmark = [pytest.mark.integration, pytest.mark.interop]

APP = "tests.interop.retry_app:app"
StartWorker = Callable[..., WorkerProcess]


def test_on_success_then_after_return(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks
) -> None:
    start_worker(unique_name, app=APP)
    key = marks.key("hooks")
    result = celery_client.send_task(
        "hooks.ok", args=(key, 21), kwargs={"times": 2}, queue=unique_name
    )

    assert result.get(timeout=15) == 42
    worker_args = {"task_id": result.id, "args": [key, 21], "kwargs": {"times": 2}}
    assert _timeless(marks.read(key, 2)) == [
        {"hook": "on_success", "retval": 42, **worker_args},
        {"hook": "after_return", "status": "SUCCESS", "retval": "42", "task_id": result.id,
         "einfo": None},
    ]  # fmt: skip


def test_on_failure_then_after_return(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks
) -> None:
    start_worker(unique_name, app=APP)
    key = marks.key("hooks")
    result = celery_client.send_task("hooks.fail", args=(key,), queue=unique_name)

    with pytest.raises(Flaky, match="bad input"):
        result.get(timeout=15)
    failure, after = _timeless(marks.read(key, 2))
    traceback = failure.pop("einfo_traceback")
    assert failure == {
        "hook": "on_failure", "exc": "Flaky('bad input')", "task_id": result.id,
        "args": [key], "kwargs": {}, "einfo_type": "Flaky",
    }  # fmt: skip
    assert traceback.startswith("Traceback (most recent call last):")
    assert traceback.rstrip().endswith("tests.interop.retry_app.Flaky: bad input")
    assert traceback == result.traceback  # what the hook saw is what the backend stored
    assert after == {"hook": "after_return", "status": "FAILURE", "retval": "Flaky('bad input')",
                     "task_id": result.id, "einfo": None}  # fmt: skip


def test_on_retry_then_the_retry_succeeds(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks
) -> None:
    start_worker(unique_name, app=APP, concurrency=1)  # the retry waits for the first run's hooks
    key = marks.key("hooks")
    result = celery_client.send_task("hooks.retry_once", args=(key,), queue=unique_name)

    assert result.get(timeout=15) == "done"
    assert [(m["hook"], m.get("status")) for m in _timeless(marks.read(key, 4))] == [
        ("on_retry", None),
        ("after_return", "RETRY"),
        ("on_success", None),
        ("after_return", "SUCCESS"),
    ]
    on_retry, after_retry, _, _ = _timeless(marks.read(key))
    assert on_retry == {
        "hook": "on_retry", "exc": "Flaky('once more')", "task_id": result.id, "args": [key],
        "kwargs": {}, "einfo_type": "Retry", "request_id": result.id,
    }  # fmt: skip
    assert after_retry["retval"].startswith("Retry(")  # the Retry exception, as in Celery
    assert "Flaky('once more')" in after_retry["retval"]


def test_a_class_attribute_sets_max_retries(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks
) -> None:
    """``Recording.max_retries = 1``: one retry (``exc`` ``None`` in on_retry), then FAILURE."""
    start_worker(unique_name, app=APP, concurrency=1)  # the retry waits for the first run's hooks
    key = marks.key("hooks")
    result = celery_client.send_task("hooks.retry_forever", args=(key,), queue=unique_name)

    with pytest.raises(MaxRetriesExceededError):
        result.get(timeout=15)
    calls = _timeless(marks.read(key, 4))
    assert [(m["hook"], m.get("status")) for m in calls] == [
        ("on_retry", None),
        ("after_return", "RETRY"),
        ("on_failure", None),
        ("after_return", "FAILURE"),
    ]
    assert calls[0]["exc"] == "None"
    assert calls[2]["exc"].startswith("MaxRetriesExceededError(\"Can't retry hooks.retry_forever")


def test_a_raising_hook_loses_neither_the_result_nor_the_message(
    start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks,
    broker: Broker,
) -> None:  # fmt: skip
    worker = start_worker(unique_name, app=APP)
    key = marks.key("ran")
    succeeded = celery_client.send_task("hooks.broken_ok", args=(key,), queue=unique_name)
    failed = celery_client.send_task("hooks.broken_fail", args=(key,), queue=unique_name)

    assert succeeded.get(timeout=15) == "kept"
    with pytest.raises(Flaky, match="still recorded"):
        failed.get(timeout=15)
    after = celery_client.send_task("hooks.ok", args=(marks.key("after"), 1), queue=unique_name)
    assert after.get(timeout=15) == 2
    expected = {
        (succeeded.id, "on_success"),
        (succeeded.id, "after_return"),
        (failed.id, "on_failure"),
        (failed.id, "after_return"),
    }
    for task_id, hook in expected:
        worker.wait_for("task_hook_failed", task_id=task_id, hook=hook)
    broken = {(r["task_id"], r["hook"]) for r in worker.records if r["event"] == "task_hook_failed"}
    assert broken == expected
    assert _timeless(marks.read(key)) == [{"ran": True}]  # acks_late and acked: it ran once
    assert broker.ready(unique_name) == 0


def _timeless(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in entry.items() if k != "at"} for entry in entries]


class Call(NamedTuple):
    """A call that does not bind, and the error Python (so a Celery worker) gives for it."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    message: str


@pytest.mark.parametrize(
    "call",
    [
        Call("typing.marked", ("KEY",), {}, "marked() missing 1 required positional argument: 'x'"),
        Call("typing.marked", ("KEY", 1, 2), {},
             "marked() takes 2 positional arguments but 3 were given"),
        Call("typing.marked_sync", ("KEY", 1), {"scale": 2, "z": 1},
             "marked_sync() got an unexpected keyword argument 'z'"),
        Call("typing.marked_sync", (), {"x": 1},
             "marked_sync() missing 1 required positional argument: 'key'"),
    ],
)  # fmt: skip
def test_arguments_that_do_not_bind_fail_before_the_task_runs(
    call: Call, start_worker: StartWorker, celery_client: Celery, unique_name: str, marks: Marks
) -> None:
    """The error is Python's own, word for word, as a Celery worker stores it."""
    worker = start_worker(unique_name, app=APP)
    key = marks.key("ran")
    args = tuple(key if arg == "KEY" else arg for arg in call.args)
    result = celery_client.send_task(call.task, args=args, kwargs=call.kwargs, queue=unique_name)

    with pytest.raises(TypeError) as caught:
        result.get(timeout=15)

    assert str(caught.value) == call.message
    worker.wait_for("task_arguments_invalid", task_id=result.id)
    assert not [r for r in worker.records if r["event"] == "task_started"]
    assert _timeless(marks.read(key)) == []

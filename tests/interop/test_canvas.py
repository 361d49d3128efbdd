"""Canvas from a stock Celery 5.7 client, run by ``celeriac worker`` on RabbitMQ and on Redis:
callbacks, errbacks, chains, groups, chords and their nesting, as Celery's users write them.

Every signature carries the test's queue (``queue=`` in its options): a chain's later steps,
a chord's body and the callbacks are published by the worker, which routes them by the
signature's options, as a Celery worker does.
"""

from __future__ import annotations

import gc
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery, chain, chord, group
from celery.exceptions import ChordError

from .app import PaymentDeclined
from .conftest import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.interop]

StartWorker = Callable[..., WorkerProcess]
Sig = Callable[..., Any]


@pytest.fixture
def sig(celery_client: Celery, unique_name: str) -> Sig:
    """``sig("interop.add", 1, 2)``: a signature routed to the test's queue."""

    def make(name: str, *args: Any, immutable: bool = False, **options: Any) -> Any:
        return celery_client.signature(
            name, args=args, immutable=immutable, **{"queue": unique_name, **options}
        )

    return make


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    """The result backend's Redis, to read markers and chord keys."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _close_result_connections(celery_client: Celery) -> Iterator[None]:
    """Close the client's result consumer once the results it follows are gone: a result
    (with parents, in cycles) unsubscribes when collected, reconnecting if it was closed."""
    yield
    gc.collect()
    consumer = celery_client.backend.result_consumer
    consumer.stop()
    consumer.subscribed_to.clear()  # nothing left for a late-collected result to unsubscribe
    celery_client.backend.client.connection_pool.disconnect()


def _wait_for_key(store: redis.Redis, key: str, timeout: float = 15) -> bytes:
    deadline = time.monotonic() + timeout
    while (value := store.get(key)) is None:
        assert time.monotonic() < deadline, f"{key} never written"
        time.sleep(0.05)
    assert isinstance(value, bytes)
    return value


def _meta(celery_client: Celery, task_id: str) -> dict[str, Any]:
    return dict(celery_client.backend.get_task_meta(task_id))


def test_chain_passes_each_result_on(
    start_worker: StartWorker, celery_client: Celery, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name)
    result = chain(sig("interop.add", 1, 2), sig("interop.add", 3), sig("interop.add", 4))()

    assert result.get(timeout=15) == 10
    assert result.parent.get(timeout=5) == 6
    first = result.parent.parent
    assert first.get(timeout=5) == 3
    # Each step is the child of the one before, in the record and in the message's ids.
    assert _meta(celery_client, first.id)["children"] == [[[result.parent.id, None], None]]
    assert _meta(celery_client, result.parent.id)["parent_id"] == first.id
    assert _meta(celery_client, result.id)["parent_id"] == result.parent.id


def test_an_immutable_step_ignores_the_result_before_it(
    start_worker: StartWorker, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name)
    result = chain(
        sig("interop.add", 1, 2), sig("interop.add", 10, 20, immutable=True), sig("interop.add", 5)
    )()

    assert result.get(timeout=15) == 35
    assert result.parent.parent.get(timeout=5) == 3


def test_a_group_of_20_returns_the_ordered_list(
    start_worker: StartWorker, celery_client: Celery, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name, concurrency=5)
    result = group(sig("interop.add", n, n) for n in range(20))()

    assert result.get(timeout=30) == [2 * n for n in range(20)]
    assert {_meta(celery_client, r.id)["group_id"] for r in result.results} == {result.id}


def test_a_chord_of_10_feeds_its_callback(
    start_worker: StartWorker, celery_client: Celery, sig: Sig, store: redis.Redis, unique_name: str
) -> None:
    start_worker(unique_name, concurrency=4)
    result = chord(sig("interop.add", n, n) for n in range(10))(sig("interop.tsum"))

    assert result.get(timeout=30) == 90
    gid = result.parent.id
    assert result.parent.get(timeout=5) == [2 * n for n in range(10)]
    # The bookkeeping is gone and the chord marked done, as Celery 5.7 leaves it.
    prefix = f"celery-taskset-meta-{gid}"
    assert [store.exists(f"{prefix}.{part}") for part in "jtsd"] == [0, 0, 0, 0]
    assert store.get(f"{prefix}.c") == b"done"
    assert _meta(celery_client, result.id)["group_id"] == gid


def test_a_failing_member_fails_the_chord_and_runs_the_body_errback(
    start_worker: StartWorker, celery_client: Celery, sig: Sig, store: redis.Redis,
    unique_name: str,
) -> None:  # fmt: skip
    start_worker(unique_name, concurrency=3)
    marker = f"{unique_name}:errback"
    header = [sig("interop.add", 1, 1), sig("interop.decline", "card expired")]
    header += [sig("interop.add", 2, 2)]
    body = sig("interop.tsum").on_error(sig("interop.mark", marker))
    result = chord(header)(body)

    # Celery's get() raises a failed parent's error first: the header member's.
    with pytest.raises(PaymentDeclined):
        result.get(timeout=30)
    # The body itself is recorded as failed with ChordError, naming the member.
    with pytest.raises(ChordError) as caught:
        celery_client.AsyncResult(result.id).get(timeout=5)
    failed = result.parent.results[1]
    assert (
        str(caught.value) == f"Dependency {failed.id} raised PaymentDeclined('card expired', 402)"
    )
    assert result.state == "FAILURE"
    assert _wait_for_key(store, marker).decode() == result.id
    assert [r.state for r in result.parent.results] == ["SUCCESS", "FAILURE", "SUCCESS"]
    # As Celery records it, the body's children are the errback group just sent for it.
    [[[errbacks_id, _], [[[errback_id, _], _]]]] = _meta(celery_client, result.id)["children"]
    # Its marker is written by its body, its record only after: wait for the record.
    assert celery_client.AsyncResult(errback_id).get(timeout=10) == result.id
    assert _meta(celery_client, errback_id)["parent_id"] == result.id
    assert _meta(celery_client, errback_id)["group_id"] == errbacks_id


def test_an_expired_header_task_fails_the_chord(
    start_worker: StartWorker, celery_client: Celery, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name)
    late = sig("interop.add", 2, 2, countdown=1.5, expires=0.5)
    result = chord([sig("interop.add", 1, 1), late])(sig("interop.tsum"))

    with pytest.raises(ChordError) as caught:
        celery_client.AsyncResult(result.id).get(timeout=30)
    expired = result.parent.results[1]
    assert str(caught.value) == f"Dependency {expired.id} raised TaskRevokedError('expired')"
    assert expired.state == "REVOKED"


def test_a_failed_header_fails_each_task_of_a_group_body(
    start_worker: StartWorker, celery_client: Celery, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name)
    header = [sig("interop.add", 1, 1), sig("interop.decline", "card expired")]
    result = chord(header)(group(sig("interop.add", 1), sig("interop.add", 2)))

    # The body's tasks never run: each is recorded with the header task's exception.
    for member in result.results:
        with pytest.raises(PaymentDeclined):
            celery_client.AsyncResult(member.id).get(timeout=30)
    assert [_meta(celery_client, m.id)["status"] for m in result.results] == ["FAILURE"] * 2


def test_a_header_task_that_is_a_group_keeps_its_shape(
    start_worker: StartWorker, sig: Sig, unique_name: str
) -> None:
    """The client saves such a header's group result; the body gets the values nested as the
    header was, as Celery's worker joins them."""
    start_worker(unique_name, concurrency=4)
    header = [
        chain(sig("interop.add", 1, 1), group(sig("interop.add", 1), sig("interop.add", 2))),
        sig("interop.add", 5, 5),
    ]
    result = chord(header)(sig("interop.echo"))

    assert result.get(timeout=30) == {"args": [[[3, 4], 10]], "kwargs": {}}


def test_link_runs_the_callback_with_the_result(
    start_worker: StartWorker, celery_client: Celery, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name)
    callback_id = str(uuid.uuid4())
    callback = sig("interop.add", 10, task_id=callback_id)
    result = celery_client.send_task("interop.add", (2, 3), queue=unique_name, link=callback)

    assert result.get(timeout=15) == 5
    assert celery_client.AsyncResult(callback_id).get(timeout=15) == 15
    assert _meta(celery_client, callback_id)["parent_id"] == result.id
    assert _meta(celery_client, result.id)["children"] == [[[callback_id, None], None]]


def test_two_links_run_as_a_group(
    start_worker: StartWorker, celery_client: Celery, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    links = [sig("interop.add", 10, task_id=ids[0]), sig("interop.add", 20, task_id=ids[1])]
    result = celery_client.send_task("interop.add", (2, 3), queue=unique_name, link=links)

    assert result.get(timeout=15) == 5
    assert [celery_client.AsyncResult(i).get(timeout=15) for i in ids] == [15, 25]
    groups = {_meta(celery_client, i)["group_id"] for i in ids}
    assert len(groups) == 1
    (gid,) = groups
    members = [[[i, None], None] for i in ids]
    assert _meta(celery_client, result.id)["children"] == [[[gid, None], members]]


def test_link_error_fires_on_failure(
    start_worker: StartWorker, celery_client: Celery, sig: Sig, store: redis.Redis,
    unique_name: str,
) -> None:  # fmt: skip
    start_worker(unique_name)
    old_style, new_style = f"{unique_name}:old", f"{unique_name}:new"
    result = celery_client.send_task(
        "interop.decline",
        ("card expired",),
        queue=unique_name,
        link_error=[sig("interop.mark", old_style), sig("interop.on_error", new_style)],
        link=sig("interop.mark", f"{unique_name}:never"),
    )

    with pytest.raises(PaymentDeclined):
        result.get(timeout=15)
    # Old style: published as a task, with the failed task's id.
    assert _wait_for_key(store, old_style).decode() == result.id
    # New style: called in the worker with the request, the exception and the traceback.
    assert json.loads(_wait_for_key(store, new_style)) == {
        "id": result.id,
        "exc": "PaymentDeclined",
        "args": ["card expired", 402],
    }
    assert store.get(f"{unique_name}:never") is None


def test_a_failed_step_fails_the_rest_of_the_chain(
    start_worker: StartWorker, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name)
    result = chain(sig("interop.add", 1, 2), sig("interop.decline"), sig("interop.add", 4))()

    with pytest.raises(PaymentDeclined):
        result.get(timeout=15)
    assert result.parent.state == "FAILURE"
    assert result.parent.parent.get(timeout=5) == 3


def test_chains_inside_a_group(start_worker: StartWorker, sig: Sig, unique_name: str) -> None:
    start_worker(unique_name, concurrency=4)
    result = group(
        chain(sig("interop.add", 1, 1), sig("interop.add", 1)),
        chain(sig("interop.add", 2, 2), sig("interop.add", 2), sig("interop.add", 2)),
        sig("interop.add", 3, 3),
    )()

    assert result.get(timeout=30) == [3, 8, 6]


def test_a_chord_inside_a_chain(start_worker: StartWorker, sig: Sig, unique_name: str) -> None:
    start_worker(unique_name, concurrency=4)
    result = chain(
        sig("interop.add", 1, 2),
        chord([sig("interop.add", 1), sig("interop.add", 2)], sig("interop.tsum")),
        sig("interop.add", 100),
    )()

    # add(1, 2) = 3; the header gets it first: add(3, 1), add(3, 2); tsum([4, 5]) = 9.
    assert result.get(timeout=30) == 109


def test_a_group_then_a_task_in_a_chain_is_a_chord(
    start_worker: StartWorker, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name, concurrency=4)
    result = chain(
        sig("interop.add", 1, 1),
        group(sig("interop.add", 1), sig("interop.add", 2)),
        sig("interop.tsum"),
    )()

    assert result.get(timeout=30) == 7


def test_a_chord_whose_body_is_a_chain(
    start_worker: StartWorker, sig: Sig, unique_name: str
) -> None:
    start_worker(unique_name, concurrency=4)
    result = chord(
        [sig("interop.add", 1, 1), chain(sig("interop.add", 2, 2), sig("interop.add", 1))],
        chain(sig("interop.tsum"), sig("interop.add", 10)),
    )()

    assert result.get(timeout=30) == 17

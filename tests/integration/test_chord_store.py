"""Chord bookkeeping on real Redis: the keys, the order of results, one claim, ``done``; and a
chord whose header results are recorded partly by Celery's own backend, partly by celeriac."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context

from protocol import ChordPart, ExceptionInfo, State
from runtime.canvas.chords import RedisChords
from runtime.results.backend import RedisResultBackend

pytestmark = [pytest.mark.integration, pytest.mark.interop]


def _body(queue: str) -> dict[str, Any]:
    """A chord body as a header task's message carries it, routed to ``queue``."""
    return {"task": "proj.tsum", "args": [], "kwargs": {},
            "options": {"task_id": "body-id", "queue": queue},
            "subtask_type": None, "immutable": False}  # fmt: skip


@pytest.fixture
def prefix(unique_name: str) -> str:
    return f"{unique_name}:"


@pytest.fixture
async def chords(redis_url: str, prefix: str) -> AsyncIterator[RedisChords]:
    backend = RedisResultBackend.from_url(redis_url, global_keyprefix=prefix)
    yield RedisChords(backend)
    await backend.aclose()


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def celery_app(redis_url: str, prefix: str) -> Iterator[Celery]:
    """Celery with the same result backend (and key prefix); its broker in memory (kombu's,
    shared by the whole process: what it publishes must be taken out)."""
    app = Celery("chords", broker="memory://", backend=redis_url, set_as_current=False)
    app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
    yield app
    app.backend.client.close()


def _keys(store: redis.Redis, prefix: str, gid: str) -> dict[str, Any]:
    base = f"{prefix}celery-taskset-meta-{gid}"
    return {part: store.exists(f"{base}.{part}") for part in "jtsd"} | {"c": store.get(f"{base}.c")}


async def test_results_in_order_one_claim_then_done(
    chords: RedisChords, store: redis.Redis, prefix: str
) -> None:
    gid = str(uuid.uuid4())
    await chords.set_size(gid, 3)
    failed = ExceptionInfo("ValueError", ("no",), "builtins")

    first = await chords.record(gid, 2, ChordPart("c", State.FAILURE, failed), "w1")
    second = await chords.record(gid, 0, ChordPart("a", State.SUCCESS, 1), "w1")
    again = await chords.record(gid, 0, ChordPart("a", State.SUCCESS, 99), "w2")  # redelivered
    last = await chords.record(gid, 1, ChordPart("b", State.SUCCESS, 2), "w1")

    assert [(r.recorded, r.expected, r.complete) for r in (first, second, again, last)] == [
        (1, 3, False), (2, 3, False), (2, 3, False), (3, 3, True),
    ]  # fmt: skip
    parts = await chords.parts(gid)
    assert [(p.task_id, p.result) for p in parts] == [("a", 1), ("b", 2), ("c", failed)]
    assert store.ttl(f"{prefix}celery-taskset-meta-{gid}.j") > 86_000
    # Another worker cannot take the claim; its holder keeps it, then finishes.
    assert not await chords.extend_claim(gid, "w2")
    assert await chords.extend_claim(gid, "w1")
    assert await chords.finish(gid, "w1")
    assert _keys(store, prefix, gid) == {"j": 0, "t": 0, "s": 0, "d": 0, "c": b"done"}
    late = await chords.record(gid, 1, ChordPart("b", State.SUCCESS, 2), "w3")
    assert late.recorded == -1
    assert not late.complete


async def test_no_size_no_claim(chords: RedisChords) -> None:
    """A header result that arrives before the chord's size is set waits for a later one."""
    gid = str(uuid.uuid4())

    early = await chords.record(gid, 0, ChordPart("a", State.SUCCESS, 1), "w1")
    await chords.set_size(gid, 2)
    done = await chords.record(gid, 1, ChordPart("b", State.SUCCESS, 2), "w1")

    assert (early.expected, early.complete) == (None, False)
    assert done.complete


async def test_celery_and_celeriac_record_into_one_chord(
    chords: RedisChords, celery_app: Celery, store: redis.Redis, prefix: str, unique_name: str
) -> None:
    """Celery's ``on_chord_part_return`` writes part 0, celeriac completes the chord and reads
    both; then the other way round, where Celery completes it, publishes and cleans up."""
    gid = str(uuid.uuid4())
    await chords.set_size(gid, 2)
    request = Context(id="a", group=gid, group_index=0, chord=_body(unique_name))
    celery_app.backend.on_chord_part_return(request, "SUCCESS", [1, "one"])
    ours = await chords.record(gid, 1, ChordPart("b", State.SUCCESS, 2), "w1")

    assert ours.complete
    assert [(p.task_id, p.result) for p in await chords.parts(gid)] == [("a", [1, "one"]), ("b", 2)]

    other = str(uuid.uuid4())
    await chords.set_size(other, 2)
    await chords.record(other, 0, ChordPart("a", State.SUCCESS, 1), "w1")
    request = Context(id="b", group=other, group_index=1, chord=_body(unique_name))
    celery_app.backend.on_chord_part_return(request, "SUCCESS", 2)

    assert _keys(store, prefix, other) == {"j": 0, "t": 0, "s": 0, "d": 0, "c": b"done"}
    with celery_app.connection_for_read() as conn:
        sent = conn.default_channel.basic_get(queue=unique_name, no_ack=True)
    assert sent.headers["id"] == "body-id"
    assert json.loads(sent.body)[0] == [[1, 2]]

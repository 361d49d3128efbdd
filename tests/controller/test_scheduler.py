"""The scheduler against a real Redis, turn by turn, on a clock the test moves.

Each test drives :meth:`Scheduler._renew` (the lease) and :meth:`Scheduler._fire_due` (one
turn of firing) itself, so what fires when is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio

from controller.keys import Keys
from controller.scheduler import Scheduler
from controller.schedules import Schedule, fire_id, task_id_for
from runtime.errors import BrokerConnectionError

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 3, 6, 0, tzinfo=UTC)
EVERY_SECOND = Schedule(name="tick", task="proj.tick", every=1.0, options={"queue": "q"})


class Clock:
    """A wall clock the test sets."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Published:
    """A publisher that records what it is given (and can be made to fail)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.failing = False

    async def __call__(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], **options: Any
    ) -> None:
        if self.failing:
            raise BrokerConnectionError("broker: down")
        self.calls.append({"task": name, "args": args, "kwargs": kwargs, **options})

    @property
    def task_ids(self) -> list[str]:
        return [call["task_id"] for call in self.calls]


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis.asyncio.Redis.from_url(redis_url) as connection:
        yield connection


@pytest.fixture
def make(
    client: redis.asyncio.Redis, unique_name: str
) -> Callable[..., tuple[Scheduler, Published]]:
    clock = Clock()

    def build(
        name: str, schedules: tuple[Schedule, ...] = (EVERY_SECOND,), **options: Any
    ) -> tuple[Scheduler, Published]:
        published = Published()
        scheduler = Scheduler(
            schedules, published, client, controller_id=name, keys=Keys(f"{unique_name}:"),
            clock=clock, **{"lease_ttl": 0.5, "grace": 30.0, **options},
        )  # fmt: skip
        return scheduler, published

    build.clock = clock  # type: ignore[attr-defined]
    return build


def ticks(start: int, stop: int) -> list[str]:
    """The task ids of EVERY_SECOND's ticks at T0 + start .. stop seconds."""
    return [
        task_id_for(fire_id(EVERY_SECOND, T0 + timedelta(seconds=s)))
        for s in range(start, stop + 1)
    ]


async def test_one_leader_fires_each_tick_once(make: Any) -> None:
    a, published_a = make("a")
    b, published_b = make("b")
    await a._renew()
    await b._renew()
    assert a.leading
    assert not b.leading

    await a._fire_due()  # anchors the schedule at T0: nothing due yet
    for _ in range(3):
        make.clock.advance(1)
        await a._fire_due()
        await b._fire_due()  # the follower fires nothing

    assert published_a.task_ids == ticks(1, 3)
    assert published_b.calls == []
    assert published_a.calls[0] == {
        "task": "proj.tick", "args": (), "kwargs": {}, "queue": "q", "task_id": ticks(1, 1)[0],
    }  # fmt: skip


async def test_a_new_leader_fires_every_tick_the_dead_one_left(make: Any) -> None:
    a, published_a = make("a")
    b, published_b = make("b")
    await a._renew()
    await a._fire_due()
    make.clock.advance(2)
    await a._fire_due()
    # a dies without giving the lease up; its lease runs out while ticks fall due.
    await asyncio.sleep(0.6)
    make.clock.advance(5)
    await b._renew()
    assert b.leading
    await b._fire_due()

    assert published_a.task_ids == ticks(1, 2)
    assert published_b.task_ids == ticks(3, 7)


async def test_a_stale_leader_cannot_fire(make: Any) -> None:
    """The fence: a leader whose lease lapsed and was taken fires nothing, even though it
    still believes it leads."""
    a, published_a = make("a")
    b, published_b = make("b")
    await a._renew()
    await a._fire_due()
    await asyncio.sleep(0.6)  # a stalls past its lease
    await b._renew()
    await b._fire_due()
    make.clock.advance(1)
    assert a.leading  # as far as a knows

    await a._fire_due()
    await b._fire_due()

    assert published_a.calls == []
    assert not a.leading
    assert published_b.task_ids == ticks(1, 1)


async def test_a_fire_left_half_done_is_published_again_with_its_task_id(
    make: Any, client: redis.asyncio.Redis, unique_name: str
) -> None:
    a, published_a = make("a")
    await a._renew()
    await a._fire_due()
    published_a.failing = True  # recorded as firing, then the publish fails and a dies
    make.clock.advance(1)
    await a._fire_due()
    state = await client.hgetall(f"{unique_name}:schedule:tick")
    assert state[b"state"] == b"firing"

    await asyncio.sleep(0.6)
    b, published_b = make("b")
    await b._renew()
    await b._fire_due()

    assert published_a.calls == []
    assert published_b.task_ids == ticks(1, 1)
    state = await client.hgetall(f"{unique_name}:schedule:tick")
    assert state[b"state"] == b"fired"


async def test_a_publish_that_fails_is_retried_by_the_same_leader(make: Any) -> None:
    a, published = make("a")
    await a._renew()
    await a._fire_due()
    published.failing = True
    make.clock.advance(1)
    await a._fire_due()
    published.failing = False
    make.clock.advance(1)
    await a._fire_due()

    assert published.task_ids == ticks(1, 2)


@pytest.mark.parametrize(("policy", "fired"), [("once", [9, 10]), ("skip", [10])])
async def test_catch_up_after_the_controllers_were_down(
    make: Any, client: redis.asyncio.Redis, unique_name: str, policy: str, fired: list[int]
) -> None:
    minutely = Schedule(name="tick", task="proj.tick", every=60.0, catch_up=policy)  # type: ignore[arg-type]
    a, published = make("a", (minutely,))
    await a._renew()
    await a._fire_due()
    make.clock.advance(10 * 60 + 5)  # ten minutes down: ticks 1..9 missed, 10 is 5 s late
    await a._fire_due()

    expected = [task_id_for(fire_id(minutely, T0 + timedelta(minutes=m))) for m in fired]
    assert published.task_ids == expected
    fires = [json.loads(r) for r in await client.lrange(f"{unique_name}:fires", 0, -1)]
    assert [f["task_id"] for f in reversed(fires)] == expected


async def test_the_lease_is_given_up_on_the_way_out(
    make: Any, client: Any, unique_name: str
) -> None:
    a, _ = make("a")
    running = asyncio.create_task(a.run())
    for _ in range(100):
        if a.leading:
            break
        await asyncio.sleep(0.01)
    assert await client.get(f"{unique_name}:controller:lease") is not None
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):  # a loop that swallows the cancellation fails here
            await running
    assert await client.get(f"{unique_name}:controller:lease") is None


async def test_the_lease_loop_stops_even_if_redis_swallows_the_cancellation(
    make: Any, unique_name: str
) -> None:
    a, _ = make("a")
    renewing = asyncio.Event()
    lease_script = a._lease_script

    async def swallowing(**kwargs: Any) -> Any:  # redis-py 8.1 on 3.11, cancelled mid-send
        if not renewing.is_set():
            renewing.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.2)
        return await lease_script(**kwargs)

    a._lease_script = swallowing
    running = asyncio.create_task(a.run())
    await renewing.wait()
    running.cancel()
    await asyncio.wait([running], timeout=5)
    stopped = running.done()
    while not running.done():  # cancel its loops again, not to leave them running
        for task in asyncio.all_tasks():
            if task.get_name() in ("celeriac-lease", "celeriac-scheduler"):
                task.cancel()
        await asyncio.sleep(0.01)
    assert stopped, "cancelled, the lease loop carried on"


def test_schedule_names_must_be_unique(client: Any) -> None:
    with pytest.raises(ValueError, match="unique"):
        Scheduler([EVERY_SECOND, EVERY_SECOND], Published(), client, controller_id="a")

"""The scheduler fires through celeriac's producer on every broker: a tick's message lands in
its queue, under the task id derived from the tick."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis.asyncio

from controller.keys import Keys
from controller.scheduler import Scheduler
from controller.schedules import Schedule, fire_id, task_id_for
from runtime import App
from tests.controller.test_scheduler import T0, Clock

pytestmark = pytest.mark.integration


async def test_a_tick_lands_in_its_queue(app: App, redis_url: str, unique_name: str) -> None:
    schedule = Schedule(name="s", task="x.tick", every=5.0, options={"queue": unique_name})
    clock = Clock()
    async with redis.asyncio.Redis.from_url(redis_url) as client:
        scheduler = Scheduler([schedule], app.send_task, client, controller_id="c",
                              keys=Keys(f"{unique_name}:"), clock=clock)  # fmt: skip
        await scheduler._renew()
        await scheduler._fire_due()
        clock.advance(5)
        await scheduler._fire_due()
        await scheduler._release()

    transport = await app.connect()
    depth, _ = await transport.queue_depth(unique_name)
    assert depth == 1
    task_id = task_id_for(fire_id(schedule, T0 + timedelta(seconds=5)))
    registry = app.run_registry
    assert registry is not None
    run = await registry.get(task_id)  # the producer recorded the fire's run as queued
    assert run is not None
    assert (run.state, run.get("task"), run.get("queue")) == ("queued", "x.tick", unique_name)

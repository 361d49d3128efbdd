"""The scheduler: of any number of controllers, exactly one fires each due tick.

High availability comes from two things in Redis (:mod:`controller.keys`):

* **A leader lease with a fencing token** (``lua/lease.lua``). One controller holds it; the
  others try to take it every third of its TTL, so a dead leader is replaced within about
  1.3 TTLs. Each new holder gets a larger token.
* **One atomic step per tick** (``lua/advance.lua``): a schedule's state records its last tick;
  firing the next one moves it from that tick to this one, only if the caller still holds the
  lease with its token. Two controllers can never both move it, so a tick fires at most once;
  and since ticks follow the last one fired (not the clock of whoever fires), a new leader
  fires every tick the old one left, so none is skipped (:func:`controller.schedules.plan`).

A fire is recorded (``firing``) before its message is published and marked ``fired`` after.
A leader that dies between the two leaves ``firing`` behind, and the next leader publishes it
again with the same task id: the only way a tick's message can go out twice is a leader that
published and died (or stalled past its lease) before marking it, a window of one publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import structlog

from runtime.errors import BackendError, BrokerConnectionError, translate_redis_errors
from runtime.redis_client import stop_if_cancelled

from .keys import Keys
from .metrics import ControllerMetrics
from .schedules import Schedule, fire_id, plan, task_id_for

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["DEFAULT_GRACE", "DEFAULT_LEASE_TTL", "Publisher", "Scheduler"]

#: Seconds a leader's lease lasts without renewal (renewed every third of it).
DEFAULT_LEASE_TTL = 15.0
#: Seconds a tick may be overdue and still fire whatever the catch-up policy: longer than a
#: failover (about 1.3 lease TTLs), so a failover never skips a tick.
DEFAULT_GRACE = 60.0
#: Fires kept in the list of recent fires.
FIRES_KEPT = 10_000

_LUA = files("controller") / "lua"
_LEASE = (_LUA / "lease.lua").read_text()
_RELEASE = (_LUA / "release.lua").read_text()
_ADVANCE = (_LUA / "advance.lua").read_text()
_FIRED = (_LUA / "fired.lua").read_text()


#: What fires a tick's message: called as :meth:`runtime.App.send_task` is, with the task's
#: name, args and kwargs, and ``task_id``, ``queue`` and the schedule's options as keywords.
Publisher = Callable[..., Awaitable[object]]


@dataclass(slots=True)
class _Pending:
    """A fire recorded as ``firing`` whose message is not known to be published."""

    schedule: Schedule
    fire: str
    due: datetime


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


class Scheduler:
    """Fires ``schedules`` through ``publish`` while this controller holds the lease.

    ``route(task)`` gives the queue of a schedule with none in its options (a Celery app's
    ``task_routes``); ``None`` leaves it to the publisher's default queue.
    """

    def __init__(
        self,
        schedules: Sequence[Schedule],
        publish: Publisher,
        redis: redis.asyncio.Redis,
        *,
        controller_id: str,
        keys: Keys | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        grace: float = DEFAULT_GRACE,
        route: Callable[[str], str | None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: ControllerMetrics | None = None,
        logger: Any = None,
    ) -> None:
        names = [s.name for s in schedules]
        if len(set(names)) != len(names):
            raise ValueError(f"schedule names must be unique: {sorted(names)}")
        if not lease_ttl > 0.3:
            raise ValueError(f"the lease TTL must be more than 0.3 s, not {lease_ttl}")
        self.schedules = list(schedules)
        self.controller_id = controller_id
        self.keys = keys or Keys()
        self.lease_ttl = lease_ttl
        self.grace = grace
        self.log = logger or structlog.get_logger("celeriac.scheduler")
        self.metrics = metrics or ControllerMetrics()
        self._publish = publish
        self._route = route
        self._clock = clock
        self._redis = redis
        self._lease_script = redis.register_script(_LEASE)
        self._release_script = redis.register_script(_RELEASE)
        self._advance_script = redis.register_script(_ADVANCE)
        self._fired_script = redis.register_script(_FIRED)
        self._holding: str | None = None  # '<id>|<token>' while this controller leads
        self._last: dict[str, datetime] = {}  # each schedule's last tick, read on election
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        #: Messages this scheduler published (for logs and tests).
        self.fired = 0

    @property
    def leading(self) -> bool:
        """Whether this controller holds the lease (as of its last renewal)."""
        return self._holding is not None

    async def run(self) -> None:
        """Keep (or wait for) the lease and fire due ticks while holding it, until cancelled;
        the lease is given up on the way out."""
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep_lease(), name="celeriac-lease")
                group.create_task(self._fire_loop(), name="celeriac-scheduler")
        finally:
            await self._release()

    # -- the lease -----------------------------------------------------------------------------

    async def _keep_lease(self) -> None:
        while True:
            await self._renew()
            stop_if_cancelled("lease")
            await asyncio.sleep(self.lease_ttl / 3)

    async def _renew(self) -> None:
        try:
            with translate_redis_errors("keep the lease", what="controller state"):
                token = int(
                    await self._lease_script(
                        keys=[self.keys.lease, self.keys.fence],
                        args=[self.controller_id, math.ceil(self.lease_ttl * 1000)],
                    )
                )
        except BackendError as exc:
            self.log.warning("lease_unknown", error=str(exc))
            self.metrics.failed("lease")
            token = 0  # unreachable Redis: fire nothing until it answers again
        else:
            self.metrics.passed("lease")
        holding = f"{self.controller_id}|{token}" if token else None
        self.metrics.leader.set(int(holding is not None))
        if holding == self._holding:
            return
        if holding is None:
            self.log.warning("leadership_lost", controller=self.controller_id)
        else:
            self.log.info("leadership_taken", controller=self.controller_id, token=token)
        self._holding = holding
        self._last.clear()  # read the state again under the new lease
        self._pending.clear()  # what is still firing is in that state
        self._wake.set()

    async def _release(self) -> None:
        holding, self._holding = self._holding, None
        if holding is None:
            return
        with contextlib.suppress(BackendError, OSError):
            with translate_redis_errors("give the lease up", what="controller state"):
                await self._release_script(keys=[self.keys.lease], args=[holding])
            self.log.info("leadership_released", controller=self.controller_id)

    # -- firing --------------------------------------------------------------------------------

    async def _fire_loop(self) -> None:
        while True:
            self._wake.clear()
            delay = self.lease_ttl / 3
            if self._holding is not None:
                try:
                    delay = await self._fire_due()
                except BackendError as exc:
                    self.log.error("schedule_state_unavailable", error=str(exc))
                    delay = 1.0
            stop_if_cancelled("scheduler")
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # lands as the wait ends, and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):
                    await self._wake.wait()

    async def _fire_due(self) -> float:
        """Fire what is due; seconds until the next tick (at most a second)."""
        holding = self._holding
        if holding is None:
            return self.lease_ttl / 3
        if not self._last:
            await self._load_state(holding)
        await self._publish_pending()
        now = self._clock()
        for schedule in self.schedules:
            if self._holding != holding:
                return 0.0
            await self._fire_schedule(schedule, holding, now)
        upcoming = [s.next_due(self._last[s.name]) for s in self.schedules if s.name in self._last]
        until = min(((due - self._clock()).total_seconds() for due in upcoming), default=1.0)
        return min(1.0, max(0.0, until))

    async def _load_state(self, holding: str) -> None:
        """Read every schedule's last tick (anchoring new ones at now) and what was left
        ``firing`` by a leader that died."""
        now = self._clock()
        for schedule in self.schedules:
            key = self.keys.schedule(schedule.name)
            with translate_redis_errors("read a schedule", what="controller state"):
                state: dict[bytes, bytes] = await self._redis.hgetall(key)  # type: ignore[assignment]
            fields = {k.decode(): v.decode() for k, v in state.items()}
            if not fields.get("last_due"):
                if (
                    await self._advance(
                        holding, schedule, last="", to=now, fire="", state="anchored"
                    )
                    != 1
                ):
                    continue  # moved meanwhile, or the lease is gone: read again next turn
                self._last[schedule.name] = now
                continue
            self._last[schedule.name] = datetime.fromisoformat(fields["last_due"])
            if fields.get("state") == "firing" and fields.get("fire"):
                self.log.warning("fire_resumed", schedule=schedule.name, fire=fields["fire"])
                self._pending.append(_Pending(schedule, fields["fire"], self._last[schedule.name]))

    async def _fire_schedule(self, schedule: Schedule, holding: str, now: datetime) -> None:
        last = self._last.get(schedule.name)
        if last is None:
            return
        fires = plan(schedule, last, now, grace=self.grace)
        if fires.skipped_to is not None:
            if schedule.catch_up == "skip":
                if not await self._move(
                    holding, schedule, last=last, to=fires.skipped_to, fire="", state="skipped"
                ):
                    return
                last = fires.skipped_to
            self.log.warning(
                "schedule_ticks_skipped", schedule=schedule.name, skipped=fires.skipped,
                policy=schedule.catch_up, through=_iso(fires.skipped_to),
            )  # fmt: skip
        for due in fires.fire:
            fire = fire_id(schedule, due)
            if not await self._move(
                holding, schedule, last=last, to=due, fire=fire, state="firing"
            ):
                return
            last = due
            await self._send(_Pending(schedule, fire, due))

    async def _move(
        self, holding: str, schedule: Schedule, *, last: datetime, to: datetime, fire: str,
        state: str,
    ) -> bool:  # fmt: skip
        moved = await self._advance(
            holding, schedule, last=_iso(last), to=to, fire=fire, state=state
        )
        if moved == 1:
            self._last[schedule.name] = to
            return True
        if moved == 0:  # another controller moved it: read the state again
            self.log.warning("schedule_moved_elsewhere", schedule=schedule.name)
            self._last.clear()
        else:
            self.log.warning("leadership_lost", controller=self.controller_id, at="fire")
            self._holding = None
            self._pending.clear()
        return False

    async def _advance(
        self, holding: str, schedule: Schedule, *, last: str, to: datetime, fire: str, state: str
    ) -> int:
        now = self._clock()
        record = json.dumps(
            {"fire": fire, "schedule": schedule.name, "task": schedule.task, "due": _iso(to),
             "task_id": task_id_for(fire) if fire else None, "by": self.controller_id,
             "at": _iso(now)}
        )  # fmt: skip
        with translate_redis_errors("move a schedule", what="controller state"):
            return int(
                await self._advance_script(
                    keys=[self.keys.lease, self.keys.schedule(schedule.name), self.keys.fires],
                    args=[
                        holding,
                        last,
                        _iso(to),
                        fire,
                        state,
                        self.controller_id,
                        _iso(now),
                        record,
                        FIRES_KEPT,
                    ],
                )
            )

    async def _send(self, pending: _Pending) -> None:
        """Publish a fire's message and mark it fired; on a broker error keep it pending."""
        schedule = pending.schedule
        options = dict(schedule.options)
        if options.get("queue") is None and self._route is not None:
            options["queue"] = self._route(schedule.task)
        started = time.monotonic()
        try:
            await self._publish(
                schedule.task,
                schedule.args,
                dict(schedule.kwargs),
                task_id=task_id_for(pending.fire),
                **options,
            )
        except (BrokerConnectionError, OSError) as exc:
            self.log.error("fire_not_published", schedule=schedule.name, fire=pending.fire,
                           error=str(exc))  # fmt: skip
            self._pending.append(pending)
            return
        self.fired += 1
        self.metrics.fires.labels(schedule.name).inc()
        self.log.info(
            "schedule_fired", schedule=schedule.name, task=schedule.task, fire=pending.fire,
            task_id=task_id_for(pending.fire), late=round((self._clock() - pending.due)
            .total_seconds(), 3), publish_ms=round((time.monotonic() - started) * 1000, 1),
        )  # fmt: skip
        with translate_redis_errors("mark a fire", what="controller state"):
            await self._fired_script(keys=[self.keys.schedule(schedule.name)], args=[pending.fire])

    async def _publish_pending(self) -> None:
        pending, self._pending = self._pending, []
        for item in pending:
            await self._send(item)

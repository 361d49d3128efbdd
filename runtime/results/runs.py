"""The run registry: every run the system can see, in Redis, for the controller to reconcile.

celeriac's producer records a run ``queued`` when it publishes it (the controller's scheduler
publishes through it too); a celeriac worker records it ``received``, ``started`` and how it
ended (``succeeded``, ``failed``, ``retried``, ``revoked``), with its queue, worker, attempt
(the message's retry count) and timestamps. The controller's reconciler marks a run queued for
too long ``skipped``; a worker that receives a skipped run drops it and notes that on the run.

Each write is one Lua step (``lua/record_run.lua``) that never moves a run back: a late
``queued`` cannot hide ``started``, a redelivered message cannot reopen an ended run of the
same attempt. Records expire after ``retention`` seconds; the indexes are trimmed to the same.
It is opt-in (``App(run_registry=URL)``, ``CELERIAC_RUN_REGISTRY``): two or three Redis writes
per run are not free, and a deployment without a controller does not need them.

Workers with a registry also beat their heart into it (:meth:`RunRegistry.beat`): the
controller returns the runs of a worker whose heart stopped.

Keys, under ``prefix`` (``celeriac:``): ``run:<task id>`` (a hash), ``runs`` (every run by last
update), ``runs:queued`` (by queue time), ``runs:started`` (by start time), ``worker:<name>``
(a worker's last heartbeat) and ``workers`` (workers by last heartbeat).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from protocol import TaskMessage
from runtime.errors import translate_redis_errors

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["DEFAULT_RETENTION", "ENDED", "Run", "RunRegistry"]

#: Seconds a run's record is kept: a week, long enough to look back on an incident.
DEFAULT_RETENTION = 7 * 86_400.0
#: The states a run ends in.
ENDED = frozenset({"succeeded", "failed", "retried", "revoked", "skipped", "lost"})
_RANK = {"queued": 0, "received": 1, "started": 2}
_RECORD = (files("runtime.results") / "lua" / "record_run.lua").read_text()


@dataclass(frozen=True, slots=True)
class Run:
    """One run as the registry has it: ``fields`` holds everything recorded (timestamps as
    Unix seconds, ``worker``, ``queue``, reconciliation metadata, ...)."""

    task_id: str
    state: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        """A recorded field, or ``None``."""
        return self.fields.get(name)

    def as_dict(self) -> dict[str, Any]:
        """Everything recorded, with the task id, for JSON."""
        return {"task_id": self.task_id, **self.fields}


class RunRegistry:
    """Records and reads runs in the Redis of ``client`` (see the module doc)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "celeriac:",
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        self._client = client
        self._record = client.register_script(_RECORD)
        self.prefix = prefix
        self.retention = retention

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RunRegistry:
        """A registry in the Redis at ``url``, connected on first use."""
        from runtime.redis_client import client_for  # noqa: PLC0415 - loads redis-py, only if used

        return cls(client_for(url), **options)

    @property
    def client(self) -> redis.asyncio.Redis:
        """The Redis client the registry uses."""
        return self._client

    def key(self, task_id: str) -> str:
        """The run's hash."""
        return f"{self.prefix}run:{task_id}"

    @property
    def index(self) -> str:
        """Every run, scored by its last update."""
        return f"{self.prefix}runs"

    @property
    def queued_index(self) -> str:
        """Runs queued and not yet received, scored by when they were queued."""
        return f"{self.prefix}runs:queued"

    @property
    def started_index(self) -> str:
        """Runs started and not yet ended, scored by when they started."""
        return f"{self.prefix}runs:started"

    async def _write(
        self, task_id: str, state: str, attempt: int, fields: Mapping[str, Any], *,
        require: str = "",
    ) -> tuple[bool, str]:  # fmt: skip
        now = time.time()
        pairs = [str(x) for item in fields.items() if item[1] is not None for x in item]
        keys = [self.key(task_id), self.index, self.queued_index, self.started_index]
        args: list[Any] = [state, _RANK.get(state, 3), attempt, repr(now), int(self.retention),
                           task_id, require, *pairs]  # fmt: skip
        with translate_redis_errors("record a run", what="run registry"):
            applied, previous = await self._record(keys=keys, args=args)
        return bool(applied), previous.decode() if isinstance(previous, bytes) else previous

    async def queued(self, message: TaskMessage, queue: str) -> None:
        """``message`` was published to ``queue``."""
        now = repr(time.time())
        fields = {"task": message.task, "queue": queue, "queued_at": now}
        await self._write(message.id, "queued", message.retries, fields)

    async def received(self, message: TaskMessage, queue: str, worker: str) -> str:
        """``worker`` took ``message`` from ``queue``; the run's state before (``skipped``: drop
        it)."""
        fields = {"task": message.task, "queue": queue, "worker": worker,
                  "received_at": repr(time.time())}  # fmt: skip
        _, previous = await self._write(message.id, "received", message.retries, fields)
        return previous

    async def started(
        self, message: TaskMessage, worker: str, *, acks_late: bool, ref: str | None,
        hard_limit: float | None = None,
    ) -> None:  # fmt: skip
        """``worker`` started running ``message``'s task, to end by ``hard_limit`` seconds;
        ``ref`` names the delivery for the transport
        (:meth:`runtime.transports.base.Recovering.restore_now`), if it can give it back when
        the worker dies."""
        fields = {"worker": worker, "started_at": repr(time.time()),
                  "acks_late": int(acks_late), "ref": ref, "hard_limit": hard_limit}  # fmt: skip
        await self._write(message.id, "started", message.retries, fields)

    async def ended(self, message: TaskMessage, state: str, worker: str, **fields: Any) -> None:
        """The run ended in ``state`` (one of :data:`ENDED`)."""
        if state not in ENDED:
            raise ValueError(f"not a state a run ends in: {state!r}")
        values = {"worker": worker, "ended_at": repr(time.time()), **fields}
        await self._write(message.id, state, message.retries, values)

    async def move(self, task_id: str, was: str, to: str, **metadata: Any) -> bool:
        """Move a run in state ``was`` to ``to`` with ``metadata`` (the controller's moves:
        ``queued`` to ``skipped``, ``started`` to ``queued`` or ``lost``); ``False`` if it is no
        longer in ``was`` (someone got there first)."""
        current = await self.get(task_id)
        attempt = int(current.get("attempt") or 0) if current is not None else 0
        applied, _ = await self._write(
            task_id, to, attempt, {"last_state": was, **metadata}, require=was
        )
        return applied

    async def started_on(self, worker: str | None = None) -> list[Run]:
        """The runs recorded as started (on ``worker``, if given) and not ended, oldest first."""
        with translate_redis_errors("read started runs", what="run registry"):
            ids: Any = await self._client.zrange(self.started_index, 0, -1)
        runs = await self._many(i.decode() for i in ids)
        return [r for r in runs if worker is None or r.get("worker") == worker]

    # -- heartbeats --------------------------------------------------------------------------

    def worker_key(self, name: str) -> str:
        """A worker's last heartbeat."""
        return f"{self.prefix}worker:{name}"

    @property
    def workers_index(self) -> str:
        """Workers, scored by their last heartbeat."""
        return f"{self.prefix}workers"

    async def beat(self, name: str, interval: float, **fields: Any) -> None:
        """Worker ``name`` is alive and beats every ``interval`` seconds; ``fields`` describe it."""
        now = time.time()
        values: dict[Any, Any] = {k: str(v) for k, v in fields.items()}
        values |= {"beat_at": repr(now), "interval": repr(interval)}
        with translate_redis_errors("beat", what="run registry"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self.worker_key(name), mapping=values)
                pipe.expire(self.worker_key(name), max(60, int(interval * 10)))
                pipe.zadd(self.workers_index, {name: now})
                await pipe.execute()

    async def workers(self) -> list[Run]:
        """Every worker that beat recently enough to be remembered, with its last heartbeat's
        fields (``beat_at``, ``interval``, ...); ``task_id`` holds the worker's name."""
        with translate_redis_errors("read workers", what="run registry"):
            names: Any = await self._client.zrange(self.workers_index, 0, -1)
            async with self._client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(self.worker_key(name.decode()))
                rows = await pipe.execute()
        found = []
        for name, raw in zip(names, rows, strict=True):
            fields = {k.decode(): v.decode() for k, v in raw.items()} if raw else {}
            found.append(Run(name.decode(), "alive", fields))
        return found

    async def forget_worker(self, name: str) -> None:
        """Drop a dead worker's heartbeat (its runs have been seen to)."""
        with translate_redis_errors("forget a worker", what="run registry"):
            await self._client.zrem(self.workers_index, name)
            await self._client.delete(self.worker_key(name))

    async def note(self, task_id: str, **fields: Any) -> None:
        """Add ``fields`` to a run's record without changing its state."""
        pairs: dict[Any, Any] = {k: str(v) for k, v in fields.items()}
        with translate_redis_errors("note on a run", what="run registry"):
            await self._client.hset(self.key(task_id), mapping=pairs)

    async def get(self, task_id: str) -> Run | None:
        """The run's record, or ``None``."""
        with translate_redis_errors("read a run", what="run registry"):
            raw: Any = await self._client.hgetall(self.key(task_id))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return Run(task_id, fields.get("state", ""), fields)

    async def queued_before(self, when: float) -> list[str]:
        """Task ids of runs still queued that were queued before ``when`` (Unix seconds)."""
        with translate_redis_errors("read queued runs", what="run registry"):
            ids: Any = await self._client.zrangebyscore(self.queued_index, "-inf", when)
        return [i.decode() for i in ids]

    async def oldest_queued(self, limit: int = 200) -> list[Run]:
        """The ``limit`` runs queued longest, oldest first."""
        with translate_redis_errors("read queued runs", what="run registry"):
            ids: Any = await self._client.zrange(self.queued_index, 0, limit - 1)
        return await self._many(i.decode() for i in ids)

    async def runs(
        self, *, state: str | None = None, queue: str | None = None, limit: int = 100
    ) -> list[Run]:
        """The newest runs first, at most ``limit``, in ``state`` and on ``queue`` if given."""
        found: list[Run] = []
        start, batch = 0, max(limit, 100)
        while len(found) < limit:
            with translate_redis_errors("list runs", what="run registry"):
                ids: Any = await self._client.zrevrange(self.index, start, start + batch - 1)
            if not ids:
                break
            for run in await self._many(i.decode() for i in ids):
                if (state is None or run.state == state) and (
                    queue is None or run.get("queue") == queue
                ):
                    found.append(run)
            start += batch
        return found[:limit]

    async def _many(self, task_ids: Iterable[str]) -> list[Run]:
        ids = list(task_ids)
        with translate_redis_errors("read runs", what="run registry"):
            async with self._client.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hgetall(self.key(task_id))
                rows = await pipe.execute()
        runs = []
        for task_id, raw in zip(ids, rows, strict=True):
            if raw:
                fields = {k.decode(): v.decode() for k, v in raw.items()}
                runs.append(Run(task_id, fields.get("state", ""), fields))
        return runs

    async def trim(self) -> None:
        """Drop index entries older than the retention (their records have expired)."""
        oldest = time.time() - self.retention
        with translate_redis_errors("trim the run indexes", what="run registry"):
            for index in (self.index, self.queued_index, self.started_index):
                await self._client.zremrangebyscore(index, "-inf", oldest)

    async def aclose(self) -> None:
        """Close the connection."""
        await self._client.aclose()

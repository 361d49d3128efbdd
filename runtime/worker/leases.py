"""Long ``acks_late`` runs on RabbitMQ: the message outlives ``consumer_timeout`` as a lease.

RabbitMQ closes the channel of a consumer that leaves a delivery unacknowledged longer than
its ``consumer_timeout`` (30 minutes by default) and requeues the delivery: an ``acks_late``
task running longer is run a second time by whoever receives it, and every other delivery of
that channel is requeued with it (Celery's users meet this as celery#6760). AMQP has no way to
extend a delivery; a worker can only settle it in time. So, before the timeout, the worker
hands the message over to a lease:

1. every ``timeout / 2`` seconds of the run, it writes a new lease id for the task in Redis
   (``SET``, expiring after three periods) and publishes a copy of the message, carrying that
   id in its ``x-celeriac-lease`` header, through RabbitMQ's delayed delivery, to arrive one
   period plus a margin later; after the first copy is confirmed it acknowledges the delivery;
2. when the run ends, it deletes the lease if it is still its own (compare and delete, in
   Lua); a run cancelled by a stop, or cut short by an error of the worker's, keeps it;
3. a worker that receives a copy runs it only if the copy's lease is the current one;
   otherwise the copy was superseded by a later one, or the run ended, and it is
   acknowledged and dropped (``lease_superseded``). An admitted copy is an ordinary
   ``acks_late`` delivery (leased again if it runs long, requeued by the broker if its worker
   dies first, and admitted again then, since admitting leaves the lease in place).

So the run is never taken back from a live worker, and the message is never lost: if the
worker dies or stops before the run ends, the last copy arrives with the current lease and
runs again, as the redelivered ``acks_late`` message would have (at least once), though only
when the copy is due (up to a period and a margin later). A run that ends in a requeue
(a hard limit without ``acks_on_timeout``) is published back to its queue, since the
delivery it would have rejected is gone.

It needs Redis (the result backend's server) and the transport's delayed delivery
(:class:`~runtime.transports.base.SendsLater`); without either a worker logs
``consumer_timeout_unguarded`` at start and runs as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from protocol.wire import WireMessage
from runtime.redis_client import stop_if_cancelled
from runtime.transports.base import Delivery, SendsLater, Transport

if TYPE_CHECKING:
    import redis.asyncio

    from runtime.results.backend import RedisResultBackend
    from runtime.worker.slots import Handling

__all__ = ["DEFAULT_CONSUMER_TIMEOUT", "LEASE_HEADER", "Leases", "without_lease"]

#: RabbitMQ's default ``consumer_timeout``, in seconds.
DEFAULT_CONSUMER_TIMEOUT = 1800.0
#: The header naming the lease a copy of a handed-over message carries.
LEASE_HEADER = "x-celeriac-lease"

# Deletes the lease only if it is still the one given: a later holder keeps its own.
_TAKE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def without_lease(message: WireMessage) -> WireMessage:
    """``message`` as it was before it was handed over (no lease header)."""
    headers = {k: v for k, v in message.headers.items() if k != LEASE_HEADER}
    return replace(message, headers=headers, headers_checked_with=None)


class Leases:
    """Hands long ``acks_late`` messages over to leases in Redis before ``timeout``."""

    def __init__(
        self,
        transport: Transport,
        client: redis.asyncio.Redis,
        *,
        timeout: float,
        prefix: str = "celeriac:lease:",
        log: Any,
    ) -> None:
        if not isinstance(transport, SendsLater):
            raise TypeError(f"{type(transport).__name__} cannot send a message to arrive later")
        self.transport = transport
        self._later: SendsLater = transport
        self.client = client
        self.period = timeout / 2
        # A copy arrives after the next one is written, whatever the delayed delivery's
        # whole seconds do to its delay.
        self.delay = math.ceil(self.period + max(2.0, self.period / 5))
        self.prefix = prefix
        self.log = log
        self._take = client.register_script(_TAKE)

    @classmethod
    def for_worker(
        cls,
        transport: Transport,
        backend: RedisResultBackend | None,
        timeout: float | None,
        log: Any,
    ) -> Leases | None:
        """Leases for a worker on ``transport``, or ``None`` where the broker has no timeout
        to keep clear of, or there is no Redis to keep them in (logged, then)."""
        if not timeout or not isinstance(transport, SendsLater):
            return None
        if backend is None:
            log.warning(
                "consumer_timeout_unguarded",
                detail="without a Redis result backend, an acks_late task running longer "
                "than the broker's consumer_timeout is taken back and run again",
            )
            return None
        return cls(transport, backend.client, timeout=timeout, log=log)

    def _key(self, task_id: str) -> str:
        return f"{self.prefix}{task_id}"

    async def admit(self, task_id: str, delivery: Delivery) -> bool:
        """Whether ``delivery`` may run: a message without a lease may; a lease's copy only if
        its lease is current. The lease stays: should this run die before it renews it, the
        copy comes back (the broker requeues it) and is admitted again."""
        lease = delivery.message.headers.get(LEASE_HEADER)
        if lease is None:
            return True
        current = await self.client.get(self._key(task_id))
        if isinstance(current, bytes):
            current = current.decode()
        return current is not None and current == str(lease)

    @contextlib.asynccontextmanager
    async def hold(self, task_id: str, handling: Handling) -> AsyncIterator[None]:
        """Keep the run's message leased while the body runs. A run that ends releases its
        lease (the copies still on their way are dropped when they arrive); one cancelled or
        failing in the worker keeps it, so its last copy brings the message back."""
        admitted = handling.delivery.message.headers.get(LEASE_HEADER)
        current: list[str] = [str(admitted)] if admitted is not None else []
        keeper: list[asyncio.Task[None]] = []
        # A timer, not a task, until the first renewal is due: most runs end before it.
        timer = asyncio.get_running_loop().call_later(
            self.period,
            lambda: keeper.append(
                asyncio.create_task(
                    self._keep(task_id, handling, current), name=f"celeriac-lease[{task_id}]"
                )
            ),
        )
        try:
            yield
        finally:
            await self._stop(timer, keeper)
        if current:
            await self._take(keys=[self._key(task_id)], args=[current[-1]])

    @staticmethod
    async def _stop(timer: asyncio.TimerHandle, keeper: list[asyncio.Task[None]]) -> None:
        timer.cancel()
        for task in keeper:
            task.cancel()
            await asyncio.wait({task})

    async def _keep(self, task_id: str, handling: Handling, current: list[str]) -> None:
        wait = 0.0  # started when the first renewal is due
        while True:
            await asyncio.sleep(wait)
            try:
                await self._renew(task_id, handling, current)
            except Exception as exc:  # Redis or the broker away: try again soon, in time
                self.log.warning("lease_renewal_failed", error=repr(exc))
                wait = min(self.period / 4, 10.0)
            else:
                wait = self.period
            stop_if_cancelled("lease renewal")

    async def _renew(self, task_id: str, handling: Handling, current: list[str]) -> None:
        lease = uuid.uuid4().hex
        await self.client.set(self._key(task_id), lease, ex=math.ceil(self.delay * 3))
        current.append(lease)
        delivery = handling.delivery
        headers = {**delivery.message.headers, LEASE_HEADER: lease}
        copy = replace(delivery.message, headers=headers, headers_checked_with=None)
        await self._later.send_later(copy, delivery.queue, self.delay)
        if not handling.handed_off:
            handling.settled = handling.handed_off = True
            await self.transport.ack(delivery)
            self.log.info("lease_taken", lease=lease, copy_in=self.delay)

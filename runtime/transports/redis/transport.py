"""The Redis transport: kombu's queues and ack emulation, without the gaps kombu leaves.

Everything a Celery client or worker on the same Redis reads or writes is laid out as kombu
lays it out (:mod:`protocol.kombu_redis`): queue lists per priority step (LPUSH to publish,
RPOP to consume), the ``_kombu.binding.*`` sets, and for every delivery an ``unacked`` hash
entry ``[payload, exchange, routing_key]`` indexed by time in ``unacked_index``. What differs
is how celeriac uses them:

* **No pop without a record.** kombu pops a message with BRPOP and records it as unacked in a
  second step; a worker killed in between loses it. Here one Lua script pops and records
  (``lua/redis_claim.lua``), and hands out at most as many messages as there are free slots.
  A payload over the size limit (:func:`~protocol.envelopes.max_envelope_bytes`), or whose
  body is, or that is not a kombu envelope goes to ``<queue>.dead`` in that same script: the
  worker never reads it.
* **Claims are renewed.** Whoever sweeps ``unacked_index`` (a Celery worker too) puts back
  deliveries older than ``visibility_timeout``; kombu's own long tasks are run twice that way.
  While a delivery is unsettled this transport moves its index score forward every
  ``min(visibility_timeout / 4, 10)`` seconds, so only a dead worker's deliveries go stale.
* **Settling checks ownership.** An ack, reject or dead-letter first deletes the ``unacked``
  entry and acts only if it was still there (``lua/redis_settle.lua``), so a message restored
  by a sweeper is never pushed a second time. A settlement that fails because Redis is away is
  kept and retried; meanwhile the claim is still renewed, so nothing runs twice.
* **Stale deliveries come back.** Every ``min(visibility_timeout / 2, 60)`` seconds, under
  kombu's ``unacked_mutex``, deliveries whose claim lapsed (their worker died) are pushed back
  to the consuming end of their queue with kombu's redelivered flags (:meth:`restore_visible`).

Waiting: Redis cannot block on "some list is non-empty" without popping, so an idle consumer
waits with ``BLMOVE list list RIGHT RIGHT`` (which leaves the list as it is) on one of its
queues, in turn, for at most 0.1 s, then tries all of them again. A message on the watched
queue is seen at once; on another, within 0.1 s.

Transport options (Celery's ``broker_transport_options``, or the URL's query string):
``visibility_timeout`` (seconds, default 3600 as kombu), ``global_keyprefix``,
``priority_steps``, ``sep``, ``unacked_key``, ``unacked_index_key``, ``unacked_mutex_key``,
``unacked_mutex_expire``, ``fanout_prefix``. Other query parameters go to redis-py
(``ssl_cert_reqs``, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio
import redis.exceptions

from protocol import CeleriacError, WireMessage, decode_envelope, encode_envelope
from protocol.envelopes import max_envelope_bytes
from protocol.kombu_redis import (
    dead_letter_payload,
    parse_binding_member,
)
from protocol.limits import DEFAULT_LIMITS
from runtime.errors import BrokerConnectionError, translate_redis_errors
from runtime.redis_client import client_for
from runtime.running_loop import HeldLoop
from runtime.transports.base import (
    BrokerHealth,
    Capacity,
    Delivery,
    QueueSpec,
    detached_context,
    transport_options,
    wait_free_unless_closed,
)

from .claims import Claim, Settlement, payload_priority_of, with_redelivered_flags
from .delayed import RedisDelayStore
from .fanout import RedisFanout
from .monitor import RedisMirroring
from .options import OPTION_NAMES, RedisOptions
from .restore import Restorer

__all__ = ["RedisTransport"]

log = logging.getLogger(__name__)

_CLAIM = (files("runtime.transports.redis") / "lua" / "redis_claim.lua").read_text()
_SETTLE = (files("runtime.transports.redis") / "lua" / "redis_settle.lua").read_text()
_ACK = (files("runtime.transports.redis") / "lua" / "redis_ack.lua").read_text()
#: The most acks one script call settles: a long script would hold up every other client.
_ACKS_PER_CALL = 500

#: Most messages one claim pops: bounds how long the script keeps Redis busy.
_CLAIM_MAX = 100
#: A bigger payload, or one carrying a bigger body, is dead-lettered by the claim script,
#: never read by the worker.
_LARGEST, _LARGEST_BODY = max_envelope_bytes(), DEFAULT_LIMITS.max_body_bytes
#: Longest an idle consumer blocks on one queue before trying them all again.
_IDLE_WAIT = 0.1
#: Stale deliveries examined per page of a sweep.
_RETRY_MIN, _RETRY_MAX = 0.5, 10.0


class RedisTransport(RedisFanout, RedisMirroring):
    """A :class:`~runtime.transports.base.Transport` for Redis; see the module docstring. Remote
    control's fanout comes from :class:`~runtime.transports.redis.fanout.RedisFanout`, monitor
    copies from :class:`~runtime.transports.redis.monitor.RedisMirroring`."""

    def __init__(
        self,
        url: str,
        options: Mapping[str, Any] | None = None,
        *,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        split = urlsplit(url)
        query = parse_qsl(split.query)
        self.options = RedisOptions.from_mapping(transport_options(url, options))
        self.layout = self.options.layout
        self._url = urlunsplit(split._replace(
            query=urlencode([(k, v) for k, v in query if k not in OPTION_NAMES])
        ))  # fmt: skip
        self._where = f"{split.hostname or 'localhost'}:{split.port or 6379}"
        self._given_client = client
        self._client: redis.asyncio.Redis | None = client
        self._unsettled: dict[bytes, Claim] = {}
        self._pending: list[Settlement] = []
        self._acks: list[tuple[Claim, asyncio.Future[None]]] = []  # not yet sent to Redis
        self._acking: asyncio.Task[None] | None = None
        self._loop = HeldLoop()  # the loop consuming runs on, while it does
        self._consumer_id = uuid.uuid4().hex
        self._consuming: list[str] = []
        # Claimed and not yet handed out, oldest first: (queue, [index, payload, tag]).
        self._batch: list[tuple[str, list[Any]]] = []
        self._claiming: asyncio.Future[int] | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._mover: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        #: Whether Redis answers now, and how often it came back after an outage.
        self.health = BrokerHealth()

    # -- connection ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and PING, failing fast with :class:`BrokerConnectionError` naming host:port.

        Afterwards redis-py reconnects by itself on the next command; the consume loop and
        the maintenance task retry with backoff while Redis is away.
        """
        if self._client is None:
            self._client = client_for(
                self._url, socket_connect_timeout=10, health_check_interval=30
            )
        with self._translate(f"connect to {self._where}"):
            await self._client.ping()
        self.health.up()
        self._claim = self._client.register_script(_CLAIM)
        self._settle_script = self._client.register_script(_SETTLE)
        self._ack_script = self._client.register_script(_ACK)
        self._delay_store = RedisDelayStore(self._client, self.layout)
        self._restorer = Restorer(self._client, self.options, self._lookup)

    def _require(self) -> redis.asyncio.Redis:
        if self._client is None:
            raise RuntimeError("RedisTransport.connect() has not been called")
        return self._client

    @staticmethod
    def _translate(action: str) -> contextlib.AbstractContextManager[None]:
        return translate_redis_errors(action, error=BrokerConnectionError, what="broker")

    # -- declaring and publishing ------------------------------------------------------------

    async def declare(self, queues: Sequence[QueueSpec]) -> None:
        """Bind each queue to the exchange of its name as kombu does (``SADD`` the binding).

        The lists themselves exist once something is pushed; ``max_priority`` and ``quorum``
        mean nothing on Redis (priorities are kombu's steps, always on).
        """
        client = self._require()
        with self._translate(f"declare {', '.join(spec.name for spec in queues)}"):
            async with client.pipeline(transaction=False) as pipe:
                for spec in queues:
                    member = self.layout.binding_member(spec.routing_key, spec.name)
                    pipe.sadd(self.layout.binding_key(spec.exchange), member)
                    pipe.sadd(self.layout.permanent_binding_key(spec.exchange), member)
                await pipe.execute()

    async def publish(self, message: WireMessage, *, routing_key: str, exchange: str = "") -> None:
        """LPUSH kombu's envelope onto each bound queue's list for the message's priority.

        ``exchange=""`` sends to queue ``routing_key``; a named exchange is looked up in its
        binding set as a direct exchange. A message no queue would get raises
        :class:`BrokerConnectionError` (kombu drops it with a warning).
        """
        client = self._require()
        payload = encode_envelope(
            message, exchange=exchange, routing_key=routing_key, delivery_tag=str(uuid.uuid4())
        )
        priority = message.properties.get("priority") or 0
        with self._translate(f"publish to {exchange or routing_key!r}"):
            queues = await self._lookup(exchange, routing_key)
            if not queues:
                raise BrokerConnectionError(
                    f"broker: no queue is bound to exchange {exchange!r} with routing key "
                    f"{routing_key!r}; the message was not sent"
                )
            for queue in queues:
                await client.lpush(self.layout.queue_key(queue, int(priority)), payload)

    async def _lookup(self, exchange: str, routing_key: str) -> list[str]:
        """The queues a message to ``exchange`` with ``routing_key`` goes to (direct routing)."""
        if not exchange:
            return [routing_key]
        members = await self._require().smembers(self.layout.binding_key(exchange))
        queues = []
        for member in members:
            with contextlib.suppress(CeleriacError):
                key, _pattern, queue = parse_binding_member(member, self.layout.sep)
                if key == routing_key:
                    queues.append(queue)
        return sorted(queues)

    # -- consuming ---------------------------------------------------------------------------

    async def consume(self, queues: Sequence[str], capacity: Capacity) -> AsyncIterator[Delivery]:
        """Yield deliveries from ``queues``, claimed only into free slots, round robin."""
        if self._consuming:
            raise RuntimeError("this transport is already consuming")
        names = list(queues)
        self._consuming = names
        self._loop.hold()
        keys = [self.layout.unacked, self.layout.unacked_index]
        keys += [key for name in names for key in self.layout.step_keys(name)]
        keys += [self.layout.dead_key(name) for name in names]
        first, watch, retry = 0, 0, _RETRY_MIN
        try:
            with self._translate(f"consume from {', '.join(names)}"):
                await self._register(names)
            if self._maintainer is None:  # a later iteration (new queues) keeps them
                self._maintainer = asyncio.create_task(self._maintain(), name="celeriac-redis")
                self._mover = asyncio.create_task(
                    self._delay_store.move_due(self._closed), name="celeriac-redis-due"
                )
            while not self._closing:
                if not await wait_free_unless_closed(capacity, self._closed):
                    return
                try:
                    first = await self._claim_into(keys, names, first, capacity.free)
                    if not self.health.connected:
                        self.health.up()
                    if not self._batch:
                        await self._idle(self.layout.key(names[watch]))
                        watch = (watch + 1) % len(names)
                        continue
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    self.health.down()
                    log.warning("Redis consume will retry in %.1f s: %s", retry, exc)
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, _RETRY_MAX)
                    continue
                except redis.exceptions.RedisError as exc:  # e.g. WRONGTYPE: not a list
                    raise BrokerConnectionError(
                        f"broker: cannot consume from {', '.join(names)}: {exc}"
                    ) from exc
                retry = _RETRY_MIN
                while self._batch and not self._closing:
                    delivery = await self._delivery(*self._batch.pop(0))
                    if delivery is not None:
                        yield delivery
        finally:
            self._consuming = []
            self._loop.release()
            if self._client is not None:
                await self._give_back_unhanded()
                with contextlib.suppress(redis.exceptions.RedisError):
                    await self._unregister(names)

    async def _claim_into(self, keys: list[str], names: list[str], first: int, free: int) -> int:
        """Claim up to ``free`` messages into ``self._batch``; the next queue to try first.

        The script runs in a task of its own that always lands its messages in the batch, even
        if the consumer is cancelled meanwhile: whoever ends the consumption (its ``finally``,
        or :meth:`aclose`) gives the batch back.
        """
        self._claiming = asyncio.ensure_future(self._claim_batch(keys, names, first, free))
        return await asyncio.shield(self._claiming)

    async def _claim_batch(self, keys: list[str], names: list[str], first: int, free: int) -> int:
        args: list[float | str] = [time.time(), min(free, _CLAIM_MAX), len(names)]
        args += [len(self.layout.priority_steps), first, _LARGEST, _LARGEST_BODY, *names]
        first_next, items = await self._claim(keys=keys, args=args)
        self._batch.extend((names[int(item[0])], item) for item in items)
        return int(first_next)

    async def _idle(self, key: str) -> None:
        """Wait up to ``_IDLE_WAIT`` for ``key`` to be non-empty, leaving it as it is."""
        waiting = asyncio.ensure_future(
            # redis-py types the timeout as int; Redis takes seconds with decimals.
            self._require().blmove(key, key, _IDLE_WAIT, src="RIGHT", dest="RIGHT")  # type: ignore[arg-type]
        )
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:  # let the short command finish: the connection stays sane
            with contextlib.suppress(Exception):
                await waiting
            raise

    async def _delivery(self, queue: str, item: list[Any]) -> Delivery | None:
        """The delivery for one claimed item; ``None`` if unreadable (and dead-lettered)."""
        if len(item) < 3:  # the script moved it to .dead; item[1] says why
            log.error("dead-lettered a message from %r (moved to %r.dead by the claim): %s",
                      queue, queue, item[1].decode("utf-8", "replace"))  # fmt: skip
            return None
        payload = bytes(item[1])
        claim = Claim(tag=bytes(item[2]), queue=queue, payload=payload)
        self._unsettled[claim.tag] = claim
        try:
            envelope = decode_envelope(payload)
        except CeleriacError as exc:
            log.error("dead-lettering an unreadable message from %r: %s", queue, exc)
            dead = dead_letter_payload(payload, f"unreadable: {exc}", queue)
            await self._settle(claim, "LPUSH", [self.layout.dead_key(queue)], dead)
            return None
        return Delivery(
            message=envelope.message,
            queue=queue,
            exchange=envelope.exchange,
            routing_key=envelope.routing_key,
            redelivered=envelope.redelivered,
            handle=claim,
        )

    async def _give_back_unhanded(self) -> None:
        """Put claimed but never handed-out messages back at the consuming end, in order
        (after the claim in flight, if any, has landed its messages)."""
        if (claiming := self._claiming) is not None and not claiming.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await claiming
        while self._batch:
            queue, item = self._batch.pop()  # the newest first: the oldest ends up at the head
            if len(item) < 3:
                continue  # already moved to .dead by the script
            claim = Claim(bytes(item[2]), queue, bytes(item[1]))
            priority = payload_priority_of(claim.payload)
            await self._settle(
                claim, "RPUSH", [self.layout.queue_key(claim.queue, priority)], claim.payload
            )

    # -- settling ----------------------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        """Forget the message (delete its unacked record).

        Acks asked for in one turn of the event loop go to Redis together, in one script
        call (:meth:`_send_acks`); this returns once Redis has ours, or once it is kept to be
        retried because Redis is away.
        """
        claim: Claim = delivery.handle
        if claim.settled:
            return
        claim.settled = True
        loop = self._loop.get()
        done = loop.create_future()
        self._acks.append((claim, done))
        if self._acking is None:
            self._acking = loop.create_task(
                self._send_acks(), name="celeriac-redis-ack", context=detached_context()
            )
        # Not shielded: cancelling the caller cancels only this future. The ack stays in
        # the batch, which is sent whatever becomes of its futures (a shield cost 1.7 us).
        await done

    async def _send_acks(self) -> None:
        """Send waiting acks, a batch per script call, until none is left."""
        try:
            while self._acks:
                batch, self._acks = self._acks[:_ACKS_PER_CALL], self._acks[_ACKS_PER_CALL:]
                claims = [claim for claim, _ in batch]
                try:
                    await self._ack_claims(claims)
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    log.warning("Redis ack of %d deliveries will be retried: %s", len(claims), exc)
                    self._pending.extend(Settlement(claim, [], "LPUSH", b"") for claim in claims)
                except BaseException as exc:
                    for claim, done in batch:
                        claim.settled = False
                        if not done.done():
                            done.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._acking = None

    async def _ack_claims(self, claims: list[Claim]) -> None:
        lapsed = await self._ack_script(
            keys=[self.layout.unacked, self.layout.unacked_index],
            args=[claim.tag for claim in claims],
        )
        for claim in claims:
            self._unsettled.pop(claim.tag, None)
        for tag in lapsed:
            log.warning(
                "delivery %s was restored by another consumer before it was acked "
                "(its claim lapsed: Redis unreachable for longer than visibility_timeout?)",
                tag,
            )

    async def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Drop the message, or requeue it behind the waiting ones (LPUSH, as kombu does)."""
        claim: Claim = delivery.handle
        if not requeue:
            await self._settle(claim, "LPUSH", [], b"")
            return
        payload, priority = with_redelivered_flags(claim.payload)
        await self._settle(claim, "LPUSH", [self.layout.queue_key(claim.queue, priority)], payload)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to the ``<queue>.dead`` list with ``reason`` in its headers."""
        claim: Claim = delivery.handle
        payload = dead_letter_payload(claim.payload, reason, claim.queue)
        await self._settle(claim, "LPUSH", [self.layout.dead_key(claim.queue)], payload)

    async def _settle(self, claim: Claim, command: str, keys: list[str], payload: bytes) -> None:
        """Settle ``claim`` now, or (Redis away) keep it to retry and renew it meanwhile."""
        if claim.settled:
            return  # settling twice is harmless, as with the other transports
        claim.settled = True
        settlement = Settlement(claim, keys, command, payload)
        try:
            await self._apply(settlement)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("Redis settle of %s will be retried: %s", claim.tag, exc)
            self._pending.append(settlement)

    async def _apply(self, settlement: Settlement) -> None:
        claim = settlement.claim
        keys = [self.layout.unacked, self.layout.unacked_index, *settlement.keys]
        owned = await self._settle_script(
            keys=keys, args=[claim.tag, settlement.command, settlement.payload]
        )
        self._unsettled.pop(claim.tag, None)
        if not owned:
            log.warning(
                "delivery %s from %r was restored by another consumer before it was settled "
                "(its claim lapsed: Redis unreachable for longer than visibility_timeout?)",
                claim.tag, claim.queue,
            )  # fmt: skip

    # -- delaying ----------------------------------------------------------------------------

    async def defer(self, delivery: Delivery, eta: datetime) -> None:
        """Move the message into celeriac's delay store in Redis (:mod:`.delayed`), in one step
        with its unacked record: exactly once, even if the worker dies."""
        claim: Claim = delivery.handle
        if claim.settled:
            return
        claim.settled = True
        target = self.layout.queue_key(claim.queue, payload_priority_of(claim.payload))
        try:
            with self._translate(f"defer a message from {claim.queue!r}"):
                await self._delay_store.defer(claim.tag, eta, target, claim.payload)
        except BaseException:
            claim.settled = False
            raise
        self._unsettled.pop(claim.tag, None)

    # -- inspection --------------------------------------------------------------------------

    async def queue_depth(self, queue: str) -> tuple[int, int | None]:
        """``(messages waiting in every priority list, live celeriac consumers)``."""
        client = self._require()
        with self._translate(f"inspect queue {queue!r}"):
            async with client.pipeline(transaction=False) as pipe:
                for key in self.layout.step_keys(queue):
                    pipe.llen(key)
                pipe.zcount(self.layout.consumers_key(queue), time.time(), "+inf")
                *lengths, consumers = await pipe.execute()
        return sum(lengths), int(consumers)

    async def _register(self, names: list[str]) -> None:
        """Count this consumer in for the next three renewal periods (the set expires with
        its last live consumer)."""
        ttl = 3 * self.options.renew_every
        now = time.time()
        async with self._require().pipeline(transaction=False) as pipe:
            for name in names:
                key = self.layout.consumers_key(name)
                pipe.zadd(key, {self._consumer_id: now + ttl})
                pipe.zremrangebyscore(key, "-inf", now)
                pipe.expire(key, math.ceil(ttl))
            await pipe.execute()

    async def _unregister(self, names: list[str]) -> None:
        async with self._require().pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrem(self.layout.consumers_key(name), self._consumer_id)
            await pipe.execute()

    # -- upkeep ------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Renew claims and registration, retry settlements, sweep for stale deliveries.

        The loop also checks ``_closing``: redis-py 8.1 can swallow a cancellation that lands
        while a command waits, so cancelling this task alone does not always end it.
        """
        next_sweep = 0.0
        while not self._closing:
            try:
                await self._renew()
                while self._pending:
                    await self._apply(self._pending[0])
                    self._pending.pop(0)
                if time.monotonic() >= next_sweep:
                    restored = await self.restore_visible()
                    if restored:
                        log.warning("restored %d stale deliveries (their worker died?)", restored)
                    next_sweep = time.monotonic() + self.options.sweep_every
                self.health.up()  # also while every slot is busy and nothing is consumed
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                self.health.down()
                log.warning("Redis upkeep will retry: %s", exc)
            except redis.exceptions.RedisError as exc:
                log.warning("Redis upkeep will retry: %s", exc)
            with contextlib.suppress(TimeoutError):  # the period, or until closed
                await asyncio.wait_for(self._closed.wait(), self.options.renew_every)

    async def _renew(self) -> None:
        """Move the index score of every claim we hold to now (``ZADD XX``: never re-adds)."""
        now = time.time()
        tags = dict.fromkeys(self._unsettled, now)
        tags.update({pending.claim.tag: now for pending in self._pending})
        if tags:
            await self._require().zadd(self.layout.unacked_index, tags, xx=True)
        if self._consuming:
            await self._register(self._consuming)

    async def restore_visible(self) -> int:
        """Put back every delivery whose claim is older than ``visibility_timeout``
        (:meth:`Restorer.restore_visible`); how many."""
        return await self._restorer.restore_visible()

    def delivery_ref(self, delivery: Delivery) -> str | None:
        """The delivery tag: the controller restores a dead worker's deliveries by it."""
        claim: Claim = delivery.handle
        return claim.tag.decode("latin-1")  # any bytes, and back by encode("latin-1")

    async def restore_now(self, ref: str) -> bool:
        """Put back the delivery tagged ``ref`` whatever the age of its claim (its worker is
        dead)."""
        with self._translate("restore a delivery"):
            return await self._restorer.restore_now(ref.encode("latin-1"))

    # -- closing -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop; unsettled deliveries go back to the consuming end of their queues, marked
        redelivered (kombu's restore at shutdown); then close the connection."""
        self._closing = True
        self._closed.set()
        for task in (self._maintainer, self._mover):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._maintainer = self._mover = None
        if self._client is None:
            return
        if (acking := self._acking) is not None:  # acks already asked for still go out
            await asyncio.gather(acking, return_exceptions=True)
        with contextlib.suppress(redis.exceptions.RedisError):
            await self._give_back_unhanded()
            for pending in list(self._pending):
                await self._apply(pending)
            self._pending.clear()
            for claim in list(self._unsettled.values()):
                payload, priority = with_redelivered_flags(claim.payload)
                await self._settle(
                    claim, "RPUSH", [self.layout.queue_key(claim.queue, priority)], payload
                )
        if self._given_client is None:
            await self._client.aclose()
        self._client = None

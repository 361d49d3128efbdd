"""Reconnecting to RabbitMQ with exponential backoff and jitter.

aio-pika's robust connection retries at a fixed ``reconnect_interval``, so a fleet of workers
that lost the same broker hammers it in lock-step. :class:`BackoffConnection` keeps aio-pika's
recovery (channels reopened, our consumers restored by the transport) and only changes the
wait: each one about doubles the time spent disconnected so far, capped, with jitter that
spreads a fleet's attempts apart.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import aio_pika

__all__ = ["BackoffConnection", "reconnect_delay"]

#: The first wait after a connection is lost, in seconds.
RECONNECT_BASE = 0.5
#: The longest wait between two attempts, in seconds.
RECONNECT_CAP = 30.0


def reconnect_delay(
    disconnected_for: float,
    *,
    base: float = RECONNECT_BASE,
    cap: float = RECONNECT_CAP,
    rand: random.Random | None = None,
) -> float:
    """The next wait: ``base + disconnected_for``, capped, times a jitter in [0.5, 1].

    Waiting about as long as the outage has lasted doubles the total with every attempt.
    """
    jitter = (rand or random).uniform(0.5, 1.0)
    return min(cap, base + disconnected_for) * jitter


class BackoffConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, reconnecting with :func:`reconnect_delay`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._disconnected_at: float | None = None
        super().__init__(*args, **kwargs)

    # aio-pika reads ``reconnect_interval`` before each reconnect attempt (and in its log
    # lines); computing it from the outage's length, rather than counting reads, keeps every
    # read consistent.
    @property
    def reconnect_interval(self) -> float:
        """Seconds to wait before the next attempt."""
        if self._disconnected_at is None:
            return RECONNECT_BASE
        return reconnect_delay(time.monotonic() - self._disconnected_at)

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        """aio-pika's fixed interval (from the URL); the backoff replaces it."""

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if self._disconnected_at is None:
            self._disconnected_at = time.monotonic()
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._disconnected_at = None

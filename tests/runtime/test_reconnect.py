"""Reconnect waits: exponential in the outage's length, capped, jittered."""

from __future__ import annotations

import random

from runtime.transports.reconnect import RECONNECT_BASE, RECONNECT_CAP, reconnect_delay


def test_waits_double_the_time_disconnected() -> None:
    rand = random.Random(7)
    elapsed, waits = 0.0, []
    for _ in range(12):
        wait = reconnect_delay(elapsed, rand=rand)
        waits.append(wait)
        elapsed += wait

    assert RECONNECT_BASE * 0.5 <= waits[0] <= RECONNECT_BASE
    assert waits[5] > 4 * waits[0]  # grows geometrically
    assert max(waits) <= RECONNECT_CAP
    assert waits[-1] >= RECONNECT_CAP * 0.5  # and settles at the cap


def test_jitter_spreads_a_fleet() -> None:
    rand = random.Random(1)
    waits = {round(reconnect_delay(10.0, rand=rand), 3) for _ in range(50)}

    assert len(waits) > 40
    assert all(5.25 <= wait <= 10.5 for wait in waits)

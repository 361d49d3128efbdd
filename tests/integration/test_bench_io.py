"""The io scenario's arithmetic and its completion counter (:mod:`benchmarks.tally`)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from benchmarks.scenarios import io_row
from benchmarks.tally import Tally


def test_efficiency_is_the_ideal_duration_over_the_measured_one() -> None:
    # 2,000 tasks sent at 1,000/s to 1,000 slots of 1 s tasks: the last is sent at 1.999 s
    # and done at 2.999 s; measured, the last was done at 3.2 s.
    row = io_row(1_000, 2_000, 3.2, 1_000.0, (50.0, 60.0))

    assert row["ideal_seconds"] == pytest.approx(2.999)
    assert row["efficiency"] == pytest.approx(2.999 / 3.2, abs=1e-3)  # 0.937
    assert row["task_seconds"] == 1.0
    assert row["kib_per_waiting_task"] == pytest.approx(10 * 1024 / 1_000)


def test_a_run_that_kept_up_is_at_one() -> None:
    row = io_row(100, 2_000, 2.099, 1_000.0, (50.0, 50.0))

    assert row["efficiency"] == 1.0
    assert row["kib_per_waiting_task"] == 0


class _CountingRedis(redis.asyncio.Redis):
    """A real client that counts the pipelines it sends, failing the first ``failures``."""

    def __init__(self, url: str, failures: int = 0) -> None:
        pool = redis.asyncio.ConnectionPool.from_url(url)
        super().__init__(connection_pool=pool)
        self.pipelines = 0
        self.failures = failures

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> object:  # type: ignore[override]
        self.pipelines += 1
        if self.failures:
            self.failures -= 1
            raise redis.ConnectionError("refused, as the test asked")
        return super().pipeline(transaction=transaction, shard_hint=shard_hint)


async def _value(client: redis.asyncio.Redis, key: str, expected: int) -> int:
    async with asyncio.timeout(5):
        while int(await client.get(key) or 0) != expected:
            await asyncio.sleep(0.01)
    return expected


@pytest.mark.integration
async def test_counts_of_one_turn_go_out_in_one_round_trip_and_later_ones_in_the_next(
    redis_url: str, unique_name: str
) -> None:
    client = _CountingRedis(redis_url)
    tally = Tally(lambda: client)
    try:
        for _ in range(1_000):
            tally.add(unique_name)
        tally.add(f"{unique_name}:other")
        await asyncio.sleep(0)  # the writer sends the first counts
        for _ in range(500):  # while it waits for Redis
            tally.add(unique_name)

        assert await _value(client, unique_name, 1_500) == 1_500
        assert int(await client.get(f"{unique_name}:other") or 0) == 1
        assert client.pipelines == 2
    finally:
        await client.delete(unique_name, f"{unique_name}:other")
        await client.aclose(close_connection_pool=True)


@pytest.mark.integration
async def test_a_failed_write_keeps_its_counts_for_the_next(
    redis_url: str, unique_name: str
) -> None:
    client = _CountingRedis(redis_url, failures=1)
    tally = Tally(lambda: client)
    try:
        for _ in range(3):
            tally.add(unique_name)

        assert await _value(client, unique_name, 3) == 3
        assert client.pipelines == 2
    finally:
        await client.delete(unique_name)
        await client.aclose(close_connection_pool=True)

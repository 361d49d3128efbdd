"""The revoked-id set (Celery's LimitedSet bounds), and what happens when its store fails."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.errors import BackendError
from runtime.results.revoked import REVOKE_EXPIRES, REVOKES_MAX, Revocations, RevokedIds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_celerys_bounds_by_default() -> None:
    ids = RevokedIds()

    assert (ids.maxlen, ids.expires) == (REVOKES_MAX, REVOKE_EXPIRES) == (50_000, 10_800)


def test_an_id_is_revoked_for_its_lifetime() -> None:
    clock = Clock()
    ids = RevokedIds(expires=60, clock=clock)
    ids.add("a")
    ids.add("b", lifetime=10)

    clock.now += 30
    assert "a" in ids
    assert "b" not in ids
    assert 42 not in ids
    clock.now += 30
    assert "a" not in ids
    assert list(ids) == []
    assert len(ids) == 0


def test_the_oldest_ids_go_first_past_maxlen() -> None:
    clock = Clock()
    ids = RevokedIds(maxlen=3, expires=60, clock=clock)
    ids.update(["a", "b", "c"])
    ids.add("a")  # re-adding makes it the newest
    ids.add("d")

    assert list(ids) == ["c", "a", "d"]
    assert dict(ids.lifetimes()) == {"c": 60, "a": 60, "d": 60}


def test_expired_ids_are_purged_as_ids_are_added() -> None:
    clock = Clock()
    ids = RevokedIds(expires=60, clock=clock)
    ids.update(["a", "b"])
    clock.now += 61
    ids.add("c")

    assert ids._until.keys() == {"c"}


class FailingStore:
    async def load(self) -> list[tuple[str, float]]:
        raise BackendError("result backend: down")

    async def add(self, task_ids: Any) -> None:
        raise BackendError("result backend: down")


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.events.append(event)

    info = warning


async def test_a_failing_store_leaves_the_ids_revoked_here() -> None:
    log = Log()
    revocations = Revocations(FailingStore(), logger=log)  # type: ignore[arg-type]

    await revocations.load()
    await revocations.revoke(["a"])
    revocations.merge(["b"])

    assert list(revocations) == ["a", "b"]
    assert "a" in revocations
    assert log.events == ["revoked_not_loaded", "revoked_not_stored"]


async def test_without_a_store_ids_live_in_memory_only() -> None:
    revocations = Revocations(None)

    await revocations.load()
    await revocations.revoke(["a"])

    assert list(revocations) == ["a"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:secret@127.0.0.1:5672//", ("guest", "/", 5672, False, "amqp")),
        ("amqps://u:p@rabbit/prod", ("u", "prod", 5671, True, "amqp")),
        ("redis://127.0.0.1:6379/3", (None, "3", 6379, False, "redis")),
        ("rediss://:pw@cache", (None, "0", 6379, True, "redis")),
        ("memory://tests", (None, "/", None, False, "memory")),
    ],
)
def test_stats_describe_the_broker_as_kombu(url: str, expected: tuple[Any, ...]) -> None:
    from runtime.control.commands import _broker_info  # noqa: PLC0415

    info = _broker_info(url)

    assert (info["userid"], info["virtual_host"], info["port"], info["ssl"],
            info["transport"]) == expected  # fmt: skip
    assert "password" not in info


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:********@host:6379/0"),
        ("amqp://guest:guest@h//", "amqp://guest:********@h//"),
        ("redis://host/0", "redis://host/0"),
        (None, None),
    ],
)
def test_conf_masks_passwords_as_celery(url: str | None, masked: str | None) -> None:
    from runtime.transports.urls import masked_url  # noqa: PLC0415

    assert masked_url(url) == masked

"""Registering tasks, as a Celery user writes them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runtime import App
from runtime import app as app_module
from runtime.transports.memory import MemoryTransport


def test_task_options_use_celerys_names_and_reject_unknown_ones() -> None:
    app = App("billing")

    @app.task(name="billing.charge", queue="timed_5min", acks_late=True, time_limit=60)
    async def charge(account_id: int, cents: int) -> dict[str, int]:
        return {"account": account_id, "cents": cents}

    assert app.tasks["billing.charge"] is charge
    assert charge.options.queue == "timed_5min"
    assert charge.options.acks_late
    assert charge.options.time_limit == 60
    assert charge.is_coroutine

    with pytest.raises(TypeError, match=r"unknown task option.*acks_later"):
        app.task(acks_later=True)


def test_default_name_is_module_and_qualname() -> None:
    app = App()

    @app.task
    def legacy_sync(path: str) -> int:
        return len(path)

    assert (
        legacy_sync.name
        == f"{__name__}.test_default_name_is_module_and_qualname.<locals>.legacy_sync"
    )
    assert legacy_sync("abc") == 3  # calling the task runs it here
    assert not legacy_sync.is_coroutine


def test_arguments_are_checked_against_the_signature() -> None:
    app = App()

    @app.task(bind=True)
    def bound(self: Any, path: str) -> str:
        return path

    bound.bind_arguments(("a",), {})
    with pytest.raises(TypeError, match=r"bound\(\) missing 1 required positional argument"):
        bound.bind_arguments((), {})
    with pytest.raises(TypeError, match="got an unexpected keyword argument 'nope'"):
        bound.bind_arguments(("a",), {"nope": 1})

    @app.task(typing=False)
    def loose(path: str) -> str:
        return path

    loose.bind_arguments((), {"anything": 1})


def test_request_outside_a_task_is_an_error() -> None:
    app = App()

    @app.task(bind=True)
    def bound(self: Any) -> None:
        return None

    with pytest.raises(RuntimeError, match="no task is running"):
        _ = bound.request


async def test_concurrent_first_sends_open_one_producer_and_declare_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[MemoryTransport] = []
    declared: list[list[str]] = []

    def counting(url: str, options: Any = None) -> MemoryTransport:
        transport = MemoryTransport(url)
        original, connect = transport.declare, transport.connect

        async def slow_connect() -> None:  # as a network round trip yields to other tasks
            await asyncio.sleep(0.01)
            await connect()

        async def declare(queues: Any) -> None:
            declared.append([spec.name for spec in queues])
            await original(queues)

        transport.declare = declare  # type: ignore[method-assign]
        transport.connect = slow_connect  # type: ignore[method-assign]
        opened.append(transport)
        return transport

    monkeypatch.setattr(app_module, "transport_for_url", counting)
    app = App("t", broker="memory://one-producer")

    await asyncio.gather(*(app.send_task("x", queue="q") for _ in range(20)))
    await app.aclose()

    assert len(opened) == 1
    assert declared == [["q"]]
    assert (await opened[0].queue_depth("q"))[0] == 20

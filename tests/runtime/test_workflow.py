"""The worker's canvas, embedded and on the in-memory broker: chains, callbacks and errbacks of
both styles, as celeriac's own producer sends them (no result backend needed)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from runtime import App, Request


def _app() -> tuple[App, list[tuple[Any, ...]]]:
    app = App("t", broker=f"memory://{uuid.uuid4().hex}")
    seen: list[tuple[Any, ...]] = []

    @app.task(name="t.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.fail")
    def fail(reason: str) -> None:
        raise ValueError(reason)

    @app.task(name="t.note")
    async def note(value: Any, label: str) -> None:
        """One argument besides its own: an old-style errback (it gets the failed id)."""
        seen.append((label, value))

    @app.task(name="t.report")
    def report(request: Request, exc: BaseException, traceback: str | None, label: str) -> None:
        """A new-style errback: called in the worker with the request and the exception."""
        seen.append((label, request.id, repr(exc), "ValueError" in (traceback or "")))

    return app, seen


async def _until(seen: list[Any], count: int) -> None:
    async with asyncio.timeout(10):
        while len(seen) < count:
            await asyncio.sleep(0.01)


async def test_a_chain_passes_results_on_and_immutable_steps_ignore_them() -> None:
    app, seen = _app()
    add, note = app.tasks["t.add"], app.tasks["t.note"]
    async with app.worker(concurrency=2):
        await app.send_task(
            "t.add", (1, 2), chain=[add.s(3), note.s("chained"), add.si(10, 20), note.s("last")]
        )
        await _until(seen, 2)
    await app.aclose()

    assert seen == [("chained", 6), ("last", 30)]


async def test_links_and_errbacks_of_both_styles() -> None:
    app, seen = _app()
    note, report = app.tasks["t.note"], app.tasks["t.report"]
    async with app.worker(concurrency=2):
        await app.send_task("t.add", (2, 3), link=[note.s("one"), note.s("two")])
        failing = await app.send_task(
            "t.fail",
            ("no",),
            link=note.s("never"),
            link_error=[note.s("old"), report.s("new"), note.si("immutable", "old-si")],
        )
        await _until(seen, 5)
    await app.aclose()

    assert sorted(seen) == sorted(
        [
            ("one", 5),
            ("two", 5),
            ("old", failing.id),
            ("new", failing.id, "ValueError('no')", True),
            ("old-si", "immutable"),
        ]
    )


async def test_a_callback_that_cannot_be_sent_fails_the_task() -> None:
    """As in Celery: the task is recorded failed, so its errbacks run."""
    app, seen = _app()
    note, add = app.tasks["t.note"], app.tasks["t.add"]
    async with app.worker(concurrency=1):
        sent = await app.send_task(
            "t.add",
            (2, 3),
            link=add.s().set(countdown="soon"),
            link_error=note.s("errback"),
        )
        await _until(seen, 1)
    await app.aclose()

    assert seen == [("errback", sent.id)]


async def test_a_next_step_whose_arguments_do_not_fit_fails_the_task_that_sends_it() -> None:
    """Celery checks a local task's arguments when it applies its signature (``typing``)."""
    app, seen = _app()
    note = app.tasks["t.note"]
    async with app.worker(concurrency=1):
        sent = await app.send_task("t.add", (1, 2), chain=[note.s()], link_error=note.s("errback"))
        await _until(seen, 1)
    await app.aclose()

    assert seen == [("errback", sent.id)]

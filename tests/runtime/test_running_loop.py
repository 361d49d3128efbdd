"""``HeldLoop``: the loop a component consumes on, kept while it does and no longer."""

from __future__ import annotations

import asyncio

import pytest

from runtime.running_loop import HeldLoop


def test_outside_a_loop_with_nothing_held_it_is_asyncios_error() -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        HeldLoop().get()


def test_held_it_is_the_loop_it_was_held_on_even_where_none_runs() -> None:
    held = HeldLoop()
    loop = asyncio.new_event_loop()
    try:

        async def hold() -> None:
            held.hold()

        loop.run_until_complete(hold())
        assert held.get() is loop  # no loop runs here: asyncio itself would raise
    finally:
        loop.close()


def test_released_it_is_the_running_loop_again_not_the_old_one() -> None:
    held = HeldLoop()

    async def hold_and_release() -> None:
        held.hold()
        held.release()

    async def ask() -> asyncio.AbstractEventLoop:
        return held.get()

    first = asyncio.new_event_loop()
    second = asyncio.new_event_loop()
    try:
        first.run_until_complete(hold_and_release())
        assert second.run_until_complete(ask()) is second
    finally:
        first.close()
        second.close()

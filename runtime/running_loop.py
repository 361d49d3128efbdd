"""The event loop a component runs on, asked for once rather than per message.

On CPython 3.11 every ``asyncio.get_running_loop()`` (and so every ``asyncio.create_task``,
``asyncio.current_task()`` and ``get_running_loop().create_future()``) makes a ``getpid()``
system call, to tell a loop inherited across ``fork`` from the process's own. On a hot path
that runs a few times per message, those calls were 14% of a no-op worker's samples
(``py-spy --native``). A component that consumes keeps the loop it consumes on in a
:class:`HeldLoop` and asks it instead.
"""

from __future__ import annotations

import asyncio

__all__ = ["HeldLoop"]


class HeldLoop:
    """The loop a component is running on, held between :meth:`hold` and :meth:`release`.

    Outside that span :meth:`get` asks asyncio, as ``asyncio.get_running_loop()`` would:
    a component that stopped consuming and is then used on another loop never hands out
    futures or tasks of the old one.
    """

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def hold(self) -> None:
        """Keep the running loop from now on; call on it."""
        self._loop = asyncio.get_running_loop()

    def release(self) -> None:
        """Stop keeping it: :meth:`get` asks asyncio again."""
        self._loop = None

    def get(self) -> asyncio.AbstractEventLoop:
        """The held loop, else the running one (``RuntimeError`` where none runs)."""
        return self._loop or asyncio.get_running_loop()

"""The app ``tests/runtime/test_supervisor.py`` runs under ``celeriac worker --processes N``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from runtime import App

app = App("supervised")


@app.task(name="supervised.whoami", bind=True)
async def whoami(self: Any, seconds: float = 0.0) -> dict[str, Any]:
    """Which process and node ran it, after ``seconds`` on the loop (yielding)."""
    await asyncio.sleep(seconds)
    return {"pid": os.getpid(), "hostname": self.request.hostname}


@app.task(name="supervised.block")
async def block(seconds: float) -> str:
    """Blocks its process's event loop for ``seconds``: a coroutine that never yields."""
    time.sleep(seconds)  # the point: a loop that stops answering
    return "unblocked"

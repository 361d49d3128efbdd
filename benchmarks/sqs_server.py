"""The suite's own SQS: moto's server mode started on 127.0.0.1 for a run, and stopped after.

moto keeps its queues in the memory of that one process and accepts any credentials. It is a
stand-in, not a fast one: each receive and send costs it time in proportion to the messages in
the queue, so the suite keeps its SQS sizes small (see ``Scale``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

__all__ = ["ENV_URL", "available", "moto_server", "url_for"]

#: An SQS server to use instead of starting moto (``sqs://KEY:SECRET@?endpoint_url=...``).
ENV_URL = "CELERIAC_BENCH_SQS_URL"
#: moto accepts any credentials; botocore needs some.
_CREDENTIALS = "bench:bench"
_REGION = "us-east-1"


def available() -> bool:
    """Whether the suite can run on SQS: aiobotocore, plus moto's server or ``ENV_URL``."""
    needed = ["aiobotocore"] if os.environ.get(ENV_URL) else ["aiobotocore", "moto", "flask"]
    return all(importlib.util.find_spec(name) is not None for name in needed)


def url_for(endpoint: str) -> str:
    """The celeriac ``sqs://`` URL of the server at ``endpoint`` (``http://host:port``)."""
    return f"sqs://{_CREDENTIALS}@?endpoint_url={quote(endpoint, safe='')}&region={_REGION}"


@contextlib.asynccontextmanager
async def moto_server(timeout: float = 30.0) -> AsyncIterator[str]:
    """``python -m moto.server`` on a free port for the block; yields its ``sqs://`` URL once
    it answers, and stops it on the way out."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not await _listening(port):
            if process.poll() is not None:
                raise RuntimeError(f"moto's server exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto's server did not listen on port {port} in {timeout} s")
            await asyncio.sleep(0.1)
        yield url_for(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 10)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True

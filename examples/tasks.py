"""The example app the README's first command runs: ``celeriac worker -A examples.tasks:app``.

Send to it from any Celery client::

    from celery import Celery
    client = Celery(broker="amqp://guest:guest@127.0.0.1//", backend="redis://127.0.0.1/0")
    print(client.send_task("billing.charge", args=(42, 1250), queue="timed_5min").get(timeout=10))
"""

from __future__ import annotations

import asyncio
import hashlib

from runtime import App

app = App("examples", result_backend="redis://127.0.0.1:6379/0")


@app.task(name="billing.charge", queue="timed_5min", acks_late=True)
async def charge(account_id: int, cents: int) -> dict[str, int | str]:
    """An I/O-bound task: it awaits (here, a stand-in for a payment API call)."""
    await asyncio.sleep(0.1)
    return {"account_id": account_id, "cents": cents, "status": "charged"}


@app.task(name="reports.digest", queue="standard")
def digest(text: str) -> str:
    """A plain function: runs in the worker's bounded thread pool."""
    return hashlib.sha256(text.encode()).hexdigest()


@app.task(name="noop")
async def noop() -> None:
    """Does nothing: the benchmarks' unit of work."""


# Fired by `celeriac controller -A examples.tasks:app` (compose.yaml runs two controllers: one
# fires each tick, the other takes over if it dies). Celery's `beat_schedule` format works too.
app.add_periodic_task(300.0, digest.s("five-minute digest"), name="digest-every-5-minutes")

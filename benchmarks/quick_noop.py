"""Drain rate of N pre-loaded no-op tasks, celeriac against Celery's worker, in one run.

    python -m benchmarks.quick_noop --tasks 10000 [--broker redis://127.0.0.1:6379/0]

For each system: pre-load N messages (a Celery client's ``send_task``, results ignored) into a
fresh queue, start the worker, and time from the first message leaving the queue to the queue
being empty with nothing unacknowledged, by polling the broker every 20 ms. The issue-6 suite
replaces this with the full matrix; this is the quick comparison the worker issue asks for.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from celery import Celery
from kombu.connection import Connection

ROOT = Path(__file__).resolve().parent.parent
BROKER = os.environ.get("CELERIAC_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def preload(queue: str, tasks: int, broker: str) -> None:
    """Publish ``tasks`` no-op task messages to ``queue`` as a Celery client does."""
    client = Celery("preload", broker=broker, set_as_current=False)
    with client.producer_or_acquire() as producer:
        for _ in range(tasks):
            client.send_task("noop", queue=queue, ignore_result=True, producer=producer)


def depth(conn: Connection, queue: str) -> int:
    """Messages ready in ``queue``."""
    channel = conn.default_channel
    if conn.transport.driver_type == "redis":
        return int(channel._size(queue))  # LLEN over kombu's priority lists
    return int(channel.queue_declare(queue, passive=True).message_count)


def drain(command: list[str], queue: str, tasks: int, broker: str) -> float:
    """Start ``command`` and return the tasks/s at which it empties ``queue`` on ``broker``."""
    preload(queue, tasks, broker)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CELERIAC_BROKER_URL": broker}
    worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        with Connection(broker) as conn:
            while depth(conn, queue) >= tasks:
                time.sleep(0.005)
            started = time.monotonic()
            while depth(conn, queue) > 0:
                time.sleep(0.02)
            elapsed = time.monotonic() - started
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    return tasks / elapsed


def main() -> None:
    """Run each system on its own fresh queue and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--broker", default=BROKER, help="default: CELERIAC_BROKER_URL or amqp")
    args = parser.parse_args()
    python = sys.executable
    celeriac = [python, "-m", "runtime.cli", "worker", "-A", "examples.tasks:app", "--broker",
                args.broker, "--loglevel", "warning", "--log-format", "json"]  # fmt: skip
    celery = [python, "-m", "celery", "-A", "benchmarks.celery_app", "worker", "-l", "warning",
              "--without-heartbeat", "--without-gossip", "--without-mingle"]  # fmt: skip
    systems = {
        "celery prefork -c 2, prefetch multiplier 1": [
            *celery, "-P", "prefork", "-c", "2", "--prefetch-multiplier=1"],
        "celery threads -c 100, prefetch multiplier 1": [
            *celery, "-P", "threads", "-c", "100", "--prefetch-multiplier=1"],
        "celeriac -c 2": [*celeriac, "-c", "2"],
        "celeriac -c 100": [*celeriac, "-c", "100"],
    }  # fmt: skip
    rates = {}
    for name, command in systems.items():
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        rates[name] = drain([*command, "-Q", queue], queue, args.tasks, args.broker)
        print(f"{name:48} {rates[name]:>9,.0f} tasks/s", flush=True)
    base = rates["celery prefork -c 2, prefetch multiplier 1"]
    for name, rate in rates.items():
        print(f"{name:48} {rate / base:>9.2f} x celery prefork -c 2")


if __name__ == "__main__":
    main()

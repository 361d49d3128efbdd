"""The controller end to end: real processes, real brokers, a real SIGKILL.

* Two ``celeriac beat`` processes share one Redis, an every-second schedule runs for 60 s and
  the leader is SIGKILLed a third of the way in: every tick fires, and runs, exactly once.
* A Celery project's own ``beat_schedule`` (an interval and a crontab entry) runs unchanged
  under ``celeriac controller``, and a stock Celery worker runs what it fires, on time.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
import redis

from tests.interop.conftest import ROOT, WorkerProcess, celery_worker_process, eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@contextmanager
def controller(
    command: str, app: str, *extra: str, redis_url: str, prefix: str, name: str,
    env: dict[str, str],
) -> Iterator[subprocess.Popen[str]]:  # fmt: skip
    """``celeriac <command> -A app`` in a subprocess, killed at the end if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", command, "-A", app, "--redis", redis_url,
         "--prefix", prefix, "--id", name, "--log-format", "json", *extra],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def test_two_controllers_one_killed_every_tick_fires_exactly_once(
    redis_url: str, unique_name: str
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    prefix, counts = f"{unique_name}:", f"{unique_name}:counts"
    env = {"HA_BROKER": redis_url, "HA_QUEUE": unique_name, "HA_COUNTS": counts}
    app, ttl = "tests.controller.ha_app:app", ("--lease-ttl", "2")
    worker = WorkerProcess(["-A", app, "-Q", unique_name, "-c", "8", "--log-format", "json"],
                           {**os.environ, "PYTHONPATH": str(ROOT), **env})  # fmt: skip
    try:
        worker.wait_for("worker_ready")
        with (
            controller(
                "beat", app, *ttl, redis_url=redis_url, prefix=prefix, name="a", env=env
            ) as a,
            controller(
                "beat", app, *ttl, redis_url=redis_url, prefix=prefix, name="b", env=env
            ) as b,
        ):
            started = time.monotonic()
            eventually(lambda: client.get(f"{prefix}controller:lease") is not None, timeout=15)
            time.sleep(20)
            leader = str(client.get(f"{prefix}controller:lease")).split("|")[0]
            killed, survivor = (a, b) if leader == "a" else (b, a)
            killed.send_signal(signal.SIGKILL)
            time.sleep(max(0.0, 60 - (time.monotonic() - started)))
            survivor.send_signal(signal.SIGTERM)
            assert survivor.wait(timeout=20) == 0
        fires = [json.loads(r) for r in client.lrange(f"{prefix}fires", 0, -1)][::-1]
        eventually(lambda: client.hlen(counts) >= len(fires), timeout=30)
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait()
        worker.close()

    dues = [datetime.fromisoformat(f["due"]) for f in fires]
    assert len(fires) >= 55, len(fires)
    assert [b - a for a, b in itertools.pairwise(dues)] == [timedelta(seconds=1)] * (
        len(dues) - 1
    ), "a tick was missed or fired twice"
    assert {f["by"] for f in fires} == {"a", "b"}  # both led, one after the other
    executions = {k: int(v) for k, v in client.hgetall(counts).items()}
    assert executions == {f["task_id"]: 1 for f in fires}


def test_a_celery_beat_schedule_runs_unchanged_and_a_celery_worker_runs_it(
    redis_url: str, unique_name: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    records = f"{unique_name}:records"
    env = {"BEAT_BROKER": redis_url, "BEAT_QUEUE": unique_name, "BEAT_RECORDS": records}
    app = "tests.controller.celery_beat_app:app"

    def runs(label: str) -> list[dict[str, object]]:
        entries = [json.loads(r) for r in client.lrange(records, 0, -1)]
        return [entry for entry in entries if entry["label"] == label]

    with (
        celery_worker_process(app, unique_name, env),
        controller(
            "controller", app, redis_url=redis_url, prefix=f"{unique_name}:", name="c", env=env
        ),  # fmt: skip
    ):
        eventually(lambda: len(runs("cron")) >= 1 and len(runs("interval")) >= 3, timeout=75)

    cron_ran = datetime.fromtimestamp(float(runs("cron")[0]["ran"]))  # type: ignore[arg-type]
    assert cron_ran.second < 3, f"the minute's tick ran at {cron_ran}, not on the minute"
    intervals = sorted(float(r["ran"]) for r in runs("interval"))  # type: ignore[arg-type]
    gaps = [b - a for a, b in itertools.pairwise(intervals)]
    assert all(1.5 < gap < 2.5 for gap in gaps), gaps

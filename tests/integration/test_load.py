"""The load generator's harness works end to end (tiny N; nothing here is about speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime import App
from runtime.load import LoadPlan, LoadReport, render, run_load
from tests.interop.conftest import ROOT, WorkerProcess

pytestmark = [pytest.mark.integration]


@pytest.fixture
async def worker_app(redis_url: str, unique_name: str) -> AsyncIterator[App]:
    """A worker in this event loop on ``memory://<unique_name>``, queue ``unique_name``,
    storing results in Redis."""
    app = App("loaded", broker=f"memory://{unique_name}", result_backend=redis_url)

    @app.task(name="loaded.add")
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="loaded.fail")
    async def fail() -> None:
        raise LookupError("nothing here")

    try:
        async with app.worker(queues=[unique_name], concurrency=8):
            yield app
    finally:
        await app.aclose()


def _plan(unique_name: str, **changes: object) -> LoadPlan:
    fields: dict[str, object] = {
        "broker": f"memory://{unique_name}",
        "task": "loaded.add",
        "rate": 200.0,
        "duration": 1.0,
        "args": [1, 2],
        "queue": unique_name,
        "result_timeout": 20.0,
        **changes,
    }
    return LoadPlan(**fields)  # type: ignore[arg-type]


def _assert_ordered(summary: dict[str, float] | None) -> None:
    assert summary is not None
    assert 0 <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]


@pytest.mark.usefixtures("worker_app")
async def test_every_message_is_sent_and_its_latency_measured(
    redis_url: str, unique_name: str
) -> None:
    report = await run_load(_plan(unique_name, result_backend=redis_url))

    assert (report.planned, report.sent, report.publish_errors) == (200, 200, 0)
    assert (report.completed, report.failed, report.other, report.missing) == (200, 0, 0, 0)
    assert report.states == {"SUCCESS": 200}
    _assert_ordered(report.schedule_lag)
    _assert_ordered(report.latency)
    assert report.completion_rate is not None
    assert report.completion_rate > 0
    assert "latency" in render(report)
    assert json.loads(json.dumps(report.as_dict()))["completed"] == 200


@pytest.mark.usefixtures("worker_app")
async def test_a_failing_task_shows_as_failed(redis_url: str, unique_name: str) -> None:
    plan = _plan(unique_name, task="loaded.fail", args=[], rate=20.0, result_backend=redis_url)

    report = await run_load(plan)

    assert (report.sent, report.completed, report.failed, report.missing) == (20, 0, 20, 0)
    assert report.states == {"FAILURE": 20}
    _assert_ordered(report.latency)  # a failure is done too: it has a date_done


async def test_without_a_result_backend_there_is_no_latency_and_the_report_says_why(
    unique_name: str,
) -> None:
    report = await run_load(_plan(unique_name, rate=20.0))

    assert report.sent == 20
    assert report.latency is None
    assert report.completed is None
    assert report.results_note is not None
    assert "no result backend" in report.results_note
    assert "no result backend" in render(report)


async def test_results_that_never_come_are_missing(redis_url: str, unique_name: str) -> None:
    """No worker consumes the queue: every message is sent, none completes."""
    plan = _plan(unique_name, rate=10.0, result_backend=redis_url, result_timeout=0.3)

    report: LoadReport = await run_load(plan)

    assert (report.sent, report.completed, report.missing) == (10, 0, 10)
    assert report.latency is None
    assert report.completion_rate is None


@pytest.mark.parametrize("broker", ["amqp_url"])
def test_cli_against_a_worker_process(
    broker: str, redis_url: str, unique_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(broker)
    worker = WorkerProcess(
        ["-A", "tests.interop.app:app", "-Q", unique_name, "-c", "4", "--broker", url,
         "--result-backend", redis_url, "--log-format", "json", "--grace", "10"],
        {**os.environ, "PYTHONPATH": str(ROOT), "INTEROP_REDIS_URL": redis_url},
    )  # fmt: skip
    try:
        worker.wait_for("worker_ready")
        out = tmp_path / "out.json"
        done = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "load", "--broker", url, "--task", "interop.add",
             "--args", "[1, 2]", "--rate", "50/s", "--duration", "1s", "--queue", unique_name,
             "--result-backend", redis_url, "--result-timeout", "20s", "--json", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        worker.close()

    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert (report["sent"], report["completed"], report["missing"]) == (50, 50, 0)
    assert "guest:********@" in report["broker"]
    assert "latency" in done.stdout

"""The benchmark suite on SQS (a moto server it starts itself) and on memory:// (in-process
rows), at token sizes: the rows, ratios and notes each broker should have, nothing about speed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from benchmarks import brokers, sqs_server
from benchmarks.queues import Watch, delete, preload, task
from benchmarks.runs import ROOT
from benchmarks.suite import default_plan, steps
from tests.integration.tiny_runs import tiny_run

pytestmark = [pytest.mark.integration]


def _needs_moto() -> None:
    """Skip (locally) or fail (in CI) without moto's server: it is in the dev extras."""
    if not sqs_server.available():
        message = "no moto server: pip install -e '.[dev]'"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.mark.timeout(300)
def test_a_tiny_run_on_sqs_and_memory_has_their_rows_and_notes(
    tmp_path: Path, redis_url: str
) -> None:
    _needs_moto()
    run = tiny_run(tmp_path, "--brokers", "sqs,memory", redis=redis_url)
    document, folder, rows = run.document, run.folder, run.rows
    assert not [r for r in rows if "error" in r]
    assert {(r["scenario"], r["broker"], r["system"]) for r in rows} == {
        ("noop", "sqs", "celeriac -c 100"),
        ("noop", "sqs", "floor, prefetch 2"),
        ("noop", "sqs", "floor, prefetch 100"),
        ("results", "sqs", "celeriac -c 100"),
        ("latency", "sqs", "celeriac -c 100"),
        ("mixed", "sqs", "celeriac -c 2"),
        ("noop", "memory", "celeriac in-process -c 100"),
        ("io", "memory", "celeriac in-process -c 20"),
    }
    by_key = {(r["scenario"], r["broker"], r["system"]): r for r in rows}
    sqs_celeriac = by_key[("noop", "sqs", "celeriac -c 100")]
    in_process = by_key[("noop", "memory", "celeriac in-process -c 100")]
    assert sqs_celeriac["x_floor"] > 0
    assert sqs_celeriac["floor"] == "prefetch 100"
    assert "x_celery_prefork" not in sqs_celeriac  # no Celery row on SQS to compare with
    assert "x_floor" not in in_process
    assert "x_celery_prefork" not in in_process
    assert in_process["tasks"] == 200
    assert in_process["rate"] > 0
    assert in_process["cpu_ms_per_task"] > 0
    assert in_process["peak_rss_mib"] > 0
    assert by_key[("io", "memory", "celeriac in-process -c 20")]["efficiency"] > 0
    assert all(r["rate"] > 0 for r in rows if r["scenario"] in ("noop", "results"))
    latency = by_key[("latency", "sqs", "celeriac -c 100")]
    assert latency["sent"] > 0
    assert latency["start_p50_ms"] <= latency["start_max_ms"]
    machine = document["machine"]
    assert machine["brokers"] == {"sqs": f"moto {machine['versions']['moto']}"}
    assert "pycurl" in document["notes"]["sqs"]
    assert "pycurl" in run.stdout
    markdown = (folder / "results.md").read_text()
    assert "| memory | celeriac in-process -c 100 |" in markdown
    assert "Note: memory is celeriac's worker embedded" in markdown
    assert (folder / "throughput.png").stat().st_size > 0


def test_each_broker_gets_the_scenarios_and_rows_that_apply_to_it() -> None:
    todo = steps(default_plan((100, 1_000)),
                 ["noop", "results", "io", "latency", "mixed", "eta"],
                 ["amqp", "sqs", "memory"])  # fmt: skip
    found = {(s.scenario, s.broker, s.system.label) for s in todo}

    on_sqs = {(scenario, label) for scenario, broker, label in found if broker == "sqs"}
    assert on_sqs == {
        ("noop", "celeriac -c 100"), ("noop", "floor, prefetch 2"),
        ("noop", "floor, prefetch 100"), ("results", "celeriac -c 100"),
        ("latency", "celeriac -c 100"), ("mixed", "celeriac -c 2"),
    }  # fmt: skip
    on_memory = {(scenario, label) for scenario, broker, label in found if broker == "memory"}
    assert on_memory == {
        ("noop", "celeriac in-process -c 100"), ("io", "celeriac in-process -c 100"),
        ("io", "celeriac in-process -c 1000"),
    }  # fmt: skip
    assert not [label for _, broker, label in found if broker == "amqp" and "in-process" in label]
    assert ("io", "amqp", "celery threads -c 100") in found
    on_amqp = {(scenario, label) for scenario, broker, label in found if broker == "amqp"}
    assert {label for scenario, label in on_amqp if scenario == "eta"} == {
        "celeriac -c 2",
        "celery prefork -c 2",
    }


def test_sqs_is_a_default_broker_exactly_when_it_can_be_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(sqs_server.ENV_URL, raising=False)
    expected = ["amqp", "redis", "sqs", "memory"] if sqs_server.available() else [
        "amqp", "redis", "memory"
    ]  # fmt: skip
    assert brokers.default_kinds() == expected
    monkeypatch.setattr(sqs_server, "available", lambda: False)
    assert brokers.default_kinds() == ["amqp", "redis", "memory"]


@pytest.mark.timeout(90)
async def test_on_the_suite_s_moto_server_the_floor_drains_a_preloaded_queue() -> None:
    _needs_moto()
    queue = f"bench-test-{uuid.uuid4().hex[:8]}"
    async with brokers.urls(["sqs"]) as found:
        url = found["sqs"]
        assert await preload(url, queue, (task("noop") for _ in range(25))) == 25
        floor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.floor", "--broker", url, "--queue", queue,
            "--prefetch", "2", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            async with Watch(url) as watch:
                async with asyncio.timeout(60):
                    while await watch.depth(queue) > 0:
                        await asyncio.sleep(watch.interval())
            await asyncio.sleep(0.5)  # the last DeleteMessageBatch reply, to be counted
            floor.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(floor.communicate(), 30)
        finally:
            if floor.returncode is None:
                floor.kill()
                await floor.wait()
        assert floor.returncode == 0, err.decode()
        assert json.loads(out) == {"consumed": 25}
        await delete(url, [queue])
    endpoint = urlsplit(dict(parse_qsl(urlsplit(url).query))["endpoint_url"])
    with pytest.raises(ConnectionRefusedError):  # the suite stopped its server
        await asyncio.open_connection(endpoint.hostname, endpoint.port)

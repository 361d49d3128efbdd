"""The benchmark suite's harness works end to end (token sizes; nothing here is about speed)."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report, suite
from benchmarks.runs import collector_held_off
from benchmarks.scenarios import SCENARIOS, Context
from benchmarks.systems import celeriac
from tests.integration.tiny_runs import tiny_run

pytestmark = [pytest.mark.integration]


@pytest.mark.timeout(300)
def test_a_tiny_run_writes_every_scenario_on_both_brokers(
    tmp_path: Path, amqp_url: str, redis_url: str
) -> None:
    earlier = tmp_path / "earlier.json"
    retired = {"scenario": "noop", "broker": "amqp", "system": "retired row", "x_floor": 0.5}
    earlier.write_text(json.dumps({"rows": [retired]}))
    out = tmp_path / "out"
    run = tiny_run(
        out, "--brokers", "amqp,redis", "--families", "celeriac", "--compare", str(earlier),
        amqp=amqp_url, redis=redis_url,
    )  # fmt: skip
    document, folder, rows = run.document, run.folder, run.rows
    assert {(r["scenario"], r["broker"]) for r in rows} == {
        (scenario, broker)
        for scenario in ("noop", "results", "io", "latency", "mixed", "eta")
        for broker in ("amqp", "redis")
    }
    assert not [r for r in rows if "error" in r]
    assert all(r["rate"] > 0 for r in rows if r["scenario"] in ("noop", "results"))
    latency_rows = [r for r in rows if r["scenario"] == "latency"]
    assert all(r["start_p50_ms"] <= r["start_max_ms"] for r in latency_rows)
    assert all(r["send_late_p50_ms"] <= r["send_late_max_ms"] for r in latency_rows)
    eta_rows = [r for r in rows if r["scenario"] == "eta"]
    assert all(r["taken_in"] == r["tasks"] == 50 and r["plain_start_ms"] > 0 for r in eta_rows)
    io_rows = [r for r in rows if r["scenario"] == "io"]
    assert all(r["task_seconds"] == r["concurrency"] / 1000 for r in io_rows)  # ideal 1,000/s
    assert all(r["offered_rate"] == 1000 and r["kib_per_waiting_task"] >= 0 for r in io_rows)
    assert all(0 < r["ideal_seconds"] <= r["seconds"] for r in io_rows)  # never ahead of ideal
    for row in io_rows:  # both durations are rounded to the millisecond
        assert row["efficiency"] == pytest.approx(row["ideal_seconds"] / row["seconds"], abs=0.005)
    assert document["machine"]["cpus"] >= 1
    assert set(document["machine"]["brokers"]) == {"rabbitmq", "redis"}
    assert (folder / "throughput.png").stat().st_size > 0
    assert (folder / "latency.png").stat().st_size > 0
    assert "| amqp | celeriac -c 100 |" in (folder / "results.md").read_text()
    assert "noop" in run.stdout
    assert "ratio changes" in run.stdout  # --compare: after the tables
    assert "retired row" in run.stdout


def test_the_harness_holds_its_collector_off_only_while_a_row_runs() -> None:
    seen: list[bool] = []

    def row_fails() -> None:
        with collector_held_off():
            seen.append(gc.isenabled())
            raise RuntimeError("a row failed")

    assert gc.isenabled()
    with pytest.raises(RuntimeError, match="a row failed"):
        row_fails()
    assert seen == [False]
    assert gc.isenabled()


async def test_every_row_runs_with_the_harness_collector_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bool] = []

    async def probe(_ctx: Context, _kind: str, _system: Any) -> dict[str, Any]:
        seen.append(gc.isenabled())
        return {"rate": 1.0}

    monkeypatch.setitem(SCENARIOS, "noop", probe)
    step = suite.Step("noop", "amqp", celeriac(1))
    rows = await suite.run(Context(brokers={}, redis=""), [step, step], show=False)

    assert seen == [False, False]
    assert [row["rate"] for row in rows] == [1.0, 1.0]
    assert gc.isenabled()


def test_ratios_compare_rows_of_the_same_run_and_broker() -> None:
    def row(
        system: str, family: str, concurrency: int, rate: float, broker: str = "amqp"
    ) -> dict[str, Any]:
        return {"scenario": "noop", "broker": broker, "system": system, "family": family,
                "concurrency": concurrency, "rate": rate}  # fmt: skip

    rows = [
        row("celery prefork -c 2", "celery", 2, 1000.0),
        row("floor, prefetch 2", "floor", 2, 4000.0),
        row("floor, prefetch 100", "floor", 100, 8000.0),
        row("celeriac -c 100", "celeriac", 100, 6000.0),
        row("celeriac -c 2", "celeriac", 2, 2000.0),
        row("celeriac -c 100", "celeriac", 100, 500.0, broker="redis"),  # no baseline there
        row("celeriac --processes 2 -c 100", "celeriac", 100, 9000.0),
        row("aio-celery -c 100", "aio-celery", 100, 3000.0),
        {**row("celeriac -c 100", "celeriac", 100, 3600.0), "scenario": "results"},
        {**row("aio-celery -c 100", "aio-celery", 100, 3000.0), "scenario": "results"},
    ]
    report.add_ratios(rows)

    assert rows[6]["x_one_process"] == 1.5
    assert rows[8]["x_aio_celery"] == 1.2
    assert "x_aio_celery" not in rows[3]  # noop rows are taken against the floor

    assert (rows[3]["x_celery_prefork"], rows[3]["x_floor"], rows[3]["floor"]) == (
        6.0, 0.75, "prefetch 100",
    )  # fmt: skip
    assert (rows[4]["x_celery_prefork"], rows[4]["x_floor"]) == (2.0, 0.5)
    assert "x_celery_prefork" not in rows[5]
    assert "x_floor" not in rows[1]
    # No two-process floor in this run: the --processes row is taken against the one there is.
    assert (rows[6]["x_floor"], rows[6]["floor"]) == (1.12, "prefetch 100")


def test_a_processes_row_is_taken_against_the_floor_in_as_many_processes() -> None:
    def row(system: str, family: str, rate: float, broker: str = "amqp") -> dict[str, Any]:
        return {"scenario": "noop", "broker": broker, "system": system, "family": family,
                "concurrency": 100, "rate": rate}  # fmt: skip

    rows = [
        row("floor, prefetch 100", "floor", 8000.0),
        row("floor --processes 2, prefetch 100", "floor", 10000.0),
        row("celeriac -c 100", "celeriac", 7000.0),
        row("celeriac --processes 2 -c 100", "celeriac", 11000.0),
        row("floor --processes 2, prefetch 100", "floor", 1.0, broker="redis"),
        row("celeriac --processes 2 -c 100", "celeriac", 3.0, broker="redis"),
    ]
    report.add_ratios(rows)

    assert (rows[3]["x_one_process"], rows[3]["x_floor"], rows[3]["floor"]) == (
        1.57, 1.1, "--processes 2, prefetch 100",
    )  # fmt: skip
    assert rows[1]["x_one_process"] == 1.25  # what the machine lets two bare clients do
    assert "x_floor" not in rows[1]
    assert (rows[2]["x_floor"], rows[2]["floor"]) == (0.88, "prefetch 100")
    assert "x_one_process" not in rows[5]  # no one-process row on that broker
    assert (rows[5]["x_floor"], rows[5]["floor"]) == (3.0, "--processes 2, prefetch 100")

"""The load generator without a broker: its inputs, statistics, report and schedule."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from protocol import ResultMeta, State, encode_result
from runtime import App
from runtime.load import (
    LoadPlan,
    LoadReport,
    _outcome,
    paced,
    parse_duration,
    parse_rate,
    percentiles,
    redact,
    render,
    run_load,
)

DONE = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("500/s", 500.0),
        ("30000/m", 500.0),
        ("10/h", 10 / 3600),
        ("250", 250.0),
        ("2.5/s", 2.5),
        (" 7 / s ", 7.0),
        (".5", 0.5),
    ],
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    "text", ["", "fast", "0/s", "0", "-5/s", "500/x", "500/", "/s", "nan", "inf", "1e3", "5/s/s"]
)
def test_parse_rate_refuses_and_names_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match=f"rate must be .*not {text!r}"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60.0), ("2m", 120.0), ("500ms", 0.5), ("1h", 3600.0), ("90", 90.0), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "0s", "-1s", "10d", "s", "1 minute", "inf", "nan"])
def test_parse_duration_refuses_and_names_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match=f"duration must be .*not {text!r}"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("values", "ps", "expected"),
    [
        ([5.0], (0, 50, 100), {0: 5.0, 50: 5.0, 100: 5.0}),
        ([3.0, 1.0, 2.0, 4.0], (25, 50, 75, 100), {25: 1.0, 50: 2.0, 75: 3.0, 100: 4.0}),
        # Nearest rank: ceil(p/100 * n), so p90 of ten values is the 9th, p99 the 10th.
        ([float(i) for i in range(1, 11)], (10, 90, 99), {10: 1.0, 90: 9.0, 99: 10.0}),
        ([float(i) for i in range(1, 101)], (50, 99, 100), {50: 50.0, 99: 99.0, 100: 100.0}),
        ([2.0, 2.0, 1.0], (0, 34), {0: 1.0, 34: 2.0}),
    ],
)
def test_percentiles_take_the_nearest_rank(
    values: list[float], ps: tuple[float, ...], expected: dict[float, float]
) -> None:
    assert percentiles(values, ps) == expected


@pytest.mark.parametrize(
    ("values", "ps", "message"),
    [([], (50,), "no values"), ([1.0], (101,), "between 0 and 100"), ([1.0], (-1,), "between")],
)
def test_percentiles_refuse(values: list[float], ps: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        percentiles(values, ps)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate": 0.0}, "rate must be a positive number"),
        ({"duration": float("inf")}, "duration must be a positive number"),
        ({"result_timeout": -1.0}, "result_timeout must be"),
        ({"max_in_flight": 0}, "max_in_flight must be at least 1"),
        ({"rate": 0.1, "duration": 1.0}, "less than one message"),
        ({"result_backend": "rpc://"}, "result backend must be redis://"),
    ],
)
def test_a_plan_that_cannot_run_is_refused(changes: dict[str, object], message: str) -> None:
    plan = {"broker": "memory://", "task": "t", "rate": 10.0, "duration": 1.0, **changes}
    with pytest.raises(ValueError, match=message):
        LoadPlan(**plan)  # type: ignore[arg-type]


def test_a_plan_counts_its_messages() -> None:
    assert LoadPlan(broker="memory://", task="t", rate=30000 / 60, duration=0.5).planned == 250


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:secret@host:5672//", "amqp://guest:********@host:5672//"),
        ("redis://:pw@host/0", "redis://:********@host/0"),
        ("redis://host/0", "redis://host/0"),
        ("memory://", "memory://"),
    ],
)
def test_reports_do_not_show_passwords(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_render_aligns_a_report_without_results() -> None:
    report = LoadReport(
        task="t", queue="q", broker="memory://", target_rate=10.0, duration=1.0, planned=10,
        sent=9, publish_errors=1, first_error="BrokerConnectionError: gone", behind=0,
        publish_seconds=1.0, publish_rate=9.0,
        schedule_lag={"p50": 0.001, "p90": 0.002, "p99": 0.003, "max": 1.5},
        results_note="no result backend",
    )  # fmt: skip

    text = render(report)

    lines = text.splitlines()
    values = ["t on queue q", "10/s for 1 s", "9 (1 publish errors", "BrokerConnectionError: gone"]
    assert len({next(line.find(v) for line in lines if v in line) for v in values}) == 1
    assert "results       no result backend" in lines
    assert "latency" not in text
    lag = next(line for line in text.splitlines() if line.startswith("schedule lag"))
    assert lag.split() == ["schedule", "lag", "1.0", "ms", "2.0", "ms", "3.0", "ms", "1.50", "s"]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_records_are_read_whichever_serializer_wrote_them(serializer: str) -> None:
    meta = ResultMeta(task_id="a", status=State.SUCCESS, result=3, date_done=DONE)

    outcome = _outcome(encode_result(meta, serializer=serializer))

    assert (outcome.state, outcome.date_done) == ("SUCCESS", DONE)


def test_a_record_that_is_not_one_is_malformed_and_final() -> None:
    assert _outcome(b"\xff not a record").state == "MALFORMED"


async def test_publishes_waiting_for_a_slot_are_counted_as_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One slot, and each publish holds it longer than the gap to the next: the later ones
    wait, are counted, and their wait shows as schedule lag."""
    started: list[str] = []

    async def slow_send(self: App, name: str, **options: Any) -> None:
        started.append(options["task_id"])
        await asyncio.sleep(0.05)

    monkeypatch.setattr(App, "send_task", slow_send)
    plan = LoadPlan(broker="memory://", task="t", rate=100.0, duration=0.1, max_in_flight=1)

    report = await run_load(plan)

    assert (report.sent, len(set(started))) == (10, 10)
    assert report.behind > 0
    assert report.schedule_lag is not None
    assert report.schedule_lag["max"] > 0


async def test_paced_keeps_each_due_time_whatever_the_consumer_does() -> None:
    """Ten sends at 100/s: each yielded no earlier than its due time; the consumer stalls
    40 ms at the first, and the four that fell due meanwhile come at once, not 10 ms apart."""
    clock = asyncio.get_running_loop().time
    start = clock()
    seen: list[tuple[float, float]] = []
    async for due in paced(100.0, 10, start=start):
        seen.append((due, clock() - start))
        if due == 0:
            await asyncio.sleep(0.04)

    assert [due for due, _ in seen] == [n / 100 for n in range(10)]
    assert all(at >= due - 0.001 for due, at in seen)  # the loop may wake a tick early
    caught_up = [at for _, at in seen[1:5]]
    assert max(caught_up) - min(caught_up) < 0.01  # not spaced out after the stall

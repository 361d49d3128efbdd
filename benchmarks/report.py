"""Tables, the JSON file and the PNG charts of a benchmark run.

Ratios compare rows measured in the same run only: a row's rate over Celery prefork ``-c 2``'s
on the same broker, and, for ``noop``, over the floor at the same prefetch as the row; a broker
without such a row (SQS has no Celery rows, memory has neither) has no such ratio. ``notes``
(broker -> why it has fewer rows) are printed under the tables.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from tabulate import tabulate

from .systems import floor

__all__ = ["add_ratios", "charts", "markdown", "tables", "write_json"]

Row = dict[str, Any]
_BASELINE = "celery prefork -c 2"
_AIO_CELERY = "aio-celery -c 100"
#: How a row's label names its processes: ``celeriac --processes 2 -c 100``,
#: ``floor --processes 2, prefetch 100``.
_PROCESSES = re.compile(r" --processes (\d+)")
_COLUMNS: dict[str, tuple[str, ...]] = {
    "noop": ("rate", "x_celery_prefork", "x_floor", "x_one_process", "cpu_ms_per_task",
             "peak_rss_mib"),
    "results": ("rate", "x_celery_prefork", "x_aio_celery", "cpu_ms_per_task", "peak_rss_mib"),
    "io": ("concurrency", "task_seconds", "tasks", "offered_rate", "seconds", "ideal_seconds",
           "efficiency", "peak_rss_mib", "kib_per_waiting_task"),
    "latency": ("offered_rate", "start_p50_ms", "start_p90_ms", "start_p99_ms", "start_max_ms",
                "result_p50_ms", "result_p99_ms", "send_late_p99_ms"),
    "mixed": ("short_wait_p50_ms", "short_wait_p99_ms", "short_wait_max_ms"),
    "eta": ("tasks", "taken_in", "seconds", "rate", "x_celery_prefork", "plain_start_ms"),
}  # fmt: skip


def add_ratios(rows: Sequence[Row]) -> None:
    """Set ``x_celery_prefork`` (and ``x_floor`` on noop rows, ``x_aio_celery`` on results
    rows, ``x_one_process`` on ``--processes`` rows) where both rates exist."""
    rates = {(r["scenario"], r["broker"], r["system"]): r.get("rate") for r in rows}
    for row in rows:
        if row.get("rate") is None or row["scenario"] not in ("noop", "results", "eta"):
            continue
        base = rates.get((row["scenario"], row["broker"], _BASELINE))
        if base:
            row["x_celery_prefork"] = round(row["rate"] / base, 2)
        processes = _processes(row["system"])
        if processes:
            one = rates.get((row["scenario"], row["broker"], _one_process(row["system"])))
            if one:
                row["x_one_process"] = round(row["rate"] / one, 2)
        aio = rates.get((row["scenario"], row["broker"], _AIO_CELERY))
        if aio and row["scenario"] == "results":
            row["x_aio_celery"] = round(row["rate"] / aio, 2)
        if row["scenario"] == "noop" and row["family"] != "floor":
            _add_floor_ratio(row, rates, processes)


def _add_floor_ratio(row: Row, rates: Mapping[tuple[str, str, str], Any], processes: str) -> None:
    """``x_floor``: the row against the floor at its prefetch and, where the run has it, in as
    many processes (``floor`` names which: the floor's options)."""
    prefetch = 2 if row["concurrency"] <= 2 else 100
    floors = [floor(prefetch, processes=int(processes))] if processes else []
    floors.append(floor(prefetch))
    for system in floors:
        rate = rates.get(("noop", row["broker"], system.label))
        if rate:
            row["x_floor"] = round(row["rate"] / rate, 2)
            row["floor"] = system.label.removeprefix("floor").lstrip(", ")
            return


def _processes(system: str) -> str:
    """The ``--processes`` count a row's label names ("" for one process)."""
    match = _PROCESSES.search(system)
    return match.group(1) if match else ""


def _one_process(system: str) -> str:
    """The label of the same system in one process."""
    return _PROCESSES.sub("", system)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def tables(
    rows: Sequence[Row], notes: Mapping[str, str] | None = None, out: TextIO | None = None
) -> None:
    """Print one table per scenario, then the notes (to ``out``, standard output by default)."""
    out = out or sys.stdout
    for scenario, columns in _COLUMNS.items():
        found = [r for r in rows if r["scenario"] == scenario]
        if not found:
            continue
        cells = [
            [row["broker"], row["system"]]
            + ["error" if "error" in row else _cell(row.get(c)) for c in columns]
            for row in found
        ]
        names = ("broker", "system", *columns)
        print(f"\n{scenario}", file=out)
        print(tabulate(cells, headers=names, colalign=_aligned(names), disable_numparse=True),
              file=out)  # fmt: skip
    for note in (notes or {}).values():
        print(f"note: {note}", file=out)


def _aligned(names: Sequence[str]) -> tuple[str, ...]:
    """Names and labels to the left, figures to the right."""
    return tuple("left" if name in ("broker", "system") else "right" for name in names)


def markdown(rows: Sequence[Row], notes: Mapping[str, str] | None = None) -> str:
    """The same tables (and notes) as Markdown, for ``benchmarks/README.md`` and closing notes."""
    parts = []
    for scenario, columns in _COLUMNS.items():
        found = [r for r in rows if r["scenario"] == scenario]
        if not found:
            continue
        header = ["broker", "system", *columns]
        rule = "|".join("---" if h in ("broker", "system") else "---:" for h in header)
        lines = [f"**{scenario}**", "", "| " + " | ".join(header) + " |", f"|{rule}|"]
        for row in found:
            cells = [row["broker"], row["system"]]
            cells += ["error" if "error" in row else _cell(row.get(c)) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    parts.extend(f"Note: {note}" for note in (notes or {}).values())
    return "\n\n".join(parts) + "\n"


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    """Everything measured, and how, as one JSON document."""
    path.write_text(json.dumps({**meta, "rows": list(rows)}, indent=2) + "\n")


def charts(rows: Sequence[Row], folder: Path) -> list[Path]:
    """``throughput.png`` (no-op and results rates by system and broker) and ``latency.png``
    (publish-to-start percentiles); returns the files written."""
    import matplotlib  # noqa: PLC0415 - heavy; only when charts are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written = []
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for axis, scenario in zip(axes, ("noop", "results"), strict=True):
        _bars(axis, [r for r in rows if r["scenario"] == scenario and r.get("rate")], "rate",
              f"{scenario}: tasks/s (higher is better)")  # fmt: skip
    figure.tight_layout()
    written.append(folder / "throughput.png")
    figure.savefig(written[-1], dpi=110)
    plt.close(figure)

    found = [r for r in rows if r["scenario"] == "latency" and r.get("start_p50_ms") is not None]
    if found:
        figure, axis = plt.subplots(figsize=(13, 5))
        labels = [f"{r['system']}\n{r['broker']}" for r in found]
        width = 0.2
        for n, key in enumerate(("start_p50_ms", "start_p90_ms", "start_p99_ms", "start_max_ms")):
            axis.bar([i + n * width for i in range(len(found))], [r[key] for r in found], width,
                     label=key.removeprefix("start_").removesuffix("_ms"))  # fmt: skip
        axis.set_xticks([i + 1.5 * width for i in range(len(found))], labels, fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("ms")
        axis.set_title(
            "publish-to-start latency at half each system's no-op rate (lower is better)"
        )
        axis.legend()
        figure.tight_layout()
        written.append(folder / "latency.png")
        figure.savefig(written[-1], dpi=110)
        plt.close(figure)
    return written


def _bars(axis: Any, rows: Sequence[Row], key: str, title: str) -> None:
    brokers = sorted({r["broker"] for r in rows})
    systems = list(dict.fromkeys(r["system"] for r in rows))
    width = 0.8 / max(1, len(brokers))
    for n, broker in enumerate(brokers):
        values = {r["system"]: r[key] for r in rows if r["broker"] == broker}
        axis.bar([i + n * width for i in range(len(systems))], [values.get(s, 0) for s in systems],
                 width, label=broker)  # fmt: skip
    axis.set_xticks([i + width * (len(brokers) - 1) / 2 for i in range(len(systems))], systems,
                    rotation=30, ha="right", fontsize=8)  # fmt: skip
    rates = [r[key] for r in rows if r[key]]
    if rates and max(rates) > 20 * min(rates):  # memory's ceiling beside moto's SQS
        axis.set_yscale("log")
        title += ", log scale"
    axis.set_title(title)
    if brokers:
        axis.legend()

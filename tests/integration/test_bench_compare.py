"""``python -m benchmarks.compare`` and ``--compare``: ratio changes between two runs."""

from __future__ import annotations

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

from benchmarks import compare
from benchmarks.runs import ROOT


def _row(system: str, **ratios: float) -> dict[str, Any]:
    return {"scenario": "noop", "broker": "amqp", "system": system, "rate": 1.0, **ratios}


def test_each_ratio_is_compared_row_by_row_and_marked_beyond_the_tolerance() -> None:
    old = [
        _row("celeriac -c 100", x_celery_prefork=2.0, x_floor=0.5),
        _row("aio-celery -c 100", x_celery_prefork=2.0),
        _row("retired", x_floor=0.3),
    ]
    new = [
        _row("celeriac -c 100", x_celery_prefork=1.5, x_floor=0.56),
        _row("aio-celery -c 100", x_celery_prefork=2.1),
        _row("celery threads -c 100", x_celery_prefork=1.2),
    ]

    found = {(c.system, c.ratio): c for c in compare.changes(old, new)}

    assert {key: c.verdict(0.1) for key, c in found.items()} == {
        ("celeriac -c 100", "x_celery_prefork"): "worse",  # -25%
        ("celeriac -c 100", "x_floor"): "better",  # +12%
        ("aio-celery -c 100", "x_celery_prefork"): "same",  # +5%
        ("celery threads -c 100", "x_celery_prefork"): "new row",
        ("retired", "x_floor"): "gone",
    }
    assert found["celeriac -c 100", "x_celery_prefork"].relative == -0.25
    # Absolute rates are never compared: they move with the machine, not the change.
    assert all(c.ratio in compare.RATIOS for c in found.values())


def test_only_what_the_new_run_measured_is_compared_and_no_row_against_itself() -> None:
    old = [
        _row("celery prefork -c 2", x_celery_prefork=1.0),
        _row("celeriac -c 100", x_celery_prefork=2.0),
        {**_row("celeriac -c 100", x_celery_prefork=3.0), "scenario": "results"},
    ]
    new = [_row("celery prefork -c 2", x_celery_prefork=1.0)]

    assert compare.changes(old, new) == [
        compare.Change("noop", "amqp", "celeriac -c 100", "x_celery_prefork", 2.0, None)
    ]


def test_the_table_shows_old_new_and_the_change() -> None:
    found = compare.changes([_row("celeriac -c 100", x_floor=0.5)],
                            [_row("celeriac -c 100", x_floor=0.4)])  # fmt: skip
    out = StringIO()

    compare.show(found, 0.1, out)

    line = next(line for line in out.getvalue().splitlines() if "celeriac -c 100" in line)
    assert line.split()[-5:-1] == ["x_floor", "0.50", "0.40", "-20.0%"]
    assert "worse" in line


def test_the_command_compares_two_saved_runs(tmp_path: Path) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps({"rows": [_row("celeriac -c 100", x_floor=0.5)]}))
    new.write_text(json.dumps({"rows": [_row("celeriac -c 100", x_floor=0.6)]}))

    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", str(old), str(new)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "+20.0%" in done.stdout
    assert "better" in done.stdout


def test_a_file_that_is_not_a_run_fails_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text('{"not": "rows"}')
    other, missing = str(tmp_path / "other.json"), str(tmp_path / "missing.json")
    for argv in (
        ["benchmarks", "--compare", missing],
        ["benchmarks", "--compare", other],
        ["benchmarks.compare", other, other],
    ):
        done = subprocess.run(
            [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stdout + done.stderr
        assert "results.json" in done.stderr or "No such file" in done.stderr

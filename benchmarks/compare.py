"""Compare the ratios of two benchmark runs: the regression guard for hot-path changes.

    python -m benchmarks.compare OLD.json NEW.json [--tolerance 0.1]
    python -m benchmarks --compare OLD.json [the suite's options]   # run, then compare

Only ratios are compared (a row's rate over Celery prefork's or the floor's of the *same*
run, and io's efficiency against its ideal): absolute rates move by 2x between machines and
days, while a ratio cancels what the machine did to every row of its run. A ratio that moved
by more than ``tolerance`` (a fraction) is marked ``worse`` or ``better``; this machine's
run-to-run spread is about 10%, so a mark is a reason to run both sides again, not a verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tabulate import tabulate

__all__ = ["RATIOS", "Change", "changes", "load_rows", "main", "show"]

#: The fields of a row that are ratios within one run, and the row each is taken against
#: (whose own ratio is 1 by definition, and not shown).
RATIOS = {
    "x_celery_prefork": "celery prefork -c 2",
    "x_aio_celery": "aio-celery -c 100",
    "x_floor": None,
    "x_one_process": None,
    "efficiency": None,
}
#: A ratio that moved by more than this fraction is marked.
DEFAULT_TOLERANCE = 0.1

Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """One ratio of one row in both runs; ``old`` or ``new`` is ``None`` where a run lacks it."""

    scenario: str
    broker: str
    system: str
    ratio: str
    old: float | None
    new: float | None

    @property
    def relative(self) -> float | None:
        """``new / old - 1``; ``None`` unless both runs have the ratio."""
        if self.old is None or self.new is None or self.old == 0:
            return None
        return self.new / self.old - 1

    def verdict(self, tolerance: float) -> str:
        """``worse``, ``better``, ``same``, or why there is no comparison."""
        if self.old is None:
            return "new row"
        if self.new is None:
            return "gone"
        relative = self.relative
        if relative is None:
            return "-"
        if relative < -tolerance:
            return "worse"
        return "better" if relative > tolerance else "same"


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``results.json`` written by ``python -m benchmarks``."""
    document = json.loads(path.read_text())
    rows = document.get("rows") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: not a benchmark results.json (no 'rows' list)")
    return rows


def _keyed(rows: Iterable[Row]) -> dict[tuple[str, str, str], Row]:
    return {(row["scenario"], row["broker"], row["system"]): row for row in rows}


def changes(old: Iterable[Row], new: Iterable[Row]) -> list[Change]:
    """Every ratio either run has, row by row, in the new run's order, then the rows it lacks.

    Only the scenarios and brokers the new run measured are compared: a run of
    ``--scenarios results`` against a full earlier run says nothing about the others.
    """
    before, after = _keyed(old), _keyed(new)
    measured = {(scenario, broker) for scenario, broker, _ in after}
    lacking = [key for key in before if key not in after and key[:2] in measured]
    found = []
    for key in [*after, *lacking]:
        for ratio, reference in RATIOS.items():
            was = before.get(key, {}).get(ratio)
            now = after.get(key, {}).get(ratio)
            if key[2] != reference and (was is not None or now is not None):
                found.append(Change(*key, ratio, was, now))
    return found


def show(found: Sequence[Change], tolerance: float, out: TextIO | None = None) -> None:
    """Print the changes as one table (to ``out``, standard output by default)."""
    names = ("scenario", "broker", "system", "ratio", "old", "new", "change", "")
    cells = [
        [
            change.scenario, change.broker, change.system, change.ratio,
            "-" if change.old is None else f"{change.old:.2f}",
            "-" if change.new is None else f"{change.new:.2f}",
            "-" if change.relative is None else f"{change.relative:+.1%}",
            change.verdict(tolerance),
        ]
        for change in found
    ]  # fmt: skip
    aligned = tuple("right" if name in ("old", "new", "change") else "left" for name in names)
    out = out or sys.stdout
    print(f"ratio changes (marked beyond ±{tolerance:.0%})", file=out)
    print(tabulate(cells, headers=names, colalign=aligned, disable_numparse=True), file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Compare two saved runs; exit status 2 if a file is not a results.json."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("old", type=Path, help="results.json of the run before the change")
    parser.add_argument("new", type=Path, help="results.json of the run after it")
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE,
        help="mark ratios that moved by more than this fraction (default 0.1)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        old, new = load_rows(args.old), load_rows(args.new)
    except (OSError, ValueError) as exc:
        print(f"python -m benchmarks.compare: {exc}", file=sys.stderr)
        return 2
    show(changes(old, new), args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(main())

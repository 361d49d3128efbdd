"""A tiny run of the benchmark suite (``python -m benchmarks --tiny``), as its tests start it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.runs import ROOT

__all__ = ["TinyRun", "tiny_run"]


@dataclass(frozen=True)
class TinyRun:
    """What a finished tiny run wrote: its folder, its results document, what it printed."""

    folder: Path
    document: dict[str, Any]
    stdout: str

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows of the results document."""
        rows: list[dict[str, Any]] = self.document["rows"]
        return rows


def tiny_run(out: Path, *options: str, amqp: str | None = None, redis: str) -> TinyRun:
    """Run ``python -m benchmarks --tiny --quiet --out out`` with ``options`` against the
    brokers at ``amqp`` and ``redis``, in a process of its own with nothing else of this
    environment, and fail with what it printed unless it succeeded."""
    env = {"PATH": "/usr/bin:/bin", "CELERIAC_BENCH_REDIS_URL": redis}
    if amqp is not None:
        env["CELERIAC_BENCH_AMQP_URL"] = amqp
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--quiet", "--out", str(out), *options],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = out.iterdir()
    return TinyRun(folder, json.loads((folder / "results.json").read_text()), done.stdout)

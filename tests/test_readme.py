"""The README's test command is exactly what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    commands = [line for line in readme if line.startswith(".ci/setup &&")]

    assert len(commands) == 2, "the README opens with two commands: set-up + run, and tests"
    assert commands[1] in ci

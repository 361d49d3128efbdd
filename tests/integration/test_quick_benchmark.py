"""The quick benchmark's harness works (at tiny N; nothing here is about speed)."""

from __future__ import annotations

import sys

import pytest

from benchmarks import quick_noop

pytestmark = [pytest.mark.integration]


def test_drain_measures_a_celeriac_worker(
    amqp_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quick_noop, "BROKER", amqp_url)
    command = [
        sys.executable, "-m", "runtime.cli", "worker", "-A", "examples.tasks:app",
        "--broker", amqp_url, "--loglevel", "warning", "-c", "2", "-Q", unique_name,
    ]  # fmt: skip

    rate = quick_noop.drain(command, unique_name, 50)

    assert rate > 0

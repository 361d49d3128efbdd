"""A celeriac app with one schedule, for the controller's command-line tests."""

from __future__ import annotations

from runtime import App

app = App("sched", broker="memory://", beat_schedule={"ok": {"task": "s.ok", "schedule": 5}})


@app.task(name="s.ok")
def ok() -> None:
    """Nothing."""

"""An app that names pickle in its ``accept_content``: the one way a celeriac worker loads it."""

from __future__ import annotations

from typing import Any

from runtime import App

app = App("pickle", accept_content=("json", "pickle"))


@app.task(name="interop.type_name")
def type_name(value: Any) -> str:
    """The type the argument arrived as (a set: JSON cannot carry one, pickle can)."""
    return type(value).__name__

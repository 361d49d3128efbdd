"""How a task run ended: what the executor gives the worker for every run."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from protocol import State
from runtime.exceptions import TimeLimitExceeded

__all__ = ["Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a task run ended: SUCCESS with a value, or FAILURE with an exception."""

    state: State
    value: Any = None
    exception: BaseException | None = None
    traceback: str | None = None
    runtime: float = 0.0

    @classmethod
    def failed(cls, exc: BaseException, *, runtime: float = 0.0) -> Outcome:
        """A FAILURE with ``exc`` and its formatted traceback."""
        text = "".join(traceback.format_exception(exc))
        return cls(State.FAILURE, exception=exc, traceback=text, runtime=runtime)

    @property
    def timed_out(self) -> bool:
        """Whether the hard time limit ended the run."""
        return isinstance(self.exception, TimeLimitExceeded)

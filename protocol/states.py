"""Task states as Celery names and groups them (``celery/states.py``)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EXCEPTION_STATES", "PROPAGATE_STATES", "READY_STATES", "UNREADY_STATES", "State"]


class State(StrEnum):
    """A task state; the value is the string stored in the result backend."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"
    REJECTED = "REJECTED"
    RETRY = "RETRY"
    IGNORED = "IGNORED"


#: States after which a task will not change again; ``date_done`` is set for these.
READY_STATES = frozenset((State.SUCCESS, State.FAILURE, State.REVOKED))
#: States whose ``result`` is a serialised exception.
EXCEPTION_STATES = frozenset((State.RETRY, State.FAILURE, State.REVOKED))
#: States whose exception ``AsyncResult.get()`` re-raises.
PROPAGATE_STATES = frozenset((State.FAILURE, State.REVOKED))
#: States a task can still leave (Celery's set: IGNORED is internal and in neither).
UNREADY_STATES = frozenset(
    (State.PENDING, State.RECEIVED, State.STARTED, State.REJECTED, State.RETRY)
)

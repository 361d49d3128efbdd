"""The worker core: the loop that takes a delivery from a transport, runs its task in a slot
and stores its result (:mod:`.loop`); slots (:mod:`.slots`); running a function under its time
limits (:mod:`.execution`); a task class's hooks (:mod:`.hooks`); retries once a run is over
(:mod:`.retries`); a worker inside the caller's event loop (:mod:`.embedding`).

May import everything below it: the app, canvas, remote control, results and transports. Only
the CLI and :mod:`runtime.serve` import the worker; the app reaches :func:`embedded` by one
late import (``App.worker``).
"""

from .embedding import embedded
from .loop import DEFAULT_MAX_HELD_ETA, ETA_HOLD_WINDOW, Worker

__all__ = ["DEFAULT_MAX_HELD_ETA", "ETA_HOLD_WINDOW", "Worker", "embedded"]

"""Remote control, as Celery's ``app.control`` and ``inspect``: the mailbox a worker serves
(:mod:`.mailbox`), the commands it answers (:mod:`.commands`), and what they see of a worker
(:mod:`.controlled`).

May import: :mod:`protocol`, the app, :mod:`runtime.transports.base`, :mod:`runtime.results`
and :mod:`runtime.request`; the worker is seen through :class:`.controlled.ControlledWorker`.
Revoked ids are kept in :mod:`runtime.results.revoked`, below the app, since ``app.revoke``
writes them too.
"""

from .commands import COMMANDS
from .controlled import ControlledWorker, RunningTask
from .mailbox import RemoteControl

__all__ = ["COMMANDS", "ControlledWorker", "RemoteControl", "RunningTask"]

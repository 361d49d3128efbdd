"""celeriac's controller: scheduling, run registry, reconciliation and health loops.

Depends on :mod:`runtime` and :mod:`protocol`; nothing depends on it.
"""

__all__: list[str] = []

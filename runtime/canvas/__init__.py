"""Canvas, as Celery's: signatures and their constructors (:mod:`.signatures`), the planner that
turns a signature into messages (:mod:`.planner`, pure), the messages it builds
(:mod:`.messages`), chord bookkeeping in the result backend (:mod:`.chords`, with its Lua
scripts), and what a worker does around each task (:mod:`.workflow`).

May import: :mod:`protocol`, :mod:`runtime.results`, :mod:`runtime.task`, :mod:`runtime.request`
and :mod:`runtime.exceptions`. The app is seen through :class:`.workflow.CanvasApp`.
"""

from .signatures import CanvasError, chain, chord, group

__all__ = ["CanvasError", "chain", "chord", "group"]

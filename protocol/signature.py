"""Canvas signatures as they travel inside a task body (callbacks, errbacks, chain, chord)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import _fields

__all__ = ["Signature"]


@dataclass(frozen=True, slots=True)
class Signature:
    """One embedded signature: Celery's ``Signature`` dict, typed.

    ``options`` keeps every routing and canvas option as Celery wrote it (``task_id``,
    ``queue``, ``link``, ``group_id``, ...). Group and chord signatures keep their members in
    ``kwargs`` as plain dicts, as on the wire.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=_fields.empty_mapping)
    options: Mapping[str, Any] = field(default_factory=_fields.empty_mapping)
    subtask_type: str | None = None
    immutable: bool = False

    @property
    def task_id(self) -> str | None:
        """The pre-assigned task id a client may already be waiting on, if any."""
        value = self.options.get("task_id")
        return value if isinstance(value, str) else None

    def set(self, *, immutable: bool | None = None, **options: Any) -> Signature:
        """A copy with ``options`` added (and ``immutable`` changed, if given).

        Celery's ``Signature.set`` changes the signature in place; this one is a value.
        """
        return replace(
            self,
            options={**self.options, **options},
            immutable=self.immutable if immutable is None else immutable,
        )

    def to_dict(self) -> dict[str, Any]:
        """The wire form, key for key what ``celery.canvas.Signature`` serialises to."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
            "subtask_type": self.subtask_type,
            "immutable": self.immutable,
        }

    @classmethod
    def from_wire(cls, value: Any, field: str) -> Signature:
        """Validate a decoded signature dict; raise MalformedMessage if it is not one."""
        raw = _fields.mapping(value, field)
        return cls(
            task=_fields.name(raw.get("task"), f"{field}.task"),
            args=_fields.sequence(raw.get("args"), f"{field}.args", null_is_empty=True),
            kwargs=_fields.mapping(raw.get("kwargs"), f"{field}.kwargs", null_is_empty=True),
            options=_fields.mapping(raw.get("options"), f"{field}.options", null_is_empty=True),
            subtask_type=_fields.optional_text(raw.get("subtask_type"), f"{field}.subtask_type"),
            immutable=bool(_fields.optional_flag(raw.get("immutable"), f"{field}.immutable")),
        )

"""Queue coverage: which queues no worker group consumes, and which groups wait on queues no
task uses.

A task sent to a queue that no running worker consumes stays there and never runs, silently
(the DATAMIMIC seed's warning about ``database_generate_weighting``). ``celeriac topology
check`` compares the queues in use with the queues each worker group consumes:

* queues in use: ``--queues a,b,c``, and with ``--app`` every queue the app routes to (a
  celeriac app's task ``queue=`` options and schedules; a Celery app's ``task_routes``, tasks'
  ``queue`` attributes, ``task_default_queue`` and ``beat_schedule`` options);
* worker groups: each service of a compose file (``WORKER_QUEUES`` in its ``environment``, or
  ``-Q``/``--queues`` in its ``command``), each place a Helm-style values file sets
  ``WORKER_QUEUES`` (as a key, or as a Kubernetes ``env`` entry ``{name, value}``), and the
  ``WORKER_QUEUES`` of the environment the command runs in.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Coverage", "WorkerGroup", "coverage", "groups_in_compose", "groups_in_values"]

_VARIABLE = "WORKER_QUEUES"


@dataclass(frozen=True, slots=True)
class WorkerGroup:
    """A set of workers started alike: its name (where it was found) and the queues it consumes."""

    name: str
    queues: frozenset[str]


@dataclass(frozen=True, slots=True)
class Coverage:
    """The outcome: ``unconsumed`` queues in use that no group consumes (an error), and for each
    group the queues it consumes that nothing uses (``idle``, a warning)."""

    unconsumed: tuple[str, ...]
    idle: Mapping[str, tuple[str, ...]]

    @property
    def ok(self) -> bool:
        """Whether every queue in use has a consumer."""
        return not self.unconsumed


def parse_queues(text: str) -> frozenset[str]:
    """``"a,b, c"`` -> ``{"a", "b", "c"}`` (Celery's ``-Q`` and ``WORKER_QUEUES`` format)."""
    return frozenset(q.strip() for q in text.split(",") if q.strip())


def coverage(in_use: Iterable[str], groups: Iterable[WorkerGroup]) -> Coverage:
    """Which of ``in_use`` no group consumes; which queues of each group nothing uses."""
    used = set(in_use)
    groups = list(groups)
    consumed = set().union(*(g.queues for g in groups)) if groups else set()
    idle = {g.name: tuple(sorted(g.queues - used)) for g in groups if g.queues - used}
    return Coverage(tuple(sorted(used - consumed)), idle)


def _environment(value: Any) -> dict[str, str]:
    """A compose ``environment``: a mapping, or a list of ``KEY=VALUE`` strings."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return dict(item.split("=", 1) for item in value if isinstance(item, str) and "=" in item)
    return {}


def _queues_flag(command: Any) -> str | None:
    """The value of ``-Q``/``--queues`` in a compose ``command`` (a string or a list)."""
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command or []]
    for i, word in enumerate(words):
        if word in ("-Q", "--queues") and i + 1 < len(words):
            return words[i + 1]
        for flag in ("-Q", "--queues="):
            if word.startswith(flag) and len(word) > len(flag):
                return word[len(flag) :]
    return None


def groups_in_compose(document: Mapping[str, Any]) -> list[WorkerGroup]:
    """One group per compose service that consumes queues."""
    found = []
    services = document.get("services") or {}
    for name, service in services.items() if isinstance(services, Mapping) else ():
        if not isinstance(service, Mapping):
            continue
        text = _queues_flag(service.get("command")) or _environment(service.get("environment")).get(
            _VARIABLE
        )
        if text is not None:
            found.append(WorkerGroup(str(name), parse_queues(text)))
    return found


def groups_in_values(document: Any) -> list[WorkerGroup]:
    """One group per place a Helm-style values file sets ``WORKER_QUEUES``, named by its path
    (``workers.short.env``)."""
    return [WorkerGroup(path or "values", parse_queues(text)) for path, text in _walk(document, "")]


def _walk(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == _VARIABLE and isinstance(value, str):
                yield path, value
            else:
                yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            label = item.get("name") if isinstance(item, Mapping) else None
            if label == _VARIABLE and isinstance(item.get("value"), str):
                yield path, item["value"]  # a Kubernetes env entry: {name, value}
            else:
                yield from _walk(item, f"{path}[{label if isinstance(label, str) else index}]")


def queues_of_app(app: Any) -> set[str]:
    """The queues an app sends to: a celeriac app's or a Celery app's (see the module doc)."""
    if hasattr(app, "amqp") and hasattr(app, "conf"):  # Celery
        conf = app.conf
        queues: set[str] = set()
        router = app.amqp.router
        app.loader.import_default_modules()
        for name, task in app.tasks.items():
            if name.startswith("celery."):
                continue
            queue = router.route({}, name).get("queue")
            queues.add(getattr(queue, "name", None) or str(queue))
            if getattr(task, "queue", None):
                queues.add(str(task.queue))
        entries = conf.beat_schedule or {}
    else:
        queues = {t.options.queue or app.default_queue for t in app.tasks.values()}
        entries = app.beat_schedule
    for entry in entries.values():
        queue = (entry.get("options") or {}).get("queue")
        if queue:
            queues.add(str(queue))
    return queues

"""The planner against Celery itself: for the same signature, applied the same way, celeriac
publishes what Celery 5.7's canvas code publishes, message for message (headers and body,
with ids relabelled by first appearance), and sets the same chord sizes in between.

Celery's side runs its own ``Signature.apply_async`` on the signature as a worker receives it
(decoded from JSON, ``signature(dict)``), with the producer and the result backend replaced
by recorders: nothing touches a network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, chain, chord, group, signature
from celery._state import _set_current_app, get_current_app
from kombu.utils.json import dumps as kombu_dumps

from protocol import encode_task
from runtime.canvas.planner import Context, Planner, Publish, SaveGroup, SetChordSize

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _relabel(actions: list[Any]) -> list[Any]:
    """Every id replaced by ``<idN>``, N counting first appearances."""
    seen: dict[str, str] = {}

    def label(match: re.Match[str]) -> str:
        return seen.setdefault(match.group(0), f"<id{len(seen)}>")

    return [json.loads(_UUID.sub(label, json.dumps(a, sort_keys=True))) for a in actions]


def _headers(headers: dict[str, Any]) -> dict[str, Any]:
    """The headers but ``argsrepr``/``kwargsrepr``: Celery reprs a decoded signature's args
    as the list JSON gave it, celeriac as a tuple; display strings, not read by workers."""
    return {k: v for k, v in headers.items() if k not in ("argsrepr", "kwargsrepr")}


def _embed_normalised(body: list[Any]) -> list[Any]:
    args, kwargs, embed = body
    return [args, kwargs, {k: v or None for k, v in embed.items()}]


class CeleryOracle:
    """A Celery app whose publishing and chord bookkeeping are recorded, not performed."""

    def __init__(self) -> None:
        self.app = Celery(
            "oracle", broker="memory://", backend="redis://127.0.0.1:1/0", set_as_current=False
        )
        self.actions: list[Any] = []
        backend = self.app.backend
        backend.on_task_call = lambda *args, **kwargs: None
        # Results it makes would subscribe to their keys: nothing to follow here.
        backend.add_pending_result = lambda result, *args, **kwargs: result
        backend.add_pending_results = lambda results, *args, **kwargs: results
        backend.remove_pending_result = lambda result: result
        backend.set_chord_size = lambda gid, size: self.actions.append(["size", gid, size])
        backend._set_chord_key = lambda key, value: self.actions.append(
            ["save", key.decode().removeprefix("celery-taskset-meta-"), json.loads(value)["result"]]
        )
        self.app.amqp.send_task_message = self._record

    def _record(self, producer: Any, name: str, message: Any, **options: Any) -> None:
        queue = options.get("queue")
        routed = queue.name if queue is not None else options.get("routing_key")
        body = json.loads(kombu_dumps(message.body))
        self.actions.append(["publish", routed, _headers(message.headers), _embed_normalised(body)])

    def apply(self, wire: dict[str, Any], args: tuple[Any, ...] = (), **options: Any) -> list[Any]:
        self.actions.clear()
        signature(json.loads(json.dumps(wire)), app=self.app).apply_async(args, **options)
        return _relabel(self.actions)


def _ours(
    oracle: CeleryOracle, wire: dict[str, Any], args: tuple[Any, ...] = (), **options: Any
) -> list[Any]:
    planner = Planner(Context(reply_to=oracle.app.thread_oid))
    planner.apply(json.loads(json.dumps(wire)), args, **options)
    actions: list[Any] = []
    for action in planner.actions:
        if isinstance(action, Publish):
            encoded = encode_task(action.message)
            body = _embed_normalised(json.loads(encoded.body))
            actions.append(["publish", action.queue, _headers(dict(encoded.headers)), body])
        elif isinstance(action, SetChordSize):
            actions.append(["size", action.group_id, action.size])
        else:
            assert isinstance(action, SaveGroup)
            actions.append(["save", action.group.id, action.group.to_wire()])
    return _relabel(json.loads(json.dumps(actions)))


@pytest.fixture
def oracle() -> Iterator[CeleryOracle]:
    """The oracle's app is the current app meanwhile: Celery freezes a chain nested in a
    chord with the current app's backend."""
    oracle = CeleryOracle()
    previous = get_current_app()
    _set_current_app(oracle.app)
    yield oracle
    _set_current_app(previous)


def s(name: str, *args: Any, **options: Any) -> Any:
    return signature(f"x.{name}", args=args, **options)


def si(name: str, *args: Any, **options: Any) -> Any:
    return signature(f"x.{name}", args=args, immutable=True, **options)


# Canvases as a Celery client builds them; each is frozen (ids assigned) by the client
# before it travels, as when it is a chain step, a callback or a chord body.
CANVASES = {
    "task": lambda: s("add", 1, 2, queue="q"),
    "immutable task": lambda: si("add", 1, 2),
    "task with links": lambda: s("add", 1, link=s("cb"), link_error=[s("eb"), si("eb", 1)]),
    "chain": lambda: chain(s("add", 1, 2), s("add", 3), s("add", 4)),
    "chain with immutable step": lambda: chain(s("add", 1), si("add", 10, 20), s("add", 5)),
    "chain with link and errback": lambda: chain(
        s("add", 1), s("add", 2), link=s("cb"), link_error=s("eb")
    ),
    "group": lambda: group(s("add", n, n) for n in range(5)),
    "nested groups": lambda: group(s("add", 1), group(s("add", 2), s("add", 3)), s("add", 4)),
    "group of one": lambda: group(s("add", 1)),
    "chains in a group": lambda: group(chain(s("add", 1), s("add", 2)), s("add", 3)),
    "chord": lambda: chord([s("add", n) for n in range(4)], s("tsum", queue="q")),
    "chord with options": lambda: chord([s("add", 1), s("add", 2)], s("tsum")).set(
        link=s("cb"), link_error=s("eb"), queue="q"
    ),
    "chord with a chain body": lambda: chord(
        [s("add", 1), s("add", 2)], chain(s("tsum"), s("add", 10))
    ),
    "chord with a group body": lambda: chord(
        [s("add", 1), s("add", 2)], group(s("add", 10), s("add", 20))
    ),
    "chord with chains in the header": lambda: chord(
        [chain(s("add", 1), s("add", 2)), s("add", 3)], s("tsum")
    ),
    "chord with a chain ending in a group in the header": lambda: chord(
        [chain(s("add", 1), group(s("add", 2), s("add", 3))), s("add", 4)], s("cb")
    ),
    "chord of chords": lambda: chord(
        [chord([s("add", 1), s("add", 2)], s("tsum")), s("add", 3)], s("tsum")
    ),
    "empty chord": lambda: chord([], s("tsum")),
    "chord in a chain": lambda: chain(
        s("add", 1), chord([s("add", 1), s("add", 2)], s("tsum")), s("add", 100)
    ),
    "group then task in a chain": lambda: chain(
        s("add", 1), group(s("add", 1), s("add", 2)), s("tsum")
    ),
    "chain ending in a group": lambda: chain(s("add", 1), group(s("add", 1), s("add", 2))),
    "chain in a chain": lambda: chain(s("add", 1), chain(s("add", 2), s("add", 3))),
    "chord with an immutable body": lambda: chord([s("add", 1)], si("cb", "done")),
    "group with options": lambda: group(s("add", 1), s("add", 2), queue="q", priority=3),
    "chord in a group": lambda: group(chord([s("add", 1), s("add", 2)], s("tsum")), s("add", 3)),
    "chord with a body led by a group": lambda: chord(
        [s("add", 1)], chain(group(s("add", 2), s("add", 3)), s("tsum"))
    ),
    "chains in a group then a task": lambda: chain(
        group(chain(s("add", 1), s("add", 2)), chain(s("add", 3), s("add", 4))), s("tsum")
    ),
    "two chords in a chain": lambda: chain(
        group(s("add", 1), s("add", 2)), s("tsum"), group(s("add", 3), s("add", 4)), s("tsum")
    ),
}


@pytest.mark.parametrize("name", list(CANVASES))
def test_as_a_client_applies_it(oracle: CeleryOracle, name: str) -> None:
    wire = dict(CANVASES[name]())

    assert _ours(oracle, wire) == oracle.apply(wire)


@pytest.mark.parametrize("name", list(CANVASES))
def test_as_a_worker_applies_the_next_step(oracle: CeleryOracle, name: str) -> None:
    """What a worker sends for ``chain[-1]`` after a task returned 7: the signature frozen
    by the client, with the result, the rest of the chain and the parent's ids."""
    sig = signature(json.loads(kombu_dumps(CANVASES[name]())), app=oracle.app)
    sig.freeze()
    wire = json.loads(kombu_dumps(sig))
    rest = [json.loads(kombu_dumps(s("add", 5, task_id="11111111-2222-3333-4444-555555555555")))]
    ids = {"parent_id": "aaaaaaaa-0000-0000-0000-000000000001", "root_id": "r"}

    assert _ours(oracle, wire, (7,), chain=rest, **ids) == oracle.apply(
        wire, (7,), chain=rest, **ids
    )

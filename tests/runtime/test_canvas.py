"""The planner's output, spelled out for the cases a worker meets most: the next step of a
chain, a chord's header and size, a very long chain. (``test_canvas_oracle.py`` compares many
more canvases with Celery's own code.)"""

from __future__ import annotations

import itertools
from typing import Any

from protocol import Signature
from runtime.canvas.planner import Context, Planner, Publish, SetChordSize
from runtime.canvas.signatures import chain, chord


def _planner(**context: Any) -> Planner:
    ids = (f"id{n}" for n in itertools.count())
    return Planner(Context(reply_to="oid", new_id=lambda: next(ids), **context))


def _published(planner: Planner) -> list[Publish]:
    return [a for a in planner.actions if isinstance(a, Publish)]


def test_the_next_step_of_a_chain_gets_the_result_first_and_the_rest_of_the_chain() -> None:
    step = Signature("proj.add", (4,), options={"task_id": "step", "queue": "q"})
    rest = [Signature("proj.add", (5,), options={"task_id": "last"}).to_dict()]
    planner = _planner()

    result = planner.apply(step, (3,), chain=rest, parent_id="first", root_id="root")

    [publish] = _published(planner)
    message = publish.message
    assert (publish.queue, message.id, message.args) == ("q", "step", (3, 4))
    assert (message.parent_id, message.root_id) == ("first", "root")
    assert [s.to_dict() for s in message.chain] == rest
    assert result is not None
    assert result.id == "step"
    assert [r.id for r in planner.trail] == ["step"]


def test_an_immutable_step_keeps_its_arguments() -> None:
    planner = _planner()

    planner.apply(Signature("proj.add", (1, 2), immutable=True), (3,))

    assert _published(planner)[0].message.args == (1, 2)


def test_a_chord_sends_its_header_with_the_body_and_sets_its_size_before_the_last() -> None:
    body = Signature("proj.tsum", options={"task_id": "body"})
    header = [Signature("proj.add", (n,)) for n in range(3)]
    planner = _planner(default_queue="work")

    result = planner.apply(chord(header, body))

    kinds = [type(a).__name__ for a in planner.actions]
    assert kinds == ["Publish", "Publish", "SetChordSize", "Publish"]
    size = planner.actions[2]
    assert isinstance(size, SetChordSize)
    messages = [p.message for p in _published(planner)]
    assert {m.group_id for m in messages} == {size.group_id}
    assert [m.group_index for m in messages] == [0, 1, 2]
    assert size.size == 3
    assert all(m.chord is not None and m.chord.task_id == "body" for m in messages)
    assert {p.queue for p in _published(planner)} == {"work"}
    assert result is not None
    assert result.id == "body"
    assert result.parent is not None
    assert result.parent.id == size.group_id


def test_a_chain_of_3000_is_planned_without_recursion() -> None:
    planner = _planner()

    result = planner.apply(chain(*(Signature("proj.add", (1,)) for _ in range(3000))), (0,))

    [publish] = _published(planner)
    assert len(publish.message.chain) == 2999
    assert publish.message.args == (0, 1)
    assert result is not None
    assert result.id == publish.message.chain[0].task_id


def test_runtime_exports_the_constructors_even_once_its_modules_are_imported() -> None:
    import runtime  # noqa: PLC0415
    import runtime.canvas.chords  # noqa: PLC0415 - a submodule of the same name would shadow it

    assert runtime.chord is chord
    assert runtime.chain is chain

"""Celery events as bytes: the dicts and messages ``protocol.events`` builds, read back with
Celery's own event receiver code where it has one."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TypedDict

import pytest
from celery.events.state import State as CeleryState

from protocol import TaskMessage
from protocol.events import (
    EVENT_EXCHANGE,
    MULTI_ROUTING_KEY,
    REPR_LIMIT,
    encode_events,
    event,
    routing_key,
    safe_repr,
    task_received_fields,
    task_sent_fields,
    utcoffset,
    worker_fields,
)


class _Common(TypedDict):
    """The fields every event of one worker shares (``event``'s keywords)."""

    hostname: str
    pid: int
    timestamp: float
    offset: int


def test_names() -> None:
    assert EVENT_EXCHANGE == "celeryev"
    assert routing_key("task-received") == "task.received"
    assert routing_key("worker-heartbeat") == "worker.heartbeat"


def test_utcoffset_is_hours_west_as_celery_computes_it() -> None:
    # Europe/Berlin: one hour east in winter, two in summer; New York five and four hours west.
    assert utcoffset(is_dst=False, timezone=-3600, altzone=-7200) == -1
    assert utcoffset(is_dst=True, timezone=-3600, altzone=-7200) == -2
    assert utcoffset(is_dst=False, timezone=18000, altzone=14400) == 5
    assert utcoffset(is_dst=True, timezone=18000, altzone=14400) == 4


def test_safe_repr_never_raises_and_stays_short() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert safe_repr((2, 3)) == "(2, 3)"
    assert safe_repr(Broken()).startswith("<Broken instance at ")
    long = safe_repr("x" * 5000)
    assert len(long) <= REPR_LIMIT
    huge = safe_repr(["y" * 100] * 100)
    assert len(huge) <= REPR_LIMIT
    assert huge.endswith("...")


def test_task_fields_prefer_the_messages_own_reprs() -> None:
    eta = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    message = TaskMessage(
        id="t1", task="app.add", args=(1, 2), kwargs={"k": "v"}, retries=2, eta=eta,
        root_id="r", parent_id="p",
    )  # fmt: skip
    assert task_received_fields(message) == {
        "uuid": "t1", "name": "app.add", "args": "(1, 2)", "kwargs": "{'k': 'v'}",
        "root_id": "r", "parent_id": "p", "retries": 2, "eta": eta.isoformat(), "expires": None,
    }  # fmt: skip
    hidden = TaskMessage(id="t2", task="app.add", args=("card",), argsrepr="('****',)",
                         kwargsrepr="{}")  # fmt: skip
    assert task_received_fields(hidden)["args"] == "('****',)"
    sent = task_sent_fields(hidden, queue="q", exchange="", routing_key="q")
    assert (sent["queue"], sent["exchange"], sent["routing_key"]) == ("q", "", "q")


def test_one_event_is_a_dict_under_its_own_key() -> None:
    fields = worker_fields(freq=2.0, active=1, processed=7, version="9.9")
    built = event("worker-heartbeat", hostname="w@h", clock=3, pid=42, timestamp=1.5, offset=0,
                  **fields)  # fmt: skip
    message, key = encode_events([built], hostname="w@h")
    assert key == "worker.heartbeat"
    assert message.headers == {"hostname": "w@h"}
    assert message.properties == {"delivery_mode": 1}
    assert message.content_type == "application/json"
    body = json.loads(message.body)
    assert body["type"] == "worker-heartbeat"
    assert body["timestamp"] == 1.5
    assert (body["freq"], body["active"], body["processed"], body["sw_ident"]) == (
        2.0, 1, 7, "celeriac",
    )  # fmt: skip
    assert len(body["loadavg"]) == 3


def test_several_events_are_a_task_multi_list_celerys_state_reads() -> None:
    now = time.time()
    message = TaskMessage(id="t1", task="app.add", args=(1, 2))
    common: _Common = {"hostname": "w@h", "pid": 1, "timestamp": now, "offset": 0}
    events = [
        event("task-received", clock=1, **common, **task_received_fields(message)),
        event("task-started", clock=2, **common, uuid="t1"),
        event("task-succeeded", clock=3, **common, uuid="t1", result="3", runtime=0.01),
    ]
    wire, key = encode_events(events, hostname="w@h")
    assert key == MULTI_ROUTING_KEY
    state = CeleryState()
    for one in json.loads(wire.body):
        state.event({**one, "local_received": time.time()})  # what the receiver adds
    task = state.tasks["t1"]
    assert (task.state, task.name, task.result, task.worker.hostname) == (
        "SUCCESS", "app.add", "3", "w@h",
    )  # fmt: skip
    assert abs(task.succeeded - now) < 60


def test_no_events_is_an_error() -> None:
    with pytest.raises(ValueError, match="no events"):
        encode_events([], hostname="w@h")

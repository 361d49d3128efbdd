"""RabbitMQ native delayed delivery: our names, arguments and keys are kombu's own."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

import pytest
from kombu.transport import native_delayed_delivery as kombu_delayed

from protocol.delayed import LEVELS, DelayedDelivery, delay_routing_key, strip_delay


@pytest.mark.parametrize("seconds", [1, 2, 3, 59, 3600, 86_400 * 365, 2**LEVELS - 1])
@pytest.mark.parametrize("routing_key", ["celery", "timed.5min", "#.already"])
def test_the_routing_key_is_kombus(seconds: int, routing_key: str) -> None:
    assert delay_routing_key(seconds, routing_key) == kombu_delayed.calculate_routing_key(
        seconds, routing_key
    )


def test_a_key_that_came_back_delayed_is_delayed_again_without_growing() -> None:
    once = delay_routing_key(5, "celery")

    assert strip_delay(once) == "celery"
    assert delay_routing_key(7, once) == delay_routing_key(7, "celery")
    assert strip_delay("celery") == "celery"


@pytest.mark.parametrize(
    ("seconds", "routing_key", "message"),
    [(0, "celery", "1 to"), (2**LEVELS, "celery", "1 to"), (5, "", "empty")],
)
def test_impossible_delays_are_refused(seconds: int, routing_key: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        delay_routing_key(seconds, routing_key)


def _kombu_declarations(queue_type: str, prefix: str | None) -> dict[str, list[Any]]:
    """What kombu's own declaration function asks a channel to do, call by call."""
    connection = MagicMock()
    channel = connection.channel.return_value
    channel.prepare_queue_arguments.side_effect = lambda arguments, **_: arguments
    kombu_delayed.declare_native_delayed_delivery_exchanges_and_queues(
        connection, queue_type, prefix
    )
    found: dict[str, list[Any]] = {"exchanges": [], "queues": [], "queue_bindings": [],
                                   "exchange_bindings": []}  # fmt: skip
    for name, _, kwargs in channel.method_calls:
        if name == "exchange_declare":
            assert (kwargs["type"], kwargs["durable"]) == ("topic", True)
            found["exchanges"].append(kwargs["exchange"])
        elif name == "queue_declare":
            assert kwargs["durable"] is True
            found["queues"].append((kwargs["queue"], kwargs["arguments"]))
        elif name == "queue_bind":
            found["queue_bindings"].append(
                (kwargs["queue"], kwargs["exchange"], kwargs["routing_key"])
            )
        elif name == "exchange_bind":
            found["exchange_bindings"].append(
                (kwargs["destination"], kwargs["source"], kwargs["routing_key"])
            )
    return found


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
@pytest.mark.parametrize("prefix", ["", "app"])
def test_the_topology_is_what_kombu_declares(queue_type: str, prefix: str) -> None:
    ours = DelayedDelivery(prefix=prefix, queue_type=queue_type).topology()
    theirs = _kombu_declarations(queue_type, prefix or None)

    assert ours.exchanges == theirs["exchanges"]
    assert ours.queues == theirs["queues"]
    assert ours.queue_bindings == theirs["queue_bindings"]
    assert ours.exchange_bindings == theirs["exchange_bindings"]


@pytest.mark.parametrize("prefix", ["", "app"])
def test_names_are_kombus(prefix: str) -> None:
    delayed = DelayedDelivery(prefix=prefix)

    assert delayed.entry == kombu_delayed.level_name(LEVELS - 1, prefix or None)
    assert delayed.delivery == kombu_delayed._celery_delayed_delivery_exchange(prefix or None)


def test_destinations_are_bound_as_kombu_binds_them() -> None:
    assert DelayedDelivery.destination_binding("celery") == "#.celery"
    assert DelayedDelivery.destination_binding("#.celery") == "#.celery"


def test_an_unknown_queue_type_is_refused() -> None:
    with pytest.raises(ValueError, match="classic or quorum"):
        DelayedDelivery(queue_type="stream")


def _topic_matches(pattern: list[str], words: list[str]) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""
    if not pattern:
        return not words
    if pattern[0] == "#":
        return any(_topic_matches(pattern[1:], words[n:]) for n in range(len(words) + 1))
    if not words or pattern[0] not in ("*", words[0]):
        return False
    return _topic_matches(pattern[1:], words[1:])


def _first_queue_from(exchange: str, key: str, topology: Any) -> str:
    """The queue a message published to ``exchange`` with ``key`` first lands in, following
    the topology's bindings as RabbitMQ routes (every level's patterns are exclusive)."""
    words = key.split(".")
    for queue, source, pattern in topology.queue_bindings:
        if source == exchange and _topic_matches(pattern.split("."), words):
            return str(queue)
    (onward,) = [
        destination
        for destination, source, pattern in topology.exchange_bindings
        if source == exchange and _topic_matches(pattern.split("."), words)
    ]
    return _first_queue_from(onward, key, topology)


@pytest.mark.parametrize("seconds", [1, 2, 3, 59, 1000, 3600, 2**27, 2**LEVELS - 1])
def test_the_first_stop_is_where_routing_from_the_entry_first_holds_the_message(
    seconds: int,
) -> None:
    delayed = DelayedDelivery(prefix="celeriac")
    key = delay_routing_key(seconds, "celery")
    topology = delayed.topology()

    reached = _first_queue_from(delayed.entry, key, topology)

    assert delayed.first_stop(seconds) == reached
    assert _first_queue_from(delayed.first_stop(seconds), key, topology) == reached


@pytest.mark.parametrize("seconds", [0, 2**LEVELS])
def test_no_first_stop_for_an_impossible_delay(seconds: int) -> None:
    with pytest.raises(ValueError, match="1 to"):
        DelayedDelivery().first_stop(seconds)

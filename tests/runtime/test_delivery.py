"""A delivery once settled: what a waiting run keeps of where its message came from."""

from __future__ import annotations

from protocol import WireMessage
from runtime.transports.base import Delivery


def _delivery(body: bytes, *, queue: str = "q", redelivered: bool = False) -> Delivery:
    message = WireMessage(body, "application/json", "utf-8", headers={"id": body.decode()})
    return Delivery(message, queue, "", queue, redelivered, handle=object())


def test_a_settled_delivery_keeps_where_it_came_from_and_nothing_else() -> None:
    settled = _delivery(b"a", queue="orders", redelivered=True).settled()

    assert (settled.queue, settled.exchange, settled.routing_key) == ("orders", "", "orders")
    assert settled.redelivered is True
    assert settled.handle is None
    assert settled.message.body == b""
    assert not settled.message.headers


def test_deliveries_from_one_place_settle_to_one_object() -> None:
    first, second = _delivery(b"a").settled(), _delivery(b"b").settled()
    elsewhere = _delivery(b"c", queue="other").settled()
    again = _delivery(b"d", redelivered=True).settled()

    assert first is second  # 10,000 waiting runs from one queue keep one
    assert elsewhere is not first
    assert elsewhere.queue == "other"
    assert again is not first
    assert again.redelivered is True

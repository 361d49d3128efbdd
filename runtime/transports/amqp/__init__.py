"""RabbitMQ (AMQP 0-9-1) through aio-pika and aiormq: the transport (:mod:`.transport`), its
flow control (:mod:`.flow`), Celery 5.5's delayed-delivery topology (:mod:`.delayed`), the
remote-control fanout (:mod:`.fanout`), and faster readings of delivery frames for pamqp
(:mod:`.codec`). Imports only :mod:`runtime.transports.base` and :mod:`.reconnect` of the
transports, and :mod:`runtime.errors`."""

from .transport import AmqpTransport

__all__ = ["AmqpTransport"]

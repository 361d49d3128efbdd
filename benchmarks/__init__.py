"""Throughput benchmarks against Celery's own worker.

Today: ``python -m benchmarks.quick_noop --tasks 10000``, a no-op drain comparison on
RabbitMQ. The full suite (``python -m benchmarks``) is issue 6.
"""

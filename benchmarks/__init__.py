"""Throughput and latency benchmarks against Celery's own worker (``python -m benchmarks``)."""

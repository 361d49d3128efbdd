"""celeriac's asyncio runtime: the worker, producer, transports and CLI.

The worker and producer arrive on top of :mod:`protocol`; today this package holds the
``celeriac`` command line.
"""

__all__: list[str] = []

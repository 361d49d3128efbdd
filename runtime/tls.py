"""TLS as Celery configures it: ``broker_use_ssl`` and ``redis_backend_use_ssl``.

A URL can say everything itself, in the form each client library reads:

* ``amqps://user:pass@host:5671/vhost?cafile=/certs/ca.pem&certfile=...&keyfile=...``
  (aio-pika's query parameters; ``no_verify_ssl=1`` skips verification);
* ``rediss://host:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/certs/ca.pem&ssl_certfile=...``
  (redis-py's, which are Celery's for Redis).

An app configured as a Celery app is, with the settings' mappings, takes the same options:
``broker_use_ssl`` with Celery's keys for RabbitMQ (``ca_certs``, ``certfile``, ``keyfile``,
``cert_reqs``) or for Redis (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs``), and ``redis_backend_use_ssl`` with the Redis ones. :func:`with_tls` turns
them into the URL's query parameters (and the scheme into ``amqps``/``rediss``); a value the
URL already has wins. ``cert_reqs`` takes ``ssl.CERT_REQUIRED`` (the default), ``CERT_OPTIONAL``
or ``CERT_NONE``, or their names.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["with_tls"]

_SECURE = {"amqp": "amqps", "pyamqp": "amqps", "redis": "rediss"}
# Celery's names -> the URL parameter each client library reads.
_AMQP = {"ca_certs": "cafile", "certfile": "certfile", "keyfile": "keyfile"}
_REDIS = {
    "ssl_ca_certs": "ssl_ca_certs",
    "ssl_certfile": "ssl_certfile",
    "ssl_keyfile": "ssl_keyfile",
    "ca_certs": "ssl_ca_certs",
    "certfile": "ssl_certfile",
    "keyfile": "ssl_keyfile",
}
_REQS = {
    ssl.CERT_NONE: "none",
    ssl.CERT_OPTIONAL: "optional",
    ssl.CERT_REQUIRED: "required",
    "CERT_NONE": "none",
    "CERT_OPTIONAL": "optional",
    "CERT_REQUIRED": "required",
    "none": "none",
    "optional": "optional",
    "required": "required",
}


def with_tls(url: str, use_ssl: Mapping[str, Any] | bool | None) -> str:
    """``url`` with the TLS options of ``use_ssl`` (a Celery ``*_use_ssl`` setting) in its
    query string; ``url`` itself when there are none. ``ValueError`` names an option it does
    not know, as a typo must not turn verification off."""
    if not use_ssl:
        return url
    parts = urlsplit(url)
    scheme = _SECURE.get(parts.scheme, parts.scheme)
    if scheme not in ("amqps", "rediss"):
        raise ValueError(f"TLS options are for amqp:// and redis:// URLs, not {parts.scheme}://")
    options = dict(use_ssl) if isinstance(use_ssl, Mapping) else {}
    names = _AMQP if scheme == "amqps" else _REDIS
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    added: dict[str, str] = {}
    for key, value in options.items():
        if key in ("cert_reqs", "ssl_cert_reqs"):
            reqs = _REQS.get(value)
            if reqs is None:
                raise ValueError(
                    f"{key} is CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED, not {value!r}"
                )
            if scheme == "amqps":
                if reqs == "none":
                    added["no_verify_ssl"] = "1"
            else:
                added["ssl_cert_reqs"] = reqs
        elif key in names:
            added[names[key]] = str(value)
        else:
            raise ValueError(f"unknown TLS option {key!r} for {scheme}:// (known: {sorted(names)})")
    merged = {**added, **query}
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(merged)))

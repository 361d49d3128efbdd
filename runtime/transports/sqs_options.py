"""What ``sqs://`` URLs and Celery's transport options say, and kombu's SQS queue names: read
without aiobotocore, so a wrong option fails before any client is made (the transport and its
options are described in :mod:`runtime.transports.sqs`)."""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from .base import transport_options

__all__ = [
    "DEFAULT_VISIBILITY_TIMEOUT",
    "DEFAULT_WAIT_TIME_SECONDS",
    "MAX_MESSAGES",
    "MAX_WAIT_TIME_SECONDS",
    "SqsOptions",
    "sqs_queue_name",
]

#: kombu's defaults: hide a received message for 30 minutes; long-poll for 10 seconds.
DEFAULT_VISIBILITY_TIMEOUT = 1800
DEFAULT_WAIT_TIME_SECONDS = 10
#: SQS limits: the longest long poll, and messages per receive or batch call.
MAX_WAIT_TIME_SECONDS = 20
MAX_MESSAGES = 10

_NAME_TABLE = {ord(c): "_" for c in string.punctuation if c not in "-_."} | {ord("."): "-"}
_FALSE = {"0", "false", "no", "off"}


def sqs_queue_name(queue: str, prefix: str = "") -> str:
    """kombu's SQS name for ``queue``: ``prefix + queue`` with punctuation other than ``-``
    and ``_`` made ``_`` and ``.`` made ``-``, a ``.fifo`` suffix kept."""
    name = prefix + queue
    if name.endswith(".fifo"):
        return name[: -len(".fifo")].translate(_NAME_TABLE) + ".fifo"
    return name.translate(_NAME_TABLE)


@dataclass(frozen=True, slots=True)
class SqsOptions:
    """What :class:`SqsTransport` reads from its URL, transport options and environment."""

    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    queue_name_prefix: str = ""
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    wait_time_seconds: int = DEFAULT_WAIT_TIME_SECONDS
    polling_interval: float = 1.0
    creation_attributes: Mapping[str, str] = field(default_factory=dict)
    predefined_queues: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_url(
        cls,
        url: str,
        options: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> SqsOptions:
        """Read ``sqs://[KEY:SECRET@][host[:port]]`` with kombu's options; see the module."""
        opts = transport_options(url, options)
        env = os.environ if environ is None else environ
        split = urlsplit(url)
        endpoint = opts.get("endpoint_url") or _first(
            env, "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"
        )
        if not endpoint and split.hostname:  # kombu: sqs://host:port is the endpoint
            secure = str(opts.get("is_secure", "false")).lower() not in _FALSE
            port = f":{split.port}" if split.port else ""
            endpoint = f"{'https' if secure else 'http'}://{split.hostname}{port}"
        visibility = int(float(opts.get("visibility_timeout", DEFAULT_VISIBILITY_TIMEOUT)))
        if visibility < 0:
            raise ValueError(f"visibility_timeout must not be negative, got {visibility}")
        wait = int(float(opts.get("wait_time_seconds", DEFAULT_WAIT_TIME_SECONDS)))
        predefined = dict(opts.get("predefined_queues") or {})
        for name, entry in predefined.items():
            if not isinstance(entry, Mapping) or not entry.get("url"):
                raise ValueError(f"predefined_queues[{name!r}] needs a 'url'")
        return cls(
            region=str(
                opts.get("region") or _first(env, "AWS_DEFAULT_REGION", "AWS_REGION") or "us-east-1"
            ),
            endpoint_url=str(endpoint) if endpoint else None,
            access_key_id=unquote(split.username) if split.username else None,
            secret_access_key=unquote(split.password) if split.password else None,
            queue_name_prefix=str(opts.get("queue_name_prefix") or ""),
            visibility_timeout=visibility,
            wait_time_seconds=max(0, min(MAX_WAIT_TIME_SECONDS, wait)),
            polling_interval=float(opts.get("polling_interval", 1.0)),
            creation_attributes={
                str(k): str(v) for k, v in (opts.get("sqs-creation-attributes") or {}).items()
            },
            predefined_queues=predefined,
        )

    @property
    def where(self) -> str:
        """``host:port`` of the endpoint, for error messages."""
        if self.endpoint_url:
            split = urlsplit(self.endpoint_url)
            port = split.port or (443 if split.scheme == "https" else 80)
            return f"{split.hostname}:{port}"
        return f"sqs.{self.region}.amazonaws.com:443"


def _first(env: Mapping[str, str], *names: str) -> str | None:
    return next((env[name] for name in names if env.get(name)), None)

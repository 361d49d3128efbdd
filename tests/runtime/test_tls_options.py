"""Celery's TLS settings as URL query parameters (``runtime/tls.py``); the handshakes
themselves are tested against real brokers in ``tests/interop/test_tls.py``."""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

import pytest

from runtime.tls import with_tls


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_no_options_leave_the_url_alone() -> None:
    assert with_tls("amqp://guest:guest@host//", None) == "amqp://guest:guest@host//"


def test_celery_amqp_options_become_aio_pika_parameters() -> None:
    url = with_tls(
        "amqp://guest:guest@host:5671//",
        {"ca_certs": "/c/ca.pem", "certfile": "/c/me.pem", "keyfile": "/c/me.key",
         "cert_reqs": ssl.CERT_REQUIRED},
    )  # fmt: skip

    assert url.startswith("amqps://guest:guest@host:5671//?")
    assert _query(url) == {
        "cafile": ["/c/ca.pem"], "certfile": ["/c/me.pem"], "keyfile": ["/c/me.key"]
    }  # fmt: skip


def test_no_verification_is_said_out_loud() -> None:
    assert _query(with_tls("amqps://h//", {"cert_reqs": ssl.CERT_NONE})) == {"no_verify_ssl": ["1"]}


def test_celery_redis_options_become_redis_py_parameters() -> None:
    url = with_tls(
        "redis://h:6380/0?visibility_timeout=60",
        {"ssl_cert_reqs": "CERT_REQUIRED", "ssl_ca_certs": "/c/ca.pem"},
    )

    assert url.startswith("rediss://h:6380/0?")
    assert _query(url) == {
        "ssl_cert_reqs": ["required"], "ssl_ca_certs": ["/c/ca.pem"], "visibility_timeout": ["60"]
    }  # fmt: skip


def test_the_url_wins_over_the_settings() -> None:
    url = with_tls("rediss://h/0?ssl_ca_certs=/url.pem", {"ssl_ca_certs": "/setting.pem"})

    assert _query(url)["ssl_ca_certs"] == ["/url.pem"]


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("amqps://h//", {"ca_cert": "/c/ca.pem"}, "unknown TLS option 'ca_cert'"),
        ("rediss://h/0", {"ssl_cert_reqs": "always"}, "CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED"),
        ("sqs://", {"ca_certs": "/c/ca.pem"}, "not sqs://"),
    ],
)
def test_a_wrong_option_is_an_error_not_a_silent_downgrade(
    url: str, options: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        with_tls(url, options)

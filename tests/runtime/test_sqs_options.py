"""How the SQS transport reads its URL, transport options and environment (no server)."""

from __future__ import annotations

import sys

import pytest

from runtime.transports.sqs import SqsOptions, SqsTransport
from runtime.transports.urls import transport_for_url


def test_defaults_are_kombus() -> None:
    options = SqsOptions.from_url("sqs://", environ={})

    assert options.region == "us-east-1"
    assert options.endpoint_url is None
    assert (options.access_key_id, options.secret_access_key) == (None, None)
    assert (options.visibility_timeout, options.wait_time_seconds) == (1800, 10)
    assert options.where == "sqs.us-east-1.amazonaws.com:443"


def test_credentials_come_url_quoted_and_stay_out_of_the_repr() -> None:
    options = SqsOptions.from_url("sqs://AKIA%2FX:se%2Bcr%40et@", environ={})

    assert (options.access_key_id, options.secret_access_key) == ("AKIA/X", "se+cr@et")
    assert "se+cr@et" not in repr(options)


def test_options_win_over_the_environment_and_the_query_over_both() -> None:
    environ = {
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_SQS": "http://sqs-only:2",
    }
    from_env = SqsOptions.from_url("sqs://", environ=environ)
    from_options = SqsOptions.from_url(
        "sqs://?region=ap-south-1", {"region": "us-west-2", "endpoint_url": "http://x:3"}, environ
    )

    assert (from_env.region, from_env.endpoint_url) == ("eu-west-1", "http://sqs-only:2")
    assert from_env.where == "sqs-only:2"
    assert (from_options.region, from_options.endpoint_url) == ("ap-south-1", "http://x:3")
    assert SqsOptions.from_url("sqs://", environ={"AWS_REGION": "sa-east-1"}).region == "sa-east-1"


def test_a_host_in_the_url_is_the_endpoint_as_in_kombu() -> None:
    assert SqsOptions.from_url("sqs://k:s@localhost:4566", environ={}).endpoint_url == (
        "http://localhost:4566"
    )
    secure = SqsOptions.from_url("sqs://k:s@sqs.example", {"is_secure": True}, environ={})
    assert secure.endpoint_url == "https://sqs.example"


def test_long_polling_is_capped_at_20_seconds_and_values_may_be_strings() -> None:
    options = SqsOptions.from_url("sqs://?wait_time_seconds=60&visibility_timeout=90.5", environ={})

    assert (options.wait_time_seconds, options.visibility_timeout) == (20, 90)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"visibility_timeout": -1}, "visibility_timeout must not be negative"),
        ({"predefined_queues": {"q": {}}}, r"predefined_queues\['q'\] needs a 'url'"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SqsOptions.from_url("sqs://", options, environ={})


def test_sqs_urls_get_the_sqs_transport_with_their_options() -> None:
    transport = transport_for_url("sqs://k:s@?region=eu-north-1", {"queue_name_prefix": "p-"})

    assert isinstance(transport, SqsTransport)
    assert (transport.options.region, transport.options.queue_name_prefix) == ("eu-north-1", "p-")


def test_without_the_extra_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name.split(".")[0] == "aiobotocore"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "aiobotocore", None)
    monkeypatch.delitem(sys.modules, "runtime.transports.sqs")

    with pytest.raises(ImportError, match=r"pip install 'celeriac\[sqs\]'"):
        transport_for_url("sqs://")

"""The reasons providers give, as the commands' summaries read them."""

from __future__ import annotations

import pytest

from dripmail.providers.base import summary_reason, unreachable_error


@pytest.mark.parametrize(
    ("where", "detail"),
    [
        ("http://127.0.0.1:9", "connection refused"),
        ("smtp.example.org:587", "the host name does not resolve ([Errno -2] Name unknown)"),
        ("https://api.postmarkapp.com", "no connection within 5 s"),
    ],
)
def test_an_unreachable_provider_reads_as_a_sentence(where: str, detail: str) -> None:
    error = unreachable_error(where, detail)
    assert summary_reason(error) == f"the provider at {where} could not be reached ({detail})"


def test_other_reasons_lose_only_the_per_message_prefix() -> None:
    assert summary_reason("not sent: ReadError: boom") == "ReadError: boom"
    assert summary_reason("HTTP 429 slow down") == "HTTP 429 slow down"

"""The reasons providers give, as the commands' summaries read them."""

from __future__ import annotations

import pytest

from dripmail.providers.base import (
    broke_off_error,
    never_went_out_error,
    summary_reason,
    unreachable_error,
)


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


def test_what_happened_to_a_batch_reads_as_the_batch_s_not_one_message_s() -> None:
    """Issue: "N lessons wait for the next run: the SMTP session broke off before this
    message", and an HTTP request that never went out as a bare "ReadError: ...". Stored on
    each message they say so; in a summary about many they are about the batch."""
    broke = broke_off_error("smtp.example.org:587", "no answer to a message's DATA")
    assert broke.endswith("broke off before this message (no answer to a message's DATA)")
    assert summary_reason(broke) == (
        "the connection to smtp.example.org:587 broke off partway through a batch "
        "(no answer to a message's DATA)"
    )
    never = never_went_out_error("https://api.postmarkapp.com", "PoolTimeout: (a) (b)")
    assert summary_reason(never) == (
        "a batch's request to https://api.postmarkapp.com never went out (PoolTimeout: (a) (b))"
    )


def test_other_reasons_lose_only_the_per_message_prefix() -> None:
    assert summary_reason("not sent: could not create a batch_id") == "could not create a batch_id"
    assert summary_reason("HTTP 429 slow down") == "HTTP 429 slow down"

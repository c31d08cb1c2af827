"""What a Postmark event says in a subscriber's timeline (`subscribers show`): the type and
Postmark's own words, never a label said twice or an empty pair of brackets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dripmail.webhooks.postmark import normalise
from tests.fakes.webhook_signing import postmark_record

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ADDR = "ann@example.com"


def _detail(record: dict) -> str:
    event = normalise(record, NOW)
    assert event is not None
    return event.detail or ""


def test_a_bounce_gives_its_type_and_postmarks_description() -> None:
    detail = _detail(postmark_record("Bounce", ADDR))
    assert detail.startswith("HardBounce: The server was unable to deliver your message")


def test_a_bounce_without_words_gives_its_type_once() -> None:
    bare = postmark_record("Bounce", ADDR, Description="", Details="")
    assert _detail(bare) == "HardBounce"


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({}, "ManualSuppression (origin: Recipient)"),
        ({"Origin": ""}, "ManualSuppression"),
        (
            {"SuppressionReason": "HardBounce", "Origin": "Customer"},
            "HardBounce (origin: Customer)",
        ),
    ],
)
def test_a_suppression_names_its_reason_and_who_asked_when_known(extra: dict, said: str) -> None:
    assert _detail(postmark_record("SubscriptionChange", ADDR, **extra)) == said

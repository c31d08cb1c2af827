import pytest

from dripmail.errors import TokenError
from dripmail.tokens import Signer


def test_token_round_trip_purpose_and_rotation() -> None:
    old = Signer("old-key")
    token = old.make(42, "unsubscribe")
    assert old.read(token, "unsubscribe") == 42
    assert Signer("new-key", ["old-key"]).read(token, "unsubscribe") == 42
    with pytest.raises(TokenError):
        old.read(token, "confirm")
    with pytest.raises(TokenError):
        Signer("other").read(token, "unsubscribe")
    with pytest.raises(TokenError):
        old.read(token[:-2] + "xx", "unsubscribe")


def test_tokens_stamped_with_a_send_time_are_reproducible_and_expire_from_it() -> None:
    from datetime import UTC, datetime, timedelta

    signer = Signer("key")
    sent = datetime.now(UTC) - timedelta(days=2)
    first = signer.make(7, "preferences", issued_at=sent)
    # Rendering the same lesson again (after a crash) gives the same link, byte for byte.
    assert signer.make(7, "preferences", issued_at=sent) == first
    assert signer.make(7, "preferences", issued_at=sent + timedelta(seconds=1)) != first
    assert signer.read(first, "preferences") == 7
    # The age counts from the send time: a year after it the link has expired.
    with pytest.raises(TokenError, match="expired"):
        signer.read(
            signer.make(7, "preferences", issued_at=sent - timedelta(days=364)), "preferences"
        )

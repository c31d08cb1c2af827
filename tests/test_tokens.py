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

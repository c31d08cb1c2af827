import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


class _StampedAt:
    """itsdangerous's own TimestampSigner stamping a fixed time: the reference tokens."""

    @staticmethod
    def serializer(keys: list[str], purpose: str, seconds: int):
        from itsdangerous import TimestampSigner, URLSafeTimedSerializer

        class Fixed(TimestampSigner):
            def get_timestamp(self) -> int:
                return seconds

        return URLSafeTimedSerializer(keys, salt=f"dripmail.{purpose}", signer=Fixed)


@given(
    subscriber_id=st.one_of(st.integers(0, 10**9), st.integers(10**9, 10**30)),
    seconds=st.integers(0, 253_402_300_000),
    purpose=st.sampled_from(["unsubscribe", "preferences", "confirm"]),
    keys=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=3),
)
@settings(max_examples=100, deadline=None)
def test_tokens_are_byte_identical_to_itsdangerous_dumps(
    subscriber_id: int, seconds: int, purpose, keys: list[str]
) -> None:
    # Links already in inboxes were made by `URLSafeTimedSerializer.dumps`: same bytes, so
    # nothing changes for them (or for a batch resent under its idempotency key).
    from datetime import UTC, datetime

    signer = Signer(keys[-1], keys[:-1])
    issued = datetime.fromtimestamp(seconds, UTC)
    expected = _StampedAt.serializer(signer._keys, purpose, seconds).dumps(subscriber_id)
    assert signer.make(subscriber_id, purpose, issued_at=issued) == expected
    assert signer.make_many(subscriber_id, [purpose, purpose], issued) == [expected, expected]


def test_tokens_made_now_read_back_and_links_carry_their_purpose() -> None:
    from dripmail.tokens import links

    signer = Signer("key")
    made = links("https://s.example.com/", signer, 9, ["unsubscribe", "confirm"])
    assert list(made) == ["unsubscribe", "confirm"]
    for purpose, url in made.items():
        prefix = f"https://s.example.com/{purpose}/"
        assert url.startswith(prefix)
        assert signer.read(url.removeprefix(prefix), purpose) == 9


@given(data=st.binary(max_size=64))
def test_base64_encode_is_itsdangerous_s(data: bytes) -> None:
    from itsdangerous.encoding import base64_encode as reference

    from dripmail.tokens import base64_encode

    assert base64_encode(data) == reference(data)


@given(
    subscriber_ids=st.lists(
        st.one_of(st.integers(0, 10**9), st.integers(10**9, 10**30)), min_size=1, max_size=5
    ),
    seconds=st.integers(0, 253_402_300_000),
    purposes=st.lists(st.sampled_from(["unsubscribe", "preferences", "confirm"]), max_size=3),
    public_url=st.sampled_from(["https://s.example.com", "https://s.example.com/", "http://x/a/"]),
)
@settings(max_examples=60, deadline=None)
def test_stamped_links_are_the_links_of_each_subscriber(
    subscriber_ids: list[int], seconds: int, purposes, public_url: str
) -> None:
    # A broadcast signs with `stamped_links`; a copy rendered again the general way (or a
    # link already sent) must be the same bytes.
    from datetime import UTC, datetime

    from dripmail.tokens import links

    signer = Signer("new-key", ["old-key"])
    issued = datetime.fromtimestamp(seconds, UTC)
    urls = signer.stamped_links(public_url, purposes, issued)
    for sid in subscriber_ids:
        made = links(public_url, signer, sid, purposes, issued)
        assert urls(sid) == tuple(made[p] for p in purposes)
        for purpose, url in zip(purposes, urls(sid), strict=True):
            token = url.rpartition("/")[2]
            expected = _StampedAt.serializer(signer._keys, purpose, seconds).dumps(sid)
            assert token == expected
            assert signer.read(token, purpose, now=issued) == sid

"""Signed tokens for the links in emails (confirm, unsubscribe, preferences).

Built on itsdangerous: an HMAC-SHA signature over the subscriber id, a salt per purpose (so an
unsubscribe token never works as a confirm token), a timestamp for expiry, and a list of keys
so ``DRIPMAIL_SECRET_KEY`` can be rotated while ``DRIPMAIL_OLD_SECRET_KEYS`` still verify.
The email address is never in a token.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from dripmail.errors import TokenError

Purpose = Literal["confirm", "unsubscribe", "preferences"]

# Unsubscribe links must keep working in old emails (RFC 8058 and the law expect it).
MAX_AGE: dict[str, timedelta | None] = {
    "confirm": timedelta(days=7),
    "unsubscribe": None,
    "preferences": timedelta(days=365),
}


class _IssuedAt(TimestampSigner):
    """A timestamp signer that stamps a given time (an email's send time) instead of the clock."""

    def __init__(self, *args: Any, issued_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.issued_at = issued_at

    def get_timestamp(self) -> int:
        return self.issued_at


class Signer:
    """Makes and checks tokens with the current key and any older keys still accepted."""

    def __init__(self, secret_key: str, old_keys: list[str] | None = None) -> None:
        if not secret_key:
            raise TokenError("DRIPMAIL_SECRET_KEY is empty: set it to a long random string")
        # itsdangerous signs with the last key and verifies with all of them.
        self._keys = [k for k in (old_keys or []) if k] + [secret_key]

    @classmethod
    def from_settings(cls, settings) -> Signer:  # settings: dripmail.config.Settings
        """A signer from ``DRIPMAIL_SECRET_KEY`` and ``DRIPMAIL_OLD_SECRET_KEYS``."""
        old = settings.old_secret_keys.get_secret_value().split(",")
        return cls(settings.secret_key.get_secret_value(), [k.strip() for k in old])

    def _serializer(
        self, purpose: Purpose, issued_at: datetime | None = None
    ) -> URLSafeTimedSerializer:
        if issued_at is None:
            return URLSafeTimedSerializer(self._keys, salt=f"dripmail.{purpose}")
        return URLSafeTimedSerializer(
            self._keys,
            salt=f"dripmail.{purpose}",
            signer=_IssuedAt,
            signer_kwargs={"issued_at": int(issued_at.timestamp())},
        )

    def make(self, subscriber_id: int, purpose: Purpose, issued_at: datetime | None = None) -> str:
        """A URL-safe token for one subscriber and one purpose.

        `issued_at` stamps the token with that time instead of now (a lesson's send time), so
        rendering the same delivery again gives the same links, byte for byte: a batch resent
        after a crash under its idempotency key must be the same request (see handover.py).
        """
        return self._serializer(purpose, issued_at).dumps(subscriber_id)

    def read(self, token: str, purpose: Purpose) -> int:
        """The subscriber id in a token; raises `TokenError` if bad, expired or for another use."""
        max_age = MAX_AGE[purpose]
        try:
            value = self._serializer(purpose).loads(
                token, max_age=int(max_age.total_seconds()) if max_age else None
            )
        except SignatureExpired:
            raise TokenError(f"this {purpose} link has expired") from None
        except BadSignature:
            raise TokenError(f"this {purpose} link is not valid") from None
        if not isinstance(value, int):
            raise TokenError(f"this {purpose} link is not valid")
        return value


def link(
    public_url: str,
    signer: Signer,
    subscriber_id: int,
    purpose: Purpose,
    issued_at: datetime | None = None,
) -> str:
    """The absolute URL for a purpose: /confirm/<t>, /unsubscribe/<t> or /preferences/<t>."""
    token = signer.make(subscriber_id, purpose, issued_at)
    return f"{public_url.rstrip('/')}/{purpose}/{token}"

"""Signed tokens for the links in emails (confirm, unsubscribe, preferences).

The format is itsdangerous's `URLSafeTimedSerializer`: an HMAC-SHA1 signature over the
subscriber id, a salt per purpose (so an unsubscribe token never works as a confirm token), a
timestamp for expiry, and a list of keys so ``DRIPMAIL_SECRET_KEY`` can be rotated while
``DRIPMAIL_OLD_SECRET_KEYS`` still verify. The email address is never in a token.

Tokens are read with itsdangerous itself. They are made here, byte for byte as its ``dumps``
would make them, from the derived key itsdangerous computes once per purpose: ``dumps`` builds
a signer and derives its key again for every link, which cost a broadcast a quarter of its CPU
(tests/test_tokens.py checks the bytes against ``dumps`` for many ids, times and keys).
"""

from __future__ import annotations

import binascii
import hmac
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from itsdangerous import BadSignature, URLSafeTimedSerializer
from itsdangerous.encoding import int_to_bytes

from dripmail.errors import TokenError

Purpose = Literal["confirm", "unsubscribe", "preferences"]
PURPOSES: tuple[Purpose, ...] = ("unsubscribe", "preferences", "confirm")

# Unsubscribe links must keep working in old emails (RFC 8058 and the law expect it).
MAX_AGE: dict[str, timedelta | None] = {
    "confirm": timedelta(days=7),
    "unsubscribe": None,
    "preferences": timedelta(days=365),
}

# itsdangerous's `base64_encode` (URL-safe alphabet, no padding) in two C calls instead of
# four Python ones: the same bytes (tests/test_tokens.py), at ~0.3 us a call per link.
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def base64_encode(data: bytes) -> bytes:
    """itsdangerous.encoding.base64_encode for bytes: URL-safe base64 without ``=`` padding."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


# Below this the JSON of an id (at most 9 digits) is never compressed by itsdangerous: it only
# compresses when zlib's output (8 bytes at least) is 2 bytes shorter than the JSON.
_PLAIN_PAYLOAD_BELOW = 10**9


class Signer:
    """Makes and checks tokens with the current key and any older keys still accepted."""

    def __init__(self, secret_key: str, old_keys: list[str] | None = None) -> None:
        if not secret_key:
            raise TokenError("DRIPMAIL_SECRET_KEY is empty: set it to a long random string")
        # itsdangerous signs with the last key and verifies with all of them.
        self._keys = [k for k in (old_keys or []) if k] + [secret_key]
        self._serializers: dict[str, URLSafeTimedSerializer] = {}
        self._derived: dict[str, bytes] = {}
        # hmac objects keyed once per purpose: `copy` skips hashing the padded key per link.
        self._macs: dict[str, hmac.HMAC] = {}
        self._stamp: tuple[int, bytes] = (-1, b"")

    @classmethod
    def from_settings(cls, settings) -> Signer:  # settings: dripmail.config.Settings
        """A signer from ``DRIPMAIL_SECRET_KEY`` and ``DRIPMAIL_OLD_SECRET_KEYS``."""
        old = settings.old_secret_keys.get_secret_value().split(",")
        return cls(settings.secret_key.get_secret_value(), [k.strip() for k in old])

    def _serializer(self, purpose: Purpose) -> URLSafeTimedSerializer:
        serializer = self._serializers.get(purpose)
        if serializer is None:
            serializer = URLSafeTimedSerializer(self._keys, salt=f"dripmail.{purpose}")
            self._serializers[purpose] = serializer
        return serializer

    def _key(self, purpose: Purpose) -> bytes:
        """The HMAC key itsdangerous derives from the newest secret and the purpose's salt."""
        key = self._derived.get(purpose)
        if key is None:
            key = self._serializer(purpose).make_signer().derive_key()
            self._derived[purpose] = key
        return key

    def _mac(self, purpose: Purpose) -> hmac.HMAC:
        """An HMAC-SHA1 keyed for `purpose`, to `copy` for each token (hmac's documented way
        to sign many messages with one key)."""
        mac = self._macs.get(purpose)
        if mac is None:
            mac = self._macs[purpose] = hmac.new(self._key(purpose), digestmod="sha1")
        return mac

    def _payload(self, subscriber_id: int) -> bytes:
        """The token's first part: the id as itsdangerous's serializer writes it."""
        if type(subscriber_id) is int and 0 <= subscriber_id < _PLAIN_PAYLOAD_BELOW:
            return base64_encode(str(subscriber_id).encode())
        return self._serializer("unsubscribe").dump_payload(subscriber_id)

    def _timestamp(self, seconds: int) -> bytes:
        # One send time stamps a whole batch: encode it once.
        if self._stamp[0] != seconds:
            self._stamp = (seconds, base64_encode(int_to_bytes(seconds)))
        return self._stamp[1]

    def make(self, subscriber_id: int, purpose: Purpose, issued_at: datetime | None = None) -> str:
        """A URL-safe token for one subscriber and one purpose.

        `issued_at` stamps the token with that time instead of now (a lesson's send time), so
        rendering the same delivery again gives the same links, byte for byte: a batch resent
        after a crash under its idempotency key must be the same request (see handover.py).
        """
        return self.make_many(subscriber_id, (purpose,), issued_at)[0]

    def make_many(
        self, subscriber_id: int, purposes: Iterable[Purpose], issued_at: datetime | None = None
    ) -> list[str]:
        """`make` for several purposes of one subscriber (one payload and time encoded)."""
        seconds = int(time.time()) if issued_at is None else int(issued_at.timestamp())
        signed = self._payload(subscriber_id) + b"." + self._timestamp(seconds)
        return [_sign(self._mac(purpose), signed).decode("ascii") for purpose in purposes]

    def stamped_links(
        self, public_url: str, purposes: Sequence[Purpose], issued_at: datetime
    ) -> Callable[[int], tuple[str, ...]]:
        """`links` for many subscribers stamped with one time: subscriber id -> the URLs of
        `purposes`, in that order, byte for byte what `links` makes.

        What every reader of a send shares (keys, time stamp, URL prefixes) is done once here:
        a broadcast signs two links for each of its readers (issue 13).
        """
        base = public_url.rstrip("/")
        stamp = b"." + base64_encode(int_to_bytes(int(issued_at.timestamp())))
        signers = tuple((f"{base}/{p}/", self._mac(p)) for p in purposes)
        payload = self._payload

        def urls(subscriber_id: int) -> tuple[str, ...]:
            signed = payload(subscriber_id) + stamp
            return tuple(prefix + _sign(mac, signed).decode("ascii") for prefix, mac in signers)

        return urls

    def read(self, token: str, purpose: Purpose, now: datetime | None = None) -> int:
        """The subscriber id in a token; raises `TokenError` if bad, expired or for another use.

        The token's age is measured at `now` (the caller's clock: the web app's injected one,
        so a simulated week judges its own links; default: the real clock).
        """
        max_age = MAX_AGE[purpose]
        try:
            value, signed_at = self._serializer(purpose).loads(token, return_timestamp=True)
        except BadSignature:
            raise TokenError(f"this {purpose} link is not valid") from None
        if max_age is not None:
            # As itsdangerous would with max_age, but against `now`. A stamp ahead of `now`
            # is not refused: lesson links are stamped with the send time, which a provider
            # scheduling ahead may hold (and a link scanner follow) before it comes, and
            # only a holder of the key can make a stamp at all.
            age = (now or datetime.now(UTC)) - signed_at
            if age > max_age:
                raise TokenError(f"this {purpose} link has expired")
        if not isinstance(value, int):
            raise TokenError(f"this {purpose} link is not valid")
        return value


def _sign(mac: hmac.HMAC, signed: bytes) -> bytes:
    """``signed.signature``: the token itsdangerous's ``dumps`` makes of `signed` (payload and
    time stamp) with the key `mac` was made with."""
    mac = mac.copy()
    mac.update(signed)
    return signed + b"." + base64_encode(mac.digest())


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


def links(
    public_url: str,
    signer: Signer,
    subscriber_id: int,
    purposes: Iterable[Purpose],
    issued_at: datetime | None = None,
) -> dict[Purpose, str]:
    """`link` for each purpose of one subscriber: {purpose: absolute URL}."""
    wanted = tuple(purposes)
    base = public_url.rstrip("/")
    tokens = signer.make_many(subscriber_id, wanted, issued_at)
    return {p: f"{base}/{p}/{t}" for p, t in zip(wanted, tokens, strict=True)}

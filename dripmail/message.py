"""The `Message` value every part of dripmail passes around, and its MIME form."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from typing import Literal

MessageKind = Literal["lesson", "broadcast", "confirm", "test"]


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An address with an optional display name."""

    address: str
    name: str = ""

    def formatted(self) -> str:
        """RFC 5322 form, e.g. ``"Studio" <hello@example.com>`` (quoted and encoded as needed)."""
        if not self.name:
            return self.address
        local, _, domain = self.address.rpartition("@")
        return str(Address(display_name=self.name, username=local, domain=domain))


@dataclass(frozen=True, slots=True)
class Message:
    """One rendered email for one recipient, ready for any provider.

    `key` is stable for (recipient x content), e.g. ``lesson-<subscriber>-<day>``; it is the
    idempotency key, the outbox file name, and travels in provider metadata.
    """

    key: str
    kind: MessageKind
    ref: str
    sender: Mailbox
    to: Mailbox
    subject: str
    html: str
    text: str
    preheader: str = ""
    reply_to: Mailbox | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    send_at: datetime | None = None

    @property
    def unsubscribe_url(self) -> str | None:
        """The https URL inside ``List-Unsubscribe``, if any."""
        value = self.headers.get("List-Unsubscribe", "")
        for part in value.split(","):
            part = part.strip().strip("<>")
            if part.startswith("https://") or part.startswith("http://"):
                return part
        return None

    def message_id(self) -> str:
        """A deterministic Message-ID derived from the key and the sender's domain."""
        domain = self.sender.address.rpartition("@")[2] or "dripmail.invalid"
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:32]
        return f"<{digest}@{domain}>"

    def to_mime(self) -> EmailMessage:
        """A standards-correct ``multipart/alternative`` message (text first, then HTML)."""
        mime = EmailMessage(policy=SMTP)
        mime["From"] = self.sender.formatted()
        mime["To"] = self.to.formatted()
        if self.reply_to:
            mime["Reply-To"] = self.reply_to.formatted()
        mime["Subject"] = self.subject
        # A fixed Date keeps the same inputs byte-identical; send_at is when it is meant to arrive.
        when = self.send_at or datetime(1970, 1, 1, tzinfo=UTC)
        mime["Date"] = format_datetime(when.astimezone(UTC))
        mime["Message-ID"] = self.message_id()
        for name, value in self.headers.items():
            mime[name] = value
        mime.set_content(self.text, subtype="plain", charset="utf-8", cte="quoted-printable")
        mime.add_alternative(self.html, subtype="html", charset="utf-8", cte="quoted-printable")
        # The default boundary is random; derive it so the same inputs give the same bytes.
        mime.set_boundary("=_dm_" + hashlib.sha256(self.key.encode()).hexdigest()[:24])
        return mime

    def to_bytes(self) -> bytes:
        """The MIME message as bytes with CRLF line endings (what SMTP and .eml files carry)."""
        return self.to_mime().as_bytes()

"""Sign webhook requests the way each provider does, for tests (unit and HTTP level).

`WebhookKeys.generate()` makes fresh credentials (a real P-256 key pair for SendGrid, random
HMAC keys, basic-auth credentials); `.settings()` gives a `Settings` holding the verifying
halves; `signed(provider, payload, now)` returns `(headers, body)` exactly as the provider
would post them. Payload builders shaped like each provider's documented examples follow.

    keys = WebhookKeys.generate()
    headers, body = keys.signed("sendgrid", [sendgrid_event("bounce", "a@example.com")], NOW)
    events = verify_and_parse("sendgrid", headers, body, keys.settings(), NOW)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dripmail.config import Settings


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


@dataclass(frozen=True)
class WebhookKeys:
    """One set of webhook credentials for all four providers."""

    sendgrid_private: ec.EllipticCurvePrivateKey
    mailgun_key: str
    resend_secret: str  # "whsec_<base64>"
    postmark_user: str
    postmark_password: str

    @classmethod
    def generate(cls) -> WebhookKeys:
        return cls(
            sendgrid_private=ec.generate_private_key(ec.SECP256R1()),
            mailgun_key=secrets.token_hex(16),
            resend_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
            postmark_user="postmark-hooks",
            postmark_password=secrets.token_urlsafe(18),
        )

    @property
    def sendgrid_public_b64(self) -> str:
        """The verification key as SendGrid's settings page shows it: base64 DER."""
        der = self.sendgrid_private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def env(self) -> dict[str, str]:
        """The environment variables an operator would set (for subprocess / app tests)."""
        return {
            "POSTMARK_WEBHOOK_USER": self.postmark_user,
            "POSTMARK_WEBHOOK_PASSWORD": self.postmark_password,
            "SENDGRID_WEBHOOK_PUBLIC_KEY": self.sendgrid_public_b64,
            "MAILGUN_WEBHOOK_SIGNING_KEY": self.mailgun_key,
            "RESEND_WEBHOOK_SECRET": self.resend_secret,
        }

    def settings(self, **overrides: Any) -> Settings:
        """Settings with these credentials (and any other aliases given, e.g. a database)."""
        return Settings(_env_file=None, **{**self.env(), **overrides})  # type: ignore[call-arg]

    # -- signing, one method per provider ------------------------------------------------

    def postmark_headers(self, user: str | None = None, password: str | None = None) -> dict:
        raw = f"{user or self.postmark_user}:{password or self.postmark_password}"
        return {
            "Authorization": "Basic " + base64.b64encode(raw.encode()).decode(),
            "Content-Type": "application/json",
        }

    def sendgrid_headers(self, body: bytes, timestamp: int) -> dict:
        signature = self.sendgrid_private.sign(
            str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256())
        )
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": str(timestamp),
            "Content-Type": "application/json",
        }

    def mailgun_signature(self, timestamp: int, token: str | None = None) -> dict:
        token = token or secrets.token_hex(25)  # Mailgun tokens are 50 characters
        digest = hmac.new(
            self.mailgun_key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256
        ).hexdigest()
        return {"timestamp": str(timestamp), "token": token, "signature": digest}

    def resend_headers(self, body: bytes, timestamp: int, msg_id: str | None = None) -> dict:
        msg_id = msg_id or "msg_" + secrets.token_hex(12)
        key = base64.b64decode(self.resend_secret.removeprefix("whsec_"))
        mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        return {
            "svix-id": msg_id,
            "svix-timestamp": str(timestamp),
            "svix-signature": "v1," + base64.b64encode(mac).decode(),
            "Content-Type": "application/json",
        }

    def signed(
        self,
        provider: str,
        payload: Any,
        now: datetime,
        *,
        token: str | None = None,
        msg_id: str | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """(headers, body) as `provider` would post `payload` at `now`.

        Mailgun: `payload` is the event-data object (the signature is added around it).
        """
        stamp = int(now.timestamp())
        if provider == "postmark":
            return self.postmark_headers(), _dumps(payload)
        if provider == "sendgrid":
            body = _dumps(payload)
            return self.sendgrid_headers(body, stamp), body
        if provider == "mailgun":
            body = _dumps(
                {"signature": self.mailgun_signature(stamp, token), "event-data": payload}
            )
            return {"Content-Type": "application/json"}, body
        if provider == "resend":
            body = _dumps(payload)
            return self.resend_headers(body, stamp, msg_id), body
        raise ValueError(provider)


# -- payloads shaped like each provider's documented examples ------------------------------


def postmark_record(kind: str, email: str, *, key: str | None = None, **extra: Any) -> dict:
    """A Postmark webhook body; `kind` is a RecordType (Bounce: pass Type=..., ID=...)."""
    record: dict[str, Any] = {
        "RecordType": kind,
        "ServerID": 23,
        "MessageStream": "outbound",
        "MessageID": extra.pop("MessageID", "883953f4-6105-42a2-a16a-77a8eac79483"),
        "Tag": "psoas-week",
        "Metadata": {"dripmail_key": key} if key else {},
    }
    if kind in ("Bounce", "SpamComplaint"):
        record.update(
            ID=42,
            Type="HardBounce" if kind == "Bounce" else "SpamComplaint",
            TypeCode=1 if kind == "Bounce" else 512,
            Name="Hard bounce",
            Description="The server was unable to deliver your message (ex: unknown user).",
            Details="smtp;550 5.1.1 The email account that you tried to reach does not exist.",
            Email=email,
            From="studio@example.com",
            BouncedAt="2026-06-01T11:58:10.2735393-04:00",
            DumpAvailable=True,
            Inactive=kind == "Bounce",
            CanActivate=True,
            Subject="Day 1: meet your psoas",
        )
    elif kind == "Delivery":
        record.update(
            Recipient=email,
            DeliveredAt="2026-06-01T11:58:54.9070259Z",
            Details="Test delivery webhook details",
        )
    elif kind in ("Open", "Click"):
        record.update(
            Recipient=email,
            ReceivedAt="2026-06-01T11:59:11.0000000Z",
            FirstOpen=True,
            Platform="WebMail",
            UserAgent="Mozilla/5.0",
        )
        if kind == "Click":
            record.update(ClickLocation="HTML", OriginalLink="https://studio.example.com/video")
    elif kind == "SubscriptionChange":
        record.update(
            Recipient=email,
            ChangedAt="2026-06-01T11:59:34.416071Z",
            Origin="Recipient",
            SuppressSending=True,
            SuppressionReason="ManualSuppression",
        )
    record.update(extra)
    return record


def sendgrid_event(kind: str, email: str, *, key: str | None = None, **extra: Any) -> dict:
    """One event of a SendGrid Event Webhook batch (custom_args appear as top-level keys)."""
    event: dict[str, Any] = {
        "email": email,
        "timestamp": 1780315080,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": kind,
        "category": ["psoas-week"],
        "sg_event_id": base64.b64encode(secrets.token_bytes(16)).decode(),
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
    }
    if key:
        event["dripmail_key"] = key
    if kind == "bounce":
        event.update(
            reason="500 unknown recipient", status="5.0.0", type="bounce",
            bounce_classification="Invalid Address",
        )  # fmt: skip
    elif kind == "click":
        event.update(url="https://studio.example.com/video", url_offset={"index": 0})
    elif kind == "delivered":
        event.update(response="250 OK")
    event.update(extra)
    return event


def mailgun_event(kind: str, email: str, *, key: str | None = None, **extra: Any) -> dict:
    """A Mailgun `event-data` object (user-variables carry the delivery key)."""
    data: dict[str, Any] = {
        "event": kind,
        "id": extra.pop("id", "G9Bn5sl1TC6nu79C8C0bwg"),
        "timestamp": 1780315080.329574,
        "log-level": "info" if kind != "failed" else "error",
        "recipient": email,
        "recipient-domain": email.rpartition("@")[2],
        "tags": ["psoas-week"],
        "user-variables": {"dripmail_key": key} if key else {},
        "message": {
            "headers": {
                "to": email,
                "message-id": "20260601115800.1.ABCDEF@mg.studio.example.com",
                "from": "Studio <studio@mg.studio.example.com>",
                "subject": "Day 1: meet your psoas",
            },
            "size": 2312,
        },
        "flags": {"is-routed": False, "is-authenticated": True, "is-test-mode": False},
    }
    if kind == "failed":
        data.update(
            severity="permanent",
            reason="bounce",
            **{
                "delivery-status": {
                    "code": 550,
                    "message": "5.1.1 The email account that you tried to reach does not exist",
                    "description": "",
                    "attempt-no": 1,
                }
            },
        )
    elif kind == "clicked":
        data.update(url="https://studio.example.com/video")
    data.update(extra)
    return data


def resend_event(kind: str, email: str, *, key: str | None = None, **data_extra: Any) -> dict:
    """A Resend webhook body; `kind` like "email.bounced" (tags carry the delivery key)."""
    data: dict[str, Any] = {
        "email_id": "56761188-7520-42d8-8898-ff6fc54ce618",
        "created_at": "2026-06-01T11:58:00.000Z",
        "from": "Studio <studio@studio.example.com>",
        "to": [email],
        "subject": "Day 1: meet your psoas",
        "tags": {"dripmail_key": key} if key else {},
    }
    if kind == "email.bounced":
        data["bounce"] = {
            "diagnosticCode": ["smtp; 550 5.1.1 user unknown"],
            "message": "The recipient's email address does not exist.",
            "subType": "General",
            "type": "Permanent",
        }
    elif kind == "email.clicked":
        data["click"] = {
            "ipAddress": "192.0.2.1",
            "link": "https://studio.example.com/video",
            "timestamp": "2026-06-01T11:59:00.000Z",
            "userAgent": "Mozilla/5.0",
        }
    data.update(data_extra)
    return {"type": kind, "created_at": "2026-06-01T11:59:00.000Z", "data": data}

"""Postmark: ``POST /email/batch`` (up to 500), per-message answers, metadata lookups.

- Each message carries its delivery key in ``Metadata`` (``dripmail_key``), a ``Tag`` naming
  the course and lesson, its ``MessageStream`` (lessons on ``DRIPMAIL_POSTMARK_STREAM``,
  newsletters on ``DRIPMAIL_POSTMARK_BROADCAST_STREAM``), both parts, reply-to and the
  List-Unsubscribe headers.
- A batch answers 200 with one result per message in request order; ``ErrorCode`` 406
  (inactive recipient) means the address must be suppressed.
- Postmark has no idempotency key and no scheduling. When a batch's fate is unknown (a timeout
  or a dropped connection after sending, a 5xx), each key is looked up with
  ``GET /messages/outbound?metadata_dripmail_key=...``: found ones count as accepted, only the
  absent ones are sent again. Postmark cannot cancel: it gets a lesson when it is due.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dripmail.config import Settings
from dripmail.message import Message
from dripmail.providers.api import HttpProvider
from dripmail.providers.base import Capabilities, Lookup, Outcome, SendResult, is_stopped
from dripmail.providers.common import KEY_FIELD, base_url, category, limits_for, require
from dripmail.providers.http import Answer, Limits, RetryPolicy, Sent, json_body

NAME = "postmark"
VARIABLE = "POSTMARK_SERVER_TOKEN"
# Postmark documents no request rate; these are conservative and configurable.
DEFAULT_LIMITS = Limits(messages_per_second=1000, requests_per_second=10, max_concurrency=4)

# Per-message codes that describe the account or sender, not the recipient: the message is
# fine and will go once the operator fixes the account, so it is retried later, never failed.
# 400 sender signature not found, 401 not confirmed, 405 not allowed to send (credits),
# 412 account pending, 413 may not send outside the organisation, 429 rate limited.
ACCOUNT_CODES = frozenset({400, 401, 405, 412, 413, 429})
INACTIVE_RECIPIENT = 406

CAPABILITIES = Capabilities(
    max_batch=500, schedule_ahead=None, can_cancel=False, idempotency_key=False
)


class PostmarkProvider(HttpProvider):
    """The Postmark server API. Unicode local parts (RFC 6531) are refused by its API
    (django-anymail's Postmark notes), so such an address fails alone."""

    name = NAME
    capabilities = CAPABILITIES
    VARIABLE = VARIABLE
    DEFAULT_LIMITS = DEFAULT_LIMITS
    CHECK_PATH = "/server"

    def __init__(
        self,
        token: str,
        *,
        base: str = "https://api.postmarkapp.com",
        stream: str = "outbound",
        broadcast_stream: str = "broadcast",
        limits: Limits = DEFAULT_LIMITS,
        retry: RetryPolicy | None = None,
        rounds: int = 3,
        settle_seconds: float = 2.0,
    ) -> None:
        super().__init__(
            base,
            headers={"X-Postmark-Server-Token": token, "Accept": "application/json"},
            limits=limits,
            retry=retry,
        )
        self.stream = stream
        self.broadcast_stream = broadcast_stream
        self.rounds = rounds
        # Postmark records an accepted message for search a moment after accepting it; wait
        # this long before trusting "absent" after an ambiguous answer.
        self.settle_seconds = settle_seconds

    def prepare_request(self, messages: Sequence[Message]) -> bytes:
        """The batch's request body (payloads and JSON: most of the CPU a hand-over costs
        here); Postmark sends everything at once, so any batch can be prepared."""
        return json_body([self.payload(m) for m in messages])

    def payload(self, message: Message) -> dict[str, Any]:
        """The JSON object for one message in ``POST /email/batch``.

        No Date or Message-ID header: Postmark stamps both when it sends.
        """
        body: dict[str, Any] = {
            "From": message.sender.formatted(),
            "To": message.to.formatted(),
            "Subject": message.subject,
            "HtmlBody": message.html,
            "TextBody": message.text,
            "Tag": category(message),
            "Metadata": {KEY_FIELD: message.key},
            "MessageStream": self.broadcast_stream if message.kind == "broadcast" else self.stream,
            "Headers": [{"Name": k, "Value": v} for k, v in message.headers.items()],
        }
        if message.reply_to:
            body["ReplyTo"] = message.reply_to.formatted()
        return body

    async def _send(
        self,
        messages: Sequence[Message],
        send_at: datetime | None = None,
        batch_key: str | None = None,
    ) -> list[SendResult]:
        """Send now (Postmark cannot schedule); see the module docstring for ambiguity."""
        results: dict[int, SendResult] = {}
        pending = list(range(len(messages)))
        prepared: bytes | None = self.take_prepared(messages, batch_key)
        for round_ in range(self.rounds):
            if round_ == 0 and prepared is not None:
                body = prepared  # the same bytes `json=` would send, encoded ahead
            else:
                body = json_body([self.payload(messages[i]) for i in pending])
            answer = await self.http.call(
                "POST",
                "/email/batch",
                content=body,
                headers={"Content-Type": "application/json"},
                messages=len(pending),
            )
            if answer.sent is Sent.ANSWERED:
                results.update(self._answered(answer, [messages[i] for i in pending], pending))
                pending = []
                break
            if answer.sent is Sent.NOT_SENT:
                break
            # Ambiguous: Postmark may hold some or all of them. Look before sending again.
            if self.settle_seconds:
                await asyncio.sleep(self.settle_seconds)
            # These look-ups settle a request already on the wire: a stop does not cut them.
            looked = await self._lookup([messages[i] for i in pending], stoppable=False)
            still = []
            for i in pending:
                found, provider_id = looked[messages[i].key]
                if found is Lookup.FOUND:
                    results[i] = SendResult(messages[i].key, Outcome.ACCEPTED, provider_id)
                elif found is Lookup.UNKNOWN:
                    results[i] = SendResult(
                        messages[i].key,
                        Outcome.REVIEW,
                        error=f"{answer.error}; the lookup by metadata failed too: check by hand",
                    )
                else:
                    still.append(i)
            pending = still
            if not pending:
                break
            if round_ == self.rounds - 1:
                answer.error = f"{answer.error} (looked up: not at Postmark)"
        for i in pending:
            # Never accepted (surely: 429/refused, or looked up and absent): retry later.
            results[i] = SendResult(messages[i].key, Outcome.TRANSIENT, error=answer.error)
        return [results[i] for i in range(len(messages))]

    def _answered(
        self, answer: Answer, batch: list[Message], indexes: list[int]
    ) -> dict[int, SendResult]:
        body = answer.json()
        out: dict[int, SendResult] = {}
        if answer.status == 200 and isinstance(body, list) and len(body) == len(batch):
            for i, message, item in zip(indexes, batch, body, strict=True):
                out[i] = self._one(message, item if isinstance(item, dict) else {})
            return out
        # The whole request was refused (422 with one ErrorCode, or another 4xx).
        code = body.get("ErrorCode") if isinstance(body, dict) else None
        text = body.get("Message") if isinstance(body, dict) else None
        reason = f"HTTP {answer.status}" + (f" ErrorCode {code}: {text}" if code else "")
        outcome = Outcome.TRANSIENT if code in ACCOUNT_CODES else Outcome.PERMANENT
        for i, message in zip(indexes, batch, strict=True):
            out[i] = SendResult(message.key, outcome, error=reason)
        return out

    @staticmethod
    def _one(message: Message, item: dict[str, Any]) -> SendResult:
        code = item.get("ErrorCode", -1)
        if code == 0 and item.get("MessageID"):
            return SendResult(message.key, Outcome.ACCEPTED, str(item["MessageID"]))
        reason = f"Postmark ErrorCode {code}: {item.get('Message', 'no message')}"
        if code == INACTIVE_RECIPIENT:
            return SendResult(message.key, Outcome.PERMANENT, error=reason, suppress=True)
        if code in ACCOUNT_CODES:
            return SendResult(message.key, Outcome.TRANSIENT, error=reason)
        return SendResult(message.key, Outcome.PERMANENT, error=reason)

    async def _lookup_one(
        self, message: Message, stoppable: bool = True
    ) -> tuple[Lookup, str | None]:
        answer = await self.http.call(
            "GET",
            "/messages/outbound",
            params={
                "count": 1,
                "offset": 0,
                "recipient": message.to.address,
                f"metadata_{KEY_FIELD}": message.key,
            },
            idempotent=True,
            stoppable=stoppable,
        )
        if answer.sent is Sent.NOT_SENT and is_stopped(answer.error):
            return Lookup.NOT_ASKED, None  # a stop came first: nothing was asked
        body = answer.json()
        if answer.sent is not Sent.ANSWERED or answer.status != 200 or not isinstance(body, dict):
            return Lookup.UNKNOWN, None
        found = body.get("Messages") or []
        if body.get("TotalCount", len(found)) and found:
            return Lookup.FOUND, str(found[0].get("MessageID") or "") or None
        return Lookup.ABSENT, None

    async def _lookup(
        self, messages: Sequence[Message], stoppable: bool = True
    ) -> dict[str, tuple[Lookup, str | None]]:
        # One search per key (Postmark allows one metadata filter per search); the limiter
        # bounds how many run at once and paces them (10/s by default).
        found = await asyncio.gather(*(self._lookup_one(m, stoppable) for m in messages))
        return {m.key: f for m, f in zip(messages, found, strict=True)}

    async def reconcile(self, messages: Sequence[Message]) -> dict[str, Lookup]:
        """Look each key up by metadata: FOUND, ABSENT, UNKNOWN when the search failed, or
        NOT_ASKED when a stop (Ctrl-C, SIGTERM) came before its search went out."""
        looked = await self._lookup(messages)
        return {key: found for key, (found, _) in looked.items()}

    def describe_account(self, body: dict[str, Any]) -> str:
        """``GET /server`` proves the token and names the server."""
        return (
            f"postmark: token accepted for server {body.get('Name', '?')!r}; "
            f"lessons on stream {self.stream!r}, newsletters on {self.broadcast_stream!r}"
        )


def from_settings(settings: Settings) -> PostmarkProvider:
    """Build from settings; a missing token is a one-line ConfigError before anything is sent."""
    token = require(settings.postmark_server_token, VARIABLE, NAME, "the server API token")
    return PostmarkProvider(
        token,
        base=base_url(settings.postmark_base_url, "DRIPMAIL_POSTMARK_BASE_URL"),
        stream=settings.postmark_stream,
        broadcast_stream=settings.postmark_broadcast_stream,
        limits=limits_for(settings, DEFAULT_LIMITS),
    )

"""SendGrid: ``POST /v3/mail/send`` with up to 1,000 personalizations per request.

- Messages are grouped into shared templates (`batching`): one request carries the common
  body and, per recipient, a personalization with its address, subject, headers
  (List-Unsubscribe...), ``substitutions`` for what differs, ``custom_args`` with the delivery
  key and, when scheduled, ``send_at`` (Unix seconds, at most 72 hours ahead).
- Scheduled sends get one ``batch_id`` (``POST /v3/mail/batch``) per send time, so they can be
  cancelled with ``POST /v3/user/scheduled_sends {batch_id, status: cancel}``. The cancel
  covers the whole batch id, so every message under it has the same provider id,
  ``<batch_id>@<send time>``: cancelling one returns that id, and the engine puts the other
  lessons under it back in the queue (`subscribers.unhand`), to be handed over again. One
  batch id per send time (not per request) keeps that exact: no message shares a batch id
  with one under another provider id, and the 10-minute rule below is the same for all of
  them. SendGrid does not promise a cancel within 10 minutes of the send time, so those are
  reported as not cancelled.
- The answer is 202 for the whole request or 400 for it: a 400 naming
  ``personalizations.N`` fails that recipient and the rest is sent again (nothing was
  accepted); a 400 without an index is narrowed down by splitting the request.
- No idempotency key and no way to look a message up (the Email Activity API is a paid add-on
  limited to 6 requests a minute): an ambiguous answer means REVIEW, never a blind resend.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from dripmail.config import Settings
from dripmail.message import Mailbox, Message
from dripmail.providers.api import HttpProvider
from dripmail.providers.base import Capabilities, Outcome, SendResult
from dripmail.providers.batching import Group
from dripmail.providers.common import (
    KEY_FIELD,
    Clock,
    ProviderRefused,
    base_url,
    limits_for,
    require,
    schedule_all,
    utc_now,
)
from dripmail.providers.http import Answer, Limits, RetryPolicy, Sent, json_body

NAME = "sendgrid"
VARIABLE = "SENDGRID_API_KEY"
WINDOW = timedelta(hours=72)
CANCEL_CUTOFF = timedelta(minutes=10)
# SendGrid answers with X-RateLimit-* headers, honoured as they come; these are conservative.
DEFAULT_LIMITS = Limits(messages_per_second=2000, requests_per_second=10, max_concurrency=4)
CAPABILITIES = Capabilities(
    max_batch=1000, schedule_ahead=WINDOW, can_cancel=True, idempotency_key=False
)

_INDEX = re.compile(r"^personalizations\.(\d+)")


def placeholder(name: str) -> str:
    """A substitution tag that never occurs in rendered mail (checked, see `batching`)."""
    return f"[%dm:{name}%]"


def _mailbox(box: Mailbox) -> dict[str, str]:
    # The domain in IDNA form; a UTF-8 local part as it is (see carries_utf8_local_part).
    email = box.ascii_address(utf8=True)
    return {"email": email, **({"name": box.name} if box.name else {})}


def _errors(answer: Answer) -> list[dict[str, Any]]:
    body = answer.json()
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return [e for e in body["errors"] if isinstance(e, dict)]
    return []


def _sender_refused(response: httpx.Response) -> bool:
    text = response.text.lower()
    return response.status_code == 403 and "sender identity" in text


def _is_auth_error(response: httpx.Response) -> bool:
    if response.status_code == 401:
        return True
    return response.status_code == 403 and not _sender_refused(response)


class SendGridProvider(HttpProvider):
    """The SendGrid v3 Mail Send API."""

    name = NAME
    capabilities = CAPABILITIES
    VARIABLE = VARIABLE
    DEFAULT_LIMITS = DEFAULT_LIMITS
    CHECK_PATH = "/v3/scopes"
    # Twilio's changelog (2025-04, "Support for UTF-8 email addresses"): SendGrid carries
    # non-ASCII local parts.
    carries_utf8_local_part = True
    is_auth_error = staticmethod(_is_auth_error)

    def __init__(
        self,
        api_key: str,
        *,
        base: str = "https://api.sendgrid.com",
        limits: Limits = DEFAULT_LIMITS,
        retry: RetryPolicy | None = None,
        clock: Clock = utc_now,
    ) -> None:
        super().__init__(
            base,
            headers={"Authorization": f"Bearer {api_key}"},
            limits=limits,
            retry=retry,
            clock=clock,
        )

    def request_body(
        self, group: Group, when: dict[int, datetime | None], batch_id: str | None
    ) -> dict[str, Any]:
        """The ``/v3/mail/send`` body for one group (no Date or Message-ID header: SendGrid
        stamps both when it sends, for a scheduled send at its send time)."""
        first = group.members[0].message
        personalizations = []
        for member in group.members:
            m = member.message
            at = when.get(member.index)
            p: dict[str, Any] = {
                "to": [_mailbox(m.to)],
                "subject": m.subject,
                "headers": dict(m.headers),
                "custom_args": {KEY_FIELD: m.key},
            }
            if member.values:
                p["substitutions"] = {placeholder(k): v for k, v in member.values.items()}
            if at is not None:
                p["send_at"] = int(at.timestamp())
            personalizations.append(p)
        body: dict[str, Any] = {
            "personalizations": personalizations,
            "from": _mailbox(first.sender),
            "subject": first.subject,
            "content": [
                {"type": "text/plain", "value": group.parts["text"]},
                {"type": "text/html", "value": group.parts["html"]},
            ],
            "categories": [t[:255] for t in dict.fromkeys(first.tags)][:10] or [first.kind],
        }
        if first.reply_to:
            body["reply_to"] = _mailbox(first.reply_to)
        if batch_id and any(when.get(m.index) for m in group.members):
            body["batch_id"] = batch_id
        return body

    async def _send(
        self,
        messages: Sequence[Message],
        send_at: datetime | None = None,
        batch_key: str | None = None,
    ) -> list[SendResult]:
        """Group, then one request per group, concurrently (bounded by the limiter)."""
        now = self.clock()
        when, results = schedule_all(messages, send_at, now, WINDOW)
        sendable = list(when)
        times = sorted({t for i in sendable if (t := when[i]) is not None})
        created = await asyncio.gather(*(self._new_batch_id() for _ in times))
        batch_ids: dict[datetime | None, str] = {
            t: b for t, b in zip(times, created, strict=True) if b is not None
        }
        for i in sendable:
            if when[i] is not None and when[i] not in batch_ids:
                error = "not sent: could not create a batch_id for the scheduled send"
                results[i] = SendResult(messages[i].key, Outcome.TRANSIENT, error=error)
        sendable = [i for i in sendable if when[i] is None or when[i] in batch_ids]
        prepared: list[tuple[Group, bytes]] | None = self.take_prepared(messages, batch_key)
        if prepared is not None and len(sendable) == len(messages) and not times:
            # Grouped and encoded ahead (`prepare_request`): the whole batch goes now.
            jobs = [self._send_group(g, when, None, body) for g, body in prepared]
        else:
            groups = self._groups(messages, sendable, {messages[i].key: when[i] for i in sendable})
            jobs = [
                self._send_group(g, when, batch_ids.get(when[g.members[0].index])) for g in groups
            ]
        parts = await asyncio.gather(*jobs)
        for part in parts:
            results.update(part)
        return [results[i] for i in range(len(messages))]

    def _groups(
        self,
        messages: Sequence[Message],
        indexes: Sequence[int],
        send_time: dict[str, datetime | None],
    ) -> list[Group]:
        """The requests for ``messages[i] for i in indexes``: one per template and send time."""
        return self.grouped(
            messages,
            indexes,
            lambda m: {"html": m.html, "text": m.text},
            # One send time per request, so one batch id per request (see the module notes).
            lambda m: (m.sender, m.reply_to, m.tags, m.kind, send_time[m.key]),
            placeholder,
            CAPABILITIES.max_batch,
        )

    def prepare_request(self, messages: Sequence[Message]) -> list[tuple[Group, bytes]] | None:
        """The batch's requests (grouped by template, each body encoded) when no message is
        scheduled: grouping compares every message, most of the CPU a hand-over costs here.
        A scheduled message needs a batch id from SendGrid first: done at send time."""
        if any(m.send_at is not None for m in messages):
            return None
        groups = self._groups(
            messages, range(len(messages)), dict.fromkeys(m.key for m in messages)
        )
        return [(g, json_body(self.request_body(g, {}, None))) for g in groups]

    async def _new_batch_id(self) -> str | None:
        answer = await self.http.call("POST", "/v3/mail/batch", idempotent=True)
        body = answer.json()
        if answer.sent is Sent.ANSWERED and isinstance(body, dict) and body.get("batch_id"):
            return str(body["batch_id"])
        return None

    async def _send_group(
        self,
        group: Group,
        when: dict[int, datetime | None],
        batch_id: str | None,
        prepared: bytes | None = None,
    ) -> dict[int, SendResult]:
        """One ``/v3/mail/send`` request for `group`; `prepared`: its body, encoded ahead."""
        out: dict[int, SendResult] = {}
        body = (
            prepared
            if prepared is not None
            else json_body(self.request_body(group, when, batch_id))
        )
        answer = await self.http.call(
            "POST",
            "/v3/mail/send",
            content=body,
            headers={"Content-Type": "application/json"},
            messages=len(group.members),
        )
        members = group.members
        if answer.sent is Sent.NOT_SENT:
            return {
                m.index: SendResult(m.message.key, Outcome.TRANSIENT, error=answer.error)
                for m in members
            }
        if answer.sent is Sent.AMBIGUOUS:
            error = f"{answer.error}; maybe sent, SendGrid cannot be asked: check by hand"
            return {
                m.index: SendResult(m.message.key, Outcome.REVIEW, error=error) for m in members
            }
        if answer.status == 202:
            message_id = answer.response.headers.get("X-Message-Id", "") if answer.response else ""
            for m in members:
                scheduled = when.get(m.index)
                provider_id: str | None
                if scheduled is not None and batch_id:
                    # The same for every message under this batch id (one send time each).
                    provider_id = f"{batch_id}@{int(scheduled.timestamp())}"
                else:
                    provider_id = message_id or None
                out[m.index] = SendResult(m.message.key, Outcome.ACCEPTED, provider_id)
            return out
        if answer.response is not None and _sender_refused(answer.response):
            raise ProviderRefused(
                NAME,
                "[sender] in course/course.toml",
                "sendgrid refuses the sender: the from address is not a verified Sender "
                "Identity (verify it at SendGrid or change [sender]), then re-run",
            )
        if answer.status in (400, 413):
            return await self._narrow(group, when, batch_id, answer)
        reason = _reason(answer)
        return {
            m.index: SendResult(m.message.key, Outcome.PERMANENT, error=reason) for m in members
        }

    async def _narrow(
        self, group: Group, when: dict[int, datetime | None], batch_id: str | None, answer: Answer
    ) -> dict[int, SendResult]:
        """A refused request (nothing accepted): fail what SendGrid names, resend the rest."""
        members = group.members
        bad: dict[int, str] = {}
        for error in _errors(answer):
            match = _INDEX.match(str(error.get("field") or ""))
            if match and int(match.group(1)) < len(members):
                bad[int(match.group(1))] = str(error.get("message", "rejected"))
        if len(members) == 1:
            reason = _reason(answer)
            return {
                m.index: SendResult(m.message.key, Outcome.PERMANENT, error=reason) for m in members
            }
        out: dict[int, SendResult] = {}
        if bad:
            for pos, message in bad.items():
                member = members[pos]
                out[member.index] = SendResult(member.message.key, Outcome.PERMANENT, error=message)
            rest = [m for pos, m in enumerate(members) if pos not in bad]
            halves = [rest] if rest else []
        else:
            half = len(members) // 2
            halves = [members[:half], members[half:]]
        parts = await asyncio.gather(
            *(self._send_group(Group(group.parts, part), when, batch_id) for part in halves)
        )
        for part in parts:
            out.update(part)
        return out

    async def cancel(self, provider_ids: Sequence[str]) -> list[str]:
        """Cancel each distinct batch (``<batch_id>@<send time>``) not within 10 minutes."""
        now = self.clock()
        cancelled = []
        for provider_id in dict.fromkeys(provider_ids):
            batch_id, _, send_time = provider_id.partition("@")
            if not send_time.isdigit():
                continue  # sent at once: nothing scheduled to cancel
            if datetime.fromtimestamp(int(send_time), UTC) - now < CANCEL_CUTOFF:
                continue  # SendGrid does not promise a cancel this close to the send time
            answer = await self.http.call(
                "POST",
                "/v3/user/scheduled_sends",
                json={"batch_id": batch_id, "status": "cancel"},
                idempotent=True,
            )
            if answer.sent is Sent.ANSWERED and answer.status in (200, 201):
                cancelled.append(provider_id)
        return cancelled

    def describe_account(self, body: dict[str, Any]) -> str:
        """``GET /v3/scopes`` proves the key and says whether it may send mail."""
        scopes = set(body.get("scopes") or [])
        if "mail.send" not in scopes:
            return "sendgrid: key accepted but it lacks the mail.send permission: give it Mail Send"
        extra = "" if "user.scheduled_sends.create" in scopes else " (no scheduled-send cancel)"
        return f"sendgrid: key accepted, mail.send allowed{extra}"


def _reason(answer: Answer) -> str:
    messages = [str(e.get("message", "")) for e in _errors(answer)]
    detail = "; ".join(m for m in messages if m)
    return f"HTTP {answer.status}" + (f": {detail}" if detail else "")


def from_settings(settings: Settings) -> SendGridProvider:
    """Build from settings; a missing key is a one-line ConfigError before anything is sent."""
    key = require(settings.sendgrid_api_key, VARIABLE, NAME, "an API key with Mail Send access")
    return SendGridProvider(
        key,
        base=base_url(settings.sendgrid_base_url, "DRIPMAIL_SENDGRID_BASE_URL"),
        limits=limits_for(settings, DEFAULT_LIMITS),
    )

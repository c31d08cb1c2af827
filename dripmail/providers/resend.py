"""Resend: ``POST /emails/batch`` (up to 100) and ``POST /emails`` with ``scheduled_at``.

- Every request carries an ``Idempotency-Key`` (Resend keeps it 24 hours). For a batch it is
  the engine's batch key, recorded before the first attempt; the body is serialised once and
  every retry sends the identical bytes, so an ambiguous attempt (timeout, dropped connection,
  5xx) is simply retried: Resend answers the original result instead of sending again.
- The batch endpoint cannot schedule, so a message due later goes alone to ``POST /emails``
  with ``scheduled_at`` (key ``<batch key>/<delivery key>``) and can be cancelled with
  ``POST /emails/{id}/cancel``.
- Batches use ``x-batch-validation: permissive``: valid emails are queued and invalid ones come
  back in ``errors[]`` by index, so one bad address does not hold up the other 99.
- The delivery key also travels as the tag ``dripmail_key`` (webhooks read it back) beside a
  ``category`` tag naming the course and lesson.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx

from dripmail.config import Settings
from dripmail.errors import ConfigError
from dripmail.message import Message
from dripmail.providers.api import HttpProvider
from dripmail.providers.base import Capabilities, Lookup, Outcome, SendResult
from dripmail.providers.common import (
    KEY_FIELD,
    Clock,
    ProviderRefused,
    base_url,
    category,
    limits_for,
    require,
    schedule_all,
    tag_value,
    utc_now,
)
from dripmail.providers.http import Answer, Limits, RetryPolicy, Sent, json_body

NAME = "resend"
VARIABLE = "RESEND_API_KEY"
# Resend documents 2 requests per second per team by default (raised on request).
DEFAULT_LIMITS = Limits(messages_per_second=None, requests_per_second=2, max_concurrency=2)
WINDOW = timedelta(days=30)


def _error_name(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("name", "")) if isinstance(body, dict) else ""


def _is_auth_error(response: httpx.Response) -> bool:
    # 403 also means "this sender/domain is not allowed" (validation_error); 401
    # restricted_api_key is a valid sending-only key asked for something else.
    if response.status_code not in (401, 403):
        return False
    return _error_name(response) not in ("validation_error", "restricted_api_key")


def _in_progress(response: httpx.Response) -> bool:
    # The same key is still being processed: its first request is alive; ask again later.
    return response.status_code == 409 and _error_name(response) == "concurrent_idempotent_requests"


def _reason(answer: Answer) -> str:
    body = answer.json()
    if isinstance(body, dict) and body.get("message"):
        return f"HTTP {answer.status} {body.get('name', '')}: {body['message']}"
    return answer.error or f"HTTP {answer.status}"


CAPABILITIES = Capabilities(
    max_batch=100,
    schedule_ahead=WINDOW,
    can_cancel=True,
    idempotency_key=True,
    idempotency_ttl=timedelta(hours=24),  # documented: keys are kept 24 hours
)


class ResendProvider(HttpProvider):
    """The Resend API. Unicode local parts (RFC 6531) are refused by its API
    (django-anymail's Resend notes), so such an address fails alone."""

    name = NAME
    capabilities = CAPABILITIES
    VARIABLE = VARIABLE
    DEFAULT_LIMITS = DEFAULT_LIMITS
    CHECK_PATH = "/domains"
    is_auth_error = staticmethod(_is_auth_error)

    def __init__(
        self,
        api_key: str,
        *,
        base: str = "https://api.resend.com",
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

    @staticmethod
    def payload(message: Message, scheduled_at: datetime | None = None) -> dict[str, Any]:
        """The JSON object for one email. No Date or Message-ID header: Resend stamps both
        when it sends (so a retried request stays byte-identical for its Idempotency-Key)."""
        body: dict[str, Any] = {
            "from": message.sender.formatted(),
            "to": [message.to.formatted()],
            "subject": message.subject,
            "html": message.html,
            "text": message.text,
            "headers": dict(message.headers),
            "tags": [
                {"name": KEY_FIELD, "value": tag_value(message.key)},
                {"name": "category", "value": tag_value(category(message))},
            ],
        }
        if message.reply_to:
            body["reply_to"] = [message.reply_to.formatted()]
        if scheduled_at is not None:
            body["scheduled_at"] = scheduled_at.isoformat().replace("+00:00", "Z")
        return body

    async def _send(
        self,
        messages: Sequence[Message],
        send_at: datetime | None = None,
        batch_key: str | None = None,
    ) -> list[SendResult]:
        """Due messages in one batch request; later ones one by one with ``scheduled_at``."""
        now = self.clock()
        times, results = schedule_all(messages, send_at, now, WINDOW)
        now_idx = [i for i, when in times.items() if when is None]
        later = [(i, when) for i, when in times.items() if when is not None]
        jobs = [self._schedule_one(i, messages[i], when, batch_key) for i, when in later]
        if now_idx:
            key = (
                batch_key
                or "b-"
                + hashlib.sha256("|".join(messages[i].key for i in now_idx).encode()).hexdigest()[
                    :32
                ]
            )
            # Prepared ahead (`prepare_request`) only when the whole batch goes now.
            whole = len(now_idx) == len(messages)
            prepared = self.take_prepared(messages, batch_key) if whole else None
            jobs.append(self._batch([(i, messages[i]) for i in now_idx], key, prepared))
        for part in await asyncio.gather(*jobs):
            results.update(part)
        return [results[i] for i in range(len(messages))]

    def prepare_request(self, messages: Sequence[Message]) -> bytes | None:
        """The batch request's body, for a batch with no message scheduled (only the batch
        endpoint's request is prepared; whether a scheduled one is due depends on the clock
        at send time)."""
        if any(m.send_at is not None for m in messages):
            return None
        return json_body([self.payload(m) for m in messages])

    async def _post(
        self,
        path: str,
        content: bytes,
        key: str,
        extra: dict[str, str] | None = None,
        messages: int = 1,
    ) -> Answer:
        # Serialised once (`json_body`): every retry carries the identical bytes with the
        # same key, and so does a batch sent again after a crash (rendered the same).
        headers = {"Content-Type": "application/json", "Idempotency-Key": key, **(extra or {})}
        return await self.http.call(
            "POST",
            path,
            content=content,
            headers=headers,
            messages=messages,
            idempotent=True,
            retry_if=_in_progress,
        )

    def _not_done(self, answer: Answer, key: str) -> tuple[Outcome, str]:
        """The outcome for a request that got no final answer."""
        if answer.sent is Sent.NOT_SENT:
            return Outcome.TRANSIENT, answer.error
        # Retried with the same key and body until the attempts ran out: it may have landed.
        return (
            Outcome.REVIEW,
            f"{answer.error}; maybe sent (Idempotency-Key {key} is kept 24 h): check by hand",
        )

    def _refused(self, answer: Answer) -> None:
        body = answer.json()
        if answer.status == 403:
            message = body.get("message", "") if isinstance(body, dict) else ""
            raise ProviderRefused(
                NAME,
                "[sender] in course/course.toml",
                f"resend refuses the sender: {message or 'HTTP 403'} "
                "(verify the sending domain at Resend or change [sender]), then re-run",
            )

    async def _batch(
        self, items: list[tuple[int, Message]], key: str, prepared: bytes | None = None
    ) -> dict[int, SendResult]:
        """``POST /emails/batch`` for `items`; `prepared`: their body, encoded ahead."""
        answer = await self._post(
            "/emails/batch",
            prepared if prepared is not None else json_body([self.payload(m) for _, m in items]),
            key,
            {"x-batch-validation": "permissive"},
            messages=len(items),
        )
        out: dict[int, SendResult] = {}
        if answer.sent is not Sent.ANSWERED:
            outcome, error = self._not_done(answer, key)
            return {i: SendResult(m.key, outcome, error=error) for i, m in items}
        self._refused(answer)
        body = answer.json()
        if answer.status == 200 and isinstance(body, dict):
            errors = {
                e.get("index"): str(e.get("message", "rejected"))
                for e in body.get("errors") or []
                if isinstance(e, dict)
            }
            ids = iter(body.get("data") or [])
            for pos, (i, m) in enumerate(items):
                if pos in errors:
                    out[i] = SendResult(m.key, Outcome.PERMANENT, error=errors[pos])
                    continue
                entry = next(ids, None)
                if isinstance(entry, dict) and entry.get("id"):
                    out[i] = SendResult(m.key, Outcome.ACCEPTED, str(entry["id"]))
                else:
                    out[i] = SendResult(m.key, Outcome.REVIEW, error="no id in Resend's answer")
            return out
        if answer.status == 409:
            # The key was used with another body: this same batch of deliveries was sent
            # before (rendered differently). Never send it again automatically.
            reason = f"{_reason(answer)}: batch {key} was already handed over once"
            return {i: SendResult(m.key, Outcome.REVIEW, error=reason) for i, m in items}
        return {i: SendResult(m.key, Outcome.PERMANENT, error=_reason(answer)) for i, m in items}

    async def _schedule_one(
        self, i: int, message: Message, when: datetime, batch_key: str | None = None
    ) -> dict[int, SendResult]:
        # Under the engine's batch key, which is new for every hand-over (kept across a crash):
        # a lesson cancelled here and handed over again (pause, resume) must become a new
        # email, not the cancelled one answered again from Resend's memory of the key.
        key = (
            f"{batch_key}/{message.key}" if batch_key else f"{message.key}@{int(when.timestamp())}"
        )
        answer = await self._post("/emails", json_body(self.payload(message, when)), key)
        if answer.sent is not Sent.ANSWERED:
            outcome, error = self._not_done(answer, key)
            return {i: SendResult(message.key, outcome, error=error)}
        self._refused(answer)
        body = answer.json()
        if answer.status == 200 and isinstance(body, dict) and body.get("id"):
            return {i: SendResult(message.key, Outcome.ACCEPTED, str(body["id"]))}
        if answer.status == 409:
            reason = f"{_reason(answer)}: already handed over once"
            return {i: SendResult(message.key, Outcome.REVIEW, error=reason)}
        return {i: SendResult(message.key, Outcome.PERMANENT, error=_reason(answer))}

    async def reconcile(self, messages: Sequence[Message]) -> dict[str, Lookup]:
        """Resend cannot search by key: UNKNOWN (the engine reports these for review).

        Within one call the idempotency key makes retries safe; only a crash between Resend's
        acceptance and the local commit leaves this question open.
        """
        return {m.key: Lookup.UNKNOWN for m in messages}

    async def cancel(self, provider_ids: Sequence[str]) -> list[str]:
        """``POST /emails/{id}/cancel`` for each; returns the ids Resend cancelled."""

        async def one(provider_id: str) -> str | None:
            answer = await self.http.call("POST", f"/emails/{provider_id}/cancel", idempotent=True)
            ok = answer.sent is Sent.ANSWERED and answer.status == 200
            return provider_id if ok else None

        done = await asyncio.gather(*(one(p) for p in provider_ids))
        return [p for p in done if p]

    def check_special(self, answer: Answer) -> str | None:
        """``GET /domains`` with a sending-only key answers 401 restricted_api_key."""
        if answer.sent is Sent.ANSWERED and answer.status == 401:
            return "resend: key accepted (sending access only, so domains cannot be listed)"
        return None

    def describe_account(self, body: dict[str, Any]) -> str:
        """``GET /domains``: proves the key and lists the sending domains."""
        domains = [
            f"{d.get('name')} ({d.get('status', '?')})"
            for d in body.get("data") or []
            if isinstance(d, dict)
        ]
        return "resend: key accepted; domains: " + (", ".join(domains) or "none yet")


def from_settings(settings: Settings) -> ResendProvider:
    """Build from settings; a missing key is a one-line ConfigError before anything is sent."""
    key = require(settings.resend_api_key, VARIABLE, NAME, "an API key (re_...)")
    if not key.startswith("re_"):
        raise ConfigError(f"{VARIABLE} does not look like a Resend API key (they start with re_)")
    return ResendProvider(
        key,
        base=base_url(settings.resend_base_url, "DRIPMAIL_RESEND_BASE_URL"),
        limits=limits_for(settings, DEFAULT_LIMITS),
    )

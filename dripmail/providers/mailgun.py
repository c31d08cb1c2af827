"""Mailgun: ``POST /v3/{domain}/messages`` (multipart form), up to 1,000 recipients per call.

- Messages are grouped into shared templates (`batching`): one request lists every recipient
  in ``to`` and gives each its values in ``recipient-variables``; the body, subject and
  ``h:`` headers use ``%recipient.vN%``. The delivery key travels as
  ``v:dripmail_key=%recipient.dripmail_key%`` (user variables come back in webhooks), the
  course and lesson as ``o:tag``, reply-to as ``h:Reply-To``.
- ``o:deliverytime`` (RFC 2822) schedules within Mailgun's window (3 days; 7 on some plans).
  Mailgun cannot cancel one scheduled message (only every scheduled message of the domain), so
  dripmail hands over at most ``DRIPMAIL_HANDOVER_WINDOW_MINUTES`` ahead (see runner).
- Base URL ``https://api.mailgun.net``, or ``https://api.eu.mailgun.net`` for EU domains.
- Mailgun answers for the whole request (no per-recipient errors): a 400 is narrowed down by
  splitting the request; an ambiguous answer is REVIEW (no idempotency key, no lookup by key).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

from dripmail.config import Settings
from dripmail.message import Message
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
from dripmail.providers.http import Answer, Limits, RetryPolicy, Sent

NAME = "mailgun"
VARIABLE = "MAILGUN_API_KEY"
WINDOW = timedelta(days=3)
# Mailgun's limits depend on the account; these are conservative and configurable.
DEFAULT_LIMITS = Limits(messages_per_second=2000, requests_per_second=10, max_concurrency=4)
CAPABILITIES = Capabilities(
    max_batch=1000, schedule_ahead=WINDOW, can_cancel=False, idempotency_key=False
)
MAX_TAGS = 3  # Mailgun keeps at most three o:tag values per message


# A request's multipart fields, as httpx's ``files=`` takes them (repeated names for arrays).
Form = list[tuple[str, tuple[None, str]]]


def placeholder(name: str) -> str:
    """Mailgun's recipient-variable syntax."""
    return f"%recipient.{name}%"


def _parts(message: Message) -> dict[str, str]:
    parts = {"subject": message.subject, "html": message.html, "text": message.text}
    for name, value in message.headers.items():
        parts[f"h:{name}"] = value
    if message.reply_to:
        parts["h:Reply-To"] = message.reply_to.formatted()
    return parts


class MailgunProvider(HttpProvider):
    """The Mailgun Messages API for one sending domain.

    Unicode local parts (RFC 6531) are refused per message: Mailgun delivers them but writes
    header fields that mail apps show empty or garbled (django-anymail's Mailgun notes).
    """

    name = NAME
    capabilities = CAPABILITIES
    VARIABLE = VARIABLE
    DEFAULT_LIMITS = DEFAULT_LIMITS

    def __init__(
        self,
        api_key: str,
        domain: str,
        *,
        base: str = "https://api.mailgun.net",
        limits: Limits = DEFAULT_LIMITS,
        retry: RetryPolicy | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.domain = domain
        super().__init__(base, auth=("api", api_key), limits=limits, retry=retry, clock=clock)

    def form(self, group: Group, when: datetime | None) -> Form:
        """The multipart fields for one group (repeated names for arrays). No Date or
        Message-ID header: Mailgun stamps both when it sends."""
        first = group.members[0].message
        fields: list[tuple[str, str]] = [("from", first.sender.formatted())]
        fields += [("to", m.message.to.formatted()) for m in group.members]
        fields += [(name, value) for name, value in group.parts.items()]
        fields += [("o:tag", tag) for tag in list(dict.fromkeys(first.tags))[:MAX_TAGS]]
        if when is not None:
            fields.append(("o:deliverytime", format_datetime(when, usegmt=True)))
        if group.templated:
            fields.append((f"v:{KEY_FIELD}", placeholder(KEY_FIELD)))
            # Keyed by the address exactly as given in `to` (IDNA domain).
            variables = {
                m.message.to.ascii_address(): {**m.values, KEY_FIELD: m.message.key}
                for m in group.members
            }
            fields.append(("recipient-variables", json.dumps(variables, ensure_ascii=False)))
        else:
            fields.append((f"v:{KEY_FIELD}", first.key))
        return [(name, (None, value)) for name, value in fields]

    async def _send(
        self,
        messages: Sequence[Message],
        send_at: datetime | None = None,
        batch_key: str | None = None,
    ) -> list[SendResult]:
        """Group (one send time per group), then one request per group, concurrently."""
        now = self.clock()
        when, results = schedule_all(messages, send_at, now, WINDOW)
        sendable = list(when)
        prepared: list[tuple[Group, Form]] | None = self.take_prepared(messages, batch_key)
        if prepared is not None and len(sendable) == len(messages) and not any(when.values()):
            # Grouped and laid out ahead (`prepare_request`): the whole batch goes now.
            jobs = [self._send_group(g, None, form) for g, form in prepared]
        else:
            at = {id(messages[i]): when[i] for i in sendable}
            groups = self._groups(messages, sendable, at)
            jobs = [self._send_group(g, when[g.members[0].index]) for g in groups]
        parts = await asyncio.gather(*jobs)
        for part in parts:
            results.update(part)
        return [results[i] for i in range(len(messages))]

    def _groups(
        self, messages: Sequence[Message], indexes: Sequence[int], at: dict[int, datetime | None]
    ) -> list[Group]:
        """The requests for ``messages[i] for i in indexes`` (`at`: send time by message id):
        one per template, sender, tags and send time."""
        return self.grouped(
            messages,
            indexes,
            _parts,
            lambda m: (m.sender, m.tags[:MAX_TAGS], at[id(m)]),
            placeholder,
            CAPABILITIES.max_batch,
        )

    def prepare_request(self, messages: Sequence[Message]) -> list[tuple[Group, Form]] | None:
        """The batch's requests (grouped by template, each form laid out) when no message is
        scheduled: grouping compares every message, most of the CPU a hand-over costs here.
        Whether a scheduled message is due depends on the clock at send time."""
        if any(m.send_at is not None for m in messages):
            return None
        groups = self._groups(messages, range(len(messages)), {id(m): None for m in messages})
        return [(g, self.form(g, None)) for g in groups]

    async def _send_group(
        self, group: Group, when: datetime | None, prepared: Form | None = None
    ) -> dict[int, SendResult]:
        """One ``messages`` request for `group`; `prepared`: its form, laid out ahead."""
        members = group.members
        answer = await self.http.call(
            "POST",
            f"/v3/{self.domain}/messages",
            files=prepared if prepared is not None else self.form(group, when),
            messages=len(members),
        )
        if answer.sent is Sent.NOT_SENT:
            return {
                m.index: SendResult(m.message.key, Outcome.TRANSIENT, error=answer.error)
                for m in members
            }
        if answer.sent is Sent.AMBIGUOUS:
            error = f"{answer.error}; maybe sent, Mailgun cannot be asked: check by hand"
            return {
                m.index: SendResult(m.message.key, Outcome.REVIEW, error=error) for m in members
            }
        body = answer.json()
        if answer.status == 200 and isinstance(body, dict):
            provider_id = str(body.get("id") or "") or None
            return {
                m.index: SendResult(m.message.key, Outcome.ACCEPTED, provider_id) for m in members
            }
        if answer.status == 404:
            raise ProviderRefused(
                NAME,
                "MAILGUN_DOMAIN",
                f"mailgun does not know the domain {self.domain!r}: check MAILGUN_DOMAIN (and "
                "DRIPMAIL_MAILGUN_BASE_URL=https://api.eu.mailgun.net for EU domains), then re-run",
            )
        reason = f"HTTP {answer.status}: " + (
            str(body.get("message")) if isinstance(body, dict) else answer.error or "refused"
        )
        if answer.status in (400, 413) and len(members) > 1:
            # Nothing was accepted; find the culprit by halves (log2(1000) = 10 levels).
            half = len(members) // 2
            halves = [Group(group.parts, members[:half]), Group(group.parts, members[half:])]
            out: dict[int, SendResult] = {}
            for part in await asyncio.gather(*(self._send_group(g, when) for g in halves)):
                out.update(part)
            return out
        return {
            m.index: SendResult(m.message.key, Outcome.PERMANENT, error=reason) for m in members
        }

    # Mailgun cannot look a message up by key (reconcile: UNKNOWN) nor cancel one scheduled
    # message (only the whole domain's queue): the base class's defaults.

    def check_path(self) -> str:
        """``GET /v3/domains/{domain}``: proves the key and shows the domain's state."""
        return f"/v3/domains/{self.domain}"

    def check_special(self, answer: Answer) -> str | None:
        if answer.sent is Sent.ANSWERED and answer.status == 404:
            raise ProviderRefused(
                NAME, "MAILGUN_DOMAIN", f"mailgun does not know the domain {self.domain!r}"
            )
        return None

    def describe_account(self, body: dict[str, Any]) -> str:
        state = (body.get("domain") or {}).get("state", "?")
        return f"mailgun: key accepted; domain {self.domain} is {state}"


def from_settings(settings: Settings) -> MailgunProvider:
    """Build from settings; missing key or domain is a one-line ConfigError before sending."""
    key = require(settings.mailgun_api_key, VARIABLE, NAME, "a sending API key")
    domain = require(settings.mailgun_domain, "MAILGUN_DOMAIN", NAME, "the sending domain")
    return MailgunProvider(
        key,
        domain,
        base=base_url(settings.mailgun_base_url, "DRIPMAIL_MAILGUN_BASE_URL"),
        limits=limits_for(settings, DEFAULT_LIMITS),
    )

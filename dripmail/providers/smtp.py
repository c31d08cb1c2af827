"""SMTP: relays and local mail catchers, through the standard library in a worker thread.

One session per batch: connect, (STARTTLS or SSL), log in when a user is set, then for each
message ``MAIL FROM`` / ``RCPT TO`` / ``DATA`` with the standards-correct MIME message
(`Message.to_bytes`: Date is the moment of the hand-over, Message-ID from the delivery key and
the installation id). Addresses go in the envelope and the headers with their domain in IDNA
form; a non-ASCII local part goes with ``SMTPUTF8`` when the server offers it (RFC 6531) and
is a permanent failure of that one message when it does not. Stage by stage, so the answer
is precise:

- a refusal at ``MAIL``/``RCPT`` or a refused connection is surely not sent: 4xx transient,
  5xx permanent (550/551/553 on ``RCPT`` also suppress the address);
- a lost connection or timeout during ``DATA`` is ambiguous (the server may have queued it)
  and SMTP cannot be asked afterwards: REVIEW, never resent automatically.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from collections.abc import Sequence
from datetime import datetime

from dripmail.config import Settings
from dripmail.errors import ProviderError
from dripmail.message import AddressError, Message
from dripmail.providers.base import (
    BaseProvider,
    Capabilities,
    Outcome,
    SendResult,
    broke_off_error,
    unreachable_error,
)
from dripmail.providers.common import Clock, ProviderRefused, require, utc_now
from dripmail.providers.http import Limits, RateLimiter

NAME = "smtp"
VARIABLE = "DRIPMAIL_SMTP_PASSWORD"
CAPABILITIES = Capabilities(
    max_batch=100, schedule_ahead=None, can_cancel=False, idempotency_key=False
)
# Relays commonly throttle around this; configurable with DRIPMAIL_RATE_PER_SECOND.
DEFAULT_LIMITS = Limits(messages_per_second=20, requests_per_second=None, max_concurrency=1)
# Mailbox does not exist / not local / name not allowed: the address itself is the problem.
SUPPRESS_CODES = frozenset({550, 551, 553})


class _SessionLost(Exception):
    """The SMTP session ended before `MAIL`/`RCPT` of a message was answered: nothing of
    that message was sent, nor can the rest of the batch go on this session."""


class SmtpProvider(BaseProvider):
    """A plain SMTP relay."""

    name = NAME
    capabilities = CAPABILITIES
    # Decided per session: SMTPUTF8 when the server offers it (see `_send_one`).
    carries_utf8_local_part = True

    def __init__(
        self,
        host: str,
        port: int,
        *,
        user: str | None = None,
        password: str | None = None,
        tls: str = "none",
        timeout: float = 30.0,
        limits: Limits = DEFAULT_LIMITS,
        clock: Clock = utc_now,
    ) -> None:
        self.clock = clock
        self.host, self.port = host, port
        self.user, self.password = user, password
        self.tls = tls
        self.timeout = timeout
        self.limiter = RateLimiter(limits)

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        if self.tls == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=context
            )
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        client.ehlo()
        if self.tls == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if self.user:
            try:
                client.login(self.user, self.password or "")
            except smtplib.SMTPAuthenticationError as exc:
                client.close()
                raise ProviderRefused(
                    NAME,
                    VARIABLE,
                    f"smtp: {self.host}:{self.port} refused the login of "
                    f"DRIPMAIL_SMTP_USER={self.user} ({exc.smtp_code}): check "
                    f"{VARIABLE}, then re-run",
                ) from None
        return client

    def _send_all(self, messages: Sequence[Message]) -> list[SendResult]:
        where = f"{self.host}:{self.port}"
        try:
            client = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            if isinstance(exc, smtplib.SMTPException):  # reached, but the session failed
                error = f"not sent: {where} failed to start a session ({exc})"
            elif isinstance(exc, ConnectionRefusedError):
                error = unreachable_error(where, "connection refused")
            else:
                error = unreachable_error(where, str(exc) or type(exc).__name__)
            return [SendResult(m.key, Outcome.TRANSIENT, error=error) for m in messages]
        results: list[SendResult] = []
        try:
            for position, message in enumerate(messages):
                wait = self.limiter.reserve(1)
                if wait > 0:
                    time.sleep(wait)
                try:
                    result = self._send_one(client, message)
                except _SessionLost as lost:
                    error, untried = broke_off_error(where, str(lost)), messages[position:]
                else:
                    results.append(result)
                    if result.outcome is not Outcome.REVIEW:
                        continue
                    error = broke_off_error(where, "no answer to a message's DATA")
                    untried = messages[position + 1 :]
                # The session is gone; what was not tried is surely not sent. Tried on the
                # dead session, each would fail with smtplib's "please run connect() first",
                # which says nothing about that message.
                results += [SendResult(m.key, Outcome.TRANSIENT, error=error) for m in untried]
                break
        finally:
            try:
                client.quit()
            except (OSError, smtplib.SMTPException):
                client.close()
        return results

    def _send_one(self, client: smtplib.SMTP, message: Message) -> SendResult:
        utf8 = message.to.needs_smtputf8 or message.sender.needs_smtputf8
        if utf8 and not client.has_extn("smtputf8"):
            return SendResult(
                message.key,
                Outcome.PERMANENT,
                error=f"smtp: {self.host} does not offer SMTPUTF8, so it cannot carry "
                f"{message.to.address} (the part before @ is not ASCII): ask the reader "
                "for another address",
            )
        options = ["SMTPUTF8"] if utf8 else []
        try:
            # Stamped now: this is the hand-over (SMTP cannot schedule).
            data = message.to_bytes(self.clock(), self.installation_id, utf8=utf8)
            sender, recipient = message.sender.ascii_address(utf8), message.to.ascii_address(utf8)
        except AddressError as exc:
            return SendResult(message.key, Outcome.PERMANENT, error=f"smtp: {exc}")
        try:
            code, reply = client.mail(sender, options)
            if code != 250:
                client.rset()
                raise ProviderRefused(
                    NAME,
                    "[sender] in course/course.toml",
                    f"smtp: {self.host} refuses the sender {message.sender.address} "
                    f"({code} {reply.decode(errors='replace')}): fix [sender], then re-run",
                )
            code, reply = client.rcpt(recipient)
            if code not in (250, 251):
                client.rset()
                text = f"SMTP {code} {reply.decode(errors='replace')} for {message.to.address}"
                if 400 <= code < 500:
                    return SendResult(message.key, Outcome.TRANSIENT, error=text)
                return SendResult(
                    message.key, Outcome.PERMANENT, error=text, suppress=code in SUPPRESS_CODES
                )
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise _SessionLost(str(exc) or type(exc).__name__) from exc
        try:
            code, reply = client.data(data)
        except smtplib.SMTPDataError as exc:
            client.rset()
            outcome = Outcome.TRANSIENT if 400 <= exc.smtp_code < 500 else Outcome.PERMANENT
            return SendResult(
                message.key, outcome, error=f"SMTP {exc.smtp_code} {exc.smtp_error!r}"
            )
        except (TimeoutError, OSError, smtplib.SMTPServerDisconnected) as exc:
            return SendResult(
                message.key,
                Outcome.REVIEW,
                error=f"no answer to DATA ({exc}); maybe queued, SMTP cannot be asked",
            )
        queue_id = reply.decode(errors="replace").strip()
        return SendResult(
            message.key,
            Outcome.ACCEPTED,
            provider_id=message.message_id(self.installation_id) + " " + queue_id,
        )

    async def _send(
        self,
        messages: Sequence[Message],
        send_at: datetime | None = None,
        batch_key: str | None = None,
    ) -> list[SendResult]:
        """One SMTP session for the batch, in a worker thread (smtplib blocks)."""
        return await asyncio.to_thread(self._send_all, list(messages))

    # SMTP cannot be asked what it queued (reconcile: UNKNOWN) and schedules nothing
    # (cancel: nothing): the base class's defaults.

    async def check(self) -> str:
        """Connect, (STARTTLS), log in, NOOP, quit."""

        def run() -> str:
            try:
                client = self._connect()
            except (OSError, smtplib.SMTPException) as exc:
                raise ProviderError(
                    f"smtp: cannot reach {self.host}:{self.port} ({exc}): check "
                    "DRIPMAIL_SMTP_HOST / DRIPMAIL_SMTP_PORT / DRIPMAIL_SMTP_TLS"
                ) from None
            try:
                client.noop()
            finally:
                client.quit()
            login = f", logged in as {self.user}" if self.user else ""
            return f"smtp: {self.host}:{self.port} answers (TLS: {self.tls}{login})"

        return await asyncio.to_thread(run)


def from_settings(settings: Settings) -> SmtpProvider:
    """Build from settings; a user without a password is a one-line ConfigError."""
    password = None
    if settings.smtp_user:
        password = require(settings.smtp_password, VARIABLE, NAME, "the password for the user")
    rate = getattr(settings, "rate_per_second", None)
    return SmtpProvider(
        settings.smtp_host,
        settings.smtp_port,
        user=settings.smtp_user,
        password=password,
        tls=settings.smtp_tls,
        limits=Limits(messages_per_second=rate or DEFAULT_LIMITS.messages_per_second),
    )

"""What every HTTP provider shares: one pooled client, a rate limiter, retries, classification.

The question that matters after a failed request is not "did it fail?" but "could the provider
have acted on it?". `HttpClient.call` answers it for every attempt:

- surely not sent: the connection was refused or never set up (nothing left this machine), or
  the provider answered 429 (it refused before doing anything). Safe to retry at once.
- ambiguous: the request went out and no usable answer came back (a read/write timeout, a
  dropped connection, a 5xx). The provider may have accepted it. Only a request the provider
  deduplicates (an idempotency key) may be retried blindly; everything else goes back to the
  provider module, which either looks the messages up or reports them for review.
- answered: 2xx or 4xx. The provider module maps the body (4xx other than 401/403/429 are
  permanent for what was asked, never retried blindly). 401/403 raise `ProviderAuthError`.

A stop (Ctrl-C or SIGTERM, `stop`) takes effect between requests: one not yet on the wire,
also one waiting for its rate-limiter slot or for a retry, is not sent ("not sent: stopped
..."); one already sent is answered and recorded as without a stop, and a request that may have
been acted on is never declared unsent.

Retries use exponential backoff with full jitter (a random wait in [0, base * 2^n], capped),
honour ``Retry-After`` and the providers' rate-limit headers, and stop after a bounded number
of attempts. A client-side limiter paces messages per second and requests per second and bounds
concurrent requests, so a large send does not run into a storm of 429s.
"""

from __future__ import annotations

import asyncio
import functools
import random
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import httpx
import orjson

from dripmail.errors import ProviderAuthError
from dripmail.providers.base import never_went_out_error, stopped_error, unreachable_error
from dripmail.stopping import sleep_unless_stopped


def json_body(value: Any) -> bytes:
    """`value` as a JSON request body: compact UTF-8, the very bytes httpx's ``json=`` writes
    (``json.dumps(ensure_ascii=False, separators=(",", ":"))``), encoded by orjson.

    A batch of 500 personalised messages is a body of megabytes; the standard library's
    encoder spent a sixth of a broadcast's CPU on it (issue 13), orjson a small fraction.
    """
    return orjson.dumps(value)


@dataclass(frozen=True, slots=True)
class Limits:
    """Client-side pacing for one provider (None means no limit on that dimension)."""

    messages_per_second: float | None = None
    requests_per_second: float | None = None
    max_concurrency: int = 4


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter."""

    max_attempts: int = 5
    base_delay: float = 0.5  # seconds; the n-th retry waits uniform(0, base * 2^(n-1))
    max_delay: float = 30.0
    # A provider asking us to wait longer than this gets its wish from the engine instead:
    # the batch goes back to the queue (surely not sent) rather than blocking the run.
    max_retry_after: float = 120.0
    timeout: float = 30.0  # read/write timeout per request, seconds
    connect_timeout: float = 10.0

    def backoff(self, attempt: int) -> float:
        """Full jitter: a uniformly random wait up to the exponential ceiling."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(0, ceiling)


class Sent(StrEnum):
    """What we know about a request after the last attempt."""

    ANSWERED = "answered"  # a usable answer: 2xx or a 4xx other than 401/403/429
    NOT_SENT = "not_sent"  # surely not acted on (refused connection, 429, ...)
    AMBIGUOUS = "ambiguous"  # may have been acted on (timeout after sending, dropped, 5xx)


@dataclass(slots=True)
class Answer:
    """The outcome of `HttpClient.call`."""

    sent: Sent
    response: httpx.Response | None = None
    error: str = ""
    attempts: int = 0

    @property
    def status(self) -> int:
        return self.response.status_code if self.response is not None else 0

    def json(self) -> Any:
        """The answer body as JSON, or None when it is not JSON (or not UTF-8, which JSON
        on the wire must be: RFC 8259, section 8.1).

        Read by orjson: Postmark answers a 500-message batch with 500 objects, which the
        standard library's decoder (httpx's ``json()``) parsed at a few percent of a
        broadcast's CPU.
        """
        if self.response is None:
            return None
        try:
            return orjson.loads(self.response.content)
        except orjson.JSONDecodeError:
            return None


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long the provider asks us to wait: ``Retry-After`` or a rate-limit reset header.

    ``Retry-After`` is seconds or an HTTP date. Rate-limit headers come in two dialects:
    SendGrid ``X-RateLimit-Reset`` (a Unix time) and the IETF draft used by Resend
    (``ratelimit-reset``, seconds from now). They count only when the remaining budget is 0.
    """
    now = time.time() if now is None else now
    lower = {k.lower(): v for k, v in headers.items()}
    value = lower.get("retry-after")
    if value:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - now)
            except (TypeError, ValueError):
                pass
    remaining = lower.get("x-ratelimit-remaining", lower.get("ratelimit-remaining"))
    reset = lower.get("x-ratelimit-reset", lower.get("ratelimit-reset"))
    if remaining is not None and reset is not None and remaining.strip() == "0":
        try:
            reset_value = float(reset)
        except ValueError:
            return None
        # A value this large is a Unix time (SendGrid); a small one is seconds (Resend).
        return max(0.0, reset_value - now) if reset_value > 1e9 else max(0.0, reset_value)
    return None


class RateLimiter:
    """Paces messages/s and requests/s (reservations in arrival order) and bounds concurrency.

    Pacing state lives in plain floats so it survives `asyncio.run` being called once per
    engine chunk; the semaphore is rebuilt for each event loop.
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._next_message = 0.0
        self._next_request = 0.0
        self._paused_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def _sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._semaphore is None:
            self._loop = loop
            self._semaphore = asyncio.Semaphore(self.limits.max_concurrency)
        return self._semaphore

    def reserve(self, messages: int) -> float:
        """Book the next slot for a request carrying `messages`; returns the wait in seconds."""
        now = self._clock()
        start = max(now, self._paused_until)
        if self.limits.messages_per_second and messages:
            start = max(start, self._next_message)
            self._next_message = start + messages / self.limits.messages_per_second
        if self.limits.requests_per_second:
            start = max(start, self._next_request)
            self._next_request = start + 1 / self.limits.requests_per_second
        return start - now

    def drop_bookings(self) -> None:
        """Forget the slots booked by requests a stop abandoned (they will never be sent): the
        next request waits at most one interval from now, not behind a queue of ghosts (a
        chunk of 1,000 at 2 requests/s books 500 s ahead)."""
        now = self._clock()
        if self.limits.messages_per_second:
            self._next_message = min(self._next_message, now + 1 / self.limits.messages_per_second)
        if self.limits.requests_per_second:
            self._next_request = min(self._next_request, now + 1 / self.limits.requests_per_second)

    def pause(self, seconds: float) -> None:
        """Hold every request (also those already waiting for a slot) for `seconds`."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @asynccontextmanager
    async def slot(self, messages: int, stop: threading.Event | None = None) -> AsyncIterator[bool]:
        """Wait for a pacing slot, then hold one of the concurrent-request places; yields
        True. With `stop`: a stop requested before the request may go cuts the waits short
        and yields False (no place is held then, or it is given back as the caller leaves)."""
        wait = self.reserve(messages)
        if await sleep_unless_stopped(wait, stop) or (stop is not None and stop.is_set()):
            self.drop_bookings()
            yield False
            return
        async with self._sem():
            # A 429 seen by another request while we waited pauses us as well.
            late = self._paused_until - self._clock()
            stopped = await sleep_unless_stopped(late, stop) if late > 0 else False
            go = not (stopped or (stop is not None and stop.is_set()))
            if not go:
                self.drop_bookings()
            yield go


# Connection set-up failures: the request never left this machine.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The request (or part of it) went out and no answer came back.
_AMBIGUOUS_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def _describe(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _why_unreachable(exc: Exception, connect_timeout: float) -> str:
    """How a connection to the provider failed, in words (httpx says only "All connection
    attempts failed"; the cause is further down the chain)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {connect_timeout:g} s"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"the host name does not resolve ({cause})"
        cause = cause.__cause__ or cause.__context__
    return _describe(exc)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context every provider client shares (httpx's default: certifi's CAs).

    httpx builds a new context for each client it is not given one, and loading the CA bundle
    costs about 0.1 s of CPU. A client is made per event loop (see `HttpClient`), and the engine
    and the broadcast run a loop per chunk, so one context per process saves that each chunk.
    """
    return httpx.create_ssl_context()


class HttpClient:
    """One pooled `httpx.AsyncClient` per provider, with the limiter and retry policy.

    The client is rebuilt when the running event loop changes (the engine calls `asyncio.run`
    once per chunk), because pooled connections belong to the loop that opened them.
    """

    def __init__(
        self,
        provider: str,
        credential_variable: str,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        limits: Limits | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        is_auth_error: Callable[[httpx.Response], bool] | None = None,
    ) -> None:
        self.provider = provider
        self.credential_variable = credential_variable
        self.base_url = base_url.rstrip("/")
        self.headers = dict(headers or {})
        self.auth = auth
        self.limits = limits or Limits()
        self.retry = retry or RetryPolicy()
        self.limiter = RateLimiter(self.limits)
        self._transport = transport
        # Which answers mean "the credential was refused" (default 401/403); Resend also uses
        # 403 for an unverified sending domain, which is not a credential problem.
        self.is_auth_error = is_auth_error or (lambda r: r.status_code in (401, 403))
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests = 0  # every attempt, for tests and the benchmark
        # Set on Ctrl-C or SIGTERM (the core's `Dripmail.interrupted`, via `stop_on`): a
        # request not yet on the wire is not sent (see `call`).
        self.stop: threading.Event | None = None

    def with_retry(self, **changes: Any) -> None:
        """Adjust the retry policy (tests shorten delays and timeouts)."""
        self.retry = replace(self.retry, **changes)

    def _get(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # The old client's connections died with their loop; drop it without awaiting.
            self._loop = loop
            self._client = httpx.AsyncClient(
                base_url=self.base_url,
                headers={"User-Agent": "dripmail", **self.headers},
                auth=self.auth,
                verify=tls_context(),
                timeout=httpx.Timeout(self.retry.timeout, connect=self.retry.connect_timeout),
                limits=httpx.Limits(
                    max_connections=self.limits.max_concurrency,
                    max_keepalive_connections=self.limits.max_concurrency,
                ),
                transport=self._transport,
            )
        return self._client

    async def aclose(self) -> None:
        """Close pooled connections (only possible on the loop that opened them)."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        messages: int = 0,
        idempotent: bool = False,
        retry_if: Callable[[httpx.Response], bool] | None = None,
        stoppable: bool = True,
        **kwargs: Any,
    ) -> Answer:
        """Send one request with retries; see the module docstring for the classification.

        `idempotent`: the provider deduplicates this exact request (GET, or an idempotency key
        with the identical body), so an ambiguous attempt may be retried. Otherwise an
        ambiguous attempt ends the call at once. `retry_if` marks provider-specific answers
        that mean "not done yet, ask again" (Resend's 409 for a key still in progress).

        A stop (`self.stop` set: Ctrl-C or SIGTERM) before an attempt goes out, also while it
        waits for its rate-limiter slot or for a retry, ends the call unsent: NOT_SENT with
        `stopped_error`. Only while no attempt can have reached the provider: after an
        ambiguous attempt or a `retry_if` answer the call goes on as without a stop, and a
        request on the wire is always answered. `stoppable` False: the stop is not heeded
        (a look-up that settles a request already on the wire).
        """
        if "json" in kwargs:
            # Encoded once here for every attempt (see `json_body`), not by httpx per attempt.
            kwargs["content"] = json_body(kwargs.pop("json"))
            kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
        ambiguous = False
        # The provider said a request under this idempotency key is in progress (`retry_if`):
        # an earlier one of ours may be under way there, so a stop must not end this call.
        busy = False
        last_error = ""
        attempt = 0
        for attempt in range(1, self.retry.max_attempts + 1):
            wait: float | None = None
            # A stop ends the call only while nothing of it can have reached the provider:
            # after an ambiguous attempt (or a "busy" answer) the retries go on as before.
            heed = stoppable and not (ambiguous or busy)
            stop = self.stop if heed else None
            async with self.limiter.slot(messages, stop) as go:
                if not go:
                    return Answer(Sent.NOT_SENT, None, stopped_error(self.base_url), attempt - 1)
                self.requests += 1
                try:
                    response = await self._get().request(method, path, **kwargs)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    why = _why_unreachable(exc, self.retry.connect_timeout)
                    last_error = unreachable_error(self.base_url, why)
                    response = None
                except _NOT_SENT_ERRORS as exc:
                    last_error = never_went_out_error(self.base_url, _describe(exc))
                    response = None
                except _AMBIGUOUS_ERRORS as exc:
                    ambiguous = True
                    last_error = "no answer after sending: " + _describe(exc)
                    response = None
            if response is not None:
                _release_request(response)
                status = response.status_code
                if self.is_auth_error(response):
                    raise ProviderAuthError(
                        self.provider, self.credential_variable, f"HTTP {status}"
                    )
                hint = retry_after_seconds(response.headers)
                if status == 429 or (retry_if is not None and retry_if(response)):
                    busy = busy or status != 429
                    last_error = f"HTTP {status} {_snippet(response)}"
                    wait = hint
                    if hint is not None and hint > self.retry.max_retry_after:
                        break  # the provider wants a long pause: let the engine come back
                    if hint is not None:
                        self.limiter.pause(hint)
                elif status >= 500:
                    ambiguous = True
                    last_error = f"HTTP {status} {_snippet(response)}"
                    wait = hint
                else:
                    if hint is not None and hint <= self.retry.max_retry_after:
                        self.limiter.pause(hint)  # budget used up: slow the next requests
                    return Answer(Sent.ANSWERED, response, "", attempt)
            if ambiguous and not idempotent:
                return Answer(Sent.AMBIGUOUS, response, last_error, attempt)
            if attempt < self.retry.max_attempts:
                pause = wait if wait is not None else self.retry.backoff(attempt)
                # Cut short by a stop while nothing went out: the next turn answers "stopped".
                heed = stoppable and not (ambiguous or busy)
                await sleep_unless_stopped(pause, self.stop if heed else None)
        return Answer(Sent.AMBIGUOUS if ambiguous else Sent.NOT_SENT, None, last_error, attempt)


def _release_request(response: httpx.Response) -> None:
    """Let a read response free its request (and the request's body) by reference counting.

    httpx ties a response and its stream into a reference cycle (the stream points back at
    the response), and the response holds the request with its body: a 500-message batch is
    megabytes that would live on until the cycle collector's oldest generation ran. The
    response is fully read here (``AsyncClient.request`` reads it), so its content stands in
    for the stream and the cycle is gone; `json()`, `text` and the headers work as before.
    """
    response.stream = httpx.ByteStream(response.content)


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:200]

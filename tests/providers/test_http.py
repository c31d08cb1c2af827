"""The shared HTTP layer: classification, Retry-After, pacing, settings -> providers."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import weakref

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dripmail.config import Project, Settings
from dripmail.errors import ConfigError
from dripmail.providers import get_provider
from dripmail.providers.http import (
    HttpClient,
    Limits,
    RateLimiter,
    RetryPolicy,
    Sent,
    retry_after_seconds,
)

# Short back-off; a patient timeout: none of these tests waits for one to fire, and a loaded
# machine can be slow to answer on loopback.
FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01, timeout=30.0)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postmark_client(fake, retry: RetryPolicy = FAST) -> HttpClient:
    """A bare client of the fake Postmark, with its server token."""
    return HttpClient(
        "postmark",
        "X",
        fake.base("postmark"),
        headers={"X-Postmark-Server-Token": fake.POSTMARK_TOKEN},
        retry=retry,
    )


def test_refused_connection_is_surely_not_sent_after_bounded_attempts() -> None:
    client = HttpClient("postmark", "X", f"http://127.0.0.1:{_closed_port()}", retry=FAST)
    answer = asyncio.run(client.call("POST", "/email/batch", json=[]))
    assert answer.sent is Sent.NOT_SENT and "not sent" in answer.error
    assert client.requests == 3


def test_dropped_connection_is_ambiguous_and_not_retried_without_a_key(fake_providers) -> None:
    fake_providers.script("postmark", ["drop"])
    client = _postmark_client(fake_providers)
    answer = asyncio.run(client.call("POST", "/email/batch", json=[]))
    assert answer.sent is Sent.AMBIGUOUS and client.requests == 1


def test_a_request_held_past_the_timeout_is_ambiguous_and_not_retried_without_a_key(
    fake_providers,
) -> None:
    # The fake holds the request far longer than the client waits (it never answers: it
    # closes only once the client has hung up), so the client's own timeout is what ends it,
    # however slow the machine: no race between two clocks.
    fake_providers.slow_seconds = 600
    fake_providers.script("postmark", ["slow"])
    client = _postmark_client(
        fake_providers,
        RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01, timeout=0.5),
    )
    answer = asyncio.run(client.call("POST", "/email/batch", json=[]))
    assert answer.sent is Sent.AMBIGUOUS and client.requests == 1
    assert "timed out" in answer.error.lower() or "timeout" in answer.error.lower(), answer.error
    assert [kind for _, kind in fake_providers.faults_done] == ["slow"]


def test_retry_after_is_honoured(fake_providers) -> None:
    from fakes.provider_server import Fault

    fake_providers.script("postmark", [Fault("429", retry_after=1)])
    client = _postmark_client(fake_providers)
    began = time.monotonic()
    answer = asyncio.run(client.call("POST", "/email/batch", json=[]))
    assert answer.sent is Sent.ANSWERED and answer.status == 200
    assert time.monotonic() - began >= 1.0  # waited as asked, not the 1 ms backoff


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"Retry-After": "7"}) == 7
    assert retry_after_seconds({"ratelimit-remaining": "0", "ratelimit-reset": "3"}) == 3
    assert retry_after_seconds({"ratelimit-remaining": "5", "ratelimit-reset": "3"}) is None
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert retry_after_seconds({"Retry-After": date}, now=1445412470.0) == 10


def test_limiter_paces_messages_and_requests() -> None:
    clock = [100.0]
    limiter = RateLimiter(Limits(messages_per_second=100, requests_per_second=2), lambda: clock[0])
    waits = [limiter.reserve(50) for _ in range(4)]
    # 50 messages at 100/s take 0.5 s each; 2 requests/s also spaces them 0.5 s apart.
    assert waits == [0.0, 0.5, 1.0, 1.5]
    limiter.pause(10)
    assert limiter.reserve(1) == 10


def test_a_new_event_loop_gets_a_fresh_pooled_client(fake_providers) -> None:
    client = HttpClient(
        "resend",
        "RESEND_API_KEY",
        fake_providers.base("resend"),
        headers={"Authorization": f"Bearer {fake_providers.RESEND_KEY}"},
        retry=FAST,
    )
    for _ in range(2):  # the engine runs one asyncio.run per chunk
        assert asyncio.run(client.call("GET", "/domains", idempotent=True)).status == 200


@pytest.mark.parametrize(
    ("provider", "variable"),
    [
        ("postmark", "POSTMARK_SERVER_TOKEN"),
        ("sendgrid", "SENDGRID_API_KEY"),
        ("mailgun", "MAILGUN_API_KEY"),
        ("resend", "RESEND_API_KEY"),
    ],
)
def test_missing_credential_names_the_variable(tmp_path, monkeypatch, provider, variable) -> None:
    for name in ("POSTMARK_SERVER_TOKEN", "SENDGRID_API_KEY", "MAILGUN_API_KEY", "RESEND_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(DRIPMAIL_PROVIDER=provider)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=f"^{variable} is not set"):
        get_provider(settings, Project(tmp_path))


def test_mailgun_needs_its_domain_and_settings_choose_base_url_and_limits(tmp_path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        DRIPMAIL_PROVIDER="mailgun", MAILGUN_API_KEY="k", MAILGUN_DOMAIN=None
    )
    with pytest.raises(ConfigError, match="MAILGUN_DOMAIN"):
        get_provider(settings, Project(tmp_path))
    eu = Settings(  # type: ignore[call-arg]
        DRIPMAIL_PROVIDER="mailgun",
        MAILGUN_API_KEY="k",
        MAILGUN_DOMAIN="mg.example.com",
        DRIPMAIL_MAILGUN_BASE_URL="https://api.eu.mailgun.net",
        DRIPMAIL_RATE_PER_SECOND=50,
        DRIPMAIL_MAX_CONCURRENCY=2,
    )
    provider = get_provider(eu, Project(tmp_path))
    assert provider.http.base_url == "https://api.eu.mailgun.net"
    assert provider.http.limits == Limits(50, None, 2)
    with pytest.raises(ConfigError, match="DRIPMAIL_RESEND_BASE_URL"):
        get_provider(
            Settings(  # type: ignore[call-arg]
                DRIPMAIL_PROVIDER="resend", RESEND_API_KEY="re_x", DRIPMAIL_RESEND_BASE_URL="nope"
            ),
            Project(tmp_path),
        )


def test_contract_check_refuses_what_the_published_files_forbid(fake_providers) -> None:
    bad = [
        (
            "postmark",
            {"X-Postmark-Server-Token": fake_providers.POSTMARK_TOKEN},
            "/email/batch",
            {"not": "a list"},
        ),
        (
            "resend",
            {"Authorization": f"Bearer {fake_providers.RESEND_KEY}"},
            "/emails/batch",
            [{"from": "a@b.c", "subject": "no to"}],
        ),
        (
            "sendgrid",
            {"Authorization": f"Bearer {fake_providers.SENDGRID_KEY}"},
            "/v3/mail/send",
            {"personalizations": [{"to": [{"email": "x@example.org"}]}]},
        ),
    ]
    with httpx.Client() as client:
        for provider, headers, path, body in bad:
            answer = client.post(fake_providers.base(provider) + path, json=body, headers=headers)
            assert answer.status_code == 400, provider
        answer = client.post(
            fake_providers.base("mailgun") + f"/v3/{fake_providers.MAILGUN_DOMAIN}/messages",
            files=[("from", (None, "a@b.c")), ("o:tracking", (None, "sometimes"))],
            auth=("api", fake_providers.MAILGUN_KEY),
        )
        assert answer.status_code == 400
    found = fake_providers.validation_errors
    assert [e.split()[0] for e in found] == ["postmark", "resend", "sendgrid", "mailgun"]
    fake_providers.validation_errors.clear()  # expected here; the fixture checks the rest


def test_the_key_travels_under_the_name_the_webhooks_read() -> None:
    from dripmail.providers.common import KEY_FIELD
    from dripmail.webhooks.common import KEY_FIELD as WEBHOOK_KEY_FIELD

    assert KEY_FIELD == WEBHOOK_KEY_FIELD == "dripmail_key"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=12,
    )
)
def test_json_body_is_the_bytes_httpx_would_send(value) -> None:
    """orjson writes what httpx's own ``json=`` writes (Resend's idempotent resends compare
    bodies byte for byte, so an upgrade must not change them)."""
    import json

    from dripmail.providers.http import json_body

    assert json_body(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def test_an_answered_request_and_its_body_are_freed_without_the_cycle_collector(
    fake_providers,
) -> None:
    # A batch's body is megabytes: it must go when the answer goes, not when the collector's
    # oldest generation next runs (a broadcast's memory stays flat without collecting).
    client = _postmark_client(fake_providers)

    async def one_call() -> weakref.ref[httpx.Request]:
        answer = await client.call("POST", "/email/batch", json=[])
        assert answer.sent is Sent.ANSWERED and answer.json() == []
        assert answer.response is not None
        return weakref.ref(answer.response.request)

    gc.disable()
    try:
        request = asyncio.run(one_call())
        assert request() is None
    finally:
        gc.enable()

"""verify_and_parse: each provider's documented authentication, and normalised events."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from fakes.webhook_signing import (
    WebhookKeys,
    mailgun_event,
    postmark_record,
    resend_event,
    sendgrid_event,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dripmail.errors import ConfigError, InputError, WebhookAuthError
from dripmail.webhooks import EVENT_TYPES, PROVIDERS, verify_and_parse

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ADDR = "maya@example.com"
KEY = "psoas-week-s1-d2"


@pytest.fixture(scope="module")
def keys() -> WebhookKeys:
    return WebhookKeys.generate()


def payload(provider: str, kind: str, **kw):
    builders = {
        "postmark": postmark_record,
        "sendgrid": lambda *a, **k: [sendgrid_event(*a, **k)],
        "mailgun": mailgun_event,
        "resend": resend_event,
    }
    return builders[provider](kind, ADDR, key=KEY, **kw)


# (provider, provider's event kind, extra fields) -> (type, hard)
CASES = [
    ("postmark", "Delivery", {}, "delivered", False),
    ("postmark", "Bounce", {}, "bounced", True),
    (
        "postmark",
        "Bounce",
        {"Type": "SoftBounce", "TypeCode": 4096, "Inactive": False},
        "bounced",
        False,
    ),
    (
        "postmark",
        "Bounce",
        {"Type": "Transient", "TypeCode": 2, "Inactive": False},
        "bounced",
        False,
    ),
    ("postmark", "SpamComplaint", {}, "complained", False),
    ("postmark", "Open", {}, "opened", False),
    ("postmark", "Click", {}, "clicked", False),
    ("postmark", "SubscriptionChange", {}, "unsubscribed", False),
    ("postmark", "SubscriptionChange", {"SuppressionReason": "HardBounce"}, "bounced", True),
    ("sendgrid", "delivered", {}, "delivered", False),
    ("sendgrid", "bounce", {}, "bounced", True),
    ("sendgrid", "bounce", {"type": "blocked"}, "bounced", False),
    ("sendgrid", "deferred", {}, "bounced", False),
    ("sendgrid", "dropped", {"reason": "Bounced Address"}, "bounced", True),
    ("sendgrid", "spamreport", {}, "complained", False),
    ("sendgrid", "unsubscribe", {}, "unsubscribed", False),
    ("sendgrid", "group_unsubscribe", {"asm_group_id": 1}, "unsubscribed", False),
    ("sendgrid", "open", {}, "opened", False),
    ("sendgrid", "click", {}, "clicked", False),
    ("mailgun", "delivered", {}, "delivered", False),
    ("mailgun", "failed", {}, "bounced", True),
    ("mailgun", "failed", {"severity": "temporary"}, "bounced", False),
    ("mailgun", "failed", {"reason": "suppress-complaint"}, "complained", False),
    ("mailgun", "complained", {}, "complained", False),
    ("mailgun", "unsubscribed", {}, "unsubscribed", False),
    ("mailgun", "opened", {}, "opened", False),
    ("mailgun", "clicked", {}, "clicked", False),
    ("resend", "email.delivered", {}, "delivered", False),
    ("resend", "email.bounced", {}, "bounced", True),
    ("resend", "email.delivery_delayed", {}, "bounced", False),
    ("resend", "email.complained", {}, "complained", False),
    ("resend", "email.opened", {}, "opened", False),
    ("resend", "email.clicked", {}, "clicked", False),
    ("resend", "email.suppressed", {"suppressed": {"reason": "previous_bounce"}}, "bounced", True),
]


@pytest.mark.parametrize(("provider", "kind", "extra", "type_", "hard"), CASES)
def test_signed_event_is_accepted_and_normalised(
    keys: WebhookKeys, provider: str, kind: str, extra: dict, type_: str, hard: bool
) -> None:
    headers, body = keys.signed(provider, payload(provider, kind, **extra), NOW)
    [event] = verify_and_parse(provider, headers, body, keys.settings(), NOW)
    assert (event.provider, event.type, event.hard) == (provider, type_, hard)
    assert event.email == ADDR
    assert event.delivery_key == KEY
    assert event.provider_message_id
    assert event.dedupe_key
    assert event.at.tzinfo is not None


def test_resend_bounce_types_follow_the_payload(keys: WebhookKeys) -> None:
    body = resend_event("email.bounced", ADDR)
    body["data"]["bounce"]["type"] = "Transient"
    [event] = verify_and_parse("resend", *keys.signed("resend", body, NOW), keys.settings(), NOW)
    assert (event.type, event.hard, event.stored_type) == ("bounced", False, "soft_bounced")


@pytest.mark.parametrize(
    ("provider", "kind"),
    [
        ("sendgrid", "processed"),
        ("mailgun", "accepted"),
        ("resend", "email.sent"),
        ("postmark", "Inbound"),
    ],
)
def test_untracked_event_kinds_are_left_out(keys: WebhookKeys, provider: str, kind: str) -> None:
    headers, body = keys.signed(provider, payload(provider, kind), NOW)
    assert verify_and_parse(provider, headers, body, keys.settings(), NOW) == []


def test_postmark_reactivation_is_not_an_unsubscribe(keys: WebhookKeys) -> None:
    record = postmark_record("SubscriptionChange", ADDR, SuppressSending=False)
    headers, body = keys.signed("postmark", record, NOW)
    assert verify_and_parse("postmark", headers, body, keys.settings(), NOW) == []


# --- authentication failures ------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unsigned_request_is_refused(keys: WebhookKeys, provider: str) -> None:
    _, body = keys.signed(provider, payload(provider, "x"), NOW)
    if provider == "mailgun":  # the signature lives in the body: drop it
        body = json.dumps({"event-data": json.loads(body)["event-data"]}).encode()
    with pytest.raises(WebhookAuthError, match=f"{provider} webhook refused"):
        verify_and_parse(provider, {"Content-Type": "application/json"}, body, keys.settings(), NOW)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_request_signed_with_another_key_is_refused(keys: WebhookKeys, provider: str) -> None:
    other = WebhookKeys.generate()
    headers, body = other.signed(provider, payload(provider, "delivered"), NOW)
    with pytest.raises(WebhookAuthError):
        verify_and_parse(provider, headers, body, keys.settings(), NOW)


@pytest.mark.parametrize("provider", ["sendgrid", "resend"])
def test_tampered_body_is_refused(keys: WebhookKeys, provider: str) -> None:
    kind = "bounce" if provider == "sendgrid" else "email.bounced"
    headers, body = keys.signed(provider, payload(provider, kind), NOW)
    forged = body.replace(ADDR.encode(), b"victim@example.com")
    assert forged != body
    with pytest.raises(WebhookAuthError, match="does not match"):
        verify_and_parse(provider, headers, forged, keys.settings(), NOW)


def test_mailgun_signature_cannot_be_moved_to_a_forged_event(keys: WebhookKeys) -> None:
    # The HMAC covers timestamp + token only; a forged event keeps a valid signature, so the
    # event is accepted here but carries the token: apply_events refuses the reuse (see
    # test_apply_webhooks). A changed token or timestamp fails at once:
    headers, body = keys.signed("mailgun", mailgun_event("failed", ADDR), NOW)
    doc = json.loads(body)
    doc["signature"]["token"] = doc["signature"]["token"][::-1]
    with pytest.raises(WebhookAuthError, match="does not match"):
        verify_and_parse("mailgun", headers, json.dumps(doc).encode(), keys.settings(), NOW)


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun", "resend"])
@pytest.mark.parametrize("shift", [timedelta(minutes=-6), timedelta(minutes=6)])
def test_stale_or_future_timestamp_is_refused(
    keys: WebhookKeys, provider: str, shift: timedelta
) -> None:
    kind = {"sendgrid": "delivered", "mailgun": "delivered", "resend": "email.delivered"}[provider]
    headers, body = keys.signed(provider, payload(provider, kind), NOW + shift)
    with pytest.raises(WebhookAuthError, match=r"too old|future"):
        verify_and_parse(provider, headers, body, keys.settings(), NOW)
    # ... and a captured request replayed hours later is stale too.
    with pytest.raises(WebhookAuthError):
        verify_and_parse(provider, headers, body, keys.settings(), NOW + timedelta(hours=3))


def test_within_the_window_is_accepted_and_the_window_is_configurable(keys: WebhookKeys) -> None:
    headers, body = keys.signed("sendgrid", payload("sendgrid", "open"), NOW - timedelta(minutes=4))
    assert verify_and_parse("sendgrid", headers, body, keys.settings(), NOW)
    strict = keys.settings(DRIPMAIL_WEBHOOK_TOLERANCE_SECONDS="60")
    with pytest.raises(WebhookAuthError, match="too old"):
        verify_and_parse("sendgrid", headers, body, strict, NOW)


@pytest.mark.parametrize(
    ("user", "password"), [("postmark-hooks", "wrong"), ("someone", None), ("", "")]
)
def test_postmark_wrong_credentials_are_refused(
    keys: WebhookKeys, user: str, password: str | None
) -> None:
    headers = keys.postmark_headers(user or None, password)
    if not user:
        headers["Authorization"] = "Basic " + base64.b64encode(b"no-colon-here").decode()
    body = json.dumps(postmark_record("Bounce", ADDR)).encode()
    with pytest.raises(WebhookAuthError):
        verify_and_parse("postmark", headers, body, keys.settings(), NOW)


def test_postmark_header_names_are_case_insensitive(keys: WebhookKeys) -> None:
    headers, body = keys.signed("postmark", postmark_record("Open", ADDR), NOW)
    lower = {k.lower(): v for k, v in headers.items()}
    assert verify_and_parse("postmark", lower, body, keys.settings(), NOW)


@pytest.mark.parametrize(
    ("provider", "variable"),
    [
        ("postmark", "POSTMARK_WEBHOOK_PASSWORD"),
        ("sendgrid", "SENDGRID_WEBHOOK_PUBLIC_KEY"),
        ("mailgun", "MAILGUN_WEBHOOK_SIGNING_KEY"),
        ("resend", "RESEND_WEBHOOK_SECRET"),
    ],
)
def test_unconfigured_provider_refuses_everything(
    keys: WebhookKeys, provider: str, variable: str
) -> None:
    headers, body = keys.signed(provider, payload(provider, "delivered"), NOW)
    with pytest.raises(WebhookAuthError, match=variable):
        verify_and_parse(provider, headers, body, keys.settings(**{variable: ""}), NOW)


def test_resend_accepts_rotated_secrets_and_standard_webhooks_headers(keys: WebhookKeys) -> None:
    headers, body = keys.signed("resend", resend_event("email.opened", ADDR), NOW)
    # During a secret rotation Svix sends several signatures, space-separated.
    headers["svix-signature"] = (
        "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= " + (headers["svix-signature"])
    )
    assert verify_and_parse("resend", headers, body, keys.settings(), NOW)
    standard = {k.replace("svix-", "webhook-"): v for k, v in headers.items()}
    assert verify_and_parse("resend", standard, body, keys.settings(), NOW)


def test_sendgrid_key_in_pem_form_works_and_a_bad_key_is_a_config_error(
    keys: WebhookKeys,
) -> None:
    pem = (
        keys.sendgrid_private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    headers, body = keys.signed("sendgrid", payload("sendgrid", "open"), NOW)
    settings_pem = keys.settings(SENDGRID_WEBHOOK_PUBLIC_KEY=pem)
    assert verify_and_parse("sendgrid", headers, body, settings_pem, NOW)
    with pytest.raises(ConfigError, match="SENDGRID_WEBHOOK_PUBLIC_KEY"):
        verify_and_parse(
            "sendgrid", headers, body, keys.settings(SENDGRID_WEBHOOK_PUBLIC_KEY="bm9wZQ=="), NOW
        )


def test_sendgrid_retry_keeps_the_dedupe_key_though_sg_event_id_changes(
    keys: WebhookKeys,
) -> None:
    first = sendgrid_event("bounce", ADDR, key=KEY)
    retry = {**first, "sg_event_id": "another-id-on-retry"}
    a = verify_and_parse("sendgrid", *keys.signed("sendgrid", [first], NOW), keys.settings(), NOW)
    b = verify_and_parse("sendgrid", *keys.signed("sendgrid", [retry], NOW), keys.settings(), NOW)
    assert a[0].dedupe_key == b[0].dedupe_key
    other = {**first, "timestamp": first["timestamp"] + 60}
    c = verify_and_parse("sendgrid", *keys.signed("sendgrid", [other], NOW), keys.settings(), NOW)
    assert c[0].dedupe_key != a[0].dedupe_key


# --- malformed input (after valid authentication) ---------------------------------------


@pytest.mark.parametrize("provider", ["postmark", "sendgrid", "resend"])
@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b""])
def test_malformed_json_is_an_input_error(keys: WebhookKeys, provider: str, body: bytes) -> None:
    headers = {
        "postmark": keys.postmark_headers(),
        "sendgrid": keys.sendgrid_headers(body, int(NOW.timestamp())),
        "resend": keys.resend_headers(body, int(NOW.timestamp())),
    }[provider]
    with pytest.raises(InputError, match=f"{provider} webhook"):
        verify_and_parse(provider, headers, body, keys.settings(), NOW)


def test_mailgun_malformed_json_is_an_input_error(keys: WebhookKeys) -> None:
    with pytest.raises(InputError, match="malformed JSON"):
        verify_and_parse("mailgun", {}, b'{"signature": ', keys.settings(), NOW)


@pytest.mark.parametrize(
    ("provider", "doc", "message"),
    [
        ("sendgrid", {"event": "bounce"}, "JSON array"),
        ("sendgrid", [{"event": "bounce"}], "'email'"),
        ("sendgrid", ["bounce"], "event 0"),
        ("postmark", [], "JSON object"),
        ("postmark", {"RecordType": "Bounce", "ID": 1}, "'Email'"),
        ("resend", {"type": "email.bounced", "data": "x"}, "data"),
        ("resend", {"type": "email.bounced", "data": {"to": 5}}, "'to'"),
        ("mailgun", {"event": "failed"}, "'recipient'"),
        ("mailgun", "nope", "event-data"),
    ],
)
def test_wrong_shape_is_an_input_error(
    keys: WebhookKeys, provider: str, doc: object, message: str
) -> None:
    headers, body = keys.signed(provider, doc, NOW)
    with pytest.raises(InputError, match=message):
        verify_and_parse(provider, headers, body, keys.settings(), NOW)


def test_unknown_provider_is_an_input_error(keys: WebhookKeys) -> None:
    with pytest.raises(InputError, match="unknown webhook provider 'brevo'"):
        verify_and_parse("brevo", {}, b"[]", keys.settings(), NOW)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    provider=st.sampled_from(PROVIDERS),
    doc=JSON
    | st.builds(lambda e: [e], JSON)
    | st.fixed_dictionaries({"type": st.text(max_size=20), "data": JSON}),
)
def test_any_signed_body_gives_events_or_an_input_error(
    keys: WebhookKeys, provider: str, doc: object
) -> None:
    headers, body = keys.signed(provider, doc, NOW)
    try:
        events = verify_and_parse(provider, headers, body, keys.settings(), NOW)
    except InputError:
        return
    for event in events:
        assert event.type in EVENT_TYPES

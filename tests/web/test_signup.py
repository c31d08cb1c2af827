"""POST /subscribe and the sign-up page, in process (httpx ASGI transport, real SQLite, outbox)."""

from __future__ import annotations

import email
from email import policy

import pytest
from conftest import assert_clean

from dripmail.store.schema import subscribers
from dripmail.subscribers import activate

pytestmark = pytest.mark.anyio

FORM = {"email": "Ann@Example.com", "first_name": "Ann", "timezone": "Europe/Berlin"}


def confirm_emails(web) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in web.emails()
        if p.name.startswith("confirm-")
    ]


async def test_form_signup_stores_consent_and_sends_one_confirmation(web):
    client = web.client()
    answer = await client.post(
        "/subscribe",
        data={**FORM, "source": "https://studio.example.com/blog/psoas"},
        headers={"User-Agent": "Mozilla/5.0 (test)"},
    )
    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    row = web.subscriber("ann@example.com")
    assert row["status"] == "pending"
    assert row["first_name"] == "Ann"
    assert row["timezone"] == "Europe/Berlin"
    assert row["consent_ip"] == "203.0.113.7"
    assert row["consent_user_agent"] == "Mozilla/5.0 (test)"
    assert row["consent_page"] == "https://studio.example.com/blog/psoas"
    assert row["consent_at"] == web.clock.now
    (sent,) = confirm_emails(web)
    assert sent["To"].addresses[0].addr_spec == "ann@example.com"
    body = sent.get_body(("plain",)).get_content()
    assert f"http://testserver/confirm/{web.token(row['id'], 'confirm')[:2]}" in body


async def test_json_signup_answers_json_and_defaults_to_the_course_zone(web):
    answer = await web.client().post(
        "/subscribe",
        json={"email": "bo@example.com"},
        headers={"Referer": "https://blog.example/x"},
    )
    assert answer.status_code == 200
    assert answer.json()["ok"] is True
    row = web.subscriber("bo@example.com")
    assert row["timezone"] == "America/New_York"  # the course's zone
    assert row["consent_page"] == "https://blog.example/x"  # from the Referer
    assert len(confirm_emails(web)) == 1


async def test_same_answer_for_new_pending_and_active_and_no_flood(web):
    client = web.client()
    first = await client.post("/subscribe", data=FORM)
    again = await client.post("/subscribe", data=FORM)  # still pending, within the quiet time
    sid = web.subscriber("ann@example.com")["id"]
    activate(web.engine, sid, web.app.state.ctx.course(), web.clock.now)
    active = await client.post("/subscribe", data=FORM)
    assert first.status_code == again.status_code == active.status_code == 200
    assert first.text == again.text == active.text  # nothing tells who is subscribed
    assert len(confirm_emails(web)) == 1  # three submissions, one email


async def test_repeated_signup_after_the_quiet_period_resends_once(web):
    from datetime import timedelta

    client = web.client()
    await client.post("/subscribe", data=FORM)
    web.clock.now += timedelta(minutes=16)
    await client.post("/subscribe", data=FORM)
    await client.post("/subscribe", data=FORM)
    assert len(confirm_emails(web)) == 2


async def test_suppressed_address_gets_the_same_answer_and_no_email(web):
    from dripmail.subscribers import add_subscriber, forget

    sid, _ = add_subscriber(
        web.engine, "gone@example.com", timezone="UTC", status="active",
        consent_source="test", now=web.clock.now,
    )  # fmt: skip
    forget(web.engine, sid, web.clock.now)
    normal = await web.client().post("/subscribe", data={"email": "new@example.com"})
    gone = await web.client().post("/subscribe", data={"email": "gone@example.com"})
    assert gone.status_code == 200 and gone.text == normal.text
    assert [r["email"] for r in web.rows(subscribers)] == ["new@example.com"]
    assert len(confirm_emails(web)) == 1


async def test_honeypot_answers_normally_and_stores_nothing(web):
    before = web.snapshot()
    answer = await web.client().post("/subscribe", data={**FORM, "website": "http://spam"})
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    assert web.snapshot() == before
    assert web.emails() == []


URLENC = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}
MULTI = {"Content-Type": "multipart/form-data; boundary=zz"}
BIG_NAME = "x" * 200_000


@pytest.mark.parametrize(
    ("content", "kwargs", "status", "says"),
    [
        ("invalid address", {"data": {"email": "not-an-address"}}, 400, "email"),
        ("missing email", {"data": {"first_name": "Ann"}}, 400, "enter your email"),
        ("empty body", {"content": b""}, 400, "enter your email"),
        ("malformed form", {"content": b"email&&=%%", "headers": URLENC}, 400, "form data"),
        ("not utf-8", {"content": b"email=\xff\xfe", "headers": URLENC}, 400, "form data"),
        ("malformed JSON", {"content": b'{"email": ', "headers": JSON}, 400, "JSON"),
        ("JSON list", {"json": ["a@example.com"]}, 400, "object"),
        ("JSON nested", {"json": {"email": {"$ne": ""}}}, 400, "string"),
        ("wrong type", {"content": b"<x/>", "headers": {"Content-Type": "text/xml"}}, 400, "type"),
        ("huge body", {"data": {"email": "a@example.com", "first_name": BIG_NAME}}, 413, "too"),
        ("broken multipart", {"content": b"--zz\r\nbroken", "headers": MULTI}, 400, "email"),
    ],
)  # fmt: skip
async def test_bad_input_is_refused_cleanly_and_changes_nothing(web, content, kwargs, status, says):
    before = web.snapshot()
    answer = await web.client().post("/subscribe", **kwargs)
    assert answer.status_code == status, content
    assert says.lower() in answer.text.lower()
    assert_clean(answer)
    assert web.snapshot() == before
    assert web.emails() == []


async def test_json_clients_get_json_errors(web):
    answer = await web.client().post("/subscribe", json={"email": "nope"})
    assert answer.status_code == 400
    assert answer.json()["ok"] is False and "email" in answer.json()["error"]


async def test_a_bad_address_is_explained_in_a_plain_sentence(web):
    answer = await web.client().post("/subscribe", json={"email": "ann@@example.com"})
    assert answer.status_code == 400
    assert answer.json()["error"] == (
        "email: that does not look like an email address. The part after the @-sign "
        "contains invalid characters: '@'."
    )


async def test_rate_limit_per_client_address(web):
    client = web.client(ip="198.51.100.1")
    answers = [
        await client.post("/subscribe", data={"email": f"p{i}@example.com"}) for i in range(11)
    ]
    assert [a.status_code for a in answers[:10]] == [200] * 10
    assert answers[10].status_code == 429
    assert int(answers[10].headers["Retry-After"]) >= 1
    assert "p10@example.com" not in {r["email"] for r in web.rows(subscribers)}
    other = await web.client(ip="198.51.100.2").post("/subscribe", data={"email": "q@example.com"})
    assert other.status_code == 200  # another address has its own bucket


async def test_signup_page_has_the_form_with_zone_default_and_honeypot(web):
    page = await web.client().get("/")
    assert page.status_code == 200
    assert 'action="/subscribe"' in page.text
    assert 'name="timezone" value="America/New_York"' in page.text
    assert 'name="website"' in page.text and 'tabindex="-1"' in page.text
    assert "/static/signup.js" in page.text
    script = await web.client().get("/static/signup.js")
    assert "resolvedOptions().timeZone" in script.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


async def test_first_name_is_escaped_on_pages_and_cleaned_of_control_characters(web):
    await web.client().post(
        "/subscribe", data={"email": "x@example.com", "first_name": "<b>Ann</b>\r\nBcc: y"}
    )
    assert web.subscriber("x@example.com")["first_name"] == "<b>Ann</b> Bcc: y"  # one space
    (sent,) = confirm_emails(web)
    html = sent.get_body(("html",)).get_content()
    assert "<b>Ann</b>" not in html and "&lt;b&gt;Ann&lt;/b&gt;" in html


def test_rate_limiter_refills_over_time():
    from dripmail.web.ratelimit import TokenBucket

    now = [0.0]
    bucket = TokenBucket(capacity=2, per_second=0.5, clock=lambda: now[0])
    assert bucket.take("a") is None and bucket.take("a") is None
    wait = bucket.take("a")
    assert wait == pytest.approx(2.0)
    now[0] += 2.0
    assert bucket.take("a") is None
    assert bucket.take("b") is None  # keys are independent


def test_rate_limiter_memory_is_bounded():
    from dripmail.web.ratelimit import TokenBucket

    bucket = TokenBucket(capacity=1, per_second=0.001, max_keys=100)
    for i in range(1000):
        bucket.take(f"10.0.{i // 256}.{i % 256}")
    assert len(bucket._buckets) == 100


async def test_unsubscribed_reader_can_sign_up_again_and_gets_the_lessons_left(web):
    from datetime import timedelta

    from sqlalchemy import select

    from dripmail.store.schema import deliveries
    from dripmail.subscribers import unsubscribe

    client = web.client()
    await client.post("/subscribe", data=FORM)
    sid = web.subscriber("ann@example.com")["id"]
    activate(web.engine, sid, web.app.state.ctx.course(), web.clock.now)
    unsubscribe(web.engine, sid, web.clock.now)
    web.clock.now += timedelta(days=3)
    answer = await client.post("/subscribe", data=FORM)
    assert answer.status_code == 200
    row = web.subscriber("ann@example.com")
    assert row["status"] == "pending" and row["consent_at"] == web.clock.now
    assert len(confirm_emails(web)) == 2  # the first sign-up and this one
    confirmed = await client.post(f"/confirm/{web.token(sid, 'confirm')}")
    assert confirmed.status_code == 200
    assert web.subscriber("ann@example.com")["status"] == "active"
    with web.engine.connect() as conn:
        states = list(
            conn.execute(
                select(deliveries.c.state).where(deliveries.c.subscriber_id == sid)
            ).scalars()
        )
    assert states == ["planned"] * 7  # none were sent before leaving: all seven again


async def test_a_bad_hidden_zone_falls_back_to_the_course_zone(web):
    # The form fills `timezone` from the browser; an odd value must not turn a reader away.
    answer = await web.client().post(
        "/subscribe", data={"email": "zed@example.com", "timezone": "Mars/Olympus"}
    )
    assert answer.status_code == 200
    assert web.subscriber("zed@example.com")["timezone"] == web.app.state.ctx.course().timezone


async def test_a_legacy_zone_from_the_form_is_stored_canonical(web):
    await web.client().post(
        "/subscribe", data={"email": "us@example.com", "timezone": "US/Pacific"}
    )
    assert web.subscriber("us@example.com")["timezone"] == "America/Los_Angeles"


async def test_control_characters_in_the_name_become_spaces(web):
    await web.client().post(
        "/subscribe",
        data={"email": "dan@example.com", "first_name": "Dan\r\nBcc: eve@example.com\u2028x"},
    )
    assert web.subscriber("dan@example.com")["first_name"] == "Dan Bcc: eve@example.com x"


async def test_a_pending_readers_new_signup_replaces_a_name_no_header_can_carry(web):
    """A stored name with U+2028 (a hand edit, an older version) kept the confirmation email
    from being built; the reader signs up again with their name: it replaces the stored one
    and the email goes out. An empty name field keeps the stored name."""
    from datetime import timedelta

    from sqlalchemy import select, update

    from dripmail.store.schema import events

    client = web.client()
    await client.post("/subscribe", data=FORM)
    with web.engine.begin() as conn:
        conn.execute(
            update(subscribers)
            .where(subscribers.c.email == "ann@example.com")
            .values(first_name="Ivy\u2028Z", confirm_handed_at=None)
        )
    for path in web.emails():
        path.unlink()  # so the email built now is the one looked at
    web.clock.now += timedelta(hours=1)
    answer = await client.post("/subscribe", data={**FORM, "first_name": "Ann"})
    assert answer.status_code == 200
    row = web.subscriber("ann@example.com")
    assert row["first_name"] == "Ann" and row["confirm_handed_at"] is not None
    (sent,) = confirm_emails(web)
    assert sent["To"].addresses[0].display_name == "Ann"
    with web.engine.connect() as conn:
        kinds = [r.type for r in conn.execute(select(events.c.type, events.c.detail))]
    assert "renamed" in kinds and "confirm_not_sent" not in kinds
    await client.post("/subscribe", data={"email": "ann@example.com"})
    assert web.subscriber("ann@example.com")["first_name"] == "Ann"

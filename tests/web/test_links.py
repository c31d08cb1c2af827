"""The links in emails: /confirm, /unsubscribe (RFC 8058) and /preferences, in process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import itsdangerous
import pytest
from conftest import NOW, assert_clean
from sqlalchemy import select

from dripmail.store.schema import deliveries, events
from dripmail.subscribers import activate, add_subscriber

pytestmark = pytest.mark.anyio


def pending(web, email: str = "ann@example.com", zone: str = "Europe/Berlin") -> int:
    sid, _ = add_subscriber(
        web.engine, email, timezone=zone, status="pending", consent_source="test",
        now=web.clock.now, first_name="Ann",
    )  # fmt: skip
    return sid


def active(web, email: str = "ann@example.com", zone: str = "Europe/Berlin") -> int:
    sid = pending(web, email, zone)
    activate(web.engine, sid, web.app.state.ctx.course(), web.clock.now)
    return sid


def lessons(web, sid: int) -> list[dict]:
    with web.engine.connect() as conn:
        rows = conn.execute(
            select(deliveries)
            .where(deliveries.c.subscriber_id == sid)
            .order_by(deliveries.c.lesson_day)
        ).mappings()
        return [dict(r) for r in rows]


async def hand_over_week(web) -> None:
    """Run the engine once (in a thread: it drives the provider with asyncio.run)."""
    import anyio

    from dripmail.engine import run_once
    from dripmail.runner import handover_window

    runner = web.app.state.ctx.runner
    await anyio.to_thread.run_sync(
        lambda: run_once(
            web.engine,
            runner.provider,
            runner.render_lesson,
            web.clock.now,
            default_send_time=runner.course.send_time,
            handover=handover_window(runner.provider, web.settings),
        )
    )


def expired_token(web, sid: int, purpose: str, age: timedelta) -> str:
    """A token signed `age` before the app's clock (the clock its expiry is checked by)."""
    return web.signer.make(sid, purpose, issued_at=web.clock.now - age)  # type: ignore[arg-type]


# -- confirm -----------------------------------------------------------------------------


async def test_confirm_get_shows_a_button_and_changes_nothing(web):
    sid = pending(web)
    before = web.snapshot()
    page = await web.client().get(f"/confirm/{web.token(sid, 'confirm')}")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    assert "Yes, start the course" in page.text and 'method="post"' in page.text
    assert "a***@example.com" in page.text
    assert web.snapshot() == before  # a mail scanner's GET confirms nobody
    assert web.subscriber("ann@example.com")["status"] == "pending"


async def test_confirm_activates_and_says_when_lesson_one_arrives_locally(web):
    sid = pending(web)
    page = await web.client().post(f"/confirm/{web.token(sid, 'confirm')}", data={"confirm": "yes"})
    assert page.status_code == 200
    assert web.subscriber("ann@example.com")["status"] == "active"
    week = lessons(web, sid)
    assert [x["lesson_day"] for x in week] == list(range(1, 8))
    # 16:00 UTC is 18:00 in Berlin, after the 07:00 send time: the first lesson is tomorrow.
    first = week[0]["due_at"].astimezone(ZoneInfo("Europe/Berlin"))
    assert (first.date().isoformat(), first.strftime("%H:%M")) == ("2026-06-02", "07:00")
    assert "Tuesday 2 June 2026 at 07:00 (Europe/Berlin)" in page.text
    assert "Day 1: a stretch for your hips" in page.text
    assert page.headers["cache-control"] == "no-store"


async def test_second_confirm_click_changes_nothing(web):
    sid = pending(web)
    client = web.client()
    await client.post(f"/confirm/{web.token(sid, 'confirm')}")
    before = web.snapshot()
    web.clock.now += timedelta(days=1)
    again = await client.post(f"/confirm/{web.token(sid, 'confirm')}")
    assert again.status_code == 200 and "Already confirmed" in again.text
    assert web.snapshot() == before
    shown = await client.get(f"/confirm/{web.token(sid, 'confirm')}")
    assert "Already confirmed" in shown.text  # the page of a confirmed address says so


async def test_confirm_after_unsubscribe_does_not_restart(web):
    from dripmail.subscribers import unsubscribe

    sid = active(web)
    unsubscribe(web.engine, sid, web.clock.now)
    before = web.snapshot()
    page = await web.client().post(f"/confirm/{web.token(sid, 'confirm')}")
    assert "nothing was restarted" in page.text
    assert web.snapshot() == before


@pytest.mark.parametrize(
    ("path", "method"),
    [("confirm", "GET"), ("confirm", "POST"), ("unsubscribe", "GET"), ("unsubscribe", "POST"),
     ("preferences", "GET"), ("preferences", "POST")],
)  # fmt: skip
async def test_bad_expired_and_wrong_purpose_tokens_get_a_clear_4xx_page(web, path, method):
    sid = pending(web)
    other = "preferences" if path != "preferences" else "confirm"
    good = web.token(sid, path)
    cases = {
        "garbage": "not-a-token",
        "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "wrong purpose": web.token(sid, other),
        "other key": itsdangerous.URLSafeTimedSerializer("other", salt=f"dripmail.{path}").dumps(
            sid
        ),
        "very long": "A" * 5000,
    }
    if path != "unsubscribe":  # unsubscribe links never expire (RFC 8058 and the law)
        cases["expired"] = expired_token(web, sid, path, timedelta(days=400))
    client = web.client()
    before = web.snapshot()
    for name, token in cases.items():
        data = {"List-Unsubscribe": "One-Click"} if method == "POST" else None
        answer = await client.request(method, f"/{path}/{token}", data=data)
        assert answer.status_code == 400, name
        assert "This link does not work" in answer.text, name
        if name == "expired":
            assert "expired" in answer.text
        assert_clean(answer)
    assert web.snapshot() == before


async def test_confirm_link_expires_after_a_week_but_works_before(web):
    sid = pending(web)
    stale = expired_token(web, sid, "confirm", timedelta(days=8))
    fresh = expired_token(web, sid, "confirm", timedelta(days=6))
    assert (await web.client().get(f"/confirm/{stale}")).status_code == 400
    assert (await web.client().post(f"/confirm/{stale}")).status_code == 400
    assert web.subscriber("ann@example.com")["status"] == "pending"
    assert (await web.client().post(f"/confirm/{fresh}")).status_code == 200


async def test_a_links_age_runs_on_the_apps_clock_not_the_wall_clock(web):
    """The app's clock is far from today (a simulated week): a confirm link made at its now
    works six days on and has expired eight days on, by that clock."""
    assert abs(web.clock.now - datetime.now(UTC)) > timedelta(days=30)
    sid = pending(web)
    token = web.signer.make(sid, "confirm", issued_at=web.clock.now)  # type: ignore[arg-type]
    web.clock.now += timedelta(days=8)
    assert (await web.client().post(f"/confirm/{token}")).status_code == 400
    web.clock.now -= timedelta(days=2)
    assert (await web.client().post(f"/confirm/{token}")).status_code == 200


async def test_token_of_a_forgotten_subscriber_is_404(web):
    from dripmail.subscribers import forget

    sid = active(web)
    forget(web.engine, sid, web.clock.now)
    before = web.snapshot()
    for path in ("confirm", "unsubscribe", "preferences"):
        answer = await web.client().get(f"/{path}/{web.token(sid, path)}")
        assert answer.status_code == 404
        assert "no longer valid" in answer.text
        assert_clean(answer)
    assert web.snapshot() == before


async def test_old_key_still_accepted_during_rotation(make_web):
    from conftest import SECRET

    web = make_web(DRIPMAIL_SECRET_KEY="the-new-key-0123456789", DRIPMAIL_OLD_SECRET_KEYS=SECRET)
    sid = pending(web)
    old = itsdangerous.URLSafeTimedSerializer(SECRET, salt="dripmail.confirm").dumps(sid)
    async with web.client() as client:
        assert (await client.post(f"/confirm/{old}")).status_code == 200
    assert web.subscriber("ann@example.com")["status"] == "active"


# -- unsubscribe ---------------------------------------------------------------------------


async def test_get_shows_one_button_and_never_unsubscribes(web):
    sid = active(web)
    before = web.snapshot()
    page = await web.client().get(f"/unsubscribe/{web.token(sid, 'unsubscribe')}")
    assert page.status_code == 200
    assert page.text.count("<button") == 1
    assert 'method="post"' in page.text
    assert "a***@example.com" in page.text and "ann@example.com" not in page.text
    assert web.snapshot() == before


async def test_pressing_the_button_unsubscribes_and_says_so(web):
    sid = active(web)
    token = web.token(sid, "unsubscribe")
    answer = await web.client().post(f"/unsubscribe/{token}", data={"confirm": "yes"})
    assert answer.status_code == 200
    assert "You are unsubscribed" in answer.text
    assert '<a href="/">sign up again</a>' in answer.text  # "welcome back": the way back
    assert web.subscriber("ann@example.com")["status"] == "unsubscribed"
    assert {x["state"] for x in lessons(web, sid)} == {"cancelled"}


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
async def test_rfc8058_one_click_post_unsubscribes_at_once(web, encoding):
    sid = active(web)
    url = f"/unsubscribe/{web.token(sid, 'unsubscribe')}"
    if encoding == "urlencoded":
        answer = await web.client().post(
            url,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    else:
        answer = await web.client().post(url, files={"List-Unsubscribe": (None, "One-Click")})
    assert answer.status_code == 200
    assert web.subscriber("ann@example.com")["status"] == "unsubscribed"
    stored = [e for e in web.rows(events) if e["type"] == "unsubscribed"]
    assert [e["detail"] for e in stored] == ["one-click"]
    # A retry by the mail client is harmless.
    again = await web.client().post(url, data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    assert len([e for e in web.rows(events) if e["type"] == "unsubscribed"]) == 1


async def test_unsubscribe_post_without_intent_changes_nothing(web):
    sid = active(web)
    url = f"/unsubscribe/{web.token(sid, 'unsubscribe')}"
    before = web.snapshot()
    for kwargs in (
        {"content": b""},
        {"data": {"List-Unsubscribe": "Yes-Please"}},
        {"content": b"\xff&&", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
        {"content": b"List-Unsubscribe=One-Click" + b"x" * 20_000},
    ):
        answer = await web.client().post(url, **kwargs)
        assert answer.status_code in (400, 413)
        assert_clean(answer)
    assert web.snapshot() == before


async def test_unsubscribe_keeps_a_bounced_status(web):
    from dripmail.subscribers import suppress

    sid = active(web)
    suppress(web.engine, sid, "bounced", web.clock.now)
    answer = await web.client().post(
        f"/unsubscribe/{web.token(sid, 'unsubscribe')}", data={"confirm": "yes"}
    )
    assert answer.status_code == 200
    assert web.subscriber("ann@example.com")["status"] == "bounced"


async def test_unsubscribe_cancels_lessons_already_scheduled_at_the_provider(
    make_web, fake_providers
):
    from conftest import Clock

    # The fake provider's clock is real, so this app's clock is too.
    web = make_web(
        clock=Clock(datetime.now(UTC)),
        DRIPMAIL_PROVIDER="resend",
        DRIPMAIL_PUBLIC_URL="https://testserver",
        RESEND_API_KEY=fake_providers.RESEND_KEY,
        DRIPMAIL_RESEND_BASE_URL=fake_providers.base("resend"),
    )
    sid = active(web)
    await hand_over_week(web)
    scheduled = fake_providers.accepted("resend", status="scheduled")
    assert [x["state"] for x in lessons(web, sid)][:1] == ["handed"]
    assert len(scheduled) >= 1  # lesson 1 waits at Resend for its send time
    async with web.client() as client:
        answer = await client.post(
            f"/unsubscribe/{web.token(sid, 'unsubscribe')}", data={"confirm": "yes"}
        )
    assert answer.status_code == 200
    assert len(fake_providers.accepted("resend", status="cancelled")) == len(scheduled)
    assert fake_providers.accepted("resend", status="scheduled") == []
    assert "will still arrive" not in answer.text


# -- preferences ---------------------------------------------------------------------------


async def test_preferences_page_shows_the_current_choices(web):
    sid = active(web)
    page = await web.client().get(f"/preferences/{web.token(sid, 'preferences')}")
    assert page.status_code == 200
    assert 'value="07:00"' in page.text
    assert '<option value="Europe/Berlin" selected>' in page.text
    assert 'name="newsletters" value="on" checked' in page.text
    assert "Tuesday 2 June 2026 at 07:00 (Europe/Berlin)" in page.text


async def test_changing_time_and_zone_reschedules_pending_lessons(web):
    sid = active(web)
    url = f"/preferences/{web.token(sid, 'preferences')}"
    answer = await web.client().post(
        url,
        data={"course": "active", "newsletters": "on", "send_time": "18:30",
              "timezone": "Asia/Kolkata"},
    )  # fmt: skip
    assert answer.status_code == 303 and answer.headers["location"] == f"{url}?saved=1"
    row = web.subscriber("ann@example.com")
    assert (row["timezone"], row["send_time"]) == ("Asia/Kolkata", "18:30")
    zone = ZoneInfo("Asia/Kolkata")
    local = [x["due_at"].astimezone(zone) for x in lessons(web, sid)]
    # 16:00 UTC is 21:30 in Kolkata, past 18:30: the next lesson is tomorrow at 18:30.
    assert [d.strftime("%m-%d %H:%M") for d in local] == [
        f"06-{day:02d} 18:30" for day in range(2, 9)
    ]
    saved = await web.client().get(f"{url}?saved=1")
    assert "Saved." in saved.text and "Tuesday 2 June 2026 at 18:30 (Asia/Kolkata)" in saved.text


async def test_pause_stops_and_resume_continues_next_local_morning(web):
    sid = active(web)
    url = f"/preferences/{web.token(sid, 'preferences')}"
    form = {"newsletters": "on", "send_time": "07:00", "timezone": "Europe/Berlin"}
    await web.client().post(url, data={**form, "course": "paused"})
    assert web.subscriber("ann@example.com")["status"] == "paused"
    web.clock.now = NOW + timedelta(days=10)
    await web.client().post(url, data={**form, "course": "active"})
    assert web.subscriber("ann@example.com")["status"] == "active"
    first = lessons(web, sid)[0]["due_at"].astimezone(ZoneInfo("Europe/Berlin"))
    assert first.strftime("%Y-%m-%d %H:%M") == "2026-06-12 07:00"


async def test_stopping_the_newsletter(web):
    sid = active(web)
    url = f"/preferences/{web.token(sid, 'preferences')}"
    await web.client().post(
        url, data={"course": "active", "send_time": "07:00", "timezone": "Europe/Berlin"}
    )
    assert web.subscriber("ann@example.com")["newsletters"] is False
    page = await web.client().get(url)
    assert 'name="newsletters" value="on" checked' not in page.text


@pytest.mark.parametrize(
    "data",
    [
        {"send_time": "25:99", "timezone": "Europe/Berlin"},
        {"send_time": "07:00", "timezone": "Nowhere/Special"},
        {"send_time": "07:00", "timezone": "Europe/Berlin", "course": "deleted"},
    ],
)
async def test_invalid_preferences_are_refused_and_change_nothing(web, data):
    sid = active(web)
    before = web.snapshot()
    answer = await web.client().post(f"/preferences/{web.token(sid, 'preferences')}", data=data)
    assert answer.status_code == 400
    assert 'role="alert"' in answer.text
    assert_clean(answer)
    assert web.snapshot() == before


async def test_preferences_of_an_unsubscribed_reader_are_read_only(web):
    from dripmail.subscribers import unsubscribe

    sid = active(web)
    unsubscribe(web.engine, sid, web.clock.now)
    url = f"/preferences/{web.token(sid, 'preferences')}"
    page = await web.client().get(url)
    assert "nothing to change" in page.text and "<form" not in page.text
    before = web.snapshot()
    answer = await web.client().post(url, data={"send_time": "09:00", "course": "active"})
    assert answer.status_code == 409
    assert web.snapshot() == before


async def test_pause_takes_back_lessons_scheduled_at_the_provider(make_web, fake_providers):
    from conftest import Clock

    web = make_web(
        clock=Clock(datetime.now(UTC)),
        DRIPMAIL_PROVIDER="resend",
        DRIPMAIL_PUBLIC_URL="https://testserver",
        RESEND_API_KEY=fake_providers.RESEND_KEY,
        DRIPMAIL_RESEND_BASE_URL=fake_providers.base("resend"),
    )
    sid = active(web)
    await hand_over_week(web)
    handed = [x["lesson_day"] for x in lessons(web, sid) if x["state"] == "handed"]
    assert handed
    async with web.client() as client:
        await client.post(
            f"/preferences/{web.token(sid, 'preferences')}",
            data={"course": "paused", "send_time": "07:00", "timezone": "Europe/Berlin"},
        )
    assert web.subscriber("ann@example.com")["status"] == "paused"
    assert len(fake_providers.accepted("resend", status="cancelled")) == len(handed)
    assert {x["state"] for x in lessons(web, sid)} == {"planned"}  # back in our queue

"""The report over a known history: exact figures, the same from stored days or computed."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dripmail.errors import InputError
from dripmail.report import build, lessons_of
from dripmail.store import report_queries as q
from dripmail.store.schema import events, report_days
from dripmail.subscribers import forget, get_subscriber
from tests.report_fixture import AFTER, EXPECTED, SHOP, VIDEO, History, make_history


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return make_history(tmp_path_factory.mktemp("report") / "studio")


def _figures(h: History, now: datetime, **kw) -> dict:
    lessons = lessons_of(h.app.state.ctx.runner.course)  # type: ignore[attr-defined]
    out = build(h.engine, now, lessons=lessons, **kw).to_dict()
    out.pop("generated_at")
    out.pop("notes")
    return out


def test_every_figure_of_the_known_history(history: History) -> None:
    q.forget_stored(history.engine)
    assert _figures(history, AFTER) == EXPECTED


@pytest.mark.parametrize(
    "now",
    [
        datetime(2026, 6, 1, 0, 30, tzinfo=UTC),  # nothing over yet: all computed live
        datetime(2026, 6, 3, 0, 30, tzinfo=UTC),  # mid-course: some days stored
        datetime(2026, 6, 10, 0, 59, tzinfo=UTC),  # within the grace hour of 9 June
        AFTER,  # every day stored (second time: read back)
    ],
)
def test_stored_days_give_the_same_figures_as_live_counts(history: History, now) -> None:
    q.forget_stored(history.engine)
    assert _figures(history, now) == EXPECTED
    assert _figures(history, now) == EXPECTED  # again, now from the stored days
    with history.engine.connect() as conn:
        stored = set(
            conn.execute(
                select(report_days.c.day).where(report_days.c.section == "_done")
            ).scalars()
        )
    assert all(day < q.closed_before(now) for day in stored)
    assert (date(2026, 6, 2) in stored) == (now >= datetime(2026, 6, 3, 1, tzinfo=UTC))


def test_a_span_counts_what_happened_in_it(history: History) -> None:
    got = _figures(history, AFTER, since=date(2026, 6, 3), until=date(2026, 6, 3))
    assert got["funnel"]["signups"] == 0 and got["funnel"]["started"] == 0
    assert [(r["key"], r["sent"], r["unsubscribed"]) for r in got["lessons"] if r["sent"]] == [
        ("2", 3, 1)
    ]
    assert got["days"] == [{"day": "2026-06-03", "signups": 0, "unsubscribed": 1}]
    assert got["newsletters"] == []
    first = _figures(history, AFTER, since=date(2026, 6, 1), until=date(2026, 6, 2))
    assert first["funnel"]["signups"] == 5 and first["funnel"]["started"] == 4
    assert first["lessons"][0]["opened"] == 2 and first["lessons"][1]["sent"] == 0


def test_scanner_clicks_can_be_counted_in(history: History) -> None:
    got = _figures(history, AFTER, count_scanner_clicks=True)
    lesson1 = got["lessons"][0]
    assert (lesson1["clicked"], lesson1["scanner_clicks"], lesson1["video_clicks"]) == (3, 1, 2)
    assert lesson1["links"] == {VIDEO: 2, SHOP: 1}
    assert got["zones"][1]["clicked"] == 1  # b's scanner click, Berlin


def test_since_after_until_is_one_line_error(history: History) -> None:
    with pytest.raises(InputError, match="after --until"):
        build(history.engine, AFTER, since=date(2026, 6, 5), until=date(2026, 6, 1))


def test_since_after_today_with_nothing_from_it_on_is_refused(history: History) -> None:
    with pytest.raises(InputError, match="nothing is recorded from that day on"):
        build(history.engine, AFTER, since=date(2030, 1, 1))


def test_since_after_today_is_accepted_when_there_is_data_from_it_on(history: History) -> None:
    # The machine's clock says 20 May; the history (like the demo's week) lies after it.
    before = datetime(2026, 5, 20, 12, 0, tzinfo=UTC)
    out = build(history.engine, before, since=date(2026, 6, 1))
    assert out.funnel.signups == EXPECTED["funnel"]["signups"]
    assert out.since == "2026-06-01"


def test_an_empty_since_is_a_one_line_error(tmp_path: Path) -> None:
    from tests.cli_in_process import run_cli
    from tests.course_fixture import make_project

    out = run_cli(make_project(tmp_path), "report", "--since", "")
    assert out.returncode != 0
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .endswith("--since is empty: give a day as YYYY-MM-DD, or leave --since out")
    ), out.stderr
    assert "Traceback" not in out.stderr


def test_empty_database_report_says_so_with_a_hint(tmp_path: Path) -> None:
    import os

    from tests.cli_in_process import run_cli

    clean = {k: v for k, v in os.environ.items() if not k.startswith("DRIPMAIL_")}
    from tests.course_fixture import make_project

    out = run_cli(make_project(tmp_path), "report", env=clean)
    assert out.returncode == 0, out.stderr
    assert "Nothing recorded in this span yet" in out.stdout
    assert "`report --demo`" in out.stdout
    assert "Nobody confirmed in this span." in out.stdout


def test_the_provider_event_is_kept_raw(history: History) -> None:
    with history.engine.connect() as conn:
        raws = conn.execute(select(events.c.raw).where(events.c.type == "clicked")).scalars()
        clicks = [json.loads(r) for r in raws]
    assert {c["url"] for c in clicks} >= {VIDEO, SHOP + "?utm_source=email"}
    assert all(c["event"] == "click" and "sg_message_id" in c for c in clicks)


def test_link_grouping_drops_queries_and_reader_tokens() -> None:
    assert q.link_of("https://Studio.example.com/shop?utm=1#x") == "https://studio.example.com/shop"
    assert q.link_of("https://x.org/unsubscribe/abc.DEF-1") == "https://x.org/unsubscribe/"
    assert q.link_of("https://x.org/p/preferences/tok?u=2") == "https://x.org/p/preferences/"
    assert [q.confirm_bin(s) for s in (0, 59.9, 99, 100, 1234, 7265)] == [
        0,
        59,
        99,
        100,
        1200,
        7200,
    ]


def test_forget_scrubs_the_raw_event_of_unmatched_provider_events(tmp_path: Path) -> None:
    from dripmail.store.db import open_store
    from dripmail.subscribers import add_subscriber

    engine = open_store("sqlite:///f.db", tmp_path)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    sid, _ = add_subscriber(
        engine, "Zoe@Example.org", timezone="UTC", status="active", consent_source="t", now=now
    )
    address = get_subscriber(engine, sid)["email"]
    with engine.begin() as conn:
        for i, (owner, raw) in enumerate(
            [
                (sid, '{"email":"zoe@example.org"}'),
                (None, '{"email":"ZOE@example.org","event":"open"}'),
                (None, '{"email":"other@example.org"}'),
            ]
        ):
            conn.execute(
                events.insert().values(
                    subscriber_id=owner, provider="sendgrid", dedupe_key=str(i), type="opened",
                    detail="", raw=raw, occurred_at=now, received_at=now,
                )
            )  # fmt: skip
    forget(engine, sid, now)
    with engine.connect() as conn:
        left = conn.execute(select(events.c.raw).order_by(events.c.id)).scalars().all()
    assert left == [None, '{"email":"other@example.org"}']
    assert address == "zoe@example.org"


def test_a_reader_erased_while_a_report_counts_is_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """forget between the counting and the storing of days: those counts are not kept."""
    _forget_b_while_counting(make_history(tmp_path / "studio"), monkeypatch)


@pytest.mark.postgres
def test_a_reader_erased_while_a_report_counts_on_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    _forget_b_while_counting(make_history(tmp_path / "studio", database_url=url), monkeypatch)


def _forget_b_while_counting(h: History, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = q.span_facts

    def count_then_forget(conn, start, end, scan=False):
        facts = counting(conn, start, end, scan)
        if start < q._start(date(2026, 6, 10)):  # the stored run, not the days not over
            h.app.state.ctx.app.forget("b@example.org")  # type: ignore[attr-defined]
        return facts

    monkeypatch.setattr(q, "span_facts", count_then_forget)
    assert _figures(h, AFTER) == EXPECTED  # counted with b: this report still shows b
    monkeypatch.setattr(q, "span_facts", counting)
    assert _done_days(h) == set()  # but kept none of it
    without_b = _figures(h, AFTER)
    assert without_b["funnel"]["signups"] == 4
    assert without_b["lessons"][2]["complained"] == 0  # b's complaint about lesson 3
    q.forget_stored(h.engine)
    assert _figures(h, AFTER) == without_b


def _sum_of_days(conn, first: date, last: date) -> Counter:
    total: Counter = Counter()
    day = first
    while day <= last:
        total.update(q.span_facts(conn, q._start(day), q._start(day + timedelta(days=1))))
        day += timedelta(days=1)
    return total


def test_a_run_of_days_counts_what_each_day_counts_alone(history: History) -> None:
    """One pass over many days (by index or reading the tables) splits the days exactly."""
    first, last = date(2026, 5, 31), date(2026, 6, 11)
    with history.engine.connect() as conn:
        by_day = _sum_of_days(conn, first, last)
        start, end = q._start(first), q._start(last + timedelta(days=1))
        assert q.span_facts(conn, start, end) == by_day
        assert q.span_facts(conn, start, end, scan=True) == by_day
    assert by_day[(date(2026, 6, 1), "funnel", "", "signups")] == 5


def test_facts_a_microsecond_either_side_of_midnight_utc(tmp_path: Path) -> None:
    """A day is the UTC day of the stored time, whatever the reader's zone."""
    from dripmail.store.db import open_store
    from dripmail.store.schema import deliveries
    from dripmail.subscribers import add_subscriber

    engine = open_store("sqlite:///b.db", tmp_path)
    late = datetime(2026, 6, 1, 23, 59, 59, 999999, tzinfo=UTC)
    midnight = datetime(2026, 6, 2, tzinfo=UTC)
    sid, _ = add_subscriber(
        engine, "kiri@example.org", timezone="Pacific/Auckland", status="active",
        consent_source="t", now=late,
    )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            deliveries.insert().values(
                subscriber_id=sid, lesson_day=1, key="k1", due_at=midnight, state="sent",
                attempts=1, sent_at=midnight, updated_at=midnight,
            )
        )  # fmt: skip
        for i, (kind, at) in enumerate([("delivered", midnight), ("opened", late.replace(day=2))]):
            conn.execute(
                events.insert().values(
                    subscriber_id=sid, delivery_key="k1", provider="sendgrid", dedupe_key=str(i),
                    type=kind, detail="", occurred_at=at, received_at=at,
                )
            )  # fmt: skip
    june1, june2 = date(2026, 6, 1), date(2026, 6, 2)
    with engine.connect() as conn:
        start, end = q._start(june1), q._start(date(2026, 6, 4))
        facts = {k: v for k, v in q.span_facts(conn, start, end, scan=True).items() if v}
        assert (
            facts == _sum_of_days(conn, june1, date(2026, 6, 3)) == q.span_facts(conn, start, end)
        )
    assert facts[(june1, "funnel", "", "signups")] == 1
    assert facts[(june2, "lesson", "1", "sent")] == 1
    assert facts[(june2, "lesson", "1", "delivered")] == 1
    assert facts[(june2, "lesson", "1", "opened")] == 1
    assert facts[(june2, "hour", "12", "sent")] == 1  # 00:00 UTC is noon in Auckland (winter)
    assert not any(day == date(2026, 6, 3) for day, *_ in facts)


def _done_days(h: History) -> set[date]:
    with h.engine.connect() as conn:
        return set(
            conn.execute(
                select(report_days.c.day).where(report_days.c.section == "_done")
            ).scalars()
        )


def test_forget_drops_the_stored_days_that_counted_the_reader(tmp_path: Path) -> None:
    """After `subscribers forget` the next report (no --rebuild) leaves the reader out."""
    _forget_c_and_report(make_history(tmp_path / "studio"))


@pytest.mark.postgres
def test_forget_drops_the_stored_days_on_postgresql(tmp_path: Path) -> None:
    import os

    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    _forget_c_and_report(make_history(tmp_path / "studio", database_url=url))


def _forget_c_and_report(h: History) -> None:
    assert _figures(h, AFTER) == EXPECTED  # every day of the history stored now
    with h.engine.connect() as conn:
        items = " ".join(conn.execute(select(report_days.c.item)).scalars())
    # Stored rows name links without their query (tracking, tokens), never a reader.
    assert "@" not in items and "?" not in items and f"lesson|1|{SHOP}" in items
    stored = _done_days(h)
    h.app.state.ctx.app.forget("c@example.org")  # type: ignore[attr-defined]
    # c signed up and confirmed on 1 June, got lessons 1 and 2 (2 and 3 June), clicked on 2
    # June and unsubscribed on 3 June: those days go, the rest stay stored.
    gone = {date(2026, 6, 1), date(2026, 6, 2), date(2026, 6, 3)}
    assert _done_days(h) == stored - gone

    after = _figures(h, AFTER)
    funnel = after["funnel"]
    assert (funnel["signups"], funnel["confirmed"], funnel["started"]) == (4, 3, 3)
    lesson1, lesson2 = after["lessons"][:2]
    assert (lesson1["sent"], lesson1["clicked"], lesson1["other_clicks"]) == (3, 1, 0)
    assert lesson1["links"] == {VIDEO: 1}
    assert (lesson2["sent"], lesson2["unsubscribed"]) == (2, 0)
    assert after["zones"][0] == {
        "key": "America/New_York", "sent": 8, "opened": 3, "clicked": 2, "open_rate": 0.375,
        "click_rate": 0.25,
    }  # fmt: skip
    assert after["days"] == [{"day": "2026-06-01", "signups": 4, "unsubscribed": 0}]
    q.forget_stored(h.engine)
    assert _figures(h, AFTER) == after  # the same as counting everything again


def test_local_send_hour_of_half_hour_zones() -> None:
    from zoneinfo import ZoneInfo

    # 07:00 in Kolkata is 01:30 UTC: the hour must come from the minute, not the UTC hour.
    assert q._local(date(2026, 6, 2), 90, ZoneInfo("Asia/Kolkata")) == "07"
    assert q._local(date(2026, 6, 2), 89, ZoneInfo("Asia/Kolkata")) == "06"
    assert q._local(date(2026, 3, 29), 60, ZoneInfo("Europe/Berlin")) == "03"  # DST day


@pytest.mark.postgres
def test_every_figure_on_postgresql(tmp_path: Path) -> None:
    import os

    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    history = make_history(tmp_path / "studio", database_url=url)
    assert _figures(history, AFTER) == EXPECTED  # every day stored
    assert _figures(history, datetime(2026, 6, 3, 0, 30, tzinfo=UTC)) == EXPECTED  # mixed


def test_terminal_tables_read_whole_at_80_columns(history: History, capsys) -> None:
    from dripmail.cli.report_cmds import print_report

    lessons = lessons_of(history.app.state.ctx.runner.course)  # type: ignore[attr-defined]
    report = build(history.engine, AFTER, lessons=lessons)
    print_report(report, width=80)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out  # nothing cut short
    header_words = ["sent", "delivered", "opened*", "clicked", "video", "other", "scanner"]
    header_words += ["unsub.", "bounced", "complaint", "drop"]
    for word in header_words:
        assert f" {word}" in out, word
    lines = out.splitlines()
    for row in report.lessons:
        copies = [line.split() for line in lines if line.lstrip().startswith(f"{row.key}. ")]
        assert len(copies) == 1 and copies[0][-4:] == [
            str(row.sent),
            str(row.delivered),
            str(row.opened),
            str(row.clicked),
        ]
        by_day = [line.split() for line in lines if line.split()[:1] == [row.key]]
        assert len(by_day) == 2, by_day  # clicks and losses, then rates
        losses, rates = by_day
        assert losses[5:7] == [str(row.bounced), str(row.complained)]
        assert rates[1] == ("-" if row.delivered_rate is None else f"{row.delivered_rate:.1%}")
        assert rates[7] == ("-" if row.drop_rate is None else f"{row.drop_rate:.1%}")


def test_the_welcome_email_is_listed_as_welcome_not_as_a_lesson() -> None:
    from dripmail.report import LessonInfo, assemble

    day = date(2026, 6, 1)
    facts = {
        (day, "funnel", "", "signups"): 3,
        (day, "funnel", "", "confirmed"): 3,
        (day, "lesson", "0", "sent"): 3,
        (day, "lesson", "1", "sent"): 2,
        (day, "lesson", "2", "sent"): 1,
    }
    lessons = [LessonInfo(1, "1. Neck"), LessonInfo(2, "2. Hips")]
    out = assemble(
        facts, AFTER, since=None, until=None, lessons=lessons, titles={}, count_scanner_clicks=False
    )
    assert [(r.key, r.title) for r in out.lessons] == [
        ("0", "Welcome"),
        ("1", "1. Neck"),
        ("2", "2. Hips"),
    ]
    assert out.lessons[1].drop is None  # lesson 1 is not measured against the welcome email
    assert (out.funnel.started, out.funnel.completed) == (2, 1)  # lessons, not the welcome


@pytest.mark.parametrize("command", ["report", "preview"])
def test_help_is_wrapped_once_at_80_columns(command: str) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "send.py", command, "--help"],
        cwd=root,
        env=dict(os.environ, COLUMNS="80", PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    body = out.stdout.split("Usage:", 1)[1].split("╭─ Options", 1)[0]
    for paragraph in body.split("\n \n")[1:]:  # after the usage line
        lines = [line.strip() for line in paragraph.strip("\n").splitlines()]
        # Wrapped twice, a paragraph has short lines in its middle ("... by time\nzone.").
        assert all(len(line) >= 60 for line in lines[:-1]), lines
    # Every option's help reads whole: nothing cut off with an ellipsis.
    assert "…" not in out.stdout, out.stdout


def _mid_course(unsubscribed_after_day_2: int = 0):
    from dripmail.report import LessonInfo, assemble

    day = date(2026, 6, 2)
    facts = {
        (day, "funnel", "", "signups"): 3,
        (day, "funnel", "", "confirmed"): 3,
        (day, "lesson", "1", "sent"): 3,
        (day, "lesson", "2", "sent"): 3,
    }
    if unsubscribed_after_day_2:
        facts[(day, "lesson", "2", "unsubscribed")] = unsubscribed_after_day_2
    lessons = [LessonInfo(n, f"{n}. Stretch") for n in (1, 2, 3, 4)]
    return assemble(
        facts, AFTER, since=None, until=None, lessons=lessons, titles={}, count_scanner_clicks=False
    )


def test_a_lesson_nobody_has_reached_yet_is_not_yet_due_not_a_drop(capsys) -> None:
    import csv
    import io

    from dripmail.cli.report_cmds import print_report

    out = _mid_course()  # readers are on day 2: lessons 3 and 4 lie ahead of everyone
    assert [(r.key, r.drop, r.drop_rate, r.not_yet_due) for r in out.lessons] == [
        ("1", None, None, False),
        ("2", 0, 0.0, False),
        ("3", None, None, True),
        ("4", None, None, True),
    ]
    assert out.to_dict()["lessons"][2]["not_yet_due"] is True
    rows = list(csv.reader(io.StringIO("\n".join(",".join(r) for r in out.csv_rows()))))
    lesson3 = {r[3]: r[4] for r in rows if r[0] == "lesson" and r[1] == "3"}
    assert (lesson3["drop"], lesson3["drop_rate"], lesson3["not_yet_due"]) == ("", "", "True")
    print_report(out, width=80)
    text = capsys.readouterr().out
    assert "100.0%" not in text.split("Lessons: rates", 1)[1].split("Newsletter", 1)[0]
    assert text.count("not due") == 4  # lessons 3 and 4, in the losses and the rates table


def test_a_lesson_everyone_left_before_keeps_its_drop() -> None:
    out = _mid_course(unsubscribed_after_day_2=3)  # all three left after day 2
    assert [(r.key, r.drop, r.not_yet_due) for r in out.lessons][2:] == [
        ("3", 3, False),
        ("4", 0, False),
    ]


def test_readers_confirmed_without_a_link_are_named_next_to_the_missing_median(capsys) -> None:
    from dripmail.cli.report_cmds import print_report

    out = _mid_course()  # three imported readers, active without a confirmation email
    f = out.funnel
    assert (f.confirmed, f.confirmed_by_link, f.confirmed_without_link) == (3, 0, 3)
    print_report(out, width=80)
    text = capsys.readouterr().out
    assert "Sign-up funnel, all history" in text
    assert "Median time to confirm by the emailed link: - (nobody confirmed by link)" in text
    assert "Of the 3 confirmed: 0 by the emailed link, 3 without a link (imported" in text

import csv
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from dripmail import subscribers as subs
from dripmail.errors import InputError
from dripmail.store.db import open_store
from dripmail.store.schema import deliveries, subscribers
from dripmail.subscriber_io import export_csv, import_csv, safe_cell
from tests.course_rules import Rules
from tests.store_fixture import new_store

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return new_store("sqlite:///dripmail.db", tmp_path)


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "people.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _count(engine: Engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def test_import_reports_bad_rows_by_line_and_is_idempotent(engine: Engine, tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "email,first_name,timezone,start_date,shoe_size\n"
        "ana@example.org,Ana,Europe/Berlin,,38\n"
        "not-an-address,Bob,UTC,,41\n"
        "cy@example.org,Cy,Mars/Olympus,,40\n"
        "di@example.org,Di,,2026-06-03,39\n"
        "ed@example.org,Ed,UTC,June 3rd,42\n"
        "ANA@example.org,Ana again,UTC,,38\n",
    )
    report = import_csv(engine, path, Rules(), "America/New_York", NOW)
    assert report.added == 2 and report.existing == 0
    assert [line for line, _ in report.rejected] == [3, 4, 6, 7]
    assert "not-an-address" in report.rejected[0][1]
    assert "Mars/Olympus" in report.rejected[1][1]
    assert "start_date" in report.rejected[2][1]
    assert "already on line 2" in report.rejected[3][1]  # ANA@ is ana@, twice in one file
    assert report.ignored_columns == ["shoe_size"]
    di = subs.get_subscriber(engine, "di@example.org")
    assert di["status"] == "active" and di["timezone"] == "America/New_York"
    assert di["consent_source"] == "import" and str(di["start_date"]) == "2026-06-03"
    assert _count(engine, deliveries) == 14
    again = import_csv(engine, path, Rules(), "America/New_York", NOW)
    assert again.added == 0 and again.existing == 2 and len(again.rejected) == 4
    assert _count(engine, subscribers) == 2 and _count(engine, deliveries) == 14


def test_suppressed_long_and_multi_line_rows_are_refused_by_their_own_line(
    engine: Engine, tmp_path: Path
) -> None:
    seed = _csv(tmp_path, "email\ngone@example.org\n")
    import_csv(engine, seed, Rules(), "UTC", NOW)
    subs.forget(engine, subs.get_subscriber(engine, "gone@example.org")["id"], NOW)
    path = _csv(
        tmp_path,
        "email,first_name,tags\n"
        'ana@example.org,"Ana\nMaria",desk\n'  # lines 2-3: one row, a name over two lines
        "GONE@example.org,Gone,\n"  # line 4: forgotten, so suppressed
        "bo@example.org,Bo,desk,extra\n"  # line 5: a cell more than the header
        ",,\n"  # line 6: blank, skipped
        "cy@example.org,Cy,Desk Runners\n"  # line 7
        "di@example.org,Di,no!\n",  # line 8: a bad tag
    )
    report = import_csv(engine, path, Rules(), "UTC", NOW)
    assert report.added == 1
    assert [line for line, _ in report.rejected] == [2, 4, 5, 8]
    assert report.rejected[0][1].startswith(
        "first_name: the quoted cell that starts on this line runs over a line break (to line 3)"
    )
    assert "suppressed" in report.rejected[1][1]
    assert "more cells" in report.rejected[2][1]
    assert "tags: 'no!'" in report.rejected[3][1]
    assert subs.get_subscriber(engine, "cy@example.org")["tags"] == "desk,runners"


def test_import_dry_run_and_confirm_mode(engine: Engine, tmp_path: Path) -> None:
    path = _csv(tmp_path, "email\nana@example.org\nbo@example.org\n")
    dry = import_csv(engine, path, Rules(), "UTC", NOW, dry_run=True)
    assert dry.added == 2 and _count(engine, subscribers) == 0
    report = import_csv(engine, path, Rules(), "UTC", NOW, confirm=True)
    assert len(report.added_ids) == 2 and report.to_confirm == report.added_ids
    assert subs.get_subscriber(engine, "ana@example.org")["status"] == "pending"
    assert _count(engine, deliveries) == 0


def test_import_without_email_column_names_the_file(engine: Engine, tmp_path: Path) -> None:
    path = _csv(tmp_path, "mail,name\nana@example.org,Ana\n")
    with pytest.raises(InputError, match=r"people.csv:1: .*`email` column"):
        import_csv(engine, path, Rules(), "UTC", NOW)
    with pytest.raises(InputError, match="cannot read"):
        import_csv(engine, tmp_path / "missing.csv", Rules(), "UTC", NOW)


def test_export_neutralises_formula_cells(engine: Engine) -> None:
    subs.add_subscriber(
        engine,
        "ana@example.org",
        first_name='=HYPERLINK("http://evil")',
        timezone="UTC",
        status="active",
        consent_source="test",
        now=NOW,
    )
    out = io.StringIO()
    assert export_csv(engine, out) == 1
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert rows[0]["email"] == "ana@example.org"
    assert rows[0]["first_name"].startswith("'=")
    assert [safe_cell(v) for v in ("+1", "-1", "@x", "ok")] == ["'+1", "'-1", "'@x", "ok"]


def test_import_tags_name_newsletter_segments_and_survive_export(
    engine: Engine, tmp_path: Path
) -> None:
    from dripmail import broadcast as bc

    path = _csv(
        tmp_path,
        "email,tags\n"
        'ana@example.org,"Desk, runners"\n'
        "bo@example.org,runners desk desk\n"
        "cy@example.org,\n"
        "di@example.org,desk;drop table\n",
    )
    report = import_csv(engine, path, Rules(), "UTC", NOW)
    assert report.added == 3 and [line for line, _ in report.rejected] == [5]
    assert "tags: 'desk;drop'" in report.rejected[0][1]
    assert subs.get_subscriber(engine, "ana@example.org")["tags"] == "desk,runners"
    assert subs.get_subscriber(engine, "bo@example.org")["tags"] == "runners,desk"
    assert bc.count_eligible(engine, "tag:desk") == 2
    assert bc.count_eligible(engine, "tag:Runners") == 2
    assert bc.count_eligible(engine, "tag:run") == 0
    out = io.StringIO()
    export_csv(engine, out)
    rows = {r["email"]: r["tags"] for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert rows["ana@example.org"] == "desk,runners"
    again = tmp_path / "again.db"
    other = open_store("sqlite:///" + again.name, tmp_path)
    exported = _csv(tmp_path, out.getvalue())
    import_csv(other, exported, Rules(), "UTC", NOW)
    assert subs.get_subscriber(other, "ana@example.org")["tags"] == "desk,runners"


@pytest.mark.postgres
def test_import_on_postgres_and_ids_never_reused(tmp_path: Path) -> None:
    import os

    from sqlalchemy import text

    url = os.environ.get("DRIPMAIL_TEST_DATABASE_URL")
    if not url:
        pytest.skip("DRIPMAIL_TEST_DATABASE_URL is not set (CI sets it; see README)")
    engine = open_store(url, tmp_path)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE subscribers, deliveries, events, suppressions CASCADE"))
    path = _csv(tmp_path, "Email;Timezone\nana@example.org;Asia/Tokyo\nbo@example.org;\n")
    report = import_csv(engine, path, Rules(), "UTC", NOW)
    assert report.added == 2 and _count(engine, deliveries) == 14
    assert import_csv(engine, path, Rules(), "UTC", NOW).existing == 2
    newest = subs.get_subscriber(engine, "bo@example.org")["id"]
    subs.forget(engine, newest, NOW)
    sid, _ = subs.add_subscriber(
        engine, "cy@example.org", timezone="UTC", status="pending", consent_source="t", now=NOW
    )
    assert sid > newest
    engine.dispose()


def test_imported_lessons_are_stored_exactly_as_one_by_one_planning_stores_them(
    engine: Engine, tmp_path: Path
) -> None:
    from sqlalchemy import text

    subs.add_subscriber(
        engine, "one@example.org", timezone="Asia/Tokyo", status="pending",
        consent_source="t", now=NOW,
    )  # fmt: skip
    subs.activate(engine, subs.get_subscriber(engine, "one@example.org")["id"], Rules(), NOW)
    path = _csv(tmp_path, "email,timezone\nbulk@example.org,Asia/Tokyo\n")
    import_csv(engine, path, Rules(), "UTC", NOW)
    with engine.connect() as conn:
        stored = conn.execute(
            text(
                "SELECT s.email, d.lesson_day, d.due_at, d.updated_at, d.state, d.attempts "
                "FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id "
                "ORDER BY d.lesson_day, s.email"
            )
        ).all()
    by_day: dict[int, list[tuple]] = {}
    for email, day, *rest in stored:
        by_day.setdefault(day, []).append((email, *rest))
    for bulk, one in by_day.values():  # the raw stored text is identical, column by column
        assert (bulk[0], one[0]) == ("bulk@example.org", "one@example.org")
        assert bulk[1:] == one[1:]


def _planned(engine: Engine, address: str) -> list[str]:
    from dripmail.store.schema import deliveries as d

    sid = subs.get_subscriber(engine, address)["id"]
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(d.c.state).where(d.c.subscriber_id == sid).order_by(d.c.lesson_day)
            ).scalars()
        )


EXPORTED_HEADER = (
    "email,first_name,timezone,status,start_date,send_time,newsletters,tags,consent_source,"
    "consent_at,created_at\n"
)


def test_an_exported_file_keeps_stopped_readers_stopped_and_pending_ones_pending(
    engine: Engine, tmp_path: Path
) -> None:
    """The tester's repro: an export's `status` and `newsletters` were ignored, so readers
    who had unsubscribed (bounced, complained) came back active with 7 lessons planned."""
    tail = ",import,2026-05-01T08:00:00+00:00,2026-05-01T08:00:00+00:00\n"
    path = _csv(
        tmp_path,
        EXPORTED_HEADER
        + "act@example.org,Act,Europe/Berlin,active,,06:30,no,desk" + tail
        + "uns@example.org,Uns,UTC,unsubscribed,2024-01-05,,yes," + tail
        + "bou@example.org,Bou,UTC,Bounced,,,yes," + tail
        + "com@example.org,Com,UTC,complained,,,yes," + tail
        + "pen@example.org,Pen,UTC,pending,,,yes," + tail
        + "don@example.org,Don,UTC,completed,2025-01-05,,yes," + tail
        + "pau@example.org,Pau,UTC,paused,,,false," + tail
        + "odd@example.org,Odd,UTC,vip,,,yes," + tail
        + "nws@example.org,Nws,UTC,,,,maybe," + tail
        + "snd@example.org,Snd,UTC,,,25:00,yes," + tail,
    )  # fmt: skip
    report = import_csv(engine, path, Rules(), "UTC", NOW)
    assert report.added == 7 and report.to_confirm == []
    assert [line for line, _ in report.rejected] == [9, 10, 11]
    assert (
        "status: 'vip' is not a status dripmail knows: use one of pending, active, paused"
        in (report.rejected[0][1])
    )
    assert "newsletters: 'maybe' is not yes or no" in report.rejected[1][1]
    assert "send_time: '25:00' is not a local time like 07:00" in report.rejected[2][1]
    assert report.kept_status == {
        "unsubscribed": 1, "bounced": 1, "complained": 1, "pending": 1, "completed": 1,
        "paused": 1,
    }  # fmt: skip
    act = subs.get_subscriber(engine, "act@example.org")
    assert (act["status"], act["newsletters"], act["send_time"]) == ("active", False, "06:30")
    # The reader's own send time plans the lessons: 06:30 in Berlin is 04:30 UTC in June.
    with engine.connect() as conn:
        due = conn.execute(
            select(deliveries.c.due_at).where(deliveries.c.subscriber_id == act["id"])
        ).scalars()
        assert {(d.hour, d.minute) for d in due} == {(4, 30)}
    for address, status in (
        ("uns@example.org", "unsubscribed"),
        ("bou@example.org", "bounced"),
        ("com@example.org", "complained"),
        ("pen@example.org", "pending"),
        ("don@example.org", "completed"),
    ):
        row = subs.get_subscriber(engine, address)
        assert row["status"] == status and _planned(engine, address) == [], address
    assert subs.get_subscriber(engine, "pen@example.org")["confirmed_at"] is None
    pau = subs.get_subscriber(engine, "pau@example.org")
    assert pau["status"] == "paused" and pau["newsletters"] is False
    assert _planned(engine, "pau@example.org") == ["planned"] * 7  # for `resume`
    assert subs.is_suppressed(engine, "bou@example.org")
    assert subs.is_suppressed(engine, "com@example.org")
    assert not subs.is_suppressed(engine, "uns@example.org")
    # A later import of an older list without the status column mails none of them.
    old = tmp_path / "old.csv"
    old.write_text("email\nuns@example.org\nbou@example.org\npen@example.org\n")
    later = import_csv(engine, old, Rules(), "UTC", NOW)
    assert later.added == 0 and later.existing == 3
    assert subs.get_subscriber(engine, "uns@example.org")["status"] == "unsubscribed"
    assert subs.get_subscriber(engine, "pen@example.org")["status"] == "pending"
    # Re-importing the exported file changes nothing.
    again = import_csv(engine, path, Rules(), "UTC", NOW)
    assert again.added == 0 and again.existing == 7 and not again.stopped_existing


def test_a_file_that_marks_a_reader_here_as_stopped_stops_them(
    engine: Engine, tmp_path: Path
) -> None:
    """Imported earlier from an older list (active), then the export that says they left:
    their choice is applied; an import only ever takes mail away from a reader already here."""
    import_csv(engine, _csv(tmp_path, "email\nana@example.org\nbo@example.org\n"), Rules(),
               "UTC", NOW)  # fmt: skip
    path = _csv(
        tmp_path,
        "email,status,newsletters\nana@example.org,unsubscribed,\nbo@example.org,active,no\n",
    )
    dry = import_csv(engine, path, Rules(), "UTC", NOW, dry_run=True)
    assert dry.stopped_existing == [(2, "ana@example.org", "unsubscribed")]
    assert subs.get_subscriber(engine, "ana@example.org")["status"] == "active"
    report = import_csv(engine, path, Rules(), "UTC", NOW)
    assert report.stopped_existing == [(2, "ana@example.org", "unsubscribed")]
    assert report.newsletters_off == 1
    assert subs.get_subscriber(engine, "ana@example.org")["status"] == "unsubscribed"
    assert set(_planned(engine, "ana@example.org")) == {"cancelled"}
    bo = subs.get_subscriber(engine, "bo@example.org")
    assert bo["status"] == "active" and bo["newsletters"] is False
    assert set(_planned(engine, "bo@example.org")) == {"planned"}
    again = import_csv(engine, path, Rules(), "UTC", NOW)
    assert not again.stopped_existing and again.newsletters_off == 0


def test_pending_in_the_file_is_asked_to_confirm_only_with_confirm(
    engine: Engine, tmp_path: Path
) -> None:
    path = _csv(tmp_path, "email,status\npen@example.org,pending\nuns@example.org,unsubscribed\n")
    first = import_csv(engine, path, Rules(), "UTC", NOW)
    assert first.to_confirm == []
    confirmed = import_csv(engine, path, Rules(), "UTC", NOW, confirm=True)
    pen = subs.get_subscriber(engine, "pen@example.org")["id"]
    assert confirmed.to_confirm == [pen]  # owed its email; the unsubscribed reader is not


def test_an_unclosed_quote_is_refused_at_the_line_it_opens_on(
    engine: Engine, tmp_path: Path
) -> None:
    """The tester's repro: the rows after an unclosed quote were swallowed into one name
    ("added 2", l@example.com named "Ell m2@example.com,Em n@example.com,En")."""
    path = _csv(
        tmp_path,
        'email,first_name\nk@example.com,Kay\nl@example.com,"Ell\nm2@example.com,Em\n'
        "n@example.com,En\n",
    )
    report = import_csv(engine, path, Rules(), "UTC", NOW)
    assert report.added == 1 and _count(engine, subscribers) == 1
    assert report.rejected == [
        (
            3,
            "a quote opened on this line is never closed: the cell runs over the line breaks "
            "to the end of the file, so lines 3-5 were read as one row and not imported; close "
            "the quote and import again",
        )
    ]
    # A quote opened on the first row was reported at line 1, the header's.
    second = _csv(tmp_path, 'email,first_name\n"k@example.com,Kay\nl@example.com,Ell\n')
    again = import_csv(engine, second, Rules(), "UTC", NOW)
    assert [line for line, _ in again.rejected] == [2] and again.added == 0
    assert "lines 2-3 were read as one row" in again.rejected[0][1]


def test_a_line_break_in_a_read_column_is_refused_and_in_another_one_warned(
    engine: Engine, tmp_path: Path
) -> None:
    path = _csv(
        tmp_path,
        "email,timezone,notes\n"
        'ana@example.org,"Europe/\nBerlin",\n'  # lines 2-3
        'bo@example.org,UTC,"first\nsecond"\n'  # lines 4-5: a column dripmail ignores
        '"cy@exa\nmple.org",UTC,\n'  # lines 6-7
        "di@example.org,UTC,\n",  # line 8
    )
    report = import_csv(engine, path, Rules(), "UTC", NOW)
    assert [line for line, _ in report.rejected] == [2, 6]
    assert report.rejected[0][1].startswith("timezone: the quoted cell that starts on this line")
    assert report.rejected[1][1].startswith("email: the quoted cell that starts on this line")
    assert [line for line, _ in report.warnings] == [4]
    assert "a quoted cell runs over lines 4-5" in report.warnings[0][1]
    assert report.added == 2  # bo and di


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("email,email,first_name", "columns 1 ('email') and 2 ('email') both name `email`"),
        ("email,timezone,TZ", "columns 2 ('timezone') and 3 ('TZ') both name `timezone`"),
        ("Email,Email Address", "columns 1 ('Email') and 2 ('Email Address') both name `email`"),
        ("email,First Name,FNAME", "columns 2 ('First Name') and 3 ('FNAME') both name"),
    ],
)
def test_two_columns_for_one_field_refuse_the_file(
    engine: Engine, tmp_path: Path, header: str, named: str
) -> None:
    path = _csv(tmp_path, f"{header}\nk@example.com,z@example.com,UTC\n")
    with pytest.raises(InputError, match=rf"people.csv:1: {re.escape(named)}.*keep one of them"):
        import_csv(engine, path, Rules(), "UTC", NOW)
    assert _count(engine, subscribers) == 0


def test_a_mailchimp_export_header_names_the_email_and_first_name(
    engine: Engine, tmp_path: Path
) -> None:
    path = _csv(
        tmp_path,
        "Email Address,First Name,Last Name,MEMBER_RATING\nmc@example.com,Mia,Chimp,2\n",
    )
    report = import_csv(engine, path, Rules(), "UTC", NOW)
    assert report.added == 1 and report.ignored_columns == ["Last Name", "MEMBER_RATING"]
    assert subs.get_subscriber(engine, "mc@example.com")["first_name"] == "Mia"
    open_quote = _csv(tmp_path, '"email,first_name\nk@example.com,Kay\n')
    with pytest.raises(InputError, match=r"people.csv:1: a quote in the header row is not closed"):
        import_csv(engine, open_quote, Rules(), "UTC", NOW)


def test_a_stop_ends_the_import_between_two_batches(engine: Engine, tmp_path: Path) -> None:
    """Ctrl-C (the CLI sets the event) is looked at after each committed batch: everything
    before it is in and counted, nothing after it is read; the same import again finishes."""
    import threading

    path = _csv(tmp_path, "email\n" + "".join(f"k{i}@example.org\n" for i in range(1200)))
    stop = threading.Event()
    report = import_csv(
        engine, path, Rules(), "UTC", NOW, progress=lambda done, total: stop.set(), stop=stop
    )
    assert report.stopped and report.added == 500 and report.committed_line == 501
    assert _count(engine, subscribers) == 500 and _count(engine, deliveries) == 3500
    rest = import_csv(engine, path, Rules(), "UTC", NOW)
    assert not rest.stopped and (rest.added, rest.existing) == (700, 500)
    stop.clear()
    stop.set()
    before = import_csv(engine, path, Rules(), "UTC", NOW, stop=stop)
    assert before.stopped and before.added == before.existing == 0


def test_cells_export_neutralised_for_spreadsheets_import_as_they_were(
    engine: Engine, tmp_path: Path
) -> None:
    """`safe_cell` writes `'-Bo` for a name starting with `-`; moving machines must not turn
    it into a name with an apostrophe, nor an address starting with `+` into a refused row."""
    for address, name in (("+ana@example.org", "-Bo"), ("cy@example.org", "=Cy")):
        subs.add_subscriber(
            engine, address, first_name=name, timezone="UTC", status="active",
            consent_source="test", now=NOW,
        )  # fmt: skip
    out = io.StringIO()
    export_csv(engine, out)
    assert "'+ana@example.org,'-Bo" in out.getvalue()
    other = new_store("sqlite:///other.db", tmp_path)
    report = import_csv(other, _csv(tmp_path, out.getvalue()), Rules(), "UTC", NOW)
    assert report.added == 2 and not report.rejected
    assert subs.get_subscriber(other, "+ana@example.org")["first_name"] == "-Bo"
    assert subs.get_subscriber(other, "cy@example.org")["first_name"] == "=Cy"

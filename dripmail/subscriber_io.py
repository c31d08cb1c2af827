"""CSV import and export of subscribers.

Import, in order:
1. The whole file is decoded once (streamed) before anything is written: a byte that is not
   UTF-8 stops the import naming its line, with nothing added.
2. The delimiter is sniffed (comma, semicolon or tab); header names match without regard to
   case, spaces, hyphens or underscores (`Email`, `First Name`, `first-name`, `Time Zone`),
   plus the names email services export (`Email Address`); two columns for one field refuse
   the file.
3. Every row is validated the same way as every other door (`dripmail.validation`); a refused
   row, and a second row for an address already in the file, is reported with the line it
   starts on and the reason, and the other rows go on. A quoted cell over a line break in a
   column read here, and a quote never closed, are refused rows.
4. Valid rows are written in batches: each batch adds its subscribers with their status (the
   file's `status` as `export` writes it: a reader who stopped mail stays stopped; otherwise
   active, or pending for the double opt-in email) and plans their lessons in ONE
   transaction, so a crash at any moment leaves every row either fully imported or not at all.
   Re-running is idempotent (an address already present is counted and left alone, except
   that a file marking it as stopped stops it), and a pending import row whose confirmation
   email never went out is offered again. A stop request is looked at between batches.

`--dry-run` runs the same checks against the same database and reports the same counts.
Export streams by id and neutralises cells a spreadsheet would run as a formula.
"""

from __future__ import annotations

import codecs
import csv
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, RowMapping

from dripmail import schedule
from dripmail import subscribers as subs
from dripmail.errors import InputError
from dripmail.output_files import Kept, replaced_atomically
from dripmail.states import STOPPED, SubscriberStatus
from dripmail.store import confirmation_queries as cq
from dripmail.store import import_queries as iq
from dripmail.store import subscriber_queries as q
from dripmail.store.import_queries import Lesson, Person
from dripmail.subscriber_columns import COLUMNS
from dripmail.validation import (
    clean_name,
    normalise_email,
    normalise_tags,
    parse_send_time,
    parse_start_date,
    parse_status,
    start_date_warning,
    validate_timezone,
    zone_note,
)

EXPORT_COLUMNS = (
    "email",
    "first_name",
    "timezone",
    "status",
    "start_date",
    "send_time",
    "newsletters",
    "tags",
    "consent_source",
    "consent_at",
    "created_at",
)
# A cell starting with one of these is run as a formula by Excel/LibreOffice/Sheets (CSV
# injection); a leading apostrophe makes it text.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
BATCH = 500  # rows per transaction: small enough to lose little on a crash, large for speed
READ_CHUNK = 1 << 16


@dataclass
class ImportReport:
    """What an import did; `rejected` holds ``(line, reason)`` for every refused row."""

    added: int = 0
    existing: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    added_ids: list[int] = field(default_factory=list)
    # Pending subscribers (this import or an interrupted earlier one) still owed the email.
    to_confirm: list[int] = field(default_factory=list)
    delimiter: str = ","
    # Added with the status the file gave them rather than active (or pending, --confirm):
    # status -> count ("unsubscribed": 2, "pending": 1, "completed": 4, ...).
    kept_status: dict[str, int] = field(default_factory=dict)
    # Readers already here whom the file marks as stopped, stopped now: (line, address, status).
    stopped_existing: list[tuple[int, str, str]] = field(default_factory=list)
    # Provider ids of lessons those readers had handed over: the caller cancels them there.
    handed: list[str] = field(default_factory=list)
    # Readers already here whose newsletters the file turns off (the reader's choice there).
    newsletters_off: int = 0
    # The last line of the last batch committed: a stop (Ctrl-C) says how far it got.
    committed_line: int = 0
    # Stopped by the caller's `stop` between two batches: the rest of the file was not read.
    stopped: bool = False

    def merge(self, batch: ImportReport) -> None:
        """Add what one committed batch did (`import_csv` merges only after the commit, so a
        batch a Ctrl-C rolled back is not counted)."""
        self.added += batch.added
        self.existing += batch.existing
        self.rejected.extend(batch.rejected)
        self.added_ids.extend(batch.added_ids)
        self.to_confirm.extend(batch.to_confirm)
        for status, count in batch.kept_status.items():
            self.kept_status[status] = self.kept_status.get(status, 0) + count
        self.stopped_existing.extend(batch.stopped_existing)
        self.handed.extend(batch.handed)
        self.newsletters_off += batch.newsletters_off


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One valid row of an import file.

    `status` None: the import decides (active, or pending with --confirm); otherwise the
    file's own (`subscribers export` writes it). `send_time` "HH:MM" or None (the course's).
    """

    line: int
    email: str
    first_name: str
    timezone: str
    start_date: date | None
    tags: str = ""
    status: SubscriberStatus | None = None
    newsletters: bool = True
    send_time: str | None = None


# -- reading --------------------------------------------------------------------------------


def check_encoding(path: Path, stop: threading.Event | None = None) -> int:
    """Decode the whole file as UTF-8 (streamed); returns its number of lines.

    InputError naming the line and byte of the first undecodable byte: nothing was imported.
    Returns early (the count so far) once `stop` is set.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    lines, offset = 1, 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        while chunk := handle.read(READ_CHUNK):
            if stop is not None and stop.is_set():
                return lines
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad = offset + exc.start
                handle.seek(0)
                before = handle.read(bad)
                line = before.count(b"\n") + 1
                raise InputError(
                    f"{path}:{line}: byte 0x{chunk[exc.start]:02x} is not UTF-8 text; nothing "
                    "was imported: save the file as CSV UTF-8 and import again"
                ) from None
            lines += chunk.count(b"\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise InputError(
                f"{path}:{lines}: the file ends inside a UTF-8 character; nothing was imported"
            ) from None
    return lines


# A column's name with case, spaces, hyphens and underscores dropped -> the column it names;
# `Time Zone`, `time-zone`, `TimeZone` and `timezone` are one column, as are `First Name` and
# `first_name`. TZ is the name spreadsheets and the tz database itself use for the zone.
_SQUASHED = {name.replace("_", ""): name for name in COLUMNS} | {"tz": "timezone"}
# The headers email services write for the same columns: Mailchimp's `Email Address` and
# `First Name`, Kit's `email_address`, `E-mail` (squashed to `email` already), `FNAME`
# (Mailchimp's merge tag), `Given Name`.
_SQUASHED |= {"emailaddress": "email", "fname": "first_name", "givenname": "first_name"}


def _key(name: str) -> str:
    """The column a header cell names (a key of COLUMNS), or the cell squashed if none."""
    squashed = "".join(name.lower().replace("-", " ").replace("_", " ").split())
    return _SQUASHED.get(squashed, squashed)


def _sniff(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample.split("\n", 1)[0], delimiters=",;\t").delimiter
    except csv.Error:
        return ","


def read_rows(
    handle: IO[str],
    source: str,
    default_timezone: str,
    report: ImportReport,
    today: date,
    lessons: int = 7,
) -> Iterator[ImportRow]:
    """Yield valid rows; record refused ones (and in-file duplicates) in `report` by line.

    A row's line is the line it starts on. A quoted cell that runs over line breaks is read as
    one row: in a column dripmail reads (an address, a name, a zone...) the row is refused,
    and a quote left open (the cell runs to the end of the file, swallowing the rows after
    it) is refused naming the line it opened on. InputError for a header dripmail cannot use.
    """
    report.delimiter = _sniff(handle.read(READ_CHUNK))
    handle.seek(0)
    # The lines of the record being read, for the rare one that spans lines (an open quote).
    raw: list[str] = []

    def lines() -> Iterator[str]:
        for text in handle:
            # The csv module refuses a NUL anywhere; as a control character it becomes a
            # space (and in an address, a refused row) like at every other door.
            text = text.replace("\x00", " ")
            raw.append(text)
            yield text

    reader = csv.reader(lines(), delimiter=report.delimiter)
    try:
        raw_header = next(reader, [])
    except csv.Error as exc:
        raise InputError(f"{source}:1: not valid CSV ({exc})") from None
    if reader.line_num > 1:
        raise InputError(
            f"{source}:1: a quote in the header row is not closed on its line (the header "
            f"runs to line {reader.line_num}); fix the header and import again"
        )
    raw.clear()
    header = [_key(h) for h in raw_header]
    if "email" not in header:
        found = ", ".join(h.strip()[:40] for h in raw_header[:20]) or "nothing"
        raise InputError(
            f"{source}:1: the header row needs an `email` column (found: {found}); "
            f"`Email`, `Email Address` and `E-mail` also name it"
        )
    _refuse_twice_named(source, raw_header, header)
    report.ignored_columns = [h for h in raw_header if h.strip() and _key(h) not in COLUMNS]
    where = {name: header.index(name) for name in COLUMNS if name in header}
    width = len(header)
    # Absent columns read from an always-empty cell past the row's end.
    at = {name: where.get(name, width) for name in COLUMNS}
    at_email, at_zone, at_start = at["email"], at["timezone"], at["start_date"]
    at_tags, at_name = at["tags"], at["first_name"]
    at_status, at_news, at_send = at["status"], at["newsletters"], at["send_time"]
    read_columns = sorted(where.items(), key=lambda item: item[1])
    seen: dict[str, int] = {}
    ended = 1  # the line the previous record ended on
    while True:
        line = ended + 1  # the line this record starts on
        try:
            record = next(reader, None)
        except csv.Error as exc:
            # The reader cannot find where the next row starts: nothing after it is read.
            report.rejected.append(
                (line, f"not valid CSV ({exc}); the rest of the file was not read: fix this "
                 "line and import again (rows already imported are left as they are)")
            )  # fmt: skip
            return
        if record is None:
            return
        ended = reader.line_num
        spans = ended > line
        if spans:
            problem = _spanning(raw, record, read_columns, line, ended, report.delimiter)
            raw.clear()
            if problem is not None:
                refused, said = problem
                (report.rejected if refused else report.warnings).append((line, said))
                if refused:
                    continue
        else:
            raw.clear()
        if not any(cell.strip() for cell in record):
            continue
        if len(record) > width:
            report.rejected.append((line, "more cells than header columns"))
            continue
        # Short rows (fewer cells than the header) read empty cells for the rest.
        cells = record + [""] * (width + 1 - len(record))
        raw_email = _as_written(cells[at_email].strip())
        if not raw_email:
            report.rejected.append((line, "email: empty"))
            continue
        try:
            email = normalise_email(raw_email)
            if email in seen:
                raise InputError(f"{email} is already on line {seen[email]} of this file")
            status = _status_of(cells[at_status])
            zone, zone_warning = _checked(_zone_of(cells[at_zone].strip(), default_timezone))
            if status in _UNPLANNED:
                # No lesson will be planned from it: any real date is kept as it is.
                start, start_warning = _checked(_any_date_of(cells[at_start].strip()))
            else:
                start, start_warning = _checked(_start_of(cells[at_start].strip(), today, lessons))
            tags, _ = _checked(_tags_of(cells[at_tags]))
            first = clean_name(_as_written(cells[at_name]))
            newsletters = _flag_of(cells[at_news])
            send_time = _send_time_of(cells[at_send])
        except InputError as exc:
            report.rejected.append((line, str(exc)))
            continue
        seen[email] = line
        for warning in (zone_warning, start_warning):
            if warning:
                report.warnings.append((line, warning))
        yield ImportRow(line, email, first, zone, start, tags, status, newsletters, send_time)


def _refuse_twice_named(source: str, raw_header: list[str], header: list[str]) -> None:
    """InputError when two header cells name the same column (`email,email`, `timezone,tz`):
    one of them would be silently ignored."""
    first_at: dict[str, int] = {}
    for index, name in enumerate(header):
        if name not in COLUMNS:
            continue
        if name in first_at:
            one, other = raw_header[first_at[name]].strip(), raw_header[index].strip()
            raise InputError(
                f"{source}:1: columns {first_at[name] + 1} ({one!r}) and {index + 1} "
                f"({other!r}) both name `{name}`: keep one of them and import again"
            )
        first_at[name] = index


def _spanning(
    raw: list[str],
    record: list[str],
    read_columns: list[tuple[str, int]],
    line: int,
    ended: int,
    delimiter: str,
) -> tuple[bool, str] | None:
    """A record that runs over lines `line`..`ended`: (refused?, what to say), or None.

    A quote left open runs to the end of the file (the non-strict reader takes it all as one
    cell); read again strictly, that record says "unexpected end of data".
    """
    try:
        list(csv.reader(raw, delimiter=delimiter, strict=True))
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            return True, (
                f"a quote opened on this line is never closed: the cell runs over the line "
                f"breaks to the end of the file, so lines {line}-{ended} were read as one row "
                "and not imported; close the quote and import again"
            )
    for name, index in read_columns:
        cell = record[index] if index < len(record) else ""
        if "\n" in cell or "\r" in cell:
            return True, (
                f"{name}: the quoted cell that starts on this line runs over a line break "
                f"(to line {ended}); a {name} is one line: close the quote where the cell "
                "ends, or remove the line break"
            )
    return False, (
        f"a quoted cell runs over lines {line}-{ended} (a column dripmail does not read); "
        "the row was imported as one: if a quote was left open there, the lines after it "
        "were read into that cell"
    )


def _as_written(cell: str) -> str:
    """A cell as it was before `safe_cell` neutralised it for spreadsheets on export (`'-Bo`
    back to `-Bo`, `'+ana@example.org` back to the address): an exported file imports as
    it was stored."""
    if cell.startswith("'") and cell[1:2] and cell[1:].startswith(FORMULA_START):
        return cell[1:]
    return cell


# Statuses a file may give (`subscribers export` writes them) for which no lesson is planned:
# the reader stopped mail or had the whole course already.
_UNPLANNED = frozenset(STOPPED | {SubscriberStatus.COMPLETED})
_YES = frozenset({"yes", "y", "true", "1", "on"})
_NO = frozenset({"no", "n", "false", "0", "off"})


def _status_of(cell: str) -> SubscriberStatus | None:
    """The `status` cell: None when empty (the import decides), else a known status."""
    if not cell.strip():
        return None
    return parse_status(cell, "status:", ", or leave it empty (active)")


def _flag_of(cell: str) -> bool:
    """The `newsletters` cell: yes (also empty) or no, as export writes it (true/1/no/0...)."""
    given = cell.strip().lower()
    if not given or given in _YES:
        return True
    if given in _NO:
        return False
    raise InputError(f"newsletters: {cell.strip()[:30]!r} is not yes or no (empty means yes)")


def _send_time_of(cell: str) -> str | None:
    """The `send_time` cell as "HH:MM" (None when empty: the course's send time)."""
    if not cell.strip():
        return None
    return parse_send_time(cell, "send_time", " (or leave it empty)")


# The cells most files repeat on every row (a zone, a start date, a tag list) are checked once
# per distinct value: (value as stored, warning or None, error or ""). Bounded, so a file of
# all-distinct values keeps memory flat.
_Checked = tuple[Any, str | None, str]


def _checked(result: _Checked) -> tuple[Any, str | None]:
    value, warning, error = result
    if error:
        raise InputError(error)
    return value, warning


@lru_cache(maxsize=1024)
def _zone_of(given: str, default: str) -> _Checked:
    try:
        zone = validate_timezone(given or default)
    except InputError as exc:
        return None, None, str(exc)
    return zone, zone_note(given, zone), ""


@lru_cache(maxsize=1024)
def _start_of(given: str, today: date, lessons: int) -> _Checked:
    try:
        start = parse_start_date(given, today)
    except InputError as exc:
        return None, None, str(exc)
    return start, start_date_warning(start, today, lessons), ""


@lru_cache(maxsize=1024)
def _any_date_of(given: str) -> _Checked:
    if not given:
        return None, None, ""
    try:
        return date.fromisoformat(given), None, ""
    except ValueError:
        return None, None, f"start_date: {given[:40]!r} is not a date (YYYY-MM-DD)"


@lru_cache(maxsize=1024)
def _tags_of(given: str) -> _Checked:
    try:
        return normalise_tags(given), None, ""
    except InputError as exc:
        return None, None, str(exc)


# -- writing --------------------------------------------------------------------------------


class _Planner:
    """Start dates and due times per (zone, send time, start date), computed once per import."""

    def __init__(
        self, course: subs.CourseRules, now: datetime, store: Callable[[datetime], Any]
    ) -> None:
        self.course = course
        self.now = now
        self.days = [lesson.day for lesson in course.lessons]
        self.store = store  # due time -> its stored form (`import_queries.stored_due`)
        self._starts: dict[tuple[str, str | None], date] = {}
        self._dues: dict[tuple[str, str | None, date], list[Any]] = {}

    def send_time(self, send: str | None) -> time:
        """A reader's local send time: their own ("HH:MM") or the course's."""
        return time.fromisoformat(send) if send else self.course.send_time

    def first(self, zone: str, given: date | None, send: str | None = None) -> date:
        if given is not None:
            return given
        key = (zone, send)
        if key not in self._starts:
            self._starts[key] = schedule.start_date(
                self.now,
                ZoneInfo(zone),
                self.send_time(send),
                self.course.start,  # type: ignore[arg-type]
                self.course.skip_weekends,
            )
        return self._starts[key]

    def dues(self, zone: str, first: date, send: str | None = None) -> list[Any]:
        """The due time of each lesson, in stored form, for a reader of `zone` from `first`."""
        key = (zone, send, first)
        if key not in self._dues:
            due_times = schedule.due_times(
                first, len(self.days), self.send_time(send), ZoneInfo(zone),
                self.course.skip_weekends,
            )  # fmt: skip
            self._dues[key] = [self.store(due) for due in due_times]
        return self._dues[key]


# Which status a new row gets: the file's, except that no status (or `active`) means active,
# or pending when the operator asked for the double opt-in (--confirm).
def _status_for(row: ImportRow, confirm: bool) -> SubscriberStatus:
    if row.status is None or row.status is SubscriberStatus.ACTIVE:
        return SubscriberStatus.PENDING if confirm else SubscriberStatus.ACTIVE
    return row.status


# Readers in these statuses get their lessons planned on import (a paused one keeps them
# until `resume`, which plans them from the next morning).
_PLANNED = frozenset({SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED})
# Confirmed on arrival: the operator (or the machine the file came from) vouches for consent.
# A pending reader is not; a stopped one confirms again if they ever sign up again.
_CONFIRMED = frozenset(
    {SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED, SubscriberStatus.COMPLETED}
)


def _write_batch(
    engine: Engine,
    batch: list[ImportRow],
    planner: _Planner,
    report: ImportReport,
    *,
    confirm: bool,
    dry_run: bool,
    source: str = "",
) -> None:
    """Add (with their status), plan and, for stopped rows, suppress one batch of rows in one
    transaction; stop readers already here whom the file marks as stopped."""
    now = planner.now
    with engine.connect() if dry_run else engine.begin() as conn:
        known = iq.ids_by_email(conn, [r.email for r in batch])
        hashes = {r.email: subs.email_hash(r.email, True) for r in batch if r.email not in known}
        blocked = iq.suppressed_among(conn, list(hashes.values()))
        fresh: list[ImportRow] = []
        for row in batch:
            if row.email in known:
                report.existing += 1
                _less_mail(conn, known[row.email], row, report, now, source, dry_run)
            elif hashes[row.email] in blocked:
                report.rejected.append(
                    (row.line, f"{row.email} is suppressed (forgotten, bounced or complained)")
                )
            else:
                fresh.append(row)
        if confirm and known:
            report.to_confirm.extend(cq.owed_among(conn, known.values()))
        report.added += len(fresh)
        # Nearly every file is one group (no status column, or all active): one statement.
        groups: dict[tuple[SubscriberStatus, bool, str | None], list[ImportRow]] = {}
        for row in fresh:
            status = _status_for(row, confirm)
            if row.status is not None and status is not SubscriberStatus.ACTIVE:
                report.kept_status[status.value] = report.kept_status.get(status.value, 0) + 1
            groups.setdefault((status, row.newsletters, row.send_time), []).append(row)
        if dry_run or not fresh:
            return
        course_id, days = planner.course.id, planner.days
        lessons: list[Lesson] = []
        for (status, newsletters, send), rows in groups.items():
            planned = status in _PLANNED
            people: list[Person] = [
                (
                    row.email,
                    row.first_name,
                    row.timezone,
                    planner.first(row.timezone, row.start_date, send)
                    if planned
                    else row.start_date,
                    row.tags,
                )
                for row in rows
            ]
            ids = iq.add_imported(
                conn,
                people,
                status=status.value,
                now=now,
                confirmed=status in _CONFIRMED,
                newsletters=newsletters,
                send_time=send,
            )
            added = [ids[p[0]] for p in people]
            report.added_ids.extend(added)
            if status is SubscriberStatus.PENDING and confirm:
                report.to_confirm.extend(added)
            if status.stopped:
                # As the machine the file came from: a bounce or a complaint keeps the
                # address's hash, so no sign-up or later import brings it back.
                for row in rows:
                    if status is not SubscriberStatus.UNSUBSCRIBED:
                        q.suppress_hash(conn, hashes[row.email], status.value, now)
            if not planned:
                continue
            for sid, (_, _, zone, first, _) in zip(added, people, strict=True):
                assert first is not None  # planned rows always have a start date
                keys = subs.delivery_keys(course_id, sid, days)
                dues = planner.dues(zone, first, send)
                lessons.extend(zip(repeat(sid), days, keys, dues, strict=False))
        iq.plan_imported(conn, lessons, now)


def _less_mail(
    conn: Any,
    sid: int,
    row: ImportRow,
    report: ImportReport,
    now: datetime,
    source: str,
    dry_run: bool,
) -> None:
    """A reader already here whom the file marks as stopped (or off newsletters): the file
    carries their own choice from elsewhere, so it is applied. An import only ever takes
    mail away from a reader already here, never adds any: re-importing stays idempotent."""
    if row.status is None or (not row.status.stopped and row.newsletters):
        return
    current = q.by_id(conn, sid)
    if current is None:
        return
    if row.status is not None and row.status.stopped and current["status"] not in subs.STOPPED:
        report.stopped_existing.append((row.line, row.email, row.status.value))
        if not dry_run:
            if row.status is SubscriberStatus.UNSUBSCRIBED:
                report.handed.extend(
                    subs.unsubscribe(conn, sid, now, source=f"import {source}:{row.line}")
                )
            else:
                report.handed.extend(subs.suppress(conn, sid, row.status.value, now))
    if not row.newsletters and current["newsletters"]:
        report.newsletters_off += 1
        if not dry_run:
            q.update_subscriber(conn, sid, now, newsletters=False)


def import_csv(
    engine: Engine,
    path: Path,
    course: subs.CourseRules,
    default_timezone: str,
    now: datetime,
    *,
    confirm: bool = False,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> ImportReport:
    """Import subscribers from a CSV file (see module doc).

    Imported subscribers are active with consent source `import` and their lessons planned,
    unless `confirm` is set: then they stay pending and the caller sends the double opt-in
    email to `report.to_confirm`. `progress(lines_done, lines_total)` is called per batch.
    `stop` (set by Ctrl-C or SIGTERM) is looked at between two batches: the import returns
    with `report.stopped`, every batch before it committed and counted, none half-written.
    """
    report = ImportReport()
    total = check_encoding(path, stop)
    if stop is not None and stop.is_set():
        report.stopped = True
        return report
    planner = _Planner(course, now, iq.stored_due(engine.dialect))
    today = now.astimezone(ZoneInfo(validate_timezone(default_timezone))).date()

    def write(batch: list[ImportRow]) -> None:
        part = ImportReport()
        _write_batch(
            engine, batch, planner, part, confirm=confirm, dry_run=dry_run, source=str(path)
        )
        report.merge(part)  # committed: counted
        report.committed_line = batch[-1].line

    with path.open(newline="", encoding="utf-8-sig") as handle:
        batch: list[ImportRow] = []
        for row in read_rows(handle, str(path), default_timezone, report, today, len(planner.days)):
            batch.append(row)
            if len(batch) >= BATCH:
                write(batch)
                if progress:
                    progress(row.line, total)
                batch = []
                if stop is not None and stop.is_set():
                    report.stopped = True
                    break
        else:
            if batch:
                write(batch)
            if progress:
                progress(total, total)
    report.rejected.sort()
    return report


# -- export ---------------------------------------------------------------------------------


def safe_cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def export_value(value: object) -> str:
    """One exported value: yes/no for flags, ISO 8601 for dates and times, text otherwise."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date | time):
        return value.isoformat()
    return safe_cell(value)


def export_rows(rows: Iterator[RowMapping], out: IO[str]) -> int:
    """Write subscriber rows as CSV to `out`; returns the number of rows."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for row in rows:
        writer.writerow([export_value(row[c]) for c in EXPORT_COLUMNS])
        count += 1
    return count


def export_csv(engine: Engine, out: IO[str], status: str | None = None, chunk: int = 1000) -> int:
    """Write subscribers as CSV to `out`, streaming by id; returns the number of rows."""
    return export_rows(q.iter_subscribers(engine, status, chunk), out)


def export_file(rows: Iterator[RowMapping], target: Path, keep: Kept | None = None) -> int:
    """Write subscriber rows as CSV to the file `target`; returns the number of rows.

    `output_files.replaced_atomically`: a target among `keep` (the database's own files) is
    refused before anything is opened, and the file is renamed into place only once complete,
    so an error or Ctrl-C leaves an existing file as it was.
    """
    with replaced_atomically(target, keep) as handle:
        return export_rows(rows, handle)

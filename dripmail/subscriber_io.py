"""CSV import and export of subscribers.

Import, in order:
1. The whole file is decoded once (streamed) before anything is written: a byte that is not
   UTF-8 stops the import naming its line, with nothing added.
2. The delimiter is sniffed (comma, semicolon or tab); header names match without regard to
   case, spaces, hyphens or underscores (`Email`, `First Name`, `first-name`, `Time Zone`).
3. Every row is validated the same way as every other door (`dripmail.validation`); a refused
   row, and a second row for an address already in the file, is reported with its line number
   and reason, and the other rows go on.
4. Valid rows are written in batches: each batch adds its subscribers, activates them (or
   leaves them pending for the double opt-in email) and plans their lessons in ONE
   transaction, so a crash at any moment leaves every row either fully imported or not at all.
   Re-running is idempotent (an address already present is counted and left alone), and a
   pending import row whose confirmation email never went out is offered again.

`--dry-run` runs the same checks against the same database and reports the same counts.
Export streams by id and neutralises cells a spreadsheet would run as a formula.
"""

from __future__ import annotations

import codecs
import csv
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
from dripmail.states import SubscriberStatus
from dripmail.store import confirmation_queries as cq
from dripmail.store import import_queries as iq
from dripmail.store import subscriber_queries as q
from dripmail.store.import_queries import Lesson, Person
from dripmail.subscriber_columns import COLUMNS
from dripmail.validation import (
    clean_name,
    normalise_email,
    normalise_tags,
    parse_start_date,
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


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One valid row of an import file."""

    line: int
    email: str
    first_name: str
    timezone: str
    start_date: date | None
    tags: str = ""


# -- reading --------------------------------------------------------------------------------


def check_encoding(path: Path) -> int:
    """Decode the whole file as UTF-8 (streamed); returns its number of lines.

    InputError naming the line and byte of the first undecodable byte: nothing was imported.
    """
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    lines, offset = 1, 0
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        while chunk := handle.read(READ_CHUNK):
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
    """Yield valid rows; record refused ones (and in-file duplicates) in `report` by line."""
    report.delimiter = _sniff(handle.read(READ_CHUNK))
    handle.seek(0)
    # The csv module refuses a NUL anywhere; as a control character it becomes a space (and
    # in an address, a refused row) like at every other door.
    lines = (line.replace("\x00", " ") for line in handle)
    reader = csv.reader(lines, delimiter=report.delimiter)
    try:
        raw_header = next(reader, [])
    except csv.Error as exc:
        raise InputError(f"{source}:1: not valid CSV ({exc})") from None
    header = [_key(h) for h in raw_header]
    if "email" not in header:
        found = ", ".join(h.strip() for h in raw_header) or "nothing"
        raise InputError(f"{source}:1: the header row needs an `email` column (found: {found})")
    report.ignored_columns = [h for h in raw_header if h.strip() and _key(h) not in COLUMNS]
    where = {name: header.index(name) for name in COLUMNS if name in header}
    width = len(header)
    # Absent columns read from an always-empty cell past the row's end.
    at = {name: where.get(name, width) for name in COLUMNS}
    at_email, at_zone, at_start = at["email"], at["timezone"], at["start_date"]
    at_tags, at_name = at["tags"], at["first_name"]
    seen: dict[str, int] = {}
    line = 1
    try:
        for record in reader:
            joined = "".join(record)
            # A quoted cell may span lines: the row starts that many lines before its end.
            line = reader.line_num - joined.count("\n")
            if not joined.strip():
                continue
            if len(record) > width:
                report.rejected.append((line, "more cells than header columns"))
                continue
            # Short rows (fewer cells than the header) read empty cells for the rest.
            cells = record + [""] * (width + 1 - len(record))
            raw_email = cells[at_email].strip()
            if not raw_email:
                report.rejected.append((line, "email: empty"))
                continue
            try:
                email = normalise_email(raw_email)
                if email in seen:
                    raise InputError(f"{email} is already on line {seen[email]} of this file")
                zone, zone_warning = _checked(_zone_of(cells[at_zone].strip(), default_timezone))
                start, start_warning = _checked(_start_of(cells[at_start].strip(), today, lessons))
                tags, _ = _checked(_tags_of(cells[at_tags]))
                first = clean_name(cells[at_name])
            except InputError as exc:
                report.rejected.append((line, str(exc)))
                continue
            seen[email] = line
            for warning in (zone_warning, start_warning):
                if warning:
                    report.warnings.append((line, warning))
            yield ImportRow(line, email, first, zone, start, tags)
    except csv.Error as exc:
        raise InputError(f"{source}:{reader.line_num}: not valid CSV ({exc})") from None


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
def _tags_of(given: str) -> _Checked:
    try:
        return normalise_tags(given), None, ""
    except InputError as exc:
        return None, None, str(exc)


# -- writing --------------------------------------------------------------------------------


class _Planner:
    """Start dates and due times per (zone, start date), computed once per import."""

    def __init__(
        self, course: subs.CourseRules, now: datetime, store: Callable[[datetime], Any]
    ) -> None:
        self.course = course
        self.now = now
        self.days = [lesson.day for lesson in course.lessons]
        self.store = store  # due time -> its stored form (`import_queries.stored_due`)
        self._starts: dict[str, date] = {}
        self._dues: dict[tuple[str, date], list[Any]] = {}

    def first(self, zone: str, given: date | None) -> date:
        if given is not None:
            return given
        if zone not in self._starts:
            self._starts[zone] = schedule.start_date(
                self.now,
                ZoneInfo(zone),
                self.course.send_time,
                self.course.start,  # type: ignore[arg-type]
                self.course.skip_weekends,
            )
        return self._starts[zone]

    def dues(self, zone: str, first: date) -> list[Any]:
        """The due time of each lesson, in stored form, for a reader of `zone` from `first`."""
        key = (zone, first)
        if key not in self._dues:
            due_times = schedule.due_times(
                first, len(self.days), self.course.send_time, ZoneInfo(zone),
                self.course.skip_weekends,
            )  # fmt: skip
            self._dues[key] = [self.store(due) for due in due_times]
        return self._dues[key]


def _write_batch(
    engine: Engine,
    batch: list[ImportRow],
    planner: _Planner,
    report: ImportReport,
    *,
    confirm: bool,
    dry_run: bool,
) -> None:
    """Add, activate (or leave pending) and plan one batch of rows in one transaction."""
    now = planner.now
    with engine.connect() if dry_run else engine.begin() as conn:
        known = iq.ids_by_email(conn, [r.email for r in batch])
        hashes = {r.email: subs.email_hash(r.email, True) for r in batch if r.email not in known}
        blocked = iq.suppressed_among(conn, list(hashes.values()))
        fresh: list[ImportRow] = []
        for row in batch:
            if row.email in known:
                report.existing += 1
            elif hashes[row.email] in blocked:
                report.rejected.append(
                    (row.line, f"{row.email} is suppressed (forgotten, bounced or complained)")
                )
            else:
                fresh.append(row)
        if confirm and known:
            report.to_confirm.extend(cq.owed_among(conn, known.values()))
        report.added += len(fresh)
        if dry_run or not fresh:
            return
        people: list[Person] = [
            (
                row.email,
                row.first_name,
                row.timezone,
                row.start_date if confirm else planner.first(row.timezone, row.start_date),
                row.tags,
            )
            for row in fresh
        ]
        ids = iq.add_imported(
            conn,
            people,
            status=(SubscriberStatus.PENDING if confirm else SubscriberStatus.ACTIVE).value,
            now=now,
            confirmed=not confirm,
        )
        added = [ids[p[0]] for p in people]
        report.added_ids.extend(added)
        if confirm:
            report.to_confirm.extend(added)
            return
        course_id, days = planner.course.id, planner.days
        lessons: list[Lesson] = []
        for sid, (_, _, zone, first, _) in zip(added, people, strict=True):
            assert first is not None  # active rows always have a start date
            keys = subs.delivery_keys(course_id, sid, days)
            lessons.extend(zip(repeat(sid), days, keys, planner.dues(zone, first), strict=False))
        iq.plan_imported(conn, lessons, now)


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
) -> ImportReport:
    """Import subscribers from a CSV file (see module doc).

    Imported subscribers are active with consent source `import` and their lessons planned,
    unless `confirm` is set: then they stay pending and the caller sends the double opt-in
    email to `report.to_confirm`. `progress(lines_done, lines_total)` is called per batch.
    """
    total = check_encoding(path)
    report = ImportReport()
    planner = _Planner(course, now, iq.stored_due(engine.dialect))
    today = now.astimezone(ZoneInfo(validate_timezone(default_timezone))).date()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        batch: list[ImportRow] = []
        for row in read_rows(handle, str(path), default_timezone, report, today, len(planner.days)):
            batch.append(row)
            if len(batch) >= BATCH:
                _write_batch(engine, batch, planner, report, confirm=confirm, dry_run=dry_run)
                if progress:
                    progress(row.line, total)
                batch = []
        if batch:
            _write_batch(engine, batch, planner, report, confirm=confirm, dry_run=dry_run)
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

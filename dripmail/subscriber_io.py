"""CSV import and export of subscribers.

Import streams the file row by row (a list of any size never sits in memory), reports each
rejected row with its line number and reason, and is idempotent: an address already present is
counted and left alone. Export neutralises cells a spreadsheet would run as a formula.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO

from sqlalchemy import Engine, select

from dripmail import subscribers as subs
from dripmail.errors import InputError, NotFoundError
from dripmail.store.schema import subscribers

COLUMNS = ("email", "first_name", "timezone", "start_date", "tags")
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


@dataclass
class ImportReport:
    """What an import did; `rejected` holds ``(line, reason)`` for every refused row."""

    added: int = 0
    existing: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    added_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One valid row of an import file."""

    line: int
    email: str
    first_name: str
    timezone: str
    start_date: date | None
    tags: str = ""


def read_rows(
    handle: IO[str], source: str, default_timezone: str, report: ImportReport
) -> Iterator[ImportRow]:
    """Yield valid rows; record rejected ones in `report` with their line number."""
    reader = csv.DictReader(handle)
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "email" not in header:
        found = ", ".join(header) or "nothing"
        raise InputError(f"{source}:1: the header row needs an `email` column (found: {found})")
    reader.fieldnames = header
    report.ignored_columns = [h for h in header if h and h not in COLUMNS]
    try:
        for record in reader:
            line = reader.line_num
            if None in record:
                report.rejected.append((line, "more cells than header columns"))
                continue
            raw_email = (record.get("email") or "").strip()
            if not raw_email:
                report.rejected.append((line, "email: empty"))
                continue
            try:
                email = subs.normalise_email(raw_email)
                zone = subs.validate_timezone(
                    (record.get("timezone") or "").strip() or default_timezone
                )
                raw_start = (record.get("start_date") or "").strip()
                try:
                    start = date.fromisoformat(raw_start) if raw_start else None
                except ValueError:
                    raise InputError(
                        f"start_date: {raw_start!r} is not a date (YYYY-MM-DD)"
                    ) from None
                tags = subs.normalise_tags(record.get("tags") or "")
            except InputError as exc:
                report.rejected.append((line, str(exc)))
                continue
            first = (record.get("first_name") or "").strip()
            yield ImportRow(line, email, first, zone, start, tags)
    except csv.Error as exc:
        raise InputError(f"{source}:{reader.line_num}: not valid CSV ({exc})") from None


def import_csv(
    engine: Engine,
    path: Path,
    course: subs.CourseRules,
    default_timezone: str,
    now: datetime,
    *,
    confirm: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import subscribers from a CSV file (see module doc).

    Imported subscribers are active with consent source `import` and their lessons planned,
    unless `confirm` is set: then they stay pending and the caller sends the double opt-in
    email to `report.added_ids`.
    """
    report = ImportReport()
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        try:
            for row in read_rows(handle, str(path), default_timezone, report):
                if progress:
                    progress(1)
                if dry_run:
                    known = _exists(engine, row.email)
                    report.existing += known
                    report.added += not known
                    continue
                try:
                    sid, created = subs.add_subscriber(
                        engine,
                        row.email,
                        first_name=row.first_name,
                        timezone=row.timezone,
                        status="pending",
                        consent_source="import",
                        now=now,
                        start_date=row.start_date,
                        tags=row.tags,
                    )
                    if not created:
                        report.existing += 1
                        continue
                    if not confirm:
                        subs.activate(engine, sid, course, now)
                    report.added += 1
                    report.added_ids.append(sid)
                except (InputError, NotFoundError) as exc:
                    report.rejected.append((row.line, str(exc)))
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8 text; save the file as CSV UTF-8") from None
    return report


def _exists(engine: Engine, email: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(select(subscribers.c.id).where(subscribers.c.email == email)).first()
            is not None
        )


def safe_cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def export_csv(engine: Engine, out: IO[str], status: str | None = None, chunk: int = 1000) -> int:
    """Write subscribers as CSV to `out`, streaming by id; returns the number of rows."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    last, count = 0, 0
    while True:
        query = select(subscribers).where(subscribers.c.id > last).order_by(subscribers.c.id)
        if status:
            query = query.where(subscribers.c.status == status)
        with engine.connect() as conn:
            rows = list(conn.execute(query.limit(chunk)).mappings())
        if not rows:
            return count
        for row in rows:
            writer.writerow([safe_cell(row[c]) for c in EXPORT_COLUMNS])
        count += len(rows)
        last = rows[-1]["id"]

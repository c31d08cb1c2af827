"""The report a studio reads: sign-up funnel, each lesson, each newsletter, send hour, zone.

`build` sums the store's facts (see `dripmail.store.report_queries`) over a span of UTC days
into typed figures; `to_dict` / `csv_rows` give the same figures for JSON and CSV. Counts are
*flows* in the span: sign-ups made in it, confirmations made in it, copies sent in it, first
events of each kind received in it. Over all time that is the plain history.

Opens are approximate: Apple Mail Privacy Protection (iOS 15+, macOS 12+) loads every email's
images when it arrives, so a copy delivered to Apple Mail counts as opened whether or not the
reader looked at it; other clients that block images never count. Clicks are a firmer signal;
those within `SCANNER_WINDOW` of delivery come from link scanners and are set apart by default.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Engine

from dripmail import welcome
from dripmail.store import report_queries as q
from dripmail.store.report_queries import SCANNER_WINDOW, Facts, link_of

OPENS_NOTE = (
    "Opens are approximate: Apple Mail Privacy Protection loads every email when it arrives "
    "(counted as opened, read or not), and clients that block images never count."
)
SCANNER_NOTE = (
    f"Clicks within {int(SCANNER_WINDOW.total_seconds())} s of delivery come from link scanners "
    "in mail gateways"
)
METRICS = ("delivered", "opened", "clicked", "unsubscribed", "bounced", "complained")


def rate(part: int, whole: int) -> float | None:
    """part / whole rounded to 4 places (a fraction, not a percentage); None when whole is 0."""
    return round(part / whole, 4) if whole else None


WELCOME_DAY = str(welcome.WELCOME_DAY)  # the welcome email's lesson_day: listed as "Welcome"
WELCOME_TITLE = "Welcome"


@dataclass(frozen=True)
class LessonInfo:
    """What the report needs to know of a lesson from the course files."""

    day: int
    title: str
    video_url: str | None = None


@dataclass
class Funnel:
    """Sign-ups and how far they got. `median_confirm_seconds` is within 10% (binned)."""

    signups: int = 0
    confirmed: int = 0
    confirm_rate: float | None = None
    median_confirm_seconds: int | None = None  # of those who confirmed by the emailed link
    # confirmed by the link / without it (imported or added as active, or a reader who came
    # back already confirmed): only the first have a time to confirm.
    confirmed_by_link: int = 0
    confirmed_without_link: int = 0
    started: int = 0
    completed: int = 0
    start_rate: float | None = None
    completion_rate: float | None = None


@dataclass
class MailRow:
    """One lesson or newsletter issue. Rates are fractions of `sent`."""

    key: str  # lesson day or newsletter slug
    title: str
    sent: int = 0
    delivered: int = 0
    opened: int = 0  # unique, approximate (see OPENS_NOTE)
    clicked: int = 0  # unique; scanner clicks left out unless counted in
    scanner_clicks: int = 0  # copies whose only clicks were within SCANNER_WINDOW
    video_clicks: int = 0  # lessons: unique clicks on the lesson's video link
    other_clicks: int = 0  # unique clicks on any other link
    unsubscribed: int = 0  # readers who left after this copy was their last
    bounced: int = 0
    complained: int = 0
    delivered_rate: float | None = None
    open_rate: float | None = None
    click_rate: float | None = None
    unsubscribe_rate: float | None = None
    bounce_rate: float | None = None
    complaint_rate: float | None = None
    drop: int | None = None  # lessons: sent of the previous lesson minus this one's
    drop_rate: float | None = None
    # lessons: sent to nobody yet while the previous lesson's readers are still on the course
    # (e.g. lesson 3 when everyone is on day 2): no drop figure, it would read "lost everyone".
    not_yet_due: bool = False
    links: dict[str, int] = field(default_factory=dict)  # link -> unique clicks

    def fill_rates(self) -> None:
        """Compute the rates from the counts."""
        self.delivered_rate = rate(self.delivered, self.sent)
        self.open_rate = rate(self.opened, self.sent)
        self.click_rate = rate(self.clicked, self.sent)
        self.unsubscribe_rate = rate(self.unsubscribed, self.sent)
        self.bounce_rate = rate(self.bounced, self.sent)
        self.complaint_rate = rate(self.complained, self.sent)


@dataclass
class SliceRow:
    """Copies by the reader's local send hour ("07") or time zone, with opens and clicks."""

    key: str
    sent: int = 0
    opened: int = 0
    clicked: int = 0
    open_rate: float | None = None
    click_rate: float | None = None


@dataclass
class DayRow:
    """One UTC day of the over-time chart."""

    day: str
    signups: int = 0
    unsubscribed: int = 0


@dataclass
class Report:
    """Every figure of one report, in the order the terminal and the page show them."""

    since: str | None
    until: str | None
    generated_at: str
    scanner_clicks_counted: bool
    funnel: Funnel
    lessons: list[MailRow]
    newsletters: list[MailRow]
    hours: list[SliceRow]
    zones: list[SliceRow]
    days: list[DayRow]
    notes: list[str]

    def to_dict(self) -> dict:
        """Plain JSON-able values (`--json`)."""
        return asdict(self)

    def csv_rows(self) -> Iterator[tuple[str, str, str, str, str]]:
        """(section, key, title, metric, value) for every figure: one tidy table (`--csv`)."""
        yield ("section", "key", "title", "metric", "value")
        for name, value in asdict(self.funnel).items():
            yield ("funnel", "", "", name, _cell(value))
        for section, rows in (("lesson", self.lessons), ("newsletter", self.newsletters)):
            for row in rows:
                for name, value in asdict(row).items():
                    if name in ("key", "title"):
                        continue
                    if name == "links":
                        for link, count in value.items():
                            yield (f"{section}_link", row.key, row.title, link, str(count))
                        continue
                    yield (section, row.key, row.title, name, _cell(value))
        for section, slices in (("hour", self.hours), ("zone", self.zones)):
            for s in slices:
                for name, value in asdict(s).items():
                    if name != "key":
                        yield (section, s.key, "", name, _cell(value))
        for d in self.days:
            yield ("day", d.day, "", "signups", str(d.signups))
            yield ("day", d.day, "", "unsubscribed", str(d.unsubscribed))
        # The notes say which figures are approximate (opens) and how scanner clicks were
        # counted: a CSV read on its own must carry them too.
        for number, note in enumerate(self.notes, 1):
            yield ("note", str(number), "", "text", note)


def _cell(value: object) -> str:
    return "" if value is None else str(value)


def _median(bins: dict[int, int]) -> int | None:
    total = sum(bins.values())
    if not total:
        return None
    seen = 0
    for seconds in sorted(bins):
        seen += bins[seconds]
        if seen * 2 >= total:
            return seconds
    return None  # pragma: no cover - the loop always returns


def _mail_row(
    facts: dict[tuple[str, str], int],
    links: dict[str, int],
    key: str,
    title: str,
    video: str | None,
    count_scanners: bool,
) -> MailRow:
    row = MailRow(key=key, title=title, sent=facts.get(("sent", ""), 0))
    for metric in ("delivered", "opened", "unsubscribed", "bounced", "complained"):
        setattr(row, metric, facts.get((metric, ""), 0))
    every, human = facts.get(("clicked", ""), 0), facts.get(("clicked_human", ""), 0)
    row.scanner_clicks = every - human
    row.clicked = every if count_scanners else human
    row.links = dict(sorted(links.items(), key=lambda kv: (-kv[1], kv[0])))
    video_link = link_of(video) if video else None
    row.video_clicks = links.get(video_link, 0) if video_link else 0
    row.other_clicks = sum(n for link, n in links.items() if link != video_link)
    row.fill_rates()
    return row


def build(
    engine: Engine,
    now: datetime,
    *,
    since: date | None = None,
    until: date | None = None,
    lessons: Sequence[LessonInfo] = (),
    count_scanner_clicks: bool = False,
) -> Report:
    """The report for the UTC days since..until (inclusive; None: all history).

    `lessons` (from the course) names the rows and says which link is each lesson's video; a
    lesson sent earlier but no longer in the course still gets a row ("day N"). Raises
    StoreError if the database cannot be read. Computes and stores the counts of finished
    days not stored yet (the first report over a long history takes longer).
    """
    if since and until and since > until:
        from dripmail.errors import InputError

        raise InputError(f"--since {since} is after --until {until}: swap them")
    facts = q.facts_between(engine, since, until, now)
    # A day after today is refused only when nothing is recorded from it on: the clock of
    # the machine may lag the data's (the demo's week lies ahead of today).
    if since and since > now.date() and not facts:
        from dripmail.errors import InputError

        raise InputError(
            f"--since {since} is after today ({now.date()} UTC) and nothing is recorded from "
            "that day on: pick an earlier day or leave --since out"
        )
    return assemble(
        facts, now, since=since, until=until, lessons=lessons,
        titles=q.broadcast_titles(engine), count_scanner_clicks=count_scanner_clicks,
    )  # fmt: skip


def assemble(
    facts: Facts,
    now: datetime,
    *,
    since: date | None,
    until: date | None,
    lessons: Sequence[LessonInfo],
    titles: dict[str, tuple[str, str]],
    count_scanner_clicks: bool,
) -> Report:
    """Sum facts over their days into the report (pure: no database)."""
    by: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
    links: dict[tuple[str, str], dict[str, int]] = {}
    days: dict[date, DayRow] = {}
    confirm_bins: dict[int, int] = {}
    funnel_counts: dict[str, int] = {}
    link_metric = "clicked" if count_scanner_clicks else "clicked_human"
    for (day, section, item, metric), value in facts.items():
        if section == "funnel":
            funnel_counts[metric] = funnel_counts.get(metric, 0) + value
            day_row = days.setdefault(day, DayRow(day=day.isoformat()))
            if metric == "signups":
                day_row.signups += value
            elif metric == "unsubscribed":
                day_row.unsubscribed += value
        elif section == "confirm":
            confirm_bins[int(item)] = confirm_bins.get(int(item), 0) + value
        elif section == "link":
            if metric == link_metric:
                kind, number, link = item.split("|", 2)
                bucket = links.setdefault((kind, number), {})
                bucket[link] = bucket.get(link, 0) + value
        else:
            cell = by.setdefault((section, item), {})
            cell[(metric, "")] = cell.get((metric, ""), 0) + value

    info = {str(lesson.day): lesson for lesson in lessons}
    lesson_keys = sorted({item for section, item in by if section == "lesson"} | set(info), key=int)
    lesson_rows: list[MailRow] = []
    for key in lesson_keys:
        lesson = info.get(key)
        fallback = WELCOME_TITLE if key == WELCOME_DAY else f"day {key}"
        row = _mail_row(
            by.get(("lesson", key), {}),
            links.get(("lesson", key), {}),
            key,
            lesson.title if lesson else fallback,
            lesson.video_url if lesson else None,
            count_scanner_clicks,
        )
        # The welcome email (day 0) is no lesson: no drop to or from it.
        if lesson_rows and lesson_rows[-1].key != WELCOME_DAY:
            before = lesson_rows[-1].sent
            row.drop = before - row.sent
            row.drop_rate = rate(row.drop, before)
        lesson_rows.append(row)
    _mark_not_yet_due(lesson_rows)

    newsletter_rows = []
    for key in sorted({item for section, item in by if section == "newsletter"}, key=int):
        slug, subject = titles.get(key, (f"broadcast {key}", ""))
        newsletter_rows.append(
            _mail_row(
                by[("newsletter", key)],
                links.get(("newsletter", key), {}),
                slug,
                subject,
                None,
                count_scanner_clicks,
            )
        )

    def slices(section: str) -> list[SliceRow]:
        out = []
        for key in sorted(item for s, item in by if s == section):
            cell = by[(section, key)]
            clicked = cell.get((link_metric, ""), 0)
            row = SliceRow(key, cell.get(("sent", ""), 0), cell.get(("opened", ""), 0), clicked)
            row.open_rate, row.click_rate = rate(row.opened, row.sent), rate(clicked, row.sent)
            out.append(row)
        return out

    course = [row for row in lesson_rows if row.key != WELCOME_DAY]
    first = course[0].sent if course else 0
    last = course[-1].sent if course else 0
    signups, confirmed = funnel_counts.get("signups", 0), funnel_counts.get("confirmed", 0)
    funnel = Funnel(
        signups=signups,
        confirmed=confirmed,
        confirm_rate=rate(confirmed, signups),
        median_confirm_seconds=_median(confirm_bins),
        confirmed_by_link=min(confirmed, sum(confirm_bins.values())),
        confirmed_without_link=max(0, confirmed - sum(confirm_bins.values())),
        started=first,
        completed=last,
        start_rate=rate(first, confirmed),
        completion_rate=rate(last, first),
    )
    day_rows = _every_day(days)
    notes = [OPENS_NOTE]
    notes.append(
        SCANNER_NOTE
        + (": counted in clicks." if count_scanner_clicks else ": left out of clicks, shown apart.")
    )
    return Report(
        since=since.isoformat() if since else None,
        until=until.isoformat() if until else None,
        generated_at=now.isoformat(timespec="seconds"),
        scanner_clicks_counted=count_scanner_clicks,
        funnel=funnel,
        lessons=lesson_rows,
        newsletters=newsletter_rows,
        hours=slices("hour"),
        zones=slices("zone"),
        days=day_rows,
        notes=notes,
    )


def _mark_not_yet_due(rows: list[MailRow]) -> None:
    """Lessons after the last one anybody got, while readers of the one before are still on the
    course (it reached them and they did not leave, bounce or complain), are not yet due: they
    get no drop. When every reader left before them the drop is real and stays."""
    sent_at = [i for i, row in enumerate(rows) if row.sent and row.key != WELCOME_DAY]
    if not sent_at:
        return
    last = rows[sent_at[-1]]
    staying = last.sent - last.unsubscribed - last.bounced - last.complained
    if staying <= 0:
        return
    for row in rows[sent_at[-1] + 1 :]:
        row.not_yet_due = True
        row.drop = row.drop_rate = None


def confirm_note(funnel: Funnel) -> str:
    """How the confirmed readers confirmed, so a 100% confirmation rate next to "no median
    time" does not read as a contradiction: "Of the 3 confirmed: 0 by the emailed link, 3
    without a link (imported or added as active)." """
    if not funnel.confirmed:
        return "Nobody confirmed in this span."
    return (
        f"Of the {funnel.confirmed} confirmed: {funnel.confirmed_by_link} by the emailed link, "
        f"{funnel.confirmed_without_link} without a link (imported or added as active)."
    )


def _every_day(days: dict[date, DayRow]) -> list[DayRow]:
    """The over-time rows with the quiet days in between filled with zeros."""
    if not days:
        return []
    out, day, last = [], min(days), max(days)
    while day <= last:
        out.append(days.get(day, DayRow(day=day.isoformat())))
        day += timedelta(days=1)
    return out


def lessons_of(course: object) -> list[LessonInfo]:
    """LessonInfo for each lesson of a loaded `dripmail.content.Course`."""
    return [
        LessonInfo(
            day=lesson.day,
            title=f"{lesson.day}. {lesson.stretch}"
            if getattr(lesson, "stretch", "")
            else lesson.subject,
            video_url=getattr(lesson, "video_url", None),
        )
        for lesson in getattr(course, "lessons", [])
    ]

"""The report's queries: the counts of a span of time, and the store of finished days.

Every figure of the report is a sum of *facts*, each counted once, on the UTC day it was
recorded: a sign-up (its `created_at`), a confirmation (`confirmed_at`), a lesson or newsletter
copy handed over (`sent_at`), and the *first* provider event of a kind for a copy (delivered,
opened, clicked, bounced, complained, unsubscribed; first by event id, i.e. in the order they
arrived). Because a fact belongs to one day and never moves, the counts of a finished day are
computed once and kept in `report_days`; a report reads those rows plus the days not yet over.
Days missing from the store are counted a run of days at a time, one GROUP BY day pass per
table; erasing a reader drops the stored days their facts fell on (`forget_days_of`).

A fact is keyed ``(day, section, item, metric)``:

    funnel     ""                      signups, confirmed, unsubscribed
    confirm    seconds to confirm       count (rounded to 2 significant digits, for the median)
    lesson     lesson day               sent, delivered, opened, clicked, clicked_human,
                                        unsubscribed, bounced, complained
    newsletter broadcast id             (same metrics)
    link       lesson|3|URL, newsletter|7|URL    clicked, clicked_human
    hour       local hour "07" at the reader    sent, opened, clicked, clicked_human
    zone       the reader's time zone   (same as hour)

`clicked_human` leaves out clicks within `SCANNER_WINDOW` of delivery (link scanners in mail
gateways follow every link the moment a message arrives).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    Connection,
    Date,
    Engine,
    Select,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from dripmail.store.schema import (
    broadcast_deliveries,
    broadcasts,
    deliveries,
    events,
    report_days,
    subscribers,
)

FactKey = tuple[date, str, str, str]
Facts = Counter[FactKey]

# Link scanners (Microsoft Defender Safe Links, Mimecast, Proofpoint ...) fetch every link
# within seconds of delivery; a person reads later. 30 s sets those apart and keeps almost
# every human click (a reader who opens a message the second it lands is rare).
SCANNER_WINDOW = timedelta(seconds=30)
# A day is final this long after it ends: a write stamped 23:59:59 commits a moment later.
GRACE = timedelta(hours=1)
SENT_STATES = ("sent", "handed")
TRACKED = ("delivered", "opened", "clicked", "bounced", "complained", "unsubscribed")
CHUNK = 500
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
# Links whose path carries a reader's own token: counted by their kind, never per reader.
TOKEN_PATHS = ("/unsubscribe/", "/preferences/", "/confirm/")


@dataclass(frozen=True, slots=True)
class Copy:
    """One lesson or newsletter copy as the report sees it."""

    section: str  # "lesson" or "newsletter"
    item: str  # lesson day or broadcast id, as text
    sent_at: datetime | None
    zone: str


@lru_cache(maxsize=4096)
def link_of(url: str) -> str:
    """A clicked URL as the report groups it: no query or fragment, no per-reader token.

    ``https://x/unsubscribe/abc.def?u=1`` -> ``https://x/unsubscribe/``; tracking parameters
    would otherwise make every reader's click a link of its own.
    """
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return text[:500]
    path = parts.path
    for marker in TOKEN_PATHS:
        at = path.find(marker)
        if at >= 0:
            path = path[: at + len(marker)]
            break
    return urlunsplit((parts.scheme, parts.netloc.lower(), path, "", ""))[:500]


def confirm_bin(seconds: float) -> int:
    """Seconds rounded down to 2 significant digits (1% to 10% apart): the median's bins."""
    s = max(0, int(seconds))
    if s < 100:
        return s
    scale = 10 ** (len(str(s)) - 2)
    return s // scale * scale


def _day(at: datetime) -> date:
    return at.astimezone(UTC).date()


def _chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _zone(name: str, cache: dict[str, ZoneInfo | None]) -> ZoneInfo | None:
    if name not in cache:
        try:
            cache[name] = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            cache[name] = None
    return cache[name]


def _copies(conn: Connection, keys: list[str] | Select) -> dict[str, Copy]:
    """Lesson and newsletter copies by delivery key (lessons win a clash, as in webhooks).

    `keys`: a few keys, or a query of keys (one pass, however many).
    """
    out: dict[str, Copy] = {}
    parts = _chunks(keys) if isinstance(keys, list) else [keys]
    for part in parts:
        for key, bid, sent_at, zone in conn.execute(
            select(
                broadcast_deliveries.c.key,
                broadcast_deliveries.c.broadcast_id,
                broadcast_deliveries.c.sent_at,
                subscribers.c.timezone,
            )
            .join(subscribers, subscribers.c.id == broadcast_deliveries.c.subscriber_id)
            .where(broadcast_deliveries.c.key.in_(part))
        ):
            out[key] = Copy("newsletter", str(bid), sent_at, zone)
        for key, day, sent_at, zone in conn.execute(
            select(
                deliveries.c.key,
                deliveries.c.lesson_day,
                deliveries.c.sent_at,
                subscribers.c.timezone,
            )
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.key.in_(part))
        ):
            out[key] = Copy("lesson", str(day), sent_at, zone)
    return out


def _last_copies(conn: Connection, sids: list[int]) -> dict[int, list[tuple[datetime, str]]]:
    """Each subscriber's copies handed over, as (sent_at, key), for unsubscribe attribution."""
    out: dict[int, list[tuple[datetime, str]]] = {}
    for part in _chunks(sids):
        for table in (deliveries, broadcast_deliveries):
            for sid, sent_at, key in conn.execute(
                select(table.c.subscriber_id, table.c.sent_at, table.c.key).where(
                    table.c.subscriber_id.in_(part),
                    table.c.state.in_(SENT_STATES),
                    table.c.sent_at.is_not(None),
                )
            ):
                out.setdefault(int(sid), []).append((sent_at, key))
    return out


def _local_hour(copy: Copy, zones: dict[str, ZoneInfo | None]) -> str | None:
    zone = _zone(copy.zone, zones)
    if copy.sent_at is None or zone is None:
        return None
    return f"{copy.sent_at.astimezone(zone).hour:02d}"


class _Sql:
    """The few expressions that differ between SQLite and PostgreSQL (UTC stored naive).

    SQLite keeps a datetime as text, ``YYYY-MM-DD HH:MM:SS.ffffff`` (SQLAlchemy's format):
    its day and minute are cut out of the text, several times cheaper than parsing it.
    `scan` (a long span) reads whole tables in order rather than a time index row by row.
    """

    def __init__(self, conn: Connection, scan: bool = False) -> None:
        self.sqlite = conn.dialect.name == "sqlite"
        self.scan = scan

    def day(self, col: Any) -> Any:
        if self.sqlite:
            return func.substr(col, literal_column("1"), literal_column("10"))
        return cast(col, Date)

    def minute(self, col: Any) -> Any:
        """Minutes since midnight UTC (half-hour zones such as Asia/Kolkata need the minutes)."""
        if self.sqlite:
            return func.substr(col, literal_column("12"), literal_column("2")) * literal_column(
                "60"
            ) + func.substr(col, literal_column("15"), literal_column("2"))
        # Literals, not bound parameters: PostgreSQL must see the GROUP BY expression as the
        # very same text as the selected one.
        return func.extract("hour", col) * literal_column("60") + func.extract("minute", col)

    def seconds(self, later: Any, earlier: Any) -> Any:
        if self.sqlite:
            return func.round((func.julianday(later) - func.julianday(earlier)) * 86400)
        return func.round(func.extract("epoch", later - earlier))

    def within(self, col: Any, start: datetime, end: datetime) -> Any:
        """start <= col < end; by the column's index unless scanning (SQLite's planner would
        take the index even for a span that covers the whole table)."""
        if self.sqlite and self.scan:
            col = func.likely(col, type_=col.type)  # a function hides the index, same value
        return (col >= start) & (col < end)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _local(day: date, utc_minute: Any, zone: ZoneInfo | None) -> str | None:
    """The local hour ("07") of the UTC day + minute-of-day in `zone`."""
    if utc_minute is None or zone is None:
        return None
    minutes = int(utc_minute)
    at = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=UTC)
    return f"{at.astimezone(zone).hour:02d}"


# Kinds counted in SQL (first of its kind per copy); clicks and unsubscribes need more care.
SQL_KINDS = ("delivered", "opened", "bounced", "complained")
COPY_TABLES = (
    (deliveries, deliveries.c.lesson_day, "lesson"),
    (broadcast_deliveries, broadcast_deliveries.c.broadcast_id, "newsletter"),
)


def span_facts(conn: Connection, start: datetime, end: datetime, scan: bool = False) -> Facts:
    """Every fact recorded in [start, end), by day. Exact; reads by the time indexes, or
    (`scan`, for a span covering much of the history) the tables in order.

    Counting is done by the database (GROUP BY day, item, UTC hour, zone) except for clicks
    (scanner or not, which link) and unsubscribes (which copy came last), done row by row.
    """
    facts: Facts = Counter()
    zones: dict[str, ZoneInfo | None] = {}
    sql = _Sql(conn, scan)

    def add(day: date, section: str, item: str, metric: str, n: int, hour: Any, zone: str) -> None:
        facts[(day, section, item, metric)] += n
        local = _local(day, hour, _zone(zone, zones))
        if local is not None:
            facts[(day, "hour", local, metric)] += n
        facts[(day, "zone", zone, metric)] += n

    created = subscribers.c.created_at
    for day, n in conn.execute(
        select(sql.day(created), func.count())
        .where(sql.within(created, start, end))
        .group_by(sql.day(created))
    ):
        facts[(_as_date(day), "funnel", "", "signups")] += n
    confirmed = subscribers.c.confirmed_at
    took = sql.seconds(confirmed, subscribers.c.consent_at)
    for day, seconds, asked, n in conn.execute(
        select(
            sql.day(confirmed),
            took,
            subscribers.c.confirm_count > literal_column("0"),
            func.count(),
        )
        .where(sql.within(confirmed, start, end))
        .group_by(sql.day(confirmed), took, subscribers.c.confirm_count > literal_column("0"))
    ):
        d = _as_date(day)
        facts[(d, "funnel", "", "confirmed")] += n
        # Only readers who got a confirmation email have a time to confirm (imports do not);
        # a reader who came back confirmed before their newest consent: no time either.
        if asked and seconds is not None and seconds >= 0:
            facts[(d, "confirm", str(confirm_bin(float(seconds))), "count")] += n

    for table, item_col, section in COPY_TABLES:
        sent = table.c.sent_at
        by = (sql.day(sent), sql.minute(sent), subscribers.c.timezone, item_col)
        for day, hour, zone, item, n in conn.execute(
            select(*by, func.count())
            .join(subscribers, subscribers.c.id == table.c.subscriber_id)
            .where(sql.within(sent, start, end), table.c.state.in_(SENT_STATES))
            .group_by(*by)
        ):
            add(_as_date(day), section, str(item), "sent", n, hour, zone)

    # First event of each kind per copy: one pass over the span's events per copy table (a
    # key is a lesson's or a newsletter's; should both have it, the lesson's, as in webhooks).
    earlier = events.alias("earlier")
    not_first = (
        select(earlier.c.id)
        .where(
            earlier.c.delivery_key == events.c.delivery_key,
            earlier.c.type == events.c.type,
            earlier.c.id < events.c.id,
        )
        .exists()
    )
    got = events.c.received_at
    for table, item_col, section in COPY_TABLES:
        if conn.execute(select(table.c.id).limit(1)).first() is None:
            continue  # no newsletter sent yet: no pass over the events for none
        keys = (
            sql.day(got),
            events.c.type,
            item_col,
            sql.minute(table.c.sent_at),
            subscribers.c.timezone,
        )
        query = (
            select(*keys, func.count())
            .select_from(
                events.join(table, table.c.key == events.c.delivery_key).join(
                    subscribers, subscribers.c.id == table.c.subscriber_id
                )
            )
            .where(sql.within(got, start, end), events.c.type.in_(SQL_KINDS), ~not_first)
            .group_by(*keys)
        )
        if table is not deliveries:
            query = query.where(
                ~select(deliveries.c.id).where(deliveries.c.key == events.c.delivery_key).exists()
            )
        for day, kind, item, hour, zone, n in conn.execute(query):
            if kind == "opened":
                add(_as_date(day), section, str(item), kind, n, hour, zone)
            else:
                facts[(_as_date(day), section, str(item), kind)] += n

    batch = list(
        conn.execute(
            select(
                events.c.id,
                events.c.type,
                events.c.delivery_key,
                events.c.subscriber_id,
                events.c.detail,
                events.c.occurred_at,
                events.c.received_at,
            ).where(
                sql.within(events.c.received_at, start, end),
                events.c.type.in_(("clicked", "unsubscribed")),
            )
        )
    )
    if batch:
        clicked = select(events.c.delivery_key).where(
            sql.within(events.c.received_at, start, end), events.c.type == "clicked"
        )
        _event_facts(conn, batch, clicked, facts, zones)
    return facts


def _event_facts(
    conn: Connection,
    batch: list[Any],
    clicked: Select,
    facts: Facts,
    zones: dict[str, ZoneInfo | None],
) -> None:
    """Count the events of `batch` that are the first of their kind for their copy.

    `clicked`: the keys of the batch's clicks, as a query (its copies and their earlier
    deliveries and clicks are read in one pass each, not key by key).
    """
    # Unsubscribes without a delivery key (the link in the email, the preferences page) go to
    # the last copy the reader was sent before it: "unsubscribed after this lesson".
    loose = sorted(
        {int(e.subscriber_id) for e in batch if e.type == "unsubscribed" and e.subscriber_id}
    )
    history = _last_copies(conn, loose) if loose else {}
    attributed: dict[int, str | None] = {}
    for e in batch:
        key = e.delivery_key
        if e.type == "unsubscribed" and not key and e.subscriber_id:
            before = [c for c in history.get(int(e.subscriber_id), []) if c[0] <= e.occurred_at]
            key = max(before)[1] if before else None
        attributed[e.id] = key

    copies = _copies(conn, clicked)
    copies.update(_copies(conn, sorted({k for k in attributed.values() if k} - set(copies))))
    # Every delivery and click of the clicked copies, ever (few per copy): each kind's first.
    known: dict[str, list[Any]] = {}
    for row in conn.execute(
        select(
            events.c.id,
            events.c.type,
            events.c.delivery_key,
            events.c.detail,
            events.c.occurred_at,
        ).where(events.c.delivery_key.in_(clicked), events.c.type.in_(("clicked", "delivered")))
    ):
        known.setdefault(row[2], []).append(tuple(row))

    first: dict[tuple[str, str, str], int] = {}  # (key, kind, link) -> first event id
    for key, rows in known.items():
        rows.sort(key=lambda r: r[0])  # by id: the order they arrived
        copy = copies.get(key)
        delivered = next((r[4] for r in rows if r[1] == "delivered"), None)
        for eid, kind, _key, detail, at in rows:
            first.setdefault((key, kind, ""), eid)
            if kind == "clicked":
                link = link_of(detail or "")
                first.setdefault((key, "clicked:link", link), eid)
                if not _scanner(at, delivered, copy):
                    first.setdefault((key, "clicked_human", ""), eid)
                    first.setdefault((key, "clicked_human:link", link), eid)

    unsub_first = _first_unsubscribes(conn, batch)
    for eid, kind, _key, sid, detail, _at, received in batch:
        day = _day(received)
        # Once per reader (a provider and the link may both report it), after the copy.
        counts_once = kind == "unsubscribed" and sid and unsub_first.get(sid) == eid
        if counts_once:
            facts[(day, "funnel", "", "unsubscribed")] += 1
        key = attributed[eid]
        copy = copies.get(key) if key else None
        if key is None or copy is None:
            continue
        counted: list[str] = []
        if kind == "unsubscribed":
            if counts_once:
                counted.append(kind)
        elif first.get((key, kind, "")) == eid:
            counted.append(kind)
        if kind == "clicked":
            link = link_of(detail or "")
            if first.get((key, "clicked_human", "")) == eid:
                counted.append("clicked_human")
            where = f"{copy.section}|{copy.item}|{link}"
            if first.get((key, "clicked:link", link)) == eid:
                facts[(day, "link", where, "clicked")] += 1
            if first.get((key, "clicked_human:link", link)) == eid:
                facts[(day, "link", where, "clicked_human")] += 1
        for metric in counted:
            facts[(day, copy.section, copy.item, metric)] += 1
            if metric in ("opened", "clicked", "clicked_human"):
                hour = _local_hour(copy, zones)
                if hour is not None:
                    facts[(day, "hour", hour, metric)] += 1
                facts[(day, "zone", copy.zone, metric)] += 1


def _scanner(at: datetime, delivered: datetime | None, copy: Copy | None) -> bool:
    """A click within SCANNER_WINDOW of delivery (of the hand-over when no delivery event)."""
    base = delivered or (copy.sent_at if copy else None)
    return base is not None and timedelta(0) <= at - base < SCANNER_WINDOW


def _first_unsubscribes(conn: Connection, batch: list[Any]) -> dict[int, int]:
    """Each subscriber's unsubscribe event that counts (once per person).

    A provider's event names the copy it came from (its delivery key); unsubscribing stops the
    mail first, which records dripmail's own keyless event in the same request. So the first
    keyed event counts when there is one, else the first event.
    """
    sids = sorted(
        {int(e.subscriber_id) for e in batch if e.type == "unsubscribed" and e.subscriber_id}
    )
    out: dict[int, int] = {}
    keyed = case((events.c.delivery_key.is_not(None), events.c.id))
    for part in _chunks(sids):
        for sid, first_id, first_keyed in conn.execute(
            select(events.c.subscriber_id, func.min(events.c.id), func.min(keyed))
            .where(events.c.subscriber_id.in_(part), events.c.type == "unsubscribed")
            .group_by(events.c.subscriber_id)
        ):
            out[int(sid)] = int(first_keyed if first_keyed is not None else first_id)
    return out


# -- the store of finished days ------------------------------------------------------------


def first_day(conn: Connection) -> date | None:
    """The first day anything the report counts was recorded (each an indexed MIN)."""
    found = [
        conn.execute(select(func.min(col))).scalar()
        for col in (
            subscribers.c.created_at,
            deliveries.c.sent_at,
            broadcast_deliveries.c.sent_at,
            events.c.received_at,
        )
    ]
    days = [_day(f) for f in found if f is not None]
    return min(days) if days else None


def _start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def closed_before(now: datetime) -> date:
    """Days before this one are over (with GRACE for late commits): their counts are final."""
    return _day(now - GRACE)


def facts_between(engine: Engine, since: date | None, until: date | None, now: datetime) -> Facts:
    """The facts of the days since..until (inclusive, UTC; None: from the first / no end).

    Finished days come from `report_days` (computed and stored on first use); the days not
    over yet are computed from the tables each time.
    """
    cut = closed_before(now)
    with engine.connect() as conn:
        start = first_day(conn)
    if start is None:
        return Counter()
    lo = max(start, since) if since else start
    stored_hi = min(cut, until + timedelta(days=1)) if until else cut
    facts: Facts = Counter()
    if lo < stored_hi:
        facts.update(_stored(engine, lo, stored_hi, (stored_hi - start).days))
    tail_lo = max(lo, cut)
    tail_hi = until + timedelta(days=1) if until else None
    if tail_hi is None or tail_lo < tail_hi:
        with engine.connect() as conn:
            facts.update(
                span_facts(conn, _start(tail_lo), _start(tail_hi) if tail_hi else FAR_FUTURE)
            )
    return facts


def _runs(lo: date, hi: date, done: set[date]) -> list[tuple[date, date]]:
    """The days of [lo, hi) not in `done`, as half-open runs of consecutive days."""
    runs: list[tuple[date, date]] = []
    day = lo
    while day < hi:
        if day in done:
            day += timedelta(days=1)
            continue
        first = day
        while day < hi and day not in done:
            day += timedelta(days=1)
        runs.append((first, day))
    return runs


# A run of missing days longer than this share of the history is counted by reading the
# tables in order: by a time index, each row is one random read of its table.
SCAN_SHARE = 1 / 3


def _stored(engine: Engine, lo: date, hi: date, history_days: int) -> Facts:
    """The facts of the finished days [lo, hi): stored rows, and the days missing computed.

    Each run of missing days is counted by one `span_facts` over the whole run (its GROUP BY
    day splits the counts), not day by day: the first report over months of history reads each
    table once. `history_days`: the finished days since the first fact.
    """
    facts: Facts = Counter()
    with engine.connect() as conn:
        done = set(
            conn.execute(
                select(report_days.c.day).where(
                    report_days.c.day >= lo,
                    report_days.c.day < hi,
                    report_days.c.section == "_done",
                )
            ).scalars()
        )
        for d, section, item, metric, value in conn.execute(
            select(report_days).where(
                report_days.c.day >= lo, report_days.c.day < hi, report_days.c.section != "_done"
            )
        ):
            if d in done:  # a day being stored by another report right now is counted below
                facts[(d, section, item, metric)] += value
    runs = _runs(lo, hi, done)
    erased = _erasure_mark(engine) if runs else 0
    for first, end in runs:
        with engine.connect() as conn:
            scan = (end - first).days > history_days * SCAN_SHARE
            counted = span_facts(conn, _start(first), _start(end), scan=scan)
        _store_days(engine, first, end, counted, erased)
        facts.update(counted)
    return facts


# How many erasures (`forget_days_of`) there have been, in a row of its own: a report stores
# the days it counted only if no reader was erased while it counted (they could be in them).
ERASED_DAY = date(1, 1, 1)
ERASED = (report_days.c.day == ERASED_DAY) & (report_days.c.section == "_erased")


class _ErasedMeanwhile(Exception):
    """A reader was erased while the days were counted: store nothing (rolls back)."""


def _erasure_mark(engine: Engine) -> int:
    """The erasure count now, its row made if missing (erasures only ever add to it)."""
    with engine.begin() as conn:
        found = conn.execute(select(report_days.c.value).where(ERASED)).scalar()
    if found is not None:
        return int(found)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(report_days).values(
                    day=ERASED_DAY, section="_erased", item="", metric="", value=0
                )
            )
    except IntegrityError:  # another report made it at the same moment
        pass
    with engine.begin() as conn:
        return int(conn.execute(select(report_days.c.value).where(ERASED)).scalar() or 0)


def _store_days(engine: Engine, lo: date, hi: date, facts: Facts, erased: int) -> None:
    """Store the counts of the days [lo, hi), each with its "_done" row, in one transaction.

    A day another report stored meanwhile is left as it is (same counts): the rows of the
    days still missing are stored instead. Nothing is stored if a reader was erased since
    the erasure count was `erased`: the rows are written first, then the count is read
    (locked on PostgreSQL), so an erasure either came before and is seen, or waits and then
    drops these very rows.
    """
    days = [lo + timedelta(days=n) for n in range((hi - lo).days)]

    def rows(skip: set[date]) -> list[dict[str, Any]]:
        out = [
            {"day": d, "section": s, "item": i, "metric": m, "value": v}
            for (d, s, i, m), v in facts.items()
            if v and d not in skip
        ]
        out += [
            {"day": d, "section": "_done", "item": "", "metric": "", "value": 0}
            for d in days
            if d not in skip
        ]
        return out

    def store(skip_stored: bool) -> None:
        with engine.begin() as conn:
            skip: set[date] = set()
            if skip_stored:
                skip = set(
                    conn.execute(
                        select(report_days.c.day)
                        .where(report_days.c.day >= lo, report_days.c.day < hi)
                        .distinct()
                    ).scalars()
                )
            left = rows(skip)
            if left:
                conn.execute(insert(report_days), left)
            now = conn.execute(select(report_days.c.value).where(ERASED).with_for_update())
            if now.scalar() != erased:
                raise _ErasedMeanwhile

    try:
        try:
            store(skip_stored=False)
        except IntegrityError:
            store(skip_stored=True)
    except (IntegrityError, _ErasedMeanwhile):
        pass  # raced again, or counted an erased reader: the next report counts these days


def forget_days_of(conn: Connection, subscriber_id: int) -> int:
    """Drop the stored days a subscriber's facts fall on, before the subscriber is erased.

    Call it in the erasing transaction, before the rows go: the days of the sign-up, the
    confirmation, every copy handed over and every event of the reader or of their copies.
    The next report counts those days again without the reader. Returns rows dropped.
    """
    sql = _Sql(conn)
    mine = [
        select(table.c.key).where(table.c.subscriber_id == subscriber_id)
        for table in (deliveries, broadcast_deliveries)
    ]
    days = [
        select(sql.day(subscribers.c.created_at)).where(subscribers.c.id == subscriber_id),
        select(sql.day(subscribers.c.confirmed_at)).where(
            subscribers.c.id == subscriber_id, subscribers.c.confirmed_at.is_not(None)
        ),
        *(
            select(sql.day(table.c.sent_at)).where(
                table.c.subscriber_id == subscriber_id, table.c.sent_at.is_not(None)
            )
            for table in (deliveries, broadcast_deliveries)
        ),
        select(sql.day(events.c.received_at)).where(events.c.subscriber_id == subscriber_id),
        *(
            select(sql.day(events.c.received_at)).where(events.c.delivery_key.in_(keys))
            for keys in mine
        ),
    ]
    touched = {_as_date(d) for part in days for d in conn.execute(part).scalars()}
    if not touched:
        return 0
    # First the erasure count (on PostgreSQL this waits for a report storing days right now,
    # so the delete below sees its rows); a report counting now will not store its days.
    conn.execute(update(report_days).where(ERASED).values(value=report_days.c.value + 1))
    gone = 0
    for part in _chunks(sorted(touched)):
        gone += conn.execute(delete(report_days).where(report_days.c.day.in_(part))).rowcount or 0
    return gone


def forget_stored(engine: Engine) -> int:
    """Drop every stored day (`report --rebuild`); returns how many rows went."""
    with engine.begin() as conn:
        return conn.execute(delete(report_days)).rowcount or 0


def broadcast_titles(engine: Engine) -> dict[str, tuple[str, str]]:
    """Broadcast id (as text) -> (slug, subject), for the newsletter rows' labels."""
    with engine.connect() as conn:
        return {
            str(bid): (slug, subject)
            for bid, slug, subject in conn.execute(
                select(broadcasts.c.id, broadcasts.c.slug, broadcasts.c.subject)
            )
        }

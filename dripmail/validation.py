"""Input checks shared by every door (CLI, CSV import, web sign-up, preferences page).

Store-free on purpose: loading a course validates its time zone through this module, and must
not pull in the database layer. Every check returns the value as it is stored or raises
`InputError` with one line naming the field and what to do.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from datetime import date, time, timedelta
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, available_timezones

from email_validator import EmailNotValidError, validate_email

from dripmail.errors import InputError

if TYPE_CHECKING:
    from dripmail.states import SubscriberStatus

MAX_NAME = 100
MAX_EMAIL = 320
# Start dates are accepted from a year back to a year ahead of today: further back is a
# typo (0001-01-01) or a list that should not get a course at all; further ahead is a typo
# (9999-12-31) that would park a reader forever.
START_WINDOW = timedelta(days=366)


# Plain ASCII addresses of the common shape, which email-validator accepts unchanged but for
# case: checked by this pattern in microseconds instead of the library's IDNA pass (about a
# millisecond). Anything else (Unicode, quotes, "--" in the domain, special-use domains, long
# parts) goes through email-validator. tests/test_validation.py checks with hypothesis that
# whatever this accepts, email-validator accepts with the same normalised result.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN = re.compile(
    rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>(?:{_LABEL}\.)+[A-Za-z]{{2,63}})", re.ASCII
)
_SPECIAL_USE = ("arpa", "invalid", "local", "localhost", "onion", "test")


def _plain_address(text: str) -> str | None:
    """`text` lower-cased when it is a plain ASCII address of the common shape, else None."""
    found = _PLAIN.fullmatch(text)
    if found is None or len(text) > 254 or len(found["local"]) > 64:
        return None
    domain = found["domain"].lower()
    if "--" in domain or len(domain) > 253 or domain.rsplit(".", 1)[1] in _SPECIAL_USE:
        return None
    return text.lower()


def normalise_email(address: str) -> str:
    """The canonical, lower-cased form of an address; InputError naming it when invalid.

    email-validator does the syntax check and Unicode normalisation (no DNS lookup); plain
    ASCII addresses take a verified fast path (see `_PLAIN`).
    """
    text = address.strip()
    if len(text) > MAX_EMAIL:
        raise InputError(f"email: {text[:40]!r}... is longer than {MAX_EMAIL} characters")
    plain = _plain_address(text)
    if plain is not None:
        return plain
    try:
        valid = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InputError(f"{address!r} is not a valid email address: {exc}") from None
    return valid.normalized.lower()


def clean_name(value: str, field: str = "first_name", limit: int = MAX_NAME) -> str:
    """A name as stored: control and format characters become one space, runs of space one.

    CR, LF, TAB, NUL, U+2028/U+2029 and every other Unicode Cc/Cf/Zl/Zp character would
    break a ``To:`` header or a page, so they never reach the store. Longer than `limit`
    characters after cleaning is an InputError naming `field` (never silently cut).
    """
    if value.isprintable():
        # No Cc/Cf/Cs/Co/Cn/Zl/Zp character (nor any space but U+0020): nothing to replace,
        # which is nearly every name; the loop below is the general case.
        text = " ".join(value.split())
    else:
        out = []
        for ch in value:
            category = unicodedata.category(ch)
            out.append(" " if category[0] == "C" or category in ("Zl", "Zp") else ch)
        text = " ".join("".join(out).split())
    if len(text) > limit:
        raise InputError(f"{field}: longer than {limit} characters ({len(text)}); shorten it")
    return text


# -- time zones ---------------------------------------------------------------------------

# Abbreviation zones: "EST" is a fixed -05:00 (no DST) that people type meaning New York, so
# storing it would send an hour off half the year. Refused, with the zones usually meant.
_ABBREVIATIONS: dict[str, tuple[str, ...]] = {
    "EST": ("America/New_York", "America/Toronto", "America/Panama"),
    "EDT": ("America/New_York", "America/Toronto"),
    "EST5EDT": ("America/New_York", "America/Toronto"),
    "CST": ("America/Chicago", "America/Mexico_City", "Asia/Shanghai"),
    "CDT": ("America/Chicago",),
    "CST6CDT": ("America/Chicago", "America/Winnipeg"),
    "MST": ("America/Denver", "America/Phoenix", "America/Edmonton"),
    "MDT": ("America/Denver", "America/Edmonton"),
    "MST7MDT": ("America/Denver", "America/Edmonton"),
    "PST": ("America/Los_Angeles", "America/Vancouver"),
    "PDT": ("America/Los_Angeles", "America/Vancouver"),
    "PST8PDT": ("America/Los_Angeles", "America/Vancouver"),
    "HST": ("Pacific/Honolulu",),
    "CET": ("Europe/Berlin", "Europe/Paris", "Europe/Madrid"),
    "CEST": ("Europe/Berlin", "Europe/Paris", "Europe/Madrid"),
    "MET": ("Europe/Berlin", "Europe/Paris"),
    "EET": ("Europe/Athens", "Europe/Helsinki", "Africa/Cairo"),
    "WET": ("Europe/Lisbon", "Atlantic/Canary"),
    "BST": ("Europe/London",),
    "IST": ("Asia/Kolkata", "Europe/Dublin", "Asia/Jerusalem"),
    "JST": ("Asia/Tokyo",),
    "AEST": ("Australia/Sydney", "Australia/Melbourne", "Australia/Brisbane"),
}
_OFFSET = re.compile(r"^(?:GMT|UTC)\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)
_UTC_NAMES = {"Etc/UTC", "Etc/GMT", "Etc/UCT", "Etc/Universal", "Etc/Zulu", "Etc/Greenwich"}


@lru_cache(maxsize=1)
def _zone_tables() -> tuple[dict[str, str], dict[str, str]]:
    """(every known name -> canonical name, lower-cased name -> canonical name), built once.

    Canonical: a Zone of the tz database or a name in its zone.tab (which keeps one zone per
    country, e.g. Europe/Amsterdam, that the database itself links elsewhere). A legacy alias
    (US/Pacific, Asia/Calcutta, Japan) maps to its link target. Source: the `tzdata` package's
    ``tzdata.zi`` (``L target alias`` lines) and ``zone.tab``.
    """
    base = resources.files("tzdata.zoneinfo")
    compact = base.joinpath("tzdata.zi").read_text(encoding="utf-8")
    per_country = {
        line.split("\t")[2]
        for line in base.joinpath("zone.tab").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    }
    links: dict[str, str] = {}
    for line in compact.splitlines():
        if line.startswith("L "):
            _, target, alias = line.split()[:3]
            links[alias] = target
    canonical: dict[str, str] = {}
    for name in available_timezones() | {"UTC"}:
        target = name
        if name not in per_country:
            for _ in range(5):  # links point at zones; a chain is followed a few steps
                target = links.get(target, target)
        if target in _UTC_NAMES or name == "UTC":
            target = "UTC"
        canonical[name] = target
    lower = {name.lower(): target for name, target in canonical.items()}
    return canonical, lower


def canonical_zones() -> list[str]:
    """Every canonical zone name, sorted (for a zone picker: no legacy aliases twice)."""
    return sorted(set(_zone_tables()[0].values()) - set(_ABBREVIATIONS))


@lru_cache(maxsize=4096)
def validate_timezone(name: str) -> str:
    """The canonical IANA name for `name`; InputError with a suggestion otherwise.

    A legacy alias is stored as its canonical name (``US/Pacific`` -> ``America/Los_Angeles``).
    Abbreviations (``EST``) are refused with the zones usually meant; a name in the wrong case
    (``america/new_york``) or an offset (``GMT+2``) is refused with the right spelling. Cached:
    a repeated zone costs a dict lookup.
    """
    text = name.strip()
    canonical, lower = _zone_tables()
    upper = text.upper()
    if upper in _ABBREVIATIONS:
        likely = ", ".join(_ABBREVIATIONS[upper])
        raise InputError(
            f"timezone: {text!r} is an abbreviation, not a place (its offset does not follow "
            f"daylight saving time): use a zone such as {likely}"
        )
    if text in canonical:
        found = canonical[text]
        ZoneInfo(found)  # the zone's data is there (tzdata installed)
        return found
    offset = _OFFSET.match(text)
    if offset:
        sign, hours, minutes = offset.groups()
        if minutes in (None, "00") and 0 < int(hours) <= 14:
            flipped = "-" if sign == "+" else "+"
            raise InputError(
                f"timezone: {text!r} is an offset, not a zone: use the place (e.g. "
                f"Europe/Berlin), or Etc/GMT{flipped}{int(hours)} (POSIX style: the sign is "
                f"inverted, Etc/GMT{flipped}{int(hours)} is UTC{sign}{int(hours)}) for a fixed "
                "offset without daylight saving"
            )
        raise InputError(f"timezone: {text!r} is an offset, not a zone: use the place")
    hint = ""
    if text.lower() in lower:
        hint = f"did you mean {lower[text.lower()]}?"
    else:
        close = difflib.get_close_matches(text, list(canonical), n=3, cutoff=0.8)
        if close:
            hint = "did you mean " + " or ".join(close) + "?"
    raise InputError(
        f"timezone: {text[:64]!r} is not an IANA time zone"
        + (f": {hint}" if hint else " (e.g. America/New_York, Europe/Berlin, Asia/Kolkata)")
    )


def zone_note(given: str, stored: str) -> str | None:
    """A note when a zone was stored under another name (a legacy alias), else None."""
    if given.strip() in ("", stored):
        return None
    return f"timezone {given.strip()!r} is an old alias: stored as {stored}"


def is_timezone(name: str) -> bool:
    """True when `validate_timezone` accepts `name`."""
    try:
        validate_timezone(name)
    except InputError:
        return False
    return True


# -- dates ----------------------------------------------------------------------------------


def parse_start_date(
    value: str | date | None, today: date, field: str = "start_date"
) -> date | None:
    """A lesson-1 date within `START_WINDOW` of `today`; None for empty.

    InputError naming `field` for a malformed date or one outside the window.
    """
    if value is None or value == "":
        return None
    if isinstance(value, date):
        parsed = value
    else:
        try:
            parsed = date.fromisoformat(value.strip())
        except ValueError:
            raise InputError(f"{field}: {value[:40]!r} is not a date (YYYY-MM-DD)") from None
    earliest, latest = today - START_WINDOW, today + START_WINDOW
    if not earliest <= parsed <= latest:
        raise InputError(
            f"{field}: {parsed.isoformat()} is outside {earliest.isoformat()} .. "
            f"{latest.isoformat()} (a year back to a year ahead)"
        )
    return parsed


def start_date_warning(start: date | None, today: date, lessons: int) -> str | None:
    """A warning when a start date lies so far back that the course would already be over.

    Catch-up sends at most one lesson per local day, so such a reader gets the whole course
    late, one a day from the next run.
    """
    if start is None or start >= today - timedelta(days=max(lessons - 1, 0)):
        return None
    return (
        f"start_date {start.isoformat()} is more than {lessons} days ago: the lessons go out "
        "late, one a day from the next run"
    )


# -- tags -----------------------------------------------------------------------------------

_TAG = re.compile(r"^[a-z0-9_-]{1,64}$")


def normalise_tags(value: str) -> str:
    """Tags as stored: lower-case, comma-separated, once each ("Desk, runners" -> "desk,runners").

    A tag is letters, digits, ``-`` and ``_`` (so it can name a segment, ``tag:desk``);
    anything else is an InputError naming the tag.
    """
    out: list[str] = []
    for part in re.split(r"[,\s]+", value.strip().lower()):
        if not part:
            continue
        if not _TAG.match(part):
            raise InputError(f"tags: {part[:70]!r} is not a tag (letters, digits, - and _)")
        if part not in out:
            out.append(part)
    return ",".join(out)


# -- personal data in free text -------------------------------------------------------------

_ADDRESS = re.compile(r"[^\s<>\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+\.[^\s<>\"'(),;:\[\]]+")


def scrub_addresses(text: str) -> str:
    """`text` with every email address replaced by ``<address>`` (provider reasons quote them)."""
    return _ADDRESS.sub("<address>", text)


# -- one line of text an operator types (`--by`, `--note`) -------------------------------

# What one line of recorded text may not hold: every character `str.splitlines` breaks at,
# the other C0 controls (tab aside), DEL and the C1 controls (a BEL rings, an ESC drives a
# terminal when `subscribers show` prints it), and the text-direction embeddings, overrides and
# isolates (U+202A-202E, U+2066-2069), which make a note read in another order than stored.
_NOT_ON_ONE_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def parse_send_time(value: str, label: str, hint: str = "") -> str:
    """A reader's local send time ("7:00", "07:00:00") as stored, "HH:MM"; InputError naming
    `label` (the field or option) and ending with `hint` otherwise."""
    given = value.strip()
    try:
        return time.fromisoformat(given).strftime("%H:%M")
    except ValueError:
        raise InputError(f"{label}: {given[:30]!r} is not a local time like 07:00{hint}") from None


def parse_status(value: str, label: str, hint: str = "") -> SubscriberStatus:
    """A subscriber status given by name (any case); InputError naming `label` and listing
    the statuses, ending with `hint`, otherwise."""
    from dripmail.states import SubscriberStatus

    given = value.strip()
    try:
        return SubscriberStatus(given.lower())
    except ValueError:
        names = ", ".join(s.value for s in SubscriberStatus)
        raise InputError(
            f"{label} {given[:30]!r} is not a status dripmail knows: use one of {names}{hint}"
        ) from None


def one_line(value: str, option: str) -> str:
    """`value` (`--by`, `--note`) as given, or InputError naming `option` and the first
    control or line-break character in it (U+XXXX): it is recorded and printed on one line."""
    found = _NOT_ON_ONE_LINE.search(value)
    if found is not None:
        raise InputError(
            f"{option} contains a control or line-break character (U+{ord(found.group()):04X}): "
            "give it on one line of plain text"
        )
    return value

"""The checks every door shares: names, addresses, time zones, start dates, scrubbing."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from dripmail.errors import InputError
from dripmail.validation import (
    _plain_address,
    clean_name,
    normalise_email,
    parse_start_date,
    scrub_addresses,
    start_date_warning,
    validate_timezone,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("Dan\nBcc: eve@example.com", "Dan Bcc: eve@example.com"),
        ("Dan\r\n", "Dan"),
        ("A\tB\x00C", "A B C"),
        ("Line\u2028Para\u2029End", "Line Para End"),
        ("zero\u200bwidth\u0085next", "zero width next"),  # Cf and a C1 control
        ("  Ann   Marie  ", "Ann Marie"),
        ("Zoë 😀", "Zoë 😀"),
    ],
)
def test_names_lose_control_characters(raw: str, stored: str) -> None:
    assert clean_name(raw) == stored


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_the_printable_fast_path_cleans_names_as_the_character_loop_does(raw: str) -> None:
    import unicodedata

    spaced = "".join(
        " "
        if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")
        else ch
        for ch in raw
    )
    assert clean_name(raw) == " ".join(spaced.split())


def test_too_long_name_names_the_field() -> None:
    with pytest.raises(InputError, match="first_name: longer than 100"):
        clean_name("x" * 101)
    with pytest.raises(InputError, match="--name: longer"):
        clean_name("y" * 300, "--name")


@pytest.mark.parametrize(
    ("given_", "stored"),
    [
        ("US/Pacific", "America/Los_Angeles"),
        ("Asia/Calcutta", "Asia/Kolkata"),
        ("Europe/Kiev", "Europe/Kyiv"),
        ("Japan", "Asia/Tokyo"),
        ("Europe/Amsterdam", "Europe/Amsterdam"),  # its own country's zone: kept
        ("Etc/UTC", "UTC"),
        ("UTC", "UTC"),
        ("Etc/GMT-2", "Etc/GMT-2"),
        (" Asia/Tokyo ", "Asia/Tokyo"),
    ],
)
def test_zones_are_stored_canonical(given_: str, stored: str) -> None:
    assert validate_timezone(given_) == stored


@pytest.mark.parametrize(
    ("given_", "says"),
    [
        ("EST", "America/New_York"),
        ("PST8PDT", "America/Los_Angeles"),
        ("america/new_york", "did you mean America/New_York"),
        ("Europe/Berln", "did you mean Europe/Berlin"),
        ("GMT+2", "Etc/GMT-2"),
        ("UTC-05:00", "Etc/GMT+5"),
        ("Mars/Olympus", "not an IANA time zone"),
    ],
)
def test_unknown_or_ambiguous_zones_are_refused_with_a_suggestion(given_: str, says: str) -> None:
    with pytest.raises(InputError, match="timezone: ") as err:
        validate_timezone(given_)
    assert says in str(err.value)


def test_zone_validation_is_cached() -> None:
    validate_timezone("Europe/Berlin")
    before = validate_timezone.cache_info().hits
    for _ in range(1000):
        validate_timezone("Europe/Berlin")
    assert validate_timezone.cache_info().hits == before + 1000


@pytest.mark.parametrize("value", ["9999-12-31", "0001-01-01", "2025-05-30", "2027-06-03"])
def test_start_dates_outside_a_year_each_way_are_refused(value: str) -> None:
    with pytest.raises(InputError, match=f"start_date: {value} is outside"):
        parse_start_date(value, date(2026, 6, 1))


def test_start_dates_inside_the_window_and_the_catch_up_warning() -> None:
    today = date(2026, 6, 1)
    assert parse_start_date("2027-06-01", today) == date(2027, 6, 1)
    assert parse_start_date("", today) is None
    with pytest.raises(InputError, match="not a date"):
        parse_start_date("June 3rd", today)
    assert start_date_warning(date(2026, 5, 26), today, 7) is None
    assert "late, one a day" in (start_date_warning(date(2026, 1, 1), today, 7) or "")


def test_scrub_addresses_in_provider_text() -> None:
    text = "550 5.1.1 <quinn@example.com>... User unknown; cc Quinn.B+x@Mail.Example.org"
    assert scrub_addresses(text) == "550 5.1.1 <<address>>... User unknown; cc <address>"


_LOCAL = st.text(alphabet="abcXYZ019.-_+!#'`{|}~=", min_size=1, max_size=70)
_DOMAIN = st.lists(
    st.text(alphabet="abcxyzAB019-", min_size=1, max_size=66), min_size=1, max_size=4
).map(".".join)
_TLD = st.sampled_from(["com", "org", "de", "Test", "local", "x", "c0m", "photography", "io"])


@settings(max_examples=400, deadline=None)
@given(_LOCAL, _DOMAIN, _TLD)
def test_the_fast_path_agrees_with_email_validator(local: str, domain: str, tld: str) -> None:
    address = f"{local}@{domain}.{tld}"
    fast = _plain_address(address)
    if fast is None:
        return  # the library decides
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise AssertionError(f"fast path accepted {address!r}: {exc}") from None
    assert valid.normalized.lower() == fast


def test_addresses_normalise_the_same_on_both_paths() -> None:
    assert normalise_email(" Ana@Example.ORG ") == "ana@example.org"
    assert normalise_email("zoë@bücher.example") == "zoë@bücher.example"
    with pytest.raises(InputError):
        normalise_email("ana@@example.org")
    with pytest.raises(InputError):
        normalise_email("ana@localhost")


def test_loading_a_course_does_not_import_the_store(tmp_path: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests'); "
        "from course_fixture import make_project; from dripmail.config import Project; "
        "from dripmail.content import load_course; from pathlib import Path; "
        f"load_course(Project(make_project(Path({str(tmp_path)!r})))); "
        "bad = sorted(m for m in sys.modules if m.startswith(('dripmail.store', 'sqlalchemy'))); "
        "print(bad); assert not bad"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_zone_a_picker_offers_is_accepted_as_itself() -> None:
    from dripmail.validation import canonical_zones

    zones = canonical_zones()
    assert "Europe/Berlin" in zones and "US/Pacific" not in zones and "EST5EDT" not in zones
    assert [z for z in zones if validate_timezone(z) != z] == []

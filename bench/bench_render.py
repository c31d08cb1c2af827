"""Rendering: personalising compiled emails, and signing each reader's links.

- Personalisation, at steady state (every lesson compiled before the clock starts; compiling
  is its own figure): dripmail fills the compiled HTML and text with each reader's values.
  Peer: the mail-merge way a first version takes, running the Jinja template and the MJML
  compiler for every reader. Limit: the compiled HTML and text split once at the
  placeholders by this benchmark, then per reader one ``"".join`` of the parts with the
  HTML-escaped values, building the same `Message`.
- Signing a lesson reader's links (unsubscribe and preferences, stamped with the send time).
  Peer: a new itsdangerous ``URLSafeTimedSerializer(...).dumps`` per link, as its docs show
  (and as dripmail did). Limit: ``hmac.digest`` over the same bytes with keys derived once,
  giving byte-identical tokens (checked).
"""

from __future__ import annotations

import base64
import hmac
import statistics
import sys
import tempfile
import time as clock
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from figure import compare, rates, value  # noqa: E402

PUBLIC = "https://signup.example.com"
SENT = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
PLACEHOLDER = "[[ recipient.{} ]]"


def _project(tmp: Path):
    from dripmail.config import Project

    repo = HERE.parent
    if (repo / "course" / "course.toml").is_file():
        return Project(repo)  # the real course and templates
    from tests.course_fixture import make_project

    return Project(make_project(tmp))


def _split(source: str) -> tuple[list[str], list[str]]:
    """The limit's own split: literal parts and the field between each pair."""
    import re

    pieces = re.split(r"\[\[ recipient\.(\w+) \]\]", source)
    return pieces[0::2], pieces[1::2]


def _limit_personalise(compiled):
    """The cheapest personalisation in Python of one compiled email (see the docstring)."""
    from markupsafe import escape

    from dripmail.message import Mailbox, Message
    from dripmail.render import RECIPIENT_FIELDS, Recipient

    # The compiled output itself: the placeholders' own text passes through unchanged.
    probe = compiled.personalise(
        Recipient(**{f: PLACEHOLDER.format(f) for f in RECIPIENT_FIELDS}),
        key="probe",
        kind="lesson",
        ref="-",
    )
    html_parts, html_fields = _split(probe.html)
    text_parts, text_fields = _split(probe.text)

    def fill(parts: list[str], fields: list[str], values: dict) -> str:
        out = [parts[0]]
        for field, part in zip(fields, parts[1:], strict=True):
            out.append(values[field])
            out.append(part)
        return "".join(out)

    def personalise(who, key: str, ref: str):
        name = who.first_name.strip()
        plain = {
            "first_name": name or "there",
            "email": who.email,
            "unsubscribe_url": who.unsubscribe_url,
            "preferences_url": who.preferences_url,
            "confirm_url": who.confirm_url,
        }
        escaped = {f: escape(plain[f]) for f in html_fields}
        return Message(
            key=key,
            kind="lesson",
            ref=ref,
            sender=compiled.sender,
            to=Mailbox(who.email, name),
            subject=compiled.subject,
            html=fill(html_parts, html_fields, escaped),
            text=fill(text_parts, text_fields, plain).rstrip() + "\n",
            preheader=compiled.preheader,
            reply_to=compiled.reply_to,
            headers={
                "List-Unsubscribe": f"<{who.unsubscribe_url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            tags=compiled.tags,
        )

    return personalise


def _personalisation(quick: bool, project, course) -> list[dict]:
    from dripmail.render import Recipient, Renderer
    from dripmail.tokens import Signer, links

    readers = 5_000 if quick else 50_000
    naive_readers = 20 if quick else 150
    rounds = 3 if quick else 5
    signer = Signer("bench-only-secret-key-0123456789")
    people = []
    for i in range(readers):
        urls = links(PUBLIC, signer, i, ("unsubscribe", "preferences"), SENT)
        people.append(
            Recipient(
                email=f"reader{i}@example.org",
                first_name=f"Reader {i}" if i % 5 else "",
                subscriber_id=i,
                unsubscribe_url=urls["unsubscribe"],
                preferences_url=urls["preferences"],
            )
        )
    renderer = Renderer(project, course)
    days = [x.day for x in course.lessons]
    compiled = {day: renderer.lesson(day) for day in days}  # compiled before any clock runs
    limits = {day: _limit_personalise(c) for day, c in compiled.items()}
    for i, who in enumerate(people[:50]):  # the limit builds the very same messages
        day = days[i % len(days)]
        ours = compiled[day].personalise(who, key=str(i), kind="lesson", ref=str(day))
        assert limits[day](who, str(i), str(day)) == ours, "limit differs from dripmail"

    def ours() -> int:
        for i, who in enumerate(people):
            day = days[i % len(days)]
            compiled[day].personalise(who, key=str(i), kind="lesson", ref=str(day))
        return readers

    def limit() -> int:
        for i, who in enumerate(people):
            day = days[i % len(days)]
            limits[day](who, str(i), str(day))
        return readers

    naive = Renderer(project, course)

    def peer() -> int:
        for i, who in enumerate(people[:naive_readers]):
            naive.mjml_per_recipient(days[i % len(days)], who)
        return naive_readers

    ours(), limit(), peer()  # warm: steady state, not first-call costs
    got = rates({"ours": ours, "peer": peer, "limit": limit}, rounds)
    cold = []
    for _ in range(5 if quick else 20):
        t = clock.perf_counter()
        Renderer(project, course).lesson(1)
        cold.append(clock.perf_counter() - t)
    return [
        compare(
            f"personalise compiled lessons, {readers:,} readers across {len(days)} lessons",
            "emails/s",
            got["ours"],
            peer=got["peer"],
            peer_is="Jinja + MJML compile for every reader (the mail-merge loop a first version"
            " writes: render the template with the reader in it, then compile it)",
            limit=got["limit"],
            limit_is="the compiled HTML/text split once at the placeholders, then per reader"
            " one join of the parts with the HTML-escaped values into the same Message",
        ),
        value(
            "compile one lesson (Jinja + MJML, once per run, outside the timer above)",
            "ms",
            statistics.median(cold) * 1000,
        ),
    ]


def _signing(quick: bool, project, course) -> list[dict]:
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer

    from dripmail.render import Renderer
    from dripmail.tokens import Signer, links

    readers = 20_000 if quick else 100_000
    rounds = 3 if quick else 5
    keys = ["bench-old-key", "bench-only-secret-key-0123456789"]
    signer = Signer(keys[-1], keys[:-1])
    purposes = Renderer(project, course).lesson(1).links
    seconds = int(SENT.timestamp())

    class Stamped(TimestampSigner):
        def get_timestamp(self) -> int:
            return seconds

    def peer_links(sid: int) -> list[str]:
        return [
            f"{PUBLIC}/{p}/"
            + URLSafeTimedSerializer(keys, salt=f"dripmail.{p}", signer=Stamped).dumps(sid)
            for p in purposes
        ]

    derived = [
        (p, URLSafeTimedSerializer(keys, salt=f"dripmail.{p}").make_signer().derive_key())
        for p in purposes
    ]
    stamp = base64.urlsafe_b64encode(seconds.to_bytes(8, "big").lstrip(b"\0")).rstrip(b"=")

    def limit_links(sid: int) -> list[str]:
        signed = base64.urlsafe_b64encode(str(sid).encode()).rstrip(b"=") + b"." + stamp
        return [
            f"{PUBLIC}/{p}/"
            + (
                signed
                + b"."
                + base64.urlsafe_b64encode(hmac.digest(key, signed, "sha1")).rstrip(b"=")
            ).decode()
            for p, key in derived
        ]

    def ours_links(sid: int) -> list[str]:
        return list(links(PUBLIC, signer, sid, purposes, SENT).values())

    for sid in (0, 1, 99, 12345, 999_999):
        assert ours_links(sid) == peer_links(sid) == limit_links(sid), "tokens differ"

    def loop(make, count: int):
        def one_round() -> int:
            for sid in range(count):
                make(sid)
            return count

        return one_round

    peer_readers = readers // 10
    ways = {
        "ours": loop(ours_links, readers),
        "peer": loop(peer_links, peer_readers),
        "limit": loop(limit_links, readers),
    }
    for way in ways.values():
        way()
    got = rates(ways, rounds)
    return [
        compare(
            f"sign a lesson reader's links ({' + '.join(purposes)}), {readers:,} readers",
            "readers/s",
            got["ours"],
            peer=got["peer"],
            peer_is="a new itsdangerous URLSafeTimedSerializer(...).dumps per link, as its docs"
            " show (and as dripmail did): it derives the key again for every link",
            limit=got["limit"],
            limit_is="hmac.digest (SHA-1) over the same bytes with the keys derived once:"
            " byte-identical tokens",
        ),
        value(
            "links signed per lesson reader (only those the email shows, and unsubscribe for"
            " its List-Unsubscribe header; 3 before)",
            "links",
            len(purposes),
        ),
    ]


def run(quick: bool) -> list[dict]:
    """Figures described in the module docstring."""
    from dripmail.content import load_course

    with tempfile.TemporaryDirectory() as tmp:
        project = _project(Path(tmp))
        course = load_course(project)
        return _personalisation(quick, project, course) + _signing(quick, project, course)


if __name__ == "__main__":
    for figure in run("--quick" in sys.argv):
        print(figure)

from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dripmail.markdown import to_text
from dripmail.message import AddressError, Mailbox, Message


def _msg(key: str = "psoas-week-s1-d1") -> Message:
    return Message(
        key=key,
        kind="lesson",
        ref="1",
        sender=Mailbox("hello@studio.example.com", "Studio, Yoga"),
        to=Mailbox("ana@example.org", "Ana"),
        subject="Day 1: hip flexion",
        html="<p>Hello Ana</p>",
        text="Hello Ana",
        reply_to=Mailbox("teacher@studio.example.com"),
        headers={
            "List-Unsubscribe": "<https://studio.example.com/unsubscribe/abc>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


def test_mime_round_trip_has_both_parts_and_headers() -> None:
    parsed = message_from_bytes(_msg().to_bytes(), policy=default)
    assert parsed.get_content_type() == "multipart/alternative"
    types = [part.get_content_type() for part in parsed.iter_parts()]
    assert types == ["text/plain", "text/html"]
    assert parsed.get_body(("plain",)).get_content().strip() == "Hello Ana"
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Reply-To"] == "teacher@studio.example.com"
    assert parsed["From"].addresses[0].display_name == "Studio, Yoga"


def test_same_inputs_give_identical_bytes_and_keys_differ() -> None:
    when = datetime(2026, 3, 2, 7, tzinfo=UTC)
    assert _msg().to_bytes(when) == _msg().to_bytes(when)
    assert _msg("a").message_id() != _msg("b").message_id()
    assert _msg().unsubscribe_url == "https://studio.example.com/unsubscribe/abc"


LONG = "https://subscriptions.hollow-tree-yoga-studio.example.org/d/unsubscribe/" + "Ab9_-" * 30


def _lines(data: bytes) -> list[bytes]:
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    return data.split(b"\r\n")


@pytest.mark.parametrize("length", [20, 77, 200, 900])
def test_list_unsubscribe_is_never_encoded_whatever_its_length(length: int) -> None:
    url = "https://s.example.org/u/" + "x" * length
    message = replace(_msg(), headers={**_msg().headers, "List-Unsubscribe": f"<{url}>"})
    data = message.to_bytes(datetime(2026, 3, 2, 7, tzinfo=UTC))
    assert f"List-Unsubscribe: <{url}>".encode() in _lines(data)
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in _lines(data)
    parsed = message_from_bytes(data, policy=default)
    assert parsed["List-Unsubscribe"] == f"<{url}>"
    assert all(len(line) <= 998 for line in _lines(data))


def test_two_unsubscribe_addresses_fold_between_items_only() -> None:
    value = f"<{LONG}>, <mailto:leave@studio.example.com?subject=unsubscribe>"
    message = replace(_msg(), headers={"List-Unsubscribe": value})
    lines = _lines(message.to_bytes())
    at = lines.index(f"List-Unsubscribe: <{LONG}>,".encode())
    assert lines[at + 1] == b" <mailto:leave@studio.example.com?subject=unsubscribe>"


def test_quoted_printable_lines_are_at_most_76() -> None:
    text = "Stretch " + "é" * 120 + " " + "y" * 300 + "\n" + LONG + "\n"
    message = replace(_msg(), text=text, html="<p>" + "ü" * 500 + "</p>")
    data = message.to_bytes()
    body = data.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in _lines(body)) <= 76
    parsed = message_from_bytes(data, policy=default)
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == text


def test_date_is_the_hand_over_time_and_message_id_needs_the_installation() -> None:
    when = datetime(2026, 11, 30, 8, 15, 42, tzinfo=UTC)
    parsed = message_from_bytes(_msg().to_bytes(when, "a1b2c3d4e5f60718"), policy=default)
    assert parsed["Date"].datetime == when
    ids = {_msg().message_id(install) for install in ("", "a1b2c3d4e5f60718", "0f9e8d7c6b5a4938")}
    assert len(ids) == 3  # two databases never share a Message-ID
    assert parsed["Message-ID"] == _msg().message_id("a1b2c3d4e5f60718")  # stable per key
    assert parsed["Message-ID"].endswith("@studio.example.com>")


def test_an_international_domain_is_written_in_idna_form() -> None:
    message = replace(_msg(), to=Mailbox("kim@bücher.example", "Kim Ünal"))
    data = message.to_bytes()
    assert b"=?" not in data.split(b"To: ", 1)[1].split(b"\r\n", 1)[0].split(b"<")[1]
    parsed = message_from_bytes(data, policy=default)
    assert parsed["To"].addresses[0].addr_spec == "kim@xn--bcher-kva.example"
    assert parsed["To"].addresses[0].display_name == "Kim Ünal"


def test_a_non_ascii_local_part_needs_smtputf8() -> None:
    message = replace(_msg(), to=Mailbox("kïm@example.org"))
    with pytest.raises(AddressError, match="not ASCII"):
        message.to_bytes()
    data = message.to_bytes(utf8=True)  # RFC 6532 headers for an SMTPUTF8 hand-over
    assert "To: kïm@example.org".encode() in _lines(data)


def test_the_text_part_never_splits_a_url() -> None:
    url = "https://studio.example.com/videos/day-1-meet-your-psoas?utm_source=newsletter&utm_medium=email"
    text = to_text(f"Before class, watch [the video]({url}) and breathe slowly for a minute.")
    assert f"({url})" in text.splitlines()


_PARTS = "abcZë .,;:@<>()[]\\\"'\t-_+!#"


@given(
    name=st.text(alphabet=_PARTS, max_size=12),
    local=st.text(alphabet=_PARTS.replace("@", ""), min_size=1, max_size=12),
)
def test_formatted_writes_what_email_headerregistry_writes(name: str, local: str) -> None:
    """The shortcut for plain names (and the cache) give `Address`'s exact string."""
    from email.headerregistry import Address

    box = Mailbox(f"{local}@example.org", name)
    try:
        want = str(Address(display_name=name, username=local, domain="example.org"))
        want = want if name else box.ascii_address(True)
    except ValueError:
        return
    assert box.formatted(utf8=True) == want
    assert box.formatted(utf8=True) == want  # cached: the same again


def test_formatted_is_computed_once_for_a_sender() -> None:
    from dripmail.message import _formatted

    sender = Mailbox("hello@studio.example.com", "Studio, Yoga")
    before = _formatted.cache_info()
    for _ in range(3):
        assert sender.formatted() == '"Studio, Yoga" <hello@studio.example.com>'
    after = _formatted.cache_info()
    assert after.misses - before.misses <= 1 and after.hits - before.hits >= 2


def _parsed(data: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """What a receiver reads: every header (decoded) and each part's type, charset and text."""
    mime = message_from_bytes(data, policy=default)
    assert not any(part.defects for part in mime.walk())
    heads = [(name, str(value)) for name, value in mime.items()]
    parts = [
        (part.get_content_type(), part.get_content_charset(), part.get_content())
        for part in mime.iter_parts()
    ]
    return heads, parts


_HEADER_TEXT = "abcZ 19:,.;'\"()<>@-_=?\tëÜ€—😀"
_BODY_TEXT = "ab Zx.=\t-_ëÜ€😀\x00\x7f" + "\n" * 3 + "\r\n\r"


@given(
    subject=st.text(alphabet=_HEADER_TEXT, min_size=1, max_size=120).map(str.strip),
    name=st.text(alphabet="abcZ ,.'-ëÜ李", max_size=90),
    text=st.text(alphabet=_BODY_TEXT, max_size=400),
    html=st.text(alphabet=_BODY_TEXT + "<>/p", max_size=400),
    utf8=st.booleans(),
    key=st.text(alphabet="abc-019", min_size=1, max_size=20),
)
def test_to_bytes_reads_as_the_stdlib_built_message(
    subject: str, name: str, text: str, html: str, utf8: bool, key: str
) -> None:
    """`to_bytes` writes the message itself for speed; a receiver must read exactly what the
    stdlib's `EmailMessage` (`to_mime`) says, for any subject, name and body."""
    message = replace(
        _msg(key),
        subject=subject or "s",
        to=Mailbox("zoë@bücher.example" if utf8 else "kim@bücher.example", name),
        text=text,
        html=html,
        headers={**_msg().headers, "X-Campaign": subject or "s"},
    )
    when = datetime(2026, 3, 2, 7, tzinfo=UTC)
    data = message.to_bytes(when, "a1b2c3d4e5f60718", utf8=utf8)
    assert _parsed(data) == _parsed(message.to_mime(when, "a1b2c3d4e5f60718", utf8).as_bytes())
    lines = _lines(data)
    assert max(len(line) for line in lines) <= 998
    body = data.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in _lines(body)) <= 76
    if not utf8:
        data.decode("ascii")  # 7-bit: non-ASCII only as encoded words and quoted-printable


@pytest.mark.parametrize("end", [" ", "\t"])
def test_a_line_ending_in_whitespace_at_column_76_stays_within_76(end: str) -> None:
    # binascii.b2a_qp writes such a line 77-78 characters long; RFC 2045 allows 76.
    text = "a" * 75 + end + "\nnext line\n"
    data = replace(_msg(), text=text).to_bytes()
    body = data.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in _lines(body)) <= 76
    parsed = message_from_bytes(data, policy=default)
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == text


def test_an_extra_header_the_message_writes_itself_is_refused() -> None:
    with pytest.raises(ValueError, match="Subject"):
        replace(_msg(), headers={"Subject": "again"}).to_bytes()
    with pytest.raises(ValueError, match="linefeed"):
        replace(_msg(), headers={"X-Note": "one\r\nBcc: someone@example.org"}).to_bytes()


def test_each_sample_lesson_reads_the_same_as_the_stdlib_built_message(tmp_path) -> None:
    """A real lesson (compiled MJML: lines of thousands of characters) written by `to_bytes`
    reads as the message `email.message.EmailMessage` builds, part for part."""
    from dripmail.config import Project
    from dripmail.content import load_course
    from dripmail.render import Recipient, Renderer
    from tests.course_fixture import make_project

    project = Project(make_project(tmp_path))
    course = load_course(project)
    renderer = Renderer(project, course)
    who = Recipient(email="zoe@bücher.example", first_name="Zoë Ünal", subscriber_id=8)
    when = datetime(2026, 3, 2, 7, tzinfo=UTC)
    for day in sorted(lesson.day for lesson in course.lessons):
        message = renderer.lesson(day).personalise(who, key=f"k-{day}", kind="lesson", ref="1")
        data = message.to_bytes(when)
        assert _parsed(data) == _parsed(message.to_mime(when).as_bytes())
        assert max(len(line) for line in _lines(data)) <= 76


def test_the_text_part_keeps_a_mailto_address_as_other_links_keep_their_url() -> None:
    """Tester's report: `[mail](mailto:a@b.c)` became just `mail` in the text part."""
    assert to_text("Write [to Maya](mailto:maya@studio.example.com).") == (
        "Write to Maya (maya@studio.example.com).\n"
    )
    # The address once, without the mailto's ?subject=, when the text already shows it.
    assert to_text("[maya@studio.example.com](mailto:maya@studio.example.com?subject=Hi)") == (
        "maya@studio.example.com\n"
    )
    assert to_text("See <https://studio.example.com/help>.") == (
        "See https://studio.example.com/help.\n"
    )
    assert to_text("[help](https://studio.example.com/help?a=1)") == (
        "help (https://studio.example.com/help?a=1)\n"
    )

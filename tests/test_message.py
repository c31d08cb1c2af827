from email import message_from_bytes
from email.policy import default

from dripmail.message import Mailbox, Message


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
    assert _msg().to_bytes() == _msg().to_bytes()
    assert _msg("a").message_id() != _msg("b").message_id()
    assert _msg().unsubscribe_url == "https://studio.example.com/unsubscribe/abc"

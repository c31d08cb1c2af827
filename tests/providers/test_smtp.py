"""SMTP against a real loopback SMTP server (aiosmtpd): MIME parts, refusals, ambiguity, login."""

from __future__ import annotations

import asyncio
import socket
from email import message_from_bytes
from email.policy import default

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from fakes.mail import lessons

from dripmail.errors import ProviderAuthError
from dripmail.providers.base import Lookup, Outcome, broke_off_error, summary_reason
from dripmail.providers.http import Limits
from dripmail.providers.smtp import SmtpProvider


class Catcher:
    """Records delivered messages; refuses and drops on request."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.refuse: dict[str, str] = {}
        self.drop_data_for: set[str] = set()
        self.hang_up_at_rcpt: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, options):
        if address in self.hang_up_at_rcpt:
            server.transport.close()  # the session ends before this message is taken
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        if set(envelope.rcpt_tos) & self.drop_data_for:
            server.transport.close()  # queued, but the client never hears so
        return "250 2.0.0 queued as Q1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    catcher = Catcher()
    port = _free_port()

    def login(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"studio" and auth_data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)

    controller = Controller(
        catcher,
        hostname="127.0.0.1",
        port=port,
        authenticator=login,
        auth_require_tls=False,
    )
    controller.start()
    yield catcher, port
    controller.stop()


def _provider(port: int, **kwargs) -> SmtpProvider:
    return SmtpProvider("127.0.0.1", port, timeout=60, limits=Limits(None, None, 1), **kwargs)


def test_messages_arrive_as_multipart_with_headers(smtp_server) -> None:
    catcher, port = smtp_server
    batch = lessons(3)
    results = asyncio.run(_provider(port).send_batch(batch))
    assert all(r.accepted for r in results)
    assert [rcpts for _, rcpts, _ in catcher.messages] == [[m.to.address] for m in batch]
    parsed = message_from_bytes(catcher.messages[0][2], policy=default)
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed["List-Unsubscribe"] == batch[0].headers["List-Unsubscribe"]
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "teacher@studio.example.com" in parsed["Reply-To"]


def test_refusals_are_permanent_or_transient_by_code(smtp_server) -> None:
    catcher, port = smtp_server
    catcher.refuse["reader1@example.org"] = "550 5.1.1 no such user"
    catcher.refuse["reader2@example.org"] = "451 4.7.1 try later"
    results = asyncio.run(_provider(port).send_batch(lessons(3)))
    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.TRANSIENT, Outcome.ACCEPTED]
    assert results[0].suppress and "550" in (results[0].error or "")


def test_lost_answer_to_data_is_review_and_the_rest_waits(smtp_server) -> None:
    catcher, port = smtp_server
    catcher.drop_data_for.add("reader2@example.org")
    results = asyncio.run(_provider(port).send_batch(lessons(3)))
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.REVIEW, Outcome.TRANSIENT]
    assert len(catcher.messages) == 2  # the reviewed one was queued once, never resent
    # The rest waits because of the connection: said so, in words a summary can use.
    lost = broke_off_error(f"127.0.0.1:{port}", "no answer to a message's DATA")
    assert results[2].error == lost
    assert "partway through a batch" in summary_reason(lost)


def test_a_session_that_ends_at_rcpt_leaves_that_message_and_the_rest_for_later(
    smtp_server,
) -> None:
    """Issue: the message whose RCPT met the hang-up got "not sent: Connection unexpectedly
    closed", and each one after it, tried on the dead session, "not sent: please run
    connect() first": nothing said the batch's connection broke off."""
    catcher, port = smtp_server
    catcher.hang_up_at_rcpt.add("reader2@example.org")
    results = asyncio.run(_provider(port).send_batch(lessons(4)))
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] + [Outcome.TRANSIENT] * 3
    assert len(catcher.messages) == 1
    (error,) = {r.error for r in results[1:]}
    assert error is not None and error.startswith(
        f"not sent: the connection to 127.0.0.1:{port} broke off before this message ("
    ), error
    assert "please run connect() first" not in error


def test_login_and_refused_login(smtp_server) -> None:
    _, port = smtp_server
    ok = _provider(port, user="studio", password="s3cret")
    assert "logged in as studio" in asyncio.run(ok.check())
    with pytest.raises(ProviderAuthError, match="DRIPMAIL_SMTP_PASSWORD"):
        asyncio.run(_provider(port, user="studio", password="wrong").send_batch(lessons(1)))


def test_unreachable_server_is_transient_and_reconcile_cannot_tell() -> None:
    provider = _provider(_free_port())
    results = asyncio.run(provider.send_batch(lessons(2)))
    assert {r.outcome for r in results} == {Outcome.TRANSIENT}
    assert asyncio.run(provider.reconcile(lessons(1))) == {"psoas-week-s1-d3": Lookup.UNKNOWN}


def _international(batch):
    from dataclasses import replace

    from dripmail.message import Mailbox

    return [
        replace(batch[0], to=Mailbox("kim@bücher.example", "Kim")),
        replace(batch[1], to=Mailbox("zoë@example.org", "Zoë")),
        batch[2],
    ]


def _serve(smtputf8: bool) -> tuple[Catcher, int, Controller]:
    catcher, port = Catcher(), _free_port()
    controller = Controller(catcher, hostname="127.0.0.1", port=port, enable_SMTPUTF8=smtputf8)
    controller.start()
    return catcher, port, controller


def test_idn_in_ascii_and_a_utf8_local_part_fails_alone_without_smtputf8() -> None:
    catcher, port, controller = _serve(smtputf8=False)
    try:
        results = asyncio.run(_provider(port).send_batch(_international(lessons(3))))
    finally:
        controller.stop()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED, Outcome.PERMANENT, Outcome.ACCEPTED]
    assert "SMTPUTF8" in (results[1].error or "") and "zoë@example.org" in (results[1].error or "")
    assert [rcpts for _, rcpts, _ in catcher.messages] == [
        ["kim@xn--bcher-kva.example"],
        ["reader3@example.org"],
    ]
    parsed = message_from_bytes(catcher.messages[0][2], policy=default)
    assert parsed["To"].addresses[0].addr_spec == "kim@xn--bcher-kva.example"


def test_a_utf8_local_part_goes_with_smtputf8_when_offered() -> None:
    catcher, port, controller = _serve(smtputf8=True)
    try:
        results = asyncio.run(_provider(port).send_batch(_international(lessons(3))))
    finally:
        controller.stop()
    assert {r.outcome for r in results} == {Outcome.ACCEPTED}
    # aiosmtpd hands the envelope over surrogate-escaped: these are the UTF-8 bytes sent.
    sent = catcher.messages[1][1][0].encode("utf-8", "surrogateescape").decode("utf-8")
    assert sent == "zoë@example.org"
    # RFC 6532: the header carries UTF-8 as it is, no encoded word around the address.
    to_line = next(line for line in catcher.messages[1][2].split(b"\r\n") if line[:3] == b"To:")
    assert to_line == "To: Zoë <zoë@example.org>".encode()

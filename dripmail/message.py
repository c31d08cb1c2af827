"""The `Message` value every part of dripmail passes around, and its MIME form.

The MIME form follows the standards whatever the length of a value (RFC 5322, 2045, 2369, 8058):
- ``List-Unsubscribe``, ``List-Unsubscribe-Post`` and ``Message-ID`` are written as they are
  (``<https://...>``), folded only between list items, never as RFC 2047 encoded words:
  Gmail and Yahoo look for the literal URL. `email.policy.SMTP` refolds a URL longer than a
  line into encoded words, which is why this module has its own policy.
- Quoted-printable lines are at most 76 characters (RFC 2045 6.7); no line exceeds 998.
- Addresses with an international domain carry it in IDNA (``xn--``) form; a non-ASCII local
  part is only written where the carrier offers SMTPUTF8 (RFC 6531/6532), see `Mailbox`.
- ``Date`` is when the message is handed over (the caller passes it), ``Message-ID`` is
  derived from the delivery key and the installation id, so a retry keeps it and two
  databases never share one.

`Message.to_bytes` writes these bytes itself (about 0.2 ms for a 40 kB lesson instead of 7 ms
through `email.message.EmailMessage`, which was two thirds of an outbox send, issue 13): the
bodies go through `binascii.b2a_qp` (C), and each header that is short printable ASCII is
written as it is; any other header (non-ASCII, long, anything that looks like an encoded word)
is folded by the stdlib policy, cached for the values every message of a send repeats (sender,
subject). `Message.to_mime` builds the same message with the stdlib, which the tests parse
side by side with `to_bytes`.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import quoprimime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime
from functools import lru_cache
from typing import Any, Literal

import idna

from dripmail.errors import DripmailError

MessageKind = Literal["lesson", "broadcast", "confirm", "test"]

# RFC 2045 6.7: encoded lines at most 76 characters; RFC 5322 2.1.1: no line over 998.
QP_LINE = 76
MAX_LINE = 998
# Headers whose value is a list of <...> items (or a fixed token) that receivers read
# literally: folded between items only, never encoded.
_VERBATIM = frozenset({"list-unsubscribe", "list-unsubscribe-post", "message-id"})


class AddressError(DripmailError):
    """An address cannot be carried as it is (a non-ASCII local part without SMTPUTF8, or a
    domain IDNA cannot encode). Permanent for that one message."""


def idna_domain(domain: str) -> str:
    """A domain in its ASCII (IDNA 2008, UTS 46 mapped) form: ``bücher.example`` ->
    ``xn--bcher-kva.example``. ASCII domains come back lower-cased as they are."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise AddressError(f"the domain {domain!r} has no IDNA form ({exc})") from None


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An address with an optional display name."""

    address: str
    name: str = ""

    @property
    def local(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def needs_smtputf8(self) -> bool:
        """Whether the local part is non-ASCII, so only an SMTPUTF8 carrier can take it."""
        return not self.local.isascii()

    def ascii_address(self, utf8: bool = False) -> str:
        """The address for an envelope or a header: the domain in IDNA form.

        A non-ASCII local part is kept only when `utf8` (the carrier offers SMTPUTF8);
        otherwise it raises `AddressError`, which fails that one message.
        """
        if self.address.isascii():
            return self.address  # nothing to encode, nothing to refuse: the usual case
        local, _, domain = self.address.rpartition("@")
        if not utf8 and not local.isascii():
            raise AddressError(
                f"{self.address}: the part before @ is not ASCII and this provider cannot "
                "carry such addresses (no SMTPUTF8): ask the reader for another address"
            )
        return f"{local}@{idna_domain(domain)}"

    def formatted(self, utf8: bool = False) -> str:
        """RFC 5322 form, e.g. ``"Studio" <hello@example.com>``, domain in IDNA form.

        The display name is quoted as needed and left in Unicode: the MIME policy (or the
        provider's API) encodes it. Raises `AddressError` like `ascii_address`.
        """
        return _formatted(self, utf8)


# Every message of a send carries the same sender (and reply-to): formatted once, not per
# message (issue 13). Readers' own mailboxes pass through and drop out of the small cache.
@lru_cache(maxsize=256)
def _formatted(mailbox: Mailbox, utf8: bool) -> str:
    address = mailbox.ascii_address(utf8)
    if not mailbox.name:
        return address
    local, _, domain = address.rpartition("@")
    if local and domain and _PLAIN_NAME.isdisjoint(mailbox.name) and _PLAIN_LOCAL.isdisjoint(local):
        # What `Address` writes when neither part needs quoting (a reader's first name):
        # the same string without building the object (tested against `Address`).
        return f"{mailbox.name} <{address}>"
    return str(Address(display_name=mailbox.name, username=local, domain=domain))


# Characters that make `email.headerregistry.Address` quote a display name (RFC 5322
# specials) or a local part (those that end a dot-atom), plus line breaks, which it refuses.
_PLAIN_NAME = frozenset('()<>[]:;@\\,."\r\n')
_PLAIN_LOCAL = frozenset(' \t()<>[]:;@\\,"\r\n')


class _OutboundPolicy(EmailPolicy):
    """`email.policy.SMTP` at 76 columns, except that list headers are never encoded."""

    def fold(self, name: str, value: Any) -> str:
        if name.lower() in _VERBATIM:
            return _fold_verbatim(name, str(value), self.linesep)
        return super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() in _VERBATIM:
            return _fold_verbatim(name, str(value), self.linesep).encode("ascii")
        return super().fold_binary(name, value)


def _fold_verbatim(name: str, value: str, linesep: str) -> str:
    """``Name: <a>,<CRLF> <b><CRLF>``: one list item per line, each line <= 998 characters."""
    items = [item.strip() for item in value.split(",")] if name.lower() != "message-id" else []
    items = [i for i in items if i] or [value.strip()]
    if not all(item.isascii() for item in items):
        raise AddressError(f"{name}: {value!r} must be ASCII (an https URL or a mailto: address)")
    lines = [f"{name}: {items[0]}"] + [f" {item}" for item in items[1:]]
    lines = [line + "," for line in lines[:-1]] + [lines[-1]]
    for line in lines:
        if len(line) > MAX_LINE:
            raise AddressError(
                f"{name} is longer than {MAX_LINE} characters ({len(line)}): "
                "shorten DRIPMAIL_PUBLIC_URL"
            )
    return linesep.join(lines) + linesep


POLICY = _OutboundPolicy(linesep="\r\n", max_line_length=QP_LINE)
# For an SMTPUTF8 hand-over (RFC 6532): UTF-8 in headers instead of encoded words.
POLICY_UTF8 = POLICY.clone(utf8=True)


def message_id(key: str, domain: str, installation_id: str = "") -> str:
    """``<hash@domain>`` for a delivery key: stable for the key (a retry keeps it), unique
    across databases because the random installation id is part of the hash."""
    digest = hashlib.sha256(f"{installation_id}\0{key}".encode()).hexdigest()[:32]
    return f"<{digest}@{idna_domain(domain) if domain else 'dripmail.invalid'}>"


@dataclass(frozen=True, slots=True)
class Message:
    """One rendered email for one recipient, ready for any provider.

    `key` is stable for (recipient x content), e.g. ``lesson-<subscriber>-<day>``; it is the
    idempotency key, the outbox file name, and travels in provider metadata.
    """

    key: str
    kind: MessageKind
    ref: str
    sender: Mailbox
    to: Mailbox
    subject: str
    html: str
    text: str
    preheader: str = ""
    reply_to: Mailbox | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    send_at: datetime | None = None

    @property
    def unsubscribe_url(self) -> str | None:
        """The https URL inside ``List-Unsubscribe``, if any."""
        value = self.headers.get("List-Unsubscribe", "")
        for part in value.split(","):
            part = part.strip().strip("<>")
            if part.startswith("https://") or part.startswith("http://"):
                return part
        return None

    def message_id(self, installation_id: str = "") -> str:
        """The Message-ID at the sender's domain (see the module function `message_id`)."""
        return message_id(self.key, self.sender.domain, installation_id)

    def to_mime(
        self, date: datetime | None = None, installation_id: str = "", utf8: bool = False
    ) -> EmailMessage:
        """A standards-correct ``multipart/alternative`` message (text first, then HTML).

        `date` is the hand-over time (default: now), `installation_id` goes into the
        Message-ID, `utf8` writes RFC 6532 headers for an SMTPUTF8 hand-over. Raises
        `AddressError` when an address cannot be carried that way.
        """
        mime = EmailMessage(policy=POLICY_UTF8 if utf8 else POLICY)
        mime["From"] = self.sender.formatted(utf8)
        mime["To"] = self.to.formatted(utf8)
        if self.reply_to:
            mime["Reply-To"] = self.reply_to.formatted(utf8)
        mime["Subject"] = self.subject
        mime["Date"] = format_datetime((date or datetime.now(UTC)).astimezone(UTC))
        mime["Message-ID"] = self.message_id(installation_id)
        for name, value in self.headers.items():
            mime[name] = value
        mime.set_content(self.text, subtype="plain", charset="utf-8", cte="quoted-printable")
        mime.add_alternative(self.html, subtype="html", charset="utf-8", cte="quoted-printable")
        # The default boundary is random; derive it so the same inputs give the same bytes.
        mime.set_boundary("=_dm_" + hashlib.sha256(self.key.encode()).hexdigest()[:24])
        return mime

    def to_bytes(
        self, date: datetime | None = None, installation_id: str = "", utf8: bool = False
    ) -> bytes:
        """The MIME message as bytes with CRLF line endings (what SMTP and .eml files carry).

        The message `to_mime` builds (same headers, same parts, same boundary), written
        directly (see the module docstring). Raises `AddressError` like `to_mime`, and
        ValueError for a header value with a line break or an extra header that the message
        writes itself (``Subject``, ``Content-Type``...).
        """
        lines = [
            _header("From", self.sender.formatted(utf8), utf8),
            _header("To", self.to.formatted(utf8), utf8),
        ]
        if self.reply_to:
            lines.append(_header("Reply-To", self.reply_to.formatted(utf8), utf8))
        lines.append(_header("Subject", self.subject, utf8))
        when = format_datetime((date or datetime.now(UTC)).astimezone(UTC))
        lines.append(f"Date: {when}\r\n".encode("ascii"))
        lines.append(_header("Message-ID", self.message_id(installation_id), utf8))
        for name, value in self.headers.items():
            if name.lower() in _OWN_HEADERS:
                raise ValueError(f"{name}: the message writes this header itself")
            lines.append(_header(name, value, utf8))
        boundary = _boundary(self.key)
        lines += [
            b"MIME-Version: 1.0\r\n",
            b'Content-Type: multipart/alternative;\r\n boundary="' + boundary + b'"\r\n',
            b"\r\n--" + boundary + b"\r\n",
            _PART_HEAD % b"plain",
            _quoted_printable(self.text),
            b"\r\n--" + boundary + b"\r\n",
            _PART_HEAD % b"html",
            _quoted_printable(self.html),
            b"\r\n--" + boundary + b"--\r\n",
        ]
        return b"".join(lines)


# Headers `to_bytes` writes itself; one of them among `Message.headers` is a mistake (the
# stdlib refuses a second Subject too).
_OWN_HEADERS = frozenset(
    {"from", "to", "reply-to", "subject", "date", "message-id", "mime-version"}
    | {"content-type", "content-transfer-encoding"}
)
_PART_HEAD = (
    b'Content-Type: text/%s; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
)
# A header value written as it is: printable ASCII words with single spaces between them,
# nothing an RFC 2047 decoder could take for an encoded word (``=?``).
_PLAIN_VALUE = re.compile(r"(?!.*=\?)[!-~]+(?: [!-~]+)*\Z")


def _boundary(key: str) -> bytes:
    """Derived from the key: the same inputs give the same bytes. ``=_`` cannot occur in a
    quoted-printable body (``=`` is always ``=3D`` there), so no part can contain it."""
    return b"=_dm_" + hashlib.sha256(key.encode()).hexdigest()[:24].encode("ascii")


def _header(name: str, value: str, utf8: bool = False) -> bytes:
    """One header line, folded as needed (`utf8`: RFC 6532 UTF-8 instead of encoded words)."""
    if name.lower() in _VERBATIM:
        return _fold_verbatim(name, value, "\r\n").encode("ascii")
    if len(name) + len(value) + 2 <= QP_LINE and _PLAIN_VALUE.match(value):
        return f"{name}: {value}\r\n".encode("ascii")
    return _stdlib_header(name, value, utf8)


# The sender, reply-to and subject are the same for every message of a send: folded by the
# stdlib once; readers' names that need it pass through.
@lru_cache(maxsize=256)
def _stdlib_header(name: str, value: str, utf8: bool) -> bytes:
    """What `email.policy` writes for this header: RFC 2047 encoded words (or UTF-8 when
    `utf8`), folded at 76 columns. Raises ValueError for a value with a line break."""
    policy = POLICY_UTF8 if utf8 else POLICY
    return policy.fold_binary(name, policy.header_store_parse(name, value)[1])


def _quoted_printable(text: str) -> bytes:
    """A text part's body: UTF-8, quoted-printable, CRLF line breaks, ending in one.

    Any line break (``\\n``, ``\\r\\n`` or a lone ``\\r``) becomes CRLF, as `email` does.
    `binascii.b2a_qp` encodes ``=``, whitespace at a line's end and everything outside
    printable ASCII, and breaks lines at 76 characters, except that whitespace it encodes at
    the very end of a long line can take it to 78: such a rare body is encoded again by the
    stdlib's own (pure Python) encoder, which never does.
    """
    data = text.encode("utf-8")
    if b"\r" in data:
        data = b"\n".join(data.splitlines()) + b"\n"
    elif not data.endswith(b"\n"):
        data += b"\n"
    encoded = binascii.b2a_qp(data, istext=True)
    # Only a line ending in encoded whitespace can be too long (two C scans rule it out).
    if (b"=20\n" in encoded or b"=09\n" in encoded) and max(
        map(len, encoded.split(b"\n"))
    ) > QP_LINE:
        encoded = quoprimime.body_encode(data.decode("latin-1"), QP_LINE).encode("latin-1")
    return encoded.replace(b"\n", b"\r\n")


class ReaderProblem(str):
    """Why one reader's message cannot be built from their stored data (a line break in a
    name): it fails that delivery alone and, like a suppression, does not count toward a
    halt (`FailureStreak`); a template error, the same for every reader, does."""

    __slots__ = ()


# What a mail header cannot carry: every character `str.splitlines` breaks a line at (the
# stdlib's `email.policy` refuses a header value that splits, so the whole batch would fail
# in the provider's encoder: U+2028 in a stored name did that) and the other C0 controls,
# NUL and DEL (a NUL would otherwise reach the To: header). Tab is allowed.
_NOT_IN_HEADERS = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def rename_hint(problem: str, address: str, then: str = "") -> str:
    """What to do about `problem` when it lies in the reader's stored name: the command that
    corrects it (and `then`, what brings the email back), as ``; correct it with ...``; else
    "". Appended to a stored failure reason, after its ``(to ADDRESS)``."""
    if not problem.startswith("the recipient's name"):
        return ""
    return f"; correct it with `subscribers rename {address} NAME`" + (f", {then}" if then else "")


def header_problem(message: Message) -> ReaderProblem | None:
    """Why `message` cannot be put into mail headers (a line break or a control character in
    a name, address, subject or header), or None.

    Checked before the hand-over so that one bad stored value fails its own delivery instead
    of the provider call for the whole batch. Cheap: one regex scan of the joined values.
    """
    values = (message.to.name, message.to.address, message.subject, *message.headers.values())
    if _NOT_IN_HEADERS.search("".join(values)) is None:
        return None  # the usual case: one scan, no labels built
    fields = [
        ("the recipient's name", message.to.name),
        ("the recipient's address", message.to.address),
        ("the subject", message.subject),
        *((f"header {name}", value) for name, value in message.headers.items()),
    ]
    for label, value in fields:
        found = _NOT_IN_HEADERS.search(value)
        if found is not None:
            char = found.group()
            if char in _LINE_BREAKS:
                return ReaderProblem(f"{label} contains a line break (U+{ord(char):04X})")
            return ReaderProblem(f"{label} contains a control character (U+{ord(char):04X})")
    return None

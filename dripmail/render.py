"""Rendering: lesson + course -> MJML (Jinja) -> HTML (compiled once) -> per-recipient Message.

Stage 1 runs the templates in `emails/` in a Jinja sandbox (marketers edit them) with
`StrictUndefined`, and compiles the MJML with mjml-python once per email. Per-recipient values
(first name, unsubscribe and preferences links) are left in the compiled HTML as stage-2
placeholders ``[[ recipient.first_name ]]``. Stage 2 only fills dripmail's own placeholders:
the compiled HTML and text are split once at them, and each reader costs one ``"".join`` of
the parts with their values (HTML-escaped in the HTML), never an MJML compile or a template
render. The plain-text part comes from the lesson's Markdown through `*.txt.j2`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import (
    FileSystemLoader,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    nodes,
)
from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from markupsafe import Markup, escape

from dripmail.config import Project
from dripmail.content import Course, Newsletter
from dripmail.errors import ContentError, NotFoundError
from dripmail.front_matter import CONTENT_ENCODING, not_utf8
from dripmail.markdown import to_html, to_text
from dripmail.message import Mailbox, Message, MessageKind
from dripmail.mjml_check import structure_problems
from dripmail.template_undefined import FieldUndefined, rendering
from dripmail.tokens import PURPOSES, Purpose, Signer
from dripmail.welcome import WELCOME_FILE

GREETING_FALLBACK = "there"
RECIPIENT_FIELDS = (
    "first_name",
    "email",
    "unsubscribe_url",
    "preferences_url",
    "confirm_url",
    "first_lesson",  # the welcome email: when lesson 1 arrives, in the reader's zone
)
FIRST_LESSON_FALLBACK = "on the morning after you confirmed, at the course's send time"
# The signed link behind each URL field (dripmail.tokens purposes).
_LINK_FIELDS: dict[str, Purpose] = {
    "unsubscribe_url": "unsubscribe",
    "preferences_url": "preferences",
    "confirm_url": "confirm",
}
# Stage-2 placeholders ("[[" is unusual in prose, untouched by MJML, distinct from stage 1's
# {{ }}). Stage 1 neutralises every other "[[", "[%" and "[#" (the openers of the Jinja
# stage 2 these placeholders were first written for), so what is left is dripmail's own.
_PLACEHOLDER = re.compile(r"\[\[ recipient\.(\w+) \]\]")
_STAGE2_OPENERS = re.compile(r"\[(?=[\[%#])")


_SECOND_SECTION = re.compile(r"<h2>")


def _bodies(markdown: str, link_colour: str) -> dict[str, Any]:
    """The Markdown body as HTML (for the MJML) and as plain text (for the text part).

    Links get their colour inline as well as from the layout's <style> (some Gmail setups
    drop <style> blocks). `body_top` is the text up to the end of its first ``##`` section
    and `body_rest` the remainder: a lesson's drawing goes between them, next to the
    explanation it illustrates.
    """
    html = to_html(markdown).replace("<a href=", f'<a style="color: {link_colour};" href=')
    starts = [m.start() for m in _SECOND_SECTION.finditer(html)]
    cut = starts[1] if len(starts) > 1 else len(html)
    return {
        "body_html": Markup(html),
        "body_top": Markup(html[:cut]),
        "body_rest": Markup(html[cut:]),
        "body_text": to_text(markdown),
    }


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who one email is for, with the signed links built for them."""

    email: str
    first_name: str = ""
    subscriber_id: int | None = None
    unsubscribe_url: str = ""
    preferences_url: str = ""
    confirm_url: str = ""
    first_lesson: str = ""  # see dripmail.welcome.first_lesson_phrase


def recipient_for(
    row: Mapping[str, Any],
    public_url: str,
    signer: Signer,
    issued_at: datetime | None = None,
    links: Collection[Purpose] = PURPOSES,
) -> Recipient:
    """A Recipient from a subscribers row (id, email, first_name) with signed links.

    `issued_at` (the email's send time) makes the links, and so the email, the same whenever
    it is rendered; without it they are stamped with the current time. `links` are the
    purposes to sign (an email's `CompiledEmail.links`); the other URLs stay empty.
    """
    from dripmail.tokens import links as signed_links

    sid = int(row["id"])
    urls = signed_links(public_url, signer, sid, links, issued_at)
    return Recipient(
        email=row["email"],
        first_name=row.get("first_name") or "",
        subscriber_id=sid,
        unsubscribe_url=urls.get("unsubscribe", ""),
        preferences_url=urls.get("preferences", ""),
        confirm_url=urls.get("confirm", ""),
    )


class PlaceholderMisuse(Exception):
    """A template treated a per-reader value as if stage 1 knew it (see `_Placeholder`)."""


class _Placeholder(Markup):
    """A stage-2 placeholder; kept verbatim by stage 1 (never escaped or neutralised).

    Stage 1 renders one email for everyone: the reader's value is not known yet, only where
    it goes. A template that tests, compares, measures or changes it (``{% if
    recipient.first_name %}``, ``| upper``) would silently act on the placeholder's own text
    (always true; ``[[ RECIPIENT.FIRST_NAME ]]``), so those raise `PlaceholderMisuse`, which
    `Renderer._stage1` reports at the template's file and line.
    """

    def _misused(self, what: str) -> PlaceholderMisuse:
        field = str(self)[len("[[ recipient.") : -len(" ]]")]
        return PlaceholderMisuse(
            f"recipient.{field} cannot be {what} in a template: it is filled in for each "
            f"reader after the template is rendered. Write {{{{ recipient.{field} }}}} as it "
            "is (an empty first name already reads 'there')"
        )

    def __bool__(self) -> bool:
        raise self._misused("tested (if, and, or, default)")

    def __len__(self) -> int:
        raise self._misused("measured (length, truncate)")

    def __eq__(self, other: object) -> bool:
        raise self._misused("compared")

    def __ne__(self, other: object) -> bool:
        raise self._misused("compared")

    __hash__ = Markup.__hash__

    def __contains__(self, item: object) -> bool:
        raise self._misused("searched (in)")

    def __getitem__(self, key: object) -> _Placeholder:
        raise self._misused("sliced or indexed")


def _changes_the_value(name: str) -> Callable[..., Markup]:
    def method(self: _Placeholder, *args: Any, **kwargs: Any) -> Markup:
        raise self._misused(f"changed by a filter or method ({name})")

    method.__name__ = name
    return method


for _name in (
    "upper", "lower", "title", "capitalize", "swapcase", "casefold", "strip", "lstrip",
    "rstrip", "replace", "split", "rsplit", "center", "ljust", "rjust", "zfill", "format",
    "startswith", "endswith", "__mod__", "__mul__", "splitlines", "partition", "rpartition",
    "count", "find", "index",
):  # fmt: skip
    setattr(_Placeholder, _name, _changes_the_value(_name))


class _RecipientPlaceholders:
    """What `recipient` is in stage 1: each field renders as its stage-2 placeholder."""

    def __getattr__(self, name: str) -> _Placeholder:
        if name not in RECIPIENT_FIELDS:
            raise AttributeError(name)
        return _Placeholder(f"[[ recipient.{name} ]]")


def _neutralise(value: Any, html: bool) -> Any:
    # Lesson text that happens to contain "[[" must not become stage-2 template code.
    if isinstance(value, _Placeholder) or not isinstance(value, str):
        return value
    if not _STAGE2_OPENERS.search(value):
        return value
    if html:
        escaped = Markup(value) if isinstance(value, Markup) else Markup.escape(value)
        return Markup(_STAGE2_OPENERS.sub("&#91;", str(escaped)))
    return _STAGE2_OPENERS.sub("[\u200b", value)


class _HtmlTextGuard(Extension):
    """Template text (not only values) with "[[" must not become stage-2 code either."""

    replacement = "&#91;"

    def filter_stream(self, stream: TokenStream):
        for token in stream:
            if token.type == "data" and _STAGE2_OPENERS.search(token.value):
                token = Token(
                    token.lineno, "data", _STAGE2_OPENERS.sub(self.replacement, token.value)
                )
            yield token


class _PlainTextGuard(_HtmlTextGuard):
    replacement = "[\u200b"


class _PlaceholderSyntax(TemplateSyntaxError):
    """A template that acts on a `recipient.*` value (found when the template is parsed)."""


# Where a recipient value may stand: written out, passed to a macro, assigned, or held in a
# literal list or dict that is passed on. Anywhere else (a filter, a test, a comparison, `~`,
# a method) stage 1 would act on the placeholder's own text, not on the reader's value.
_PASSES_ON = (nodes.Output, nodes.Call, nodes.Keyword, nodes.Assign, nodes.With, nodes.List,
              nodes.Tuple, nodes.Dict, nodes.Pair)  # fmt: skip
_WHAT: dict[type[nodes.Node], str] = {
    nodes.Filter: "changed by a filter",
    nodes.FilterBlock: "changed by a filter",
    nodes.Test: "tested",
    nodes.If: "tested",
    nodes.CondExpr: "tested",
    nodes.And: "tested",
    nodes.Or: "tested",
    nodes.Not: "tested",
    nodes.Compare: "compared",
    nodes.Operand: "compared",
    nodes.Concat: "joined to other text with ~",
    nodes.For: "iterated",
    nodes.Getattr: "changed by a method",
    nodes.Getitem: "sliced or indexed",
}


def _recipient_field(node: nodes.Node) -> str | None:
    """The field name if `node` is ``recipient.FIELD`` (or ``recipient['FIELD']``)."""
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name):
        return node.attr if node.node.name == "recipient" else None
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "recipient"
        and isinstance(node.arg, nodes.Const)
    ):
        return str(node.arg.value)
    return None


def _placeholder_misuse(tree: nodes.Template) -> tuple[int, str] | None:
    """(line, message) of the first place a template acts on a `recipient.*` value, or None.

    Parse-time: a runtime check cannot see what regex-based filters (`title`, `wordcount`) do
    to the placeholder text, nor `~` joining it to other text.
    """

    def visit(node: nodes.Node, parent: nodes.Node, in_filter: bool) -> tuple[int, str] | None:
        field = _recipient_field(node)
        if field is not None:
            what: str | None = None
            if in_filter:
                what = "changed by a filter"
            elif not isinstance(parent, _PASSES_ON):
                what = _WHAT.get(parent.__class__, "used in an expression")
                if isinstance(parent, (nodes.Filter, nodes.Test)):
                    what += f" ({parent.name})"
            if what:
                return node.lineno, (
                    f"recipient.{field} cannot be {what} in a template: it is filled in for "
                    f"each reader after the template is rendered. Write {{{{ recipient.{field} "
                    "}} as it is (an empty first name already reads 'there')"
                )
            return None
        filtered = in_filter or isinstance(node, nodes.FilterBlock)
        for child in node.iter_child_nodes():
            found = visit(child, node, filtered)
            if found:
                return found
        return None

    return visit(tree, tree, False)


class _CourseEnvironment(SandboxedEnvironment):
    """The sandbox, refusing at parse time a template that acts on a recipient value."""

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        misuse = _placeholder_misuse(tree)
        if misuse is not None:
            raise _PlaceholderSyntax(misuse[1], misuse[0], name, filename)
        return tree


def _template_line(exc: BaseException, emails_dir: Path) -> tuple[str, int | None]:
    """The template file and line an exception was raised from (Jinja rewrites tracebacks)."""
    tb = exc.__traceback__
    found: tuple[str, int | None] = ("", None)
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.endswith(".j2"):
            found = (name, tb.tb_lineno)
        tb = tb.tb_next
    return found


@dataclass(frozen=True, slots=True)
class _Fill:
    """Compiled HTML or text split once at its placeholders.

    `parts` holds the text between placeholders with ``None`` where a value goes, `slots`
    the (index, field) of each ``None``: filling is one list copy and one ``"".join``.
    """

    parts: tuple[str | None, ...]
    slots: tuple[tuple[int, str], ...]
    # The recipient fields this part uses: asked for every reader, so computed once.
    fields: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", frozenset(name for _, name in self.slots))

    @classmethod
    def split(cls, source: str) -> _Fill:
        """Split at ``[[ recipient.FIELD ]]``; raises ValueError naming anything else left."""
        # Jinja (the stage 2 these placeholders come from) read "\r\n" and "\r" as "\n".
        source = source.replace("\r\n", "\n").replace("\r", "\n")
        pieces = _PLACEHOLDER.split(source)
        parts: list[str | None] = []
        slots: list[tuple[int, str]] = []
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                left = _STAGE2_OPENERS.search(piece)
                if left:
                    raise ValueError(f"not a placeholder: {piece[left.start() :][:40]!r}")
                if piece:
                    parts.append(piece)
            elif piece not in RECIPIENT_FIELDS:
                raise ValueError(f"unknown placeholder: recipient.{piece}")
            else:
                slots.append((len(parts), piece))
                parts.append(None)
        return cls(tuple(parts), tuple(slots))

    def fill(self, values: Mapping[str, str]) -> str:
        """The text with each placeholder replaced by its value (as given: escape first)."""
        pieces = list(self.parts)
        for index, name in self.slots:
            pieces[index] = values[name]
        return "".join(pieces)  # type: ignore[arg-type]  # every None was just filled


@dataclass(frozen=True)
class CompiledEmail:
    """One email compiled for everyone: only the per-recipient stage is left."""

    subject: str
    preheader: str
    sender: Mailbox
    reply_to: Mailbox | None
    tags: tuple[str, ...]
    html_fill: _Fill
    text_fill: _Fill
    html_size: int  # bytes of the compiled HTML, before personalisation

    @property
    def links(self) -> tuple[Purpose, ...]:
        """The signed links a reader's copy needs: those the templates show, and unsubscribe.

        Unsubscribe is always signed: it goes in the ``List-Unsubscribe`` header (RFC 8058).
        """
        used = self.html_fill.fields | self.text_fill.fields
        return tuple(
            purpose
            for name, purpose in _LINK_FIELDS.items()
            if name in used or purpose == "unsubscribe"
        )

    def personalise(
        self,
        recipient: Recipient,
        *,
        key: str,
        kind: MessageKind,
        ref: str,
        send_at: datetime | None = None,
    ) -> Message:
        """The Message for one recipient (links, name), with RFC 8058 unsubscribe headers."""
        text = {
            "email": recipient.email,
            "unsubscribe_url": recipient.unsubscribe_url,
            "preferences_url": recipient.preferences_url,
            "confirm_url": recipient.confirm_url,
            "first_lesson": recipient.first_lesson or FIRST_LESSON_FALLBACK,
        }
        return self._message(text, recipient.first_name, key, kind, ref, send_at)

    def for_readers(
        self,
        public_url: str,
        signer: Signer,
        issued_at: datetime,
        *,
        kind: MessageKind,
        ref: str,
    ) -> Callable[[int, str, str | None, str], Message]:
        """Personalise for many readers of one send: (subscriber id, email, first name,
        delivery key) -> the Message `personalise(recipient_for(...))` makes, byte for byte.

        The links this email needs are signed with `issued_at` (`Signer.stamped_links`); what
        every reader shares is looked up once here, not per reader (a broadcast's hot loop).
        """
        purposes = self.links
        urls = signer.stamped_links(public_url, purposes, issued_at)
        fields = tuple(f"{purpose}_url" for purpose in purposes)
        fixed = {f: "" for f in _LINK_FIELDS} | {"first_lesson": FIRST_LESSON_FALLBACK}
        # A signed link is the public URL, the purpose and a token of URL-safe base64 and
        # dots: nothing in it to escape for HTML unless the public URL itself has something.
        base = public_url.rstrip("/")
        plain = frozenset(fields) if str(escape(base)) == base else frozenset()
        message = self._message

        def personalise(sid: int, email: str, first_name: str | None, key: str) -> Message:
            text = fixed | dict(zip(fields, urls(sid), strict=True))
            text["email"] = email
            return message(text, first_name or "", key, kind, ref, None, plain)

        return personalise

    def _message(
        self,
        text: dict[str, str],
        first_name: str,
        key: str,
        kind: MessageKind,
        ref: str,
        send_at: datetime | None,
        plain: frozenset[str] = frozenset(),
    ) -> Message:
        """The Message from the reader's field values (`text`, without first_name); `plain`
        names fields whose values have nothing to escape for HTML (known by the caller)."""
        name = first_name.strip()
        text["first_name"] = name or GREETING_FALLBACK
        # Only the fields the HTML shows are escaped (most emails use two or three of six).
        html = {f: text[f] if f in plain else str(escape(text[f])) for f in self.html_fill.fields}
        unsubscribe = text["unsubscribe_url"]
        headers: dict[str, str] = (
            {"List-Unsubscribe": f"<{unsubscribe}>", "List-Unsubscribe-Post": _ONE_CLICK}
            if unsubscribe
            else {}
        )
        return Message(
            key=key,
            kind=kind,
            ref=ref,
            sender=self.sender,
            to=Mailbox(text["email"], name),
            subject=self.subject,
            html=self.html_fill.fill(html),
            text=self.text_fill.fill(text).rstrip() + "\n",
            preheader=self.preheader,
            reply_to=self.reply_to,
            headers=headers,
            tags=self.tags,
            send_at=send_at,
        )


_ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058's List-Unsubscribe-Post value


class Renderer:
    """Renders the course's emails from the templates in `emails/`; compiled emails are cached."""

    def __init__(self, project: Project, course: Course) -> None:
        self.project = project
        self.course = course
        loader = FileSystemLoader(str(project.emails_dir), encoding=CONTENT_ENCODING)
        common = {"loader": loader, "undefined": FieldUndefined, "keep_trailing_newline": True}
        self._html_env = _CourseEnvironment(
            autoescape=True,
            finalize=lambda v: _neutralise(v, html=True),
            extensions=[_HtmlTextGuard],
            **common,
        )
        self._text_env = _CourseEnvironment(
            autoescape=False,
            finalize=lambda v: _neutralise(v, html=False),
            extensions=[_PlainTextGuard],
            **common,
        )
        # Only built when MJML is broken: the same templates with line markers, to find the line.
        self._traced_env: SandboxedEnvironment | None = None
        self._cache: dict[tuple[str, str], CompiledEmail] = {}

    # -- public -----------------------------------------------------------------------

    def lesson(self, day: int) -> CompiledEmail:
        """Day `day`'s lesson, compiled once."""

        def build() -> CompiledEmail:
            lesson = self.course.lesson(day)
            return self._compile(
                "lesson",
                {"lesson": lesson, **_bodies(lesson.body, self.course.brand.primary)},
                subject=lesson.subject,
                preheader=lesson.preheader,
                tags=(self.course.id, f"day-{day}"),
            )

        return self._cached(("lesson", str(day)), build)

    def newsletter(self, newsletter: Newsletter) -> CompiledEmail:
        """A newsletter issue, compiled once."""
        return self._cached(
            ("newsletter", str(newsletter.path)),
            lambda: self._compile(
                "newsletter",
                {"newsletter": newsletter, **_bodies(newsletter.body, self.course.brand.primary)},
                subject=newsletter.subject,
                preheader=newsletter.preheader,
                tags=("newsletter", newsletter.slug),
            ),
        )

    def confirm(self) -> CompiledEmail:
        """The double opt-in email."""
        return self._cached(
            ("confirm", ""),
            lambda: self._compile(
                "confirm",
                {},
                subject=f"Please confirm: {self.course.title}",
                preheader="One click and your first lesson is on its way.",
                tags=(self.course.id, "confirm"),
            ),
        )

    def welcome(self) -> CompiledEmail:
        """The welcome email (`course/welcome.md`); NotFoundError when the course has none."""
        welcome = self.course.welcome
        if welcome is None:
            raise NotFoundError(
                f"no welcome email: add course/{WELCOME_FILE} (front matter subject, preheader)"
            )
        return self._cached(
            ("welcome", ""),
            lambda: self._compile(
                "welcome",
                {"welcome": welcome, **_bodies(welcome.body, self.course.brand.primary)},
                subject=welcome.subject,
                preheader=welcome.preheader,
                tags=(self.course.id, "welcome"),
            ),
        )

    def _cached(self, key: tuple[str, str], build: Callable[[], CompiledEmail]) -> CompiledEmail:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    # -- stages -----------------------------------------------------------------------

    def _stage1(self, env: SandboxedEnvironment, name: str, context: dict[str, Any]) -> str:
        where = f"emails/{name}"
        try:
            template = env.get_template(name)
            email = name.split(".", 1)[0]
            with rendering(email, ("course", "recipient", *context)):
                return template.render(
                    course=self.course, recipient=_RecipientPlaceholders(), **context
                )
        except _PlaceholderSyntax as exc:
            file = f"emails/{exc.name}" if exc.name else where
            raise ContentError.at(file, exc.lineno, str(exc.message)) from None
        except TemplateSyntaxError as exc:
            file = f"emails/{exc.name}" if exc.name else where
            raise ContentError.at(file, exc.lineno, f"template syntax: {exc.message}") from None
        except TemplateNotFound as exc:
            raise self._at_template_line(
                exc, where, f"template not found: emails/{exc.name} (check the name)"
            ) from None
        except UndefinedError as exc:
            # FieldUndefined's words: "lesson has no field 'titel' (did you mean ...?)".
            raise self._at_template_line(exc, where, str(exc)) from None
        except SecurityError as exc:
            raise self._at_template_line(exc, where, f"not allowed in a template: {exc}") from None
        except PlaceholderMisuse as exc:
            raise self._at_template_line(exc, where, str(exc)) from None
        except UnicodeDecodeError:
            raise ContentError(self._unreadable_templates() or f"{where}: not UTF-8") from None
        except Exception as exc:  # a runtime error in template code, e.g. 1 + "x"
            message = f"template error: {type(exc).__name__}: {exc}"
            raise self._at_template_line(exc, where, message) from None

    def _at_template_line(self, exc: BaseException, where: str, message: str) -> ContentError:
        file, line = _template_line(exc, self.project.emails_dir)
        shown = self.project.display(Path(file)) if file else where
        return ContentError.at(shown, line, message)

    def _unreadable_templates(self) -> list[str]:
        """Every template file that is not UTF-8 text, as one line each."""
        found = []
        for path in sorted(self.project.emails_dir.rglob("*.j2")):
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                line, message = not_utf8(exc)  # the same words a lesson gets
                found.append(f"{self.project.display(path)}:{line}: {message}")
        return found

    def _compile(
        self,
        name: str,
        context: dict[str, Any],
        *,
        subject: str,
        preheader: str,
        tags: tuple[str, ...],
    ) -> CompiledEmail:
        from mjml import mjml2html

        mjml_source = self._stage1(self._html_env, f"{name}.mjml.j2", context)
        text_source = self._stage1(self._text_env, f"{name}.txt.j2", context)
        broken = structure_problems(mjml_source)
        failure: ValueError | None = None
        html = ""
        if not broken:
            try:
                html = mjml2html(mjml_source, disable_comments=True)
            except ValueError as exc:
                failure = exc
        if broken or failure:
            raise self._mjml_error(name, context, mjml_source, broken, failure)
        try:
            html_fill = _Fill.split(html)
        except ValueError as exc:
            raise ContentError.at(f"emails/{name}.mjml.j2", None, f"placeholder: {exc}") from None
        try:
            text_fill = _Fill.split(text_source)
        except ValueError as exc:
            raise ContentError.at(f"emails/{name}.txt.j2", None, f"placeholder: {exc}") from None
        return CompiledEmail(
            subject=subject,
            preheader=preheader,
            sender=self.course.sender,
            reply_to=self.course.reply_to,
            tags=tags,
            html_fill=html_fill,
            text_fill=text_fill,
            html_size=len(html.encode()),
        )

    def _mjml_error(
        self,
        name: str,
        context: dict[str, Any],
        mjml_source: str,
        broken: list[tuple[int, str]],
        failure: ValueError | None,
    ) -> ContentError:
        """Broken MJML as one line per problem at the template line that produced it."""
        from dripmail.mjml_check import LineMarks, located, origins

        if self._traced_env is None:
            self._traced_env = _CourseEnvironment(
                loader=self._html_env.loader,
                undefined=FieldUndefined,
                keep_trailing_newline=True,
                autoescape=True,
                finalize=lambda v: _neutralise(v, html=True),
                extensions=[_HtmlTextGuard, LineMarks],
            )
        marked = self._stage1(self._traced_env, f"{name}.mjml.j2", context)
        clean, where = origins(marked)
        if clean != mjml_source:  # cannot happen with deterministic templates; stay safe
            where = []
        fallback = f"{name}.mjml.j2"
        if failure is not None:
            # MRML sometimes says where ("at position 16:26", character offsets).
            match = re.search(r" at position (\d+):\d+", str(failure))
            line = mjml_source.count("\n", 0, int(match.group(1))) + 1 if match else 0
            reason = re.sub(r" at position \d+:\d+", "", str(failure))
            broken = [(line, reason)]
        return ContentError(list(located(broken, where, fallback)))

    def mjml_per_recipient(self, day: int, recipient: Recipient) -> str:
        """The naive way, for the benchmark only: Jinja and MJML for every single reader."""
        lesson = self.course.lesson(day)
        context = {"lesson": lesson, **_bodies(lesson.body, self.course.brand.primary)}
        template = self._html_env.get_template("lesson.mjml.j2")
        view = {f: getattr(recipient, f) for f in RECIPIENT_FIELDS}
        view["first_name"] = view["first_name"] or GREETING_FALLBACK
        from mjml import mjml2html

        return mjml2html(template.render(course=self.course, recipient=view, **context))

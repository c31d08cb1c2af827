"""Find broken MJML and say which template line made it.

mjml-python (MRML) is lenient: it silently drops an element it does not know (``<mj-sectoin>``)
and accepts a mismatched closing tag, and when it does refuse, the message has no line. Stage 1
output is Jinja-generated, so a line in it is not a line in any file a marketer edits. This
module checks the generated MJML's structure (known ``mj-*`` tags, balanced nesting) and maps
each problem back to ``emails/<template>:<line>`` by rendering once more with line markers in
the template text (only when something is wrong, so a clean compile costs one parse).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser

from jinja2.ext import Extension
from jinja2.lexer import Token, TokenStream

# Every element MJML 4 defines (head and body); children of <mj-attributes> are these too.
KNOWN = frozenset(
    """mjml mj-head mj-body mj-attributes mj-all mj-class mj-breakpoint mj-font
    mj-html-attributes mj-html-attribute mj-selector mj-preview mj-style mj-title mj-raw
    mj-include mj-accordion mj-accordion-element mj-accordion-title mj-accordion-text
    mj-button mj-carousel mj-carousel-image mj-column mj-divider mj-group mj-hero mj-image
    mj-navbar mj-navbar-link mj-section mj-social mj-social-element mj-spacer mj-table
    mj-text mj-wrapper""".split()  # noqa: SIM905 - a word list reads better here
)
# Elements whose content is HTML or CSS for MJML: tags inside them are not MJML structure.
OPAQUE = frozenset({"mj-text", "mj-raw", "mj-button", "mj-table", "mj-style", "mj-navbar-link"})
MARK = re.compile(r"\x1e([^\x1f]*)\x1f")


class LineMarks(Extension):
    """Jinja extension: prefix every line of template text with ``\\x1e<name>:<line>\\x1f``."""

    def filter_stream(self, stream: TokenStream) -> Iterable[Token]:
        name = stream.name or "?"
        for token in stream:
            if token.type != "data":
                yield token
                continue
            pieces = token.value.split("\n")
            marked = [
                f"\x1e{name}:{token.lineno + i}\x1f{piece}" if piece.strip() else piece
                for i, piece in enumerate(pieces)
            ]
            yield Token(token.lineno, "data", "\n".join(marked))


def origins(marked: str) -> tuple[str, list[str]]:
    """The text without markers, and for each of its lines the template line it came from."""
    lines, where, current = [], [], ""
    for line in marked.split("\n"):
        found = MARK.findall(line)
        if found:
            current = found[0]
        where.append(current)
        lines.append(MARK.sub("", line))
    return "\n".join(lines), where


class _Structure(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, int]] = []
        self.problems: list[tuple[int, str]] = []

    def _inside(self) -> tuple[str, int] | None:
        return self.stack[-1] if self.stack and self.stack[-1][0] in OPAQUE else None

    def _stray(self, shown: str) -> None:
        # MJML tags inside <mj-text> & co. mean its closing tag is missing or misspelt: MJML
        # would swallow everything up to the next matching close as HTML.
        tag, _ = self.stack.pop()
        self.problems.append((self.getpos()[0], f"{shown} inside <{tag}>: close <{tag}> first"))

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if not (tag == "mjml" or tag.startswith("mj-")):
            return
        if self._inside():
            self._stray(f"<{tag}>")
        line = self.getpos()[0]
        if tag not in KNOWN:
            self.problems.append((line, f"<{tag}> is not an MJML element (MJML drops it)"))
        self.stack.append((tag, line))

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if not tag.startswith("mj-"):
            return
        if self._inside():
            self._stray(f"<{tag}/>")
        if tag not in KNOWN:
            line = self.getpos()[0]
            self.problems.append((line, f"<{tag}> is not an MJML element (MJML drops it)"))

    def handle_endtag(self, tag: str) -> None:
        if not (tag == "mjml" or tag.startswith("mj-")):
            return
        line = self.getpos()[0]
        inside = self._inside()
        if inside and inside[0] != tag:
            if tag not in KNOWN:  # a misspelt close of the element we are in
                self.stack.pop()
                self.problems.append((line, f"</{tag}> is not MJML: close with </{inside[0]}>"))
                return
            self._stray(f"</{tag}>")
        if not self.stack:
            self.problems.append((line, f"</{tag}> closes nothing"))
            return
        open_tag, opened = self.stack[-1]
        if open_tag == tag:
            self.stack.pop()
            return
        if any(t == tag for t, _ in self.stack):
            # The innermost open element was never closed.
            self.problems.append((opened, f"<{open_tag}> is not closed before </{tag}>"))
            while self.stack and self.stack[-1][0] != tag:
                self.stack.pop()
            self.stack.pop()
        else:
            self.problems.append((line, f"</{tag}> does not match <{open_tag}>"))


def structure_problems(source: str) -> list[tuple[int, str]]:
    """(1-based line, message) for each structural MJML problem in `source`."""
    parser = _Structure()
    parser.feed(source)
    parser.close()
    problems = list(parser.problems)
    problems.extend((line, f"<{tag}> is never closed") for tag, line in parser.stack)
    return problems


def located(problems: list[tuple[int, str]], where: list[str], fallback: str) -> Iterator[str]:
    """``emails/<template>:<line>: MJML: <message>`` for each problem."""
    for line, message in problems:
        origin = where[line - 1] if 0 < line <= len(where) and where[line - 1] else fallback
        yield f"emails/{origin}: MJML: {message}"

"""`check` on the Markdown of lessons, the welcome and newsletters: what a reader would get
that the marketer did not mean, at the file's line.

- Links and images: a link that is not https (warning), an image without alt text (error) or
  on plain http (warning), and a relative address (``images/psoas.png``, ``/videos/day-1``):
  an email has no base address, so the image is broken (error) and the link leads nowhere
  (warning).
- Raw HTML (``<b>folded</b>``, ``<div>``): the email renders Markdown with raw HTML off, so a
  reader sees the tags as typed. Found by markdown-it's own ``html_inline``/``html_block``
  tokens, each named with the Markdown that does the same (warning).
- Merge tags (``{{ first_name }}``, ``{% if %}``, ``*|FNAME|*``) in the body or in a front
  matter value: Markdown and front matter are sent as written; template variables work only in
  ``emails/*.j2`` (warning).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

from markdown_it.token import Token

from dripmail.front_matter import Reports, key_line

Kind = Literal["lesson", "newsletter", "welcome"]

# Jinja's {{ }} and {% %} (the templates' own syntax, the first thing people try) and
# Mailchimp's *|FNAME|*.
MERGE_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\*\|\w+\|\*", re.DOTALL)
_TAG = re.compile(r"<\s*(/?)\s*([A-Za-z][A-Za-z0-9-]*)")
# The Markdown that does what a raw HTML tag was meant to do.
_MARKDOWN_FOR = {
    "b": "**bold**",
    "strong": "**bold**",
    "i": "*italic*",
    "em": "*italic*",
    "u": "*italic* (email has no underline but links)",
    "a": "[link text](https://...)",
    "img": "![what the picture shows](https://...)",
    "br": "a blank line between paragraphs (or a \\ at the end of the line)",
    "p": "paragraphs separated by a blank line",
    "div": "paragraphs separated by a blank line",
    "span": "plain text (or **bold** / *italic*)",
    "font": "plain text (the layout sets fonts and colours)",
    "center": "plain text (the layout sets the alignment)",
    "h1": "## Heading (the email's title is the subject)",
    "h2": "## Heading",
    "h3": "### Heading",
    "h4": "### Heading",
    "ul": "lines starting with - ",
    "li": "lines starting with - (or 1. for steps)",
    "ol": "lines starting with 1. 2. 3.",
    "blockquote": "lines starting with > ",
    "code": "`code`",
    "pre": "lines indented by four spaces",
    "hr": "*** on a line of its own",
}


def _templates(kind: Kind) -> str:
    return f"emails/{kind}.mjml.j2 and emails/{kind}.txt.j2"


def is_relative(url: str) -> bool:
    """True for an address without a scheme (``images/a.png``, ``/videos/1``, ``#top``)."""
    return not urlsplit(url.strip()).scheme


def relative_image(src: str) -> str:
    """The error for an image a mail client cannot load: no full address."""
    return (
        f"image is relative ({src}): an email has no base address, so readers see a broken "
        "image — use a full https:// URL"
    )


def relative_link(href: str) -> str:
    """The warning for a link with no full address."""
    return (
        f"link is relative ({href}): an email has no base address, so it leads nowhere — use "
        "a full https:// URL"
    )


def insecure_image(src: str) -> str:
    """The warning for an image loaded over plain http (clients block or flag it)."""
    return f"image is not https ({src}): mail clients block or flag it"


def merge_tag(tag: str, kind: Kind) -> str:
    """The warning for a merge tag written in Markdown or front matter."""
    shown = " ".join(tag.split())
    said = f"{shown} is sent as written (Markdown and front matter are not templates)"
    if tag.startswith("{%"):
        return (
            f"{said} — write the text every reader gets; conditions and loops work only in "
            f"the templates ({_templates(kind)})"
        )
    if "name" in tag.lower():
        return (
            f"{said} — delete it: the greeting with the reader's first name is already in "
            f"{_templates(kind)}, where {{{{ recipient.first_name }}}} works"
        )
    return (
        f"{said} — write the text itself; template variables work only in the templates "
        f"({_templates(kind)})"
    )


def raw_html(tag: str, name: str) -> str:
    """The warning for raw HTML in Markdown, with the Markdown that does the same."""
    if tag.startswith("<!--"):
        return "an HTML comment is shown to readers as typed — delete it"
    meant = _MARKDOWN_FOR.get(name.lower())
    instead = f"write {meant} instead" if meant else "write it in Markdown or delete it"
    return (
        f"raw HTML <{name}> is shown to readers as typed (emails are made from the Markdown "
        f"only) — {instead}"
    )


class _Lines:
    """The file line of text found in one block's source, searched in order."""

    def __init__(self, token: Token, first_line: int) -> None:
        self.content = token.content
        self.top = first_line + (token.map[0] if token.map else 0)
        self.cursor = 0

    def of(self, needle: str) -> int:
        found = self.content.find(needle, self.cursor) if needle else -1
        if found < 0:
            return self.top
        self.cursor = found + len(needle)
        return self.top + self.content.count("\n", 0, found)

    def at(self, offset: int) -> int:
        return self.top + self.content.count("\n", 0, offset)


def _inline(tokens: list[Token]) -> Iterator[Token]:
    return (t for t in tokens if t.type == "inline" and t.children is not None)


def check_markdown(body: str, where: str, first_line: int, problems: Reports, kind: Kind) -> None:
    """Report links, images, raw HTML and merge tags of a Markdown body at their file line.

    `first_line` is the file's 1-based line where the body starts.
    """
    from dripmail.markdown import parse, parse_raw_html

    for token in _inline(parse(body)):
        lines = _Lines(token, first_line)
        for child in token.children or []:
            if child.type == "link_open":
                href = str(child.attrGet("href") or "")
                line = lines.of(f"]({href}") if href else lines.top
                if href.startswith(("mailto:", "https://")):
                    continue
                if is_relative(href):
                    problems.warn(where, line, relative_link(href))
                else:
                    problems.warn(where, line, f"link is not https ({href})")
            elif child.type == "image":
                src = str(child.attrGet("src") or "")
                line = lines.of(f"]({src}") if src else lines.top
                if not child.content.strip():
                    problems.error(where, line, f"image without alt text ({src})")
                if is_relative(src):
                    problems.error(where, line, relative_image(src))
                elif src.startswith("http://"):
                    problems.warn(where, line, insecure_image(src))
        _merge_tags(token, lines, where, problems, kind)
    for token in parse_raw_html(body):
        if token.type == "html_block":
            _raw_html(
                token.content, first_line + (token.map[0] if token.map else 0), where, problems
            )
        elif token.type == "inline":
            lines = _Lines(token, first_line)
            for child in token.children or []:
                if child.type == "html_inline":
                    _raw_html(child.content, lines.of(child.content), where, problems)


def _raw_html(source: str, line: int, where: str, problems: Reports) -> None:
    text = source.lstrip()
    if text.startswith("<!--"):
        problems.warn(where, line, raw_html(text, ""))
        return
    match = _TAG.match(text)
    if match is None or match.group(1):
        return  # a closing tag: its opening one was reported
    problems.warn(where, line, raw_html(text, match.group(2)))


def _merge_tags(token: Token, lines: _Lines, where: str, problems: Reports, kind: Kind) -> None:
    # Code spans show braces on purpose (a newsletter about templates): blank them out,
    # keeping offsets, before looking.
    source = token.content
    for child in token.children or []:
        if child.type == "code_inline" and child.content:
            span = f"{child.markup}{child.content}{child.markup}"
            source = source.replace(span, " " * len(span), 1)
    for match in MERGE_TAG.finditer(source):
        problems.warn(where, lines.at(match.start()), merge_tag(match.group(), kind))


def check_front_matter_text(
    meta: dict[str, Any], head: list[str], where: str, problems: Reports, kind: Kind
) -> None:
    """Merge tags in front matter values (a subject, a safety note), at the key's line."""
    for key, value in meta.items():
        for text in _strings(value):
            for match in MERGE_TAG.finditer(text):
                problems.warn(
                    where, key_line(head, str(key)) or 1, f"{key}: {merge_tag(match.group(), kind)}"
                )


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)

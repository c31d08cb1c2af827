"""Markdown for lessons and newsletters: HTML for the email body, plain text for the text part.

CommonMark via markdown-it-py with raw HTML off: a lesson file cannot smuggle markup into the
email (`check` warns where raw HTML would be shown as typed: `dripmail.markdown_checks`).
The plain-text part is built from the same tokens, so it follows the lesson's own structure
(headings, numbered steps, links written out) instead of being scraped from HTML.
"""

from __future__ import annotations

import textwrap
from functools import lru_cache

from markdown_it import MarkdownIt
from markdown_it.token import Token

ITEM, ITEM_END = "\x00item:", "\x00"


@lru_cache(maxsize=1)
def _md() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "typographer": False})


@lru_cache(maxsize=1)
def _md_with_html() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": True, "typographer": False})


def parse(source: str) -> list[Token]:
    """The token stream of a Markdown text."""
    return _md().parse(source)


def parse_raw_html(source: str) -> list[Token]:
    """The token stream with raw HTML recognised (``html_block``, ``html_inline`` tokens).

    Only for `check`: the email itself is rendered with raw HTML off, so every such token is
    text a reader sees as typed.
    """
    return _md_with_html().parse(source)


def to_html(source: str) -> str:
    """Markdown rendered to HTML (raw HTML in the source is shown as text)."""
    return _md().render(source)


def _inline_text(token: Token) -> str:
    out: list[str] = []
    links: list[tuple[str, int]] = []  # per open link: its href, where its text starts
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            out.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            out.append(" " if child.type == "softbreak" else "\n")
        elif child.type == "link_open":
            links.append((str(child.attrGet("href") or ""), len(out)))
        elif child.type == "link_close":
            href, start = links.pop() if links else ("", len(out))
            # A mailto link shows its address, as other links show their URL; a link whose
            # text already is its target (an autolink, <https://...>) is not written twice.
            target = href
            if href.startswith("mailto:"):
                target = href.removeprefix("mailto:").split("?")[0]  # no ?subject=...
            if target and target not in "".join(out[start:]):
                out.append(f" ({target})")
        elif child.type == "image":
            out.append(f"[{child.content}]")
    return "".join(out)


def _fill(text: str, width: int, first: str, rest: str) -> str:
    """Wrap at spaces only: a URL (or any long word) stays whole on a line of its own, since
    no mail client joins a link broken across lines (textwrap's defaults split at hyphens
    and cut words longer than the width)."""
    return textwrap.fill(
        text,
        width,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


def to_text(source: str, width: int = 72) -> str:
    """Markdown as readable plain text: headings in capitals, lists numbered, links in brackets."""
    blocks: list[str] = []
    stack: list[list[int | str]] = []  # per open list: [kind, next number]
    prefix = ""
    tokens = parse(source)
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            inline = tokens[index + 1]
            title = _inline_text(inline)
            blocks.append(title.upper() if token.tag == "h2" else title)
        elif token.type == "bullet_list_open":
            stack.append(["bullet", 0])
        elif token.type == "ordered_list_open":
            start = token.attrGet("start")
            stack.append(["ordered", int(start) if start else 1])
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            stack.pop()
        elif token.type == "list_item_open" and stack:
            kind, number = stack[-1]
            if kind == "ordered":
                prefix = f"{number}. "
                stack[-1][1] = int(number) + 1
            else:
                prefix = "- "
        elif token.type == "inline" and tokens[index - 1].type == "paragraph_open":
            text = _inline_text(token)
            indent = "   " * max(0, len(stack) - 1)
            if prefix:
                lead = indent + prefix
                body = _fill(text, width, lead, " " * len(lead))
                prefix = ""
                # Items of one list stay together: no blank line between steps.
                blocks.append(ITEM + body)
            else:
                blocks.append(_fill(text, width, indent, indent))
        elif token.type in ("fence", "code_block"):
            blocks.append(textwrap.indent(token.content.rstrip("\n"), "    "))
        elif token.type == "hr":
            blocks.append("-" * 8)
    out = ""
    for block in blocks:
        if block.startswith(ITEM):
            joiner = "\n" if out.endswith(ITEM_END) else "\n\n"
            block = block[len(ITEM) :] + ITEM_END
        else:
            joiner = "\n\n"
        out = (out + joiner + block) if out else block
    return out.replace(ITEM_END, "").strip() + "\n"

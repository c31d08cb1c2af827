"""Reading course files: UTF-8 text (a byte-order mark accepted) and YAML front matter.

Lessons, `course/welcome.md` and newsletters all start with front matter between two ``---``
lines. It is read with python-frontmatter and PyYAML's safe loader, with one change: a key
written twice in the same mapping is an error naming both lines, where YAML would silently
keep the last one (an older draft's subject sent to every reader).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Protocol

import frontmatter
import yaml
from frontmatter.default_handlers import YAMLHandler

# Windows Notepad and some editors save UTF-8 with this mark first; the "utf-8-sig" codec
# drops it, so the first line is read as the "---" it looks like.
CONTENT_ENCODING = "utf-8-sig"
_BOM = b"\xef\xbb\xbf"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class Reports(Protocol):
    """Where problems go (`dripmail.content.Problems`)."""

    def error(self, where: str, line: int | None, message: str) -> None: ...
    def warn(self, where: str, line: int | None, message: str) -> None: ...


def not_utf8(exc: UnicodeDecodeError) -> tuple[int, str]:
    """(1-based line, message) for a file that is not UTF-8 text; templates say the same.

    The message names the byte and its column on that line (1-based, in characters), which
    is what an editor shows, not the byte offset in the file.
    """
    data = exc.object if isinstance(exc.object, bytes) else bytes(exc.object)
    line = data.count(b"\n", 0, exc.start) + 1
    begin = data.rfind(b"\n", 0, exc.start) + 1
    prefix = data[begin : exc.start]
    if begin == 0 and prefix.startswith(_BOM):
        prefix = prefix[len(_BOM) :]
    column = len(prefix.decode("utf-8", errors="replace")) + 1
    return line, (
        f"cannot read: not UTF-8 text (byte {data[exc.start]:#04x} at column {column}) "
        "— save it as UTF-8"
    )


def read_text(path: Path, where: str, problems: Reports) -> str | None:
    """A file's UTF-8 text (without a byte-order mark), or None after reporting why not."""
    try:
        return path.read_text(encoding=CONTENT_ENCODING)
    except UnicodeDecodeError as exc:
        line, message = not_utf8(exc)
        problems.error(where, line, message)
    except OSError as exc:
        problems.error(where, None, f"cannot read ({exc.strerror or exc})")
    return None


def key_line(lines: list[str], key: str, start: int = 0, stop: int | None = None) -> int | None:
    """1-based line of ``key:`` or ``key =`` within lines[start:stop]."""
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*[:=]")
    for number, text in enumerate(lines[start:stop], start=start + 1):
        if pattern.match(text):
            return number
    return None


def unknown_field(key: str, known: Collection[str]) -> str:
    """``NAME: unknown field``, with the closest known name (difflib) or the list of them."""
    close = get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    if close:
        return f"{key}: unknown field (did you mean '{close[0]}'?)"
    return f"{key}: unknown field (the fields are: {', '.join(sorted(known))})"


@dataclass(frozen=True, slots=True)
class Twice:
    """A key written twice in one mapping: its name and both 1-based file lines."""

    key: str
    first: int
    second: int


# libyaml's parser where PyYAML was built with it (the wheels are): the pure-Python scanner
# made loading the course six times slower (68 ms against 10 ms for seven lessons), and
# every command and every reload of `serve` or `run --loop` loads it.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _NoDuplicatesLoader(_SafeLoader):
    """PyYAML's safe loader that records every key written twice in the same mapping."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.twice: list[Twice] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # "<<" merges are meant to be overridden; complex keys are rare
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: YAML's own constructor says so
            if first is None:
                seen[key] = line
            else:
                # python-frontmatter hands YAML the text after the opening "---" with its
                # newline, so YAML's 0-based line N is the file's line N + 1.
                self.twice.append(Twice(str(key), first + 1, line + 1))
        return super().construct_mapping(node, deep=deep)


class _Handler(YAMLHandler):
    """python-frontmatter's YAML handler, loading with `_NoDuplicatesLoader`."""

    def __init__(self) -> None:
        super().__init__()
        self.twice: list[Twice] = []

    def load(self, fm: str, **kwargs: object) -> Any:
        loader = _NoDuplicatesLoader(fm)
        try:
            return loader.get_single_data()
        finally:
            self.twice = loader.twice
            loader.dispose()


@dataclass(frozen=True, slots=True)
class FrontMatter:
    """A course file split: its metadata, the Markdown body and where each is."""

    meta: dict[str, Any]
    body: str
    head: list[str]  # the file's lines up to the closing "---"
    body_line: int  # 1-based line where the body starts

    def line(self, key: str) -> int | None:
        """The line that writes `key` (top level or nested), or None."""
        return key_line(self.head, key)


def read_front_matter(path: Path, where: str, problems: Reports) -> FrontMatter | None:
    """The front matter and body of a course file, or None after reporting the problem.

    Errors (one line each, at the file's line): not UTF-8, no or unclosed front matter, YAML
    that does not parse (a tab is named as such), not a mapping, a key written twice.
    """
    text = read_text(path, where, problems)
    if text is None:
        return None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        problems.error(where, 1, "front matter missing: start the file with a line of ---")
        return None
    try:
        close = next(i for i, t in enumerate(lines[1:], start=1) if t.strip() == "---")
    except StopIteration:
        problems.error(where, 1, "front matter not closed: add a line of --- after it")
        return None
    handler = _Handler()
    try:
        post = frontmatter.loads(text, handler=handler)
    except yaml.YAMLError as exc:
        # The context mark (where the broken construct began) is the line a person needs
        # to look at; YAML's 0-based line N is the file's line N + 1 (see the loader).
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        tabbed = next((i + 1 for i, t in enumerate(lines[1:close], start=1) if "\t" in t), None)
        if tabbed is not None:
            # YAML forbids tabs for indentation, and its own words ("found character that
            # cannot start any token") do not say that a tab is the character.
            problems.error(
                where,
                tabbed,
                "front matter has a tab: YAML allows only spaces there; replace the tab with "
                "spaces (or remove the indentation)",
            )
            return None
        problems.error(where, line, f"front matter is not valid YAML: {reason}")
        return None
    # python-frontmatter turns front matter that is not a mapping (a list, a bare string) into
    # {} without a word; a person wrote something there, so say what is expected.
    written = any(t.strip() and not t.lstrip().startswith("#") for t in lines[1:close])
    if not isinstance(post.metadata, dict) or (written and not post.metadata):
        problems.error(where, 2, "front matter must be key: value lines (e.g. day: 3)")
        return None
    if handler.twice:
        for twice in handler.twice:
            problems.error(
                where,
                twice.second,
                f"{twice.key}: written twice, on lines {twice.first} and {twice.second} "
                f"(only line {twice.second} would be used) — keep one and delete the other",
            )
        return None
    return FrontMatter(post.metadata, post.content, lines[: close + 1], close + 2)

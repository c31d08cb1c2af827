"""The lesson fields a reader sees around the stretch: today at a glance, safety and sources.

Front matter of ``course/day-N-<slug>.md`` (all optional for loading; `check` warns when a
lesson has no safety block or no sources, because the course makes health claims):

```yaml
props: "A mat, a folded blanket, two blocks"
place: "Floor, kneeling"
tomorrow: "One line about tomorrow's lesson."
question: "A question the reader can answer by replying."
safety:                       # "Skip or adapt today if..." for this stretch
  - who: "Hip replacement, back (posterior) approach"
    what: "What to leave out or change today."
stop: "When to stop at once."
sources:                      # the references behind the lesson's claims
  - "Kenhub, Psoas major muscle"
```
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

TEXT_FIELDS = ("props", "place", "tomorrow", "question", "stop")
EXTRA_FIELDS = frozenset({*TEXT_FIELDS, "safety", "sources"})


class _Reports(Protocol):
    def error(self, where: str, line: int | None, message: str) -> None: ...
    def warn(self, where: str, line: int | None, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SafetyNote:
    """One line of a lesson's "skip or adapt today if..." block."""

    who: str  # short: it is also listed in "today at a glance"
    what: str  # what to leave out or change today, for this stretch


@dataclass(frozen=True, slots=True)
class LessonExtras:
    """The optional lesson fields, validated; `as_fields()` feeds `content.Lesson`."""

    props: str | None = None
    place: str | None = None
    tomorrow: str | None = None
    question: str | None = None
    stop: str | None = None
    safety: tuple[SafetyNote, ...] = ()
    sources: tuple[str, ...] = ()

    def as_fields(self) -> dict[str, Any]:
        """The values as keyword arguments named like the front-matter fields."""
        return {name: getattr(self, name) for name in self.__slots__}


def _text(value: object) -> str | None:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value).strip() or None
    return None


def read_extras(
    meta: Mapping[str, Any],
    at: Callable[[str], int | None],
    where: str,
    problems: _Reports,
) -> LessonExtras:
    """The extra fields of one lesson's front matter; problems reported at their line.

    Wrong shapes (a list where text belongs, a safety item without `who`) are errors; a
    missing safety block or missing sources are warnings: the lesson still renders.
    """
    texts: dict[str, str | None] = {}
    for key in TEXT_FIELDS:
        value = meta.get(key)
        texts[key] = _text(value)
        if value is not None and texts[key] is None and not (isinstance(value, str)):
            problems.error(where, at(key), f"{key}: must be text, not {value!r}")
    safety = _safety(meta.get("safety"), at, where, problems)
    sources = _sources(meta.get("sources"), at, where, problems)
    if not safety:
        problems.warn(
            where,
            at("safety") if "safety" in meta else 1,
            "safety: missing: add a 'skip or adapt today if' list for this stretch "
            "(- who: ... / what: ...), e.g. hip replacement, osteoporosis, disc problems, "
            "pregnancy",
        )
    elif texts["stop"] is None:
        problems.warn(
            where, at("safety"), "stop: missing: say when to stop (e.g. pain spreading down a leg)"
        )
    if not sources:
        problems.warn(
            where,
            at("sources") if "sources" in meta else 1,
            "sources: none: list the references behind this lesson's claims "
            "(StatPearls, Kenhub, Gray's, a guideline or a paper)",
        )
    return LessonExtras(safety=safety, sources=sources, **texts)


def _safety(
    value: object, at: Callable[[str], int | None], where: str, problems: _Reports
) -> tuple[SafetyNote, ...]:
    if value is None:
        return ()
    shape = 'a list of "- who: ..." / "what: ..." items'
    if not isinstance(value, list):
        problems.error(where, at("safety"), f"safety: must be {shape}")
        return ()
    notes = []
    for number, item in enumerate(value, start=1):
        who = _text(item.get("who")) if isinstance(item, dict) else None
        what = _text(item.get("what")) if isinstance(item, dict) else None
        if who is None or what is None:
            missing = " and ".join(k for k, v in (("who", who), ("what", what)) if v is None)
            problems.error(where, at("safety"), f"safety: item {number} needs {missing} ({shape})")
            continue
        notes.append(SafetyNote(who=who, what=what))
    return tuple(notes)


def _sources(
    value: object, at: Callable[[str], int | None], where: str, problems: _Reports
) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or any(_text(x) is None for x in items):
        problems.error(where, at("sources"), 'sources: a list of references ("- Kenhub, ...")')
        return ()
    return tuple(str(x).strip() for x in items)

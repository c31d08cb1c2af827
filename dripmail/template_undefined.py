"""What a template typo says: the object as templates name it, and the field meant.

Jinja's own message for ``{{ lesson.titel }}`` is "'dripmail.content.Lesson object' has no
attribute 'titel'", which names a Python class a marketer never sees. `FieldUndefined` says
"lesson has no field 'titel' (did you mean ...?)" instead, suggesting the closest field name
(difflib) or listing the fields when none is close. The renderer reports it at file:line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from difflib import get_close_matches
from typing import Any

from jinja2 import StrictUndefined
from jinja2.utils import missing

# The names templates get (see the README's table of template variables).
TEMPLATE_VARIABLES = (
    "course",
    "lesson",
    "newsletter",
    "welcome",
    "recipient",
    "body_html",
    "body_text",
    "body_top",
    "body_rest",
)
# The email being rendered and the names its templates get (set by the renderer around each
# render), so a variable of another email is said to be missing here, not suggested as itself.
_THIS_EMAIL: ContextVar[tuple[str, tuple[str, ...]] | None] = ContextVar(
    "dripmail_template_email", default=None
)


@contextmanager
def rendering(email: str, names: tuple[str, ...]) -> Iterator[None]:
    """While rendering `email` ("lesson", "welcome", ...), whose templates get `names`."""
    token = _THIS_EMAIL.set((email, names))
    try:
        yield
    finally:
        _THIS_EMAIL.reset(token)


# How templates reach each kind of object, by class name.
_NAMES = {
    "Course": "course",
    "Lesson": "lesson",
    "Newsletter": "newsletter",
    "_RecipientPlaceholders": "recipient",
    "Brand": "course.brand",
    "Mailbox": "course.sender",
}
# Words people reach for that a field of another name holds: (owner, word) -> field.
_MEANT = {
    ("lesson", "title"): "subject",
    ("lesson", "heading"): "subject",
    ("newsletter", "title"): "subject",
    ("lesson", "summary"): "preheader",
    ("newsletter", "summary"): "preheader",
    ("recipient", "name"): "first_name",
}
# Fields that exist on the objects but are not for templates.
_INTERNAL = frozenset({"path", "body_line", "root", "body"})


def fields_of(obj: Any) -> list[str]:
    """The field names a template may use on `obj` (dataclass fields, mapping keys, recipient)."""
    if type(obj).__name__ == "_RecipientPlaceholders":
        from dripmail.render import RECIPIENT_FIELDS

        return list(RECIPIENT_FIELDS)
    if dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj) if f.name not in _INTERNAL]
    if isinstance(obj, dict):
        return [str(k) for k in obj]
    return []


def _suggest(owner: str, name: str, choices: list[str]) -> str:
    close = get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    words = [word for (who, word) in _MEANT if who == owner]
    meant = get_close_matches(name, words, n=1, cutoff=0.6)
    if meant:
        field = _MEANT[(owner, meant[0])]
        return f" (did you mean {field!r}? the {owner}'s {meant[0]} is its {field})"
    return f" (its fields: {', '.join(choices)})" if choices else ""


def undefined_message(obj: Any, name: Any, hint: str | None) -> str:
    """One line for an undefined variable, field or element, with a suggestion."""
    if hint:
        return hint
    if obj is missing:
        return _unknown_variable(str(name))
    owner = _NAMES.get(type(obj).__name__, type(obj).__name__.lower())
    what = "field" if isinstance(name, str) else "element"
    return f"{owner} has no {what} {name!r}{_suggest(owner, str(name), fields_of(obj))}"


def _unknown_variable(name: str) -> str:
    this = _THIS_EMAIL.get()
    email, names = this if this is not None else ("", TEMPLATE_VARIABLES)
    listed = ", ".join(names)
    if this is not None and name in TEMPLATE_VARIABLES:
        # e.g. `lesson` in the welcome email: a real name, of another email.
        return f"variable {name!r} is not available in the {email} email — it has: {listed}"
    close = get_close_matches(name, [x for x in names if x != name], n=1, cutoff=0.6)
    if close:
        return f"unknown variable {name!r} (did you mean {close[0]!r}?)"
    return f"unknown variable {name!r}" + (f" (the {email} email has: {listed})" if this else "")


class FieldUndefined(StrictUndefined):
    """`StrictUndefined` (any use is an error) with `undefined_message`'s wording."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        return undefined_message(self._undefined_obj, self._undefined_name, self._undefined_hint)

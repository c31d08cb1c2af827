"""Turn personalised messages into shared templates plus per-recipient values.

SendGrid (``personalizations`` + ``substitutions``) and Mailgun (``recipient-variables`` +
``%recipient.x%``) send one body to many recipients, with per-recipient values substituted by
the provider. dripmail renders every message in full, so this module works backwards: in each
message it replaces what differs per reader (every URL, which holds the signed unsubscribe and
preferences tokens, the address and the first name) by numbered placeholders, then groups the
messages whose templates are identical. Values equal across a whole group are put back into the
template, so only real differences travel per recipient.

Correctness does not rest on guessing what varies: a template is used only if substituting the
values back reproduces the rendered message exactly; anything else goes out on its own,
unchanged. So the worst case is one request per message, never a wrong email.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dripmail.message import Message

URL = re.compile(r"https?://[^\s\"'<>()\[\]{}|\\^`]+")


@dataclass
class Member:
    """One message in a group: its position in the batch and its placeholder values."""

    index: int
    message: Message
    values: dict[str, str]


@dataclass
class Group:
    """Messages sharing one template (``parts``: field name -> template text)."""

    parts: dict[str, str]
    members: list[Member] = field(default_factory=list)
    templated: bool = True  # False: a single message sent as rendered, no placeholders


def _candidates(message: Message, texts: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for text in texts:
        for match in URL.finditer(text):
            seen.setdefault(match.group(0), None)
    seen.setdefault(message.to.address, None)
    if len(message.to.name) >= 2:
        seen.setdefault(message.to.name, None)
    return list(seen)


def _templatise(
    message: Message, parts: dict[str, str], placeholder: Callable[[str], str], marker: str
) -> tuple[dict[str, str], dict[str, str]] | None:
    """(templates, values) for one message, or None when it cannot be templated safely."""
    if any(marker in text for text in parts.values()):
        return None
    values = _candidates(message, list(parts.values()))
    names = {value: f"v{i}" for i, value in enumerate(values)}
    templates = dict(parts)
    # Longest first, so a value inside a longer one (a name inside a URL) is not cut apart.
    for value in sorted(values, key=len, reverse=True):
        if marker in value:
            return None
        tag = placeholder(names[value])
        templates = {k: t.replace(value, tag) for k, t in templates.items()}
    used = {
        names[v]: v for v in values if any(placeholder(names[v]) in t for t in templates.values())
    }
    if fill(templates, used, placeholder) != parts:
        return None
    return templates, used


def fill(templates: dict[str, str], values: dict[str, str], placeholder: Callable[[str], str]):
    """What the provider does: replace each placeholder by its value."""
    out = {}
    for name, text in templates.items():
        for var, value in values.items():
            text = text.replace(placeholder(var), value)
        out[name] = text
    return out


def group_messages(
    messages: Sequence[Message],
    parts_of: Callable[[Message], dict[str, str]],
    shared_of: Callable[[Message], tuple],
    placeholder: Callable[[str], str],
    max_size: int,
) -> list[Group]:
    """Group `messages` by identical templates (and identical `shared_of` values).

    `parts_of` gives the texts the provider substitutes in (body, maybe subject and headers);
    `shared_of` what must be equal to share one request (sender, reply-to, tags, ...). A group
    never holds one address twice (providers key per-recipient values by address) and never
    more than `max_size` members.
    """
    marker = placeholder("\0").split("\0")[0]  # the fixed prefix of every placeholder
    groups: dict[tuple, list[Group]] = {}
    singles: list[Group] = []
    for index, message in enumerate(messages):
        parts = parts_of(message)
        shaped = _templatise(message, parts, placeholder, marker)
        if shaped is None:
            singles.append(Group(parts, [Member(index, message, {})], templated=False))
            continue
        templates, values = shaped
        key = (tuple(sorted(templates.items())), shared_of(message))
        bucket = groups.setdefault(key, [])
        for group in bucket:
            if len(group.members) < max_size and all(
                m.message.to.address.lower() != message.to.address.lower() for m in group.members
            ):
                group.members.append(Member(index, message, values))
                break
        else:
            bucket.append(Group(dict(templates), [Member(index, message, values)]))
    out = [g for bucket in groups.values() for g in bucket]
    for group in out:
        _inline_constants(group, placeholder)
    return out + singles


def _inline_constants(group: Group, placeholder: Callable[[str], str]) -> None:
    """Put values shared by every member back into the template (smaller requests)."""
    first = group.members[0].values
    constant = {
        name: value
        for name, value in first.items()
        if all(m.values.get(name) == value for m in group.members[1:])
    }
    if not constant:
        return
    group.parts = fill(group.parts, constant, placeholder)
    for member in group.members:
        member.values = {k: v for k, v in member.values.items() if k not in constant}

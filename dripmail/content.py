"""Load and validate the course (`course/course.toml` + one Markdown file per day) and newsletters.

Files are read once into immutable values. Every problem is reported as one line naming the
file, the line and the field (``course/day-3-twist.md:4: video_url: not a URL ("htp://x")``);
`load_course` collects all of them before raising, so one `check` shows everything to fix.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dripmail.config import Project
from dripmail.errors import ContentError, NotFoundError
from dripmail.front_matter import (
    CONTENT_ENCODING,
    key_line,
    not_utf8,
    read_front_matter,
    unknown_field,
)
from dripmail.lesson_extras import EXTRA_FIELDS, SafetyNote, read_extras
from dripmail.markdown_checks import check_front_matter_text, check_markdown, insecure_image
from dripmail.message import Mailbox
from dripmail.welcome import WELCOME_FILE, Welcome, read_welcome

COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
SEGMENT = re.compile(r"^(all|in-course|graduates|tag:[A-Za-z0-9_-]+)$")
LESSON_FIELDS = {
    "day",
    "slug",
    "subject",
    "preheader",
    "stretch",
    "duration",
    "video_url",
    "video_thumbnail",
    "video_thumbnail_alt",
    "image",
    "image_alt",
    *EXTRA_FIELDS,
}
# `sources` are the references behind the issue's claims, for the reviewing teacher.
NEWSLETTER_FIELDS = frozenset({"subject", "preheader", "segment", "sources"})
IGNORED = "— it is ignored: correct its name or delete the line"


@dataclass(frozen=True, slots=True)
class Brand:
    """Colours and wordmark/logo from ``[brand]`` in course.toml."""

    primary: str
    background: str
    text: str
    muted: str
    wordmark: str
    logo_url: str | None
    logo_alt: str


@dataclass(frozen=True, slots=True)
class Teacher:
    """Who signs the lessons (``[teacher]`` in course.toml); replies reach the reply-to."""

    name: str
    role: str


@dataclass(frozen=True, slots=True)
class Lesson:
    """One day of the course: front matter fields plus the Markdown body."""

    day: int
    slug: str
    subject: str
    preheader: str
    stretch: str
    duration: str
    video_url: str
    video_thumbnail: str
    video_thumbnail_alt: str
    image: str | None
    image_alt: str | None
    body: str
    path: Path
    body_line: int
    # Today at a glance, safety and sources (dripmail.lesson_extras).
    props: str | None = None
    place: str | None = None
    tomorrow: str | None = None
    question: str | None = None
    stop: str | None = None
    safety: tuple[SafetyNote, ...] = ()
    sources: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Course:
    """The whole course, validated."""

    id: str
    title: str
    sender: Mailbox
    reply_to: Mailbox | None
    postal_address: str
    send_time: time
    timezone: str
    start: str
    skip_weekends: bool
    site_url: str
    brand: Brand
    lessons: tuple[Lesson, ...]
    root: Path
    teacher: Teacher | None = None
    welcome: Welcome | None = None  # course/welcome.md, sent once after confirmation

    def lesson(self, day: int) -> Lesson:
        """The lesson of `day`; NotFoundError naming the days that exist."""
        for lesson in self.lessons:
            if lesson.day == day:
                return lesson
        have = ", ".join(str(x.day) for x in self.lessons)
        raise NotFoundError(f"no lesson for day {day}: the course has days {have}")


@dataclass(frozen=True, slots=True)
class Newsletter:
    """One newsletter issue from ``newsletters/<slug>.md``."""

    slug: str
    subject: str
    preheader: str
    segment: str
    body: str
    path: Path
    body_line: int


@dataclass
class Problems:
    """Errors and warnings found while loading, each one formatted line."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, where: str, line: int | None, message: str) -> None:
        self.errors.append(_at(where, line, message))

    def warn(self, where: str, line: int | None, message: str) -> None:
        self.warnings.append(_at(where, line, message))


def _at(where: str, line: int | None, message: str) -> str:
    return f"{where}:{line}: {message}" if line else f"{where}: {message}"


def url_problem(value: object) -> str | None:
    """Why `value` is not an absolute http(s) URL, or None when it is one."""
    if not isinstance(value, str) or not value.strip():
        return "missing (an https:// URL)"
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in value.strip():
        return f'not a URL ("{value}")'
    return None


# -- course.toml -------------------------------------------------------------------------


def _toml_sections(lines: list[str]) -> dict[str, tuple[int, int]]:
    """Line ranges (0-based start, stop) of each table; "" is the top level."""
    spans: dict[str, tuple[int, int]] = {}
    current, begin = "", 0
    for index, text in enumerate(lines):
        match = re.match(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*$", text)
        if match:
            spans[current] = (begin, index)
            current, begin = match.group(1), index + 1
    spans[current] = (begin, len(lines))
    return spans


def _load_toml(path: Path, where: str, problems: Problems) -> tuple[dict, list[str]]:
    try:
        text = path.read_text(encoding=CONTENT_ENCODING)
    except FileNotFoundError:
        problems.error(where, None, "missing: every course needs course/course.toml")
        return {}, []
    except UnicodeDecodeError as exc:
        problems.error(where, *not_utf8(exc))
        return {}, []
    except OSError as exc:
        problems.error(where, None, f"cannot read ({exc.strerror or exc})")
        return {}, []
    try:
        return tomllib.loads(text), text.splitlines()
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        line = int(match.group(1)) if match else None
        reason = re.sub(r" \(at line.*", "", str(exc))
        problems.error(where, line, f"not valid TOML: {reason}")
        return {}, []


def _course_settings(
    data: dict, lines: list[str], where: str, problems: Problems
) -> dict[str, Any] | None:
    spans = _toml_sections(lines)

    def line(section: str, key: str) -> int | None:
        begin, stop = spans.get(section, (0, len(lines)))
        return key_line(lines, key, begin, stop) or (begin if section else None)

    def text(section: str, key: str, required: bool = True) -> str:
        table = data.get(section, {}) if section else data
        value = table.get(key) if isinstance(table, dict) else None
        name = f"{section}.{key}" if section else key
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                problems.error(where, line(section, key), f"{name}: missing")
            return ""
        if not isinstance(value, str):
            problems.error(where, line(section, key), f"{name}: must be text, not {value!r}")
            return ""
        return value.strip()

    def mailbox(section: str, required: bool) -> Mailbox | None:
        if section not in data:
            if required:
                problems.error(where, None, f"[{section}]: missing (name and address)")
            return None
        address = text(section, "address")
        if address and "@" not in address:
            problems.error(
                where, line(section, "address"), f'{section}.address: not an address ("{address}")'
            )
        return Mailbox(address, text(section, "name", required=False))

    out: dict[str, Any] = {
        "id": text("", "id"),
        "title": text("", "title"),
        "postal_address": text("", "postal_address"),
        "site_url": text("", "site_url"),
        "timezone": text("", "timezone"),
    }
    if out["id"] and not SLUG.match(out["id"]):
        problems.error(
            where, line("", "id"), f'id: use lowercase letters, digits and "-" ("{out["id"]}")'
        )
    if out["site_url"]:
        issue = url_problem(out["site_url"])
        if issue:
            problems.error(where, line("", "site_url"), f"site_url: {issue}")
        elif not out["site_url"].startswith("https://"):
            problems.warn(where, line("", "site_url"), f"site_url: not https ({out['site_url']})")
    if out["timezone"]:
        from dripmail.errors import InputError
        from dripmail.validation import validate_timezone

        try:
            out["timezone"] = validate_timezone(out["timezone"])
        except InputError as exc:
            problems.error(where, line("", "timezone"), str(exc))
    raw_time = data.get("send_time", "07:00")
    try:
        out["send_time"] = time.fromisoformat(str(raw_time))
    except ValueError:
        problems.error(where, line("", "send_time"), f'send_time: not HH:MM ("{raw_time}")')
        out["send_time"] = time(7)
    out["start"] = data.get("start", "next-morning")
    if out["start"] not in ("next-morning", "immediately"):
        problems.error(
            where,
            line("", "start"),
            f'start: "next-morning" or "immediately", not "{out["start"]}"',
        )
    out["skip_weekends"] = data.get("skip_weekends", False)
    if not isinstance(out["skip_weekends"], bool):
        problems.error(where, line("", "skip_weekends"), "skip_weekends: true or false")
    out["sender"] = mailbox("sender", required=True)
    out["reply_to"] = mailbox("reply_to", required=False)
    colours = {}
    for key in ("primary", "background", "text", "muted"):
        value = text("brand", key)
        if value and not COLOUR.match(value):
            problems.error(
                where, line("brand", key), f'brand.{key}: not a #rrggbb colour ("{value}")'
            )
        colours[key] = value
    logo = text("brand", "logo_url", required=False) or None
    logo_alt = text("brand", "logo_alt", required=False)
    if logo:
        issue = url_problem(logo)
        if issue:
            problems.error(where, line("brand", "logo_url"), f"brand.logo_url: {issue}")
        elif not logo.startswith("https://"):
            problems.warn(
                where, line("brand", "logo_url"), f"brand.logo_url: {insecure_image(logo)}"
            )
        if not logo_alt:
            problems.error(
                where, line("brand", "logo_url"), "brand.logo_alt: a logo needs alt text"
            )
    out["brand"] = Brand(
        wordmark=text("brand", "wordmark", required=False) or out["title"],
        logo_url=logo,
        logo_alt=logo_alt,
        **colours,
    )
    if "teacher" in data:
        name = text("teacher", "name")
        out["teacher"] = Teacher(name, text("teacher", "role", required=False)) if name else None
    known = {"id", "title", "postal_address", "site_url", "timezone", "send_time", "start"}
    known |= {"skip_weekends", "sender", "reply_to", "brand", "teacher"}
    for key in data:
        if key not in known:
            problems.warn(where, line("", key), f"{key}: unknown setting (ignored)")
    return out


# -- Markdown files with front matter -----------------------------------------------------


def _lesson(path: Path, project: Project, problems: Problems) -> Lesson | None:
    where = project.display(path)
    read = read_front_matter(path, where, problems)
    if read is None:
        return None
    meta, body, head, body_line = read.meta, read.body, read.head, read.body_line
    before = len(problems.errors)

    def at(key: str) -> int | None:
        return key_line(head, key) or 1

    def text(key: str, required: bool = True) -> str | None:
        value = meta.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                problems.error(where, at(key) if key in meta else 1, f"{key}: missing")
            return None
        if not isinstance(value, str | int | float):
            problems.error(where, at(key), f"{key}: must be text, not {value!r}")
            return None
        return str(value).strip()

    day = meta.get("day")
    if not isinstance(day, int) or isinstance(day, bool) or not 1 <= day <= 7:
        problems.error(where, at("day"), f"day: a whole number from 1 to 7, not {day!r}")
        day = None
    slug = text("slug")
    if slug and not SLUG.match(slug):
        problems.error(where, at("slug"), f'slug: use lowercase letters, digits and "-" ("{slug}")')
    values = {k: text(k) for k in ("subject", "preheader", "stretch", "duration")}
    for key in ("video_url", "video_thumbnail"):
        value = meta.get(key)
        issue = url_problem(value)
        if issue:
            problems.error(where, at(key) if key in meta else 1, f"{key}: {issue}")
        elif key == "video_thumbnail" and not str(value).startswith("https://"):
            problems.warn(where, at(key), f"{key}: {insecure_image(str(value))}")
        elif not str(value).startswith("https://"):
            problems.warn(where, at(key), f"{key}: not https ({value})")
    alt = text("video_thumbnail_alt")
    image, image_alt = text("image", required=False), text("image_alt", required=False)
    if image:
        issue = url_problem(image)
        if issue:
            problems.error(where, at("image"), f"image: {issue}")
        elif not image.startswith("https://"):
            problems.warn(where, at("image"), f"image: {insecure_image(image)}")
        if not image_alt:
            problems.error(where, at("image"), "image_alt: an image needs alt text")
    subject = values["subject"] or ""
    if len(subject) > 78:
        problems.warn(
            where, at("subject"), f"subject: {len(subject)} characters; phones cut after ~40-60"
        )
    preheader = values["preheader"] or ""
    if preheader and not 20 <= len(preheader) <= 140:
        problems.warn(
            where, at("preheader"), f"preheader: {len(preheader)} characters (aim for 40-110)"
        )
    for key in meta:
        if key not in LESSON_FIELDS:
            problems.warn(where, at(key), f"{unknown_field(key, LESSON_FIELDS)} {IGNORED}")
    extras = read_extras(meta, at, where, problems)
    if not body.strip():
        problems.error(where, body_line, "the lesson has no text after the front matter")
    check_markdown(body, where, body_line, problems, "lesson")
    check_front_matter_text(meta, head, where, problems, "lesson")
    if day is not None and not path.name.startswith(f"day-{day}-"):
        problems.warn(
            where, at("day"), f"day: {day} but the file name does not start with day-{day}-"
        )
    if len(problems.errors) > before or day is None:
        return None
    return Lesson(
        day=day,
        slug=slug or "",
        subject=subject,
        preheader=preheader,
        stretch=values["stretch"] or "",
        duration=values["duration"] or "",
        video_url=str(meta["video_url"]).strip(),
        video_thumbnail=str(meta["video_thumbnail"]).strip(),
        video_thumbnail_alt=alt or "",
        image=image,
        image_alt=image_alt,
        body=body,
        path=path,
        body_line=body_line,
        **extras.as_fields(),
    )


def load_course_checked(project: Project) -> tuple[Course | None, Problems]:
    """The course and every problem found; the course is None when there are errors."""
    problems = Problems()
    toml_path = project.course_dir / "course.toml"
    where = project.display(toml_path)
    data, lines = _load_toml(toml_path, where, problems)
    settings = _course_settings(data, lines, where, problems) if data else None
    files = sorted(project.course_dir.glob("*.md")) if project.course_dir.is_dir() else []
    files = [path for path in files if path.name != WELCOME_FILE]
    lessons = [lesson for path in files if (lesson := _lesson(path, project, problems))]
    by_day: dict[int, list[Lesson]] = {}
    for lesson in lessons:
        by_day.setdefault(lesson.day, []).append(lesson)
    for day, same in sorted(by_day.items()):
        for lesson in same[1:]:
            others = ", ".join(project.display(x.path) for x in same if x is not lesson)
            problems.error(
                project.display(lesson.path),
                _day_line(lesson.path),
                f"day: {day} is also in {others} — give each lesson its own day from 1 to 7",
            )
    unread = unread_markdown(project.course_dir)
    if files or settings:
        missing = [d for d in range(1, 8) if d not in by_day]
        bad_files = len(files) - len(lessons)
        if missing and not bad_files:
            listed = ", ".join(str(d) for d in missing)
            named = [p for p in unread if any(p.name.startswith(f"day-{d}-") for d in missing)]
            unread = [p for p in unread if p not in named]
            hint = "".join(
                f"; {project.display(p)} is not read: rename it to {md_name(p)}" for p in named
            )
            problems.error(
                project.display(project.course_dir),
                None,
                f"no lesson for day {listed}: add course/day-N-<slug>.md for each day 1-7{hint}",
            )
    warn_unread(project, unread, problems)
    welcome = read_welcome(project, problems)
    if problems.errors or settings is None:
        return None, problems
    course = Course(
        lessons=tuple(sorted(lessons, key=lambda x: x.day)),
        root=project.root,
        welcome=welcome,
        **settings,
    )
    return course, problems


# Names people give Markdown files that dripmail does not read (only ``*.md``).
_MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".mdown", ".mkd", ".mkdn", ".txt"})


def md_name(path: Path) -> str:
    """The file name `path` should have to be read: ``day-4-x.markdown`` -> ``day-4-x.md``."""
    base = path.name
    while Path(base).suffix.lower() in _MARKDOWN_SUFFIXES:
        base = Path(base).stem
    return f"{base}.md"


def unread_markdown(folder: Path) -> list[Path]:
    """Markdown-looking files in `folder` that are not read (``.markdown``, ``.MD``,
    ``.md.txt``: only ``*.md`` is read)."""
    if not folder.is_dir():
        return []
    return [
        path
        for path in sorted(folder.iterdir())
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix != ".md"
        and path.suffix.lower() in _MARKDOWN_SUFFIXES
    ]


def warn_unread(project: Project, files: list[Path], problems: Problems) -> None:
    """One warning per file that is not read, with the name it needs."""
    for path in files:
        problems.warn(
            project.display(path),
            None,
            f"not read: only .md files are — rename it to {md_name(path)}",
        )


def _day_line(path: Path) -> int:
    try:
        lines = path.read_text(encoding=CONTENT_ENCODING).splitlines()
    except (OSError, UnicodeDecodeError):
        return 1
    return key_line(lines, "day") or 1


def load_course(project: Project) -> Course:
    """The validated course; ContentError listing every problem (file:line: field: message)."""
    course, problems = load_course_checked(project)
    if course is None:
        raise ContentError(problems.errors)
    return course


def load_newsletter(project: Project, path: Path) -> Newsletter:
    """A newsletter issue; ContentError naming the file, line and field."""
    newsletter, problems = load_newsletter_checked(project, path)
    if newsletter is None:
        raise ContentError(problems.errors)
    return newsletter


def load_newsletter_checked(project: Project, path: Path) -> tuple[Newsletter | None, Problems]:
    """A newsletter issue and its problems (None when there are errors)."""
    problems = Problems()
    path = path if path.is_absolute() else project.root / path
    where = project.display(path)
    if not path.is_file():
        problems.error(where, None, "no such newsletter file")
        return None, problems
    read = read_front_matter(path, where, problems)
    if read is None:
        return None, problems
    meta, body, head, body_line = read.meta, read.body, read.head, read.body_line
    for key in meta:
        if key not in NEWSLETTER_FIELDS:
            # A broadcast cannot be recalled: a misspelt `segment` would mail everyone.
            problems.error(
                where,
                key_line(head, str(key)) or 1,
                f"{unknown_field(str(key), NEWSLETTER_FIELDS)} — nothing is sent while a "
                "newsletter has a field dripmail does not know: correct its name or delete it",
            )
    values = {}
    for key in ("subject", "preheader"):
        value = meta.get(key)
        if not isinstance(value, str) or not value.strip():
            problems.error(where, key_line(head, key) or 1, f"{key}: missing")
        values[key] = str(value or "").strip()
    segment = str(meta.get("segment", "all")).strip()
    if not SEGMENT.match(segment):
        problems.error(
            where,
            key_line(head, "segment") or 1,
            f'segment: all, in-course, graduates or tag:NAME, not "{segment}"',
        )
    if not body.strip():
        problems.error(where, body_line, "the newsletter has no text after the front matter")
    check_markdown(body, where, body_line, problems, "newsletter")
    check_front_matter_text(meta, head, where, problems, "newsletter")
    if problems.errors:
        return None, problems
    return (
        Newsletter(
            slug=path.stem,
            subject=values["subject"],
            preheader=values["preheader"],
            segment=segment,
            body=body,
            path=path,
            body_line=body_line,
        ),
        problems,
    )

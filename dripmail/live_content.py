"""The course as its files are now, for long-running processes (`run --loop`, `serve`).

A process loads `course/`, `emails/` and `newsletters/` once and reuses the loaded course and
its compiled emails; `LiveContent.refresh` (called at the start of each loop pass and each web
request) compares a cheap version of the files (`files_version`: path, size, mtime and inode
of each file, one stat per file) with the one taken before they were loaded, and forgets what
was loaded when it differs, so the next use loads the files as they are now.

Files that do not load are remembered too (their problems, one ``file:line: message`` each),
so a broken course is not parsed again on every request, only after the next edit. Lesson
text is never taken from an earlier version: `course` and `renderer` raise ContentError while
the files are broken. What re-planning and the web pages need from course.toml alone (send
time, zone, weekends, title) stays available through `rules`, so unsubscribe, preferences
and sign-ups keep working while a lesson has a typo.
"""

from __future__ import annotations

import hashlib
import os
import threading
import tomllib
from dataclasses import dataclass
from datetime import time
from typing import TYPE_CHECKING, Any

from dripmail.errors import ContentError, InputError

if TYPE_CHECKING:
    from dripmail.config import Project
    from dripmail.content import Course
    from dripmail.render import Renderer


def files_version(project: Project) -> str:
    """A digest that changes whenever a file in course/, emails/ or newsletters/ changes.

    One `stat` per file and a directory listing per folder (the sample course: about 25
    files): cheap enough to ask on every loop pass and every web request. A file replaced by
    an editor's atomic save or `sed -i` has a new inode even when its size and mtime tick
    are the same.
    """
    digest = hashlib.sha256()
    for folder in (project.course_dir, project.emails_dir, project.newsletters_dir):
        _digest_folder(str(folder), digest)
    return digest.hexdigest()[:16]


def _digest_folder(folder: str, digest: Any) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:  # missing (no newsletters yet) or removed while we looked
        digest.update(f"{folder}\0-\n".encode())
        return
    for entry in entries:
        try:
            if entry.is_dir():
                _digest_folder(entry.path, digest)
                continue
            stat = entry.stat()
        except OSError:  # deleted while we looked: the next look sees it
            continue
        line = f"{entry.path}\0{stat.st_mtime_ns}\0{stat.st_size}\0{stat.st_ino}\n"
        digest.update(line.encode())


@dataclass(frozen=True)
class TomlRules:
    """What re-planning and the pages need from course.toml, read alone (its lessons may be
    broken). Satisfies `subscribers.CourseRules` except `lessons`, which is empty: never
    used to plan a new reader's week (`activate` needs the loaded course)."""

    id: str
    title: str
    timezone: str
    send_time: time
    start: str
    skip_weekends: bool
    lessons: tuple[Any, ...] = ()


def read_toml_rules(project: Project) -> TomlRules | None:
    """course.toml's schedule settings, or None when any of them is missing or wrong there
    (`check` says which; the defaults are course.toml's own: 07:00, next-morning, no skip)."""
    from dripmail.validation import validate_timezone

    try:
        with open(project.course_dir / "course.toml", "rb") as handle:
            data = tomllib.load(handle)
        send_time = time.fromisoformat(str(data.get("send_time", "07:00")))
        zone = validate_timezone(str(data["timezone"]))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError, KeyError, ValueError):
        return None
    except InputError:  # not a zone
        return None
    ident, title = data.get("id"), data.get("title")
    start, skip = data.get("start", "next-morning"), data.get("skip_weekends", False)
    if not isinstance(ident, str) or not ident.strip() or not isinstance(title, str):
        return None
    if start not in ("next-morning", "immediately") or not isinstance(skip, bool):
        return None
    return TomlRules(ident.strip(), title.strip(), zone, send_time, start, skip)


@dataclass
class _Loaded:
    """One load of the files: the course or its problems, and its renderer once built."""

    version: str
    course: Course | None
    problems: tuple[str, ...]
    renderer: Renderer | None = None
    toml_rules: TomlRules | None = None
    toml_read: bool = False


class LiveContent:
    """The loaded course and renderer of one project, dropped when the files change.

    Thread-safe: the web app's worker threads share one. A pass or a request calls `refresh`
    once at its start and then uses one version throughout (`course` and `renderer` never
    look at the files themselves, so a pass never mixes two versions of the text).
    """

    def __init__(self, project: Project) -> None:
        self.project = project
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        # The last course that loaded, for `rules` only (never its text).
        self._last_good: Course | None = None

    def refresh(self) -> bool:
        """Forget what was loaded if the files changed since; True when they did."""
        loaded = self._loaded
        if loaded is None:
            return False
        if files_version(self.project) == loaded.version:
            return False
        with self._lock:
            if self._loaded is loaded:
                self._loaded = None
        return True

    def _current(self) -> _Loaded:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        from dripmail.content import load_course

        with self._lock:
            if self._loaded is None:
                # Taken before reading: an edit during the load is seen by the next refresh.
                version = files_version(self.project)
                try:
                    course: Course | None = load_course(self.project)
                    problems: tuple[str, ...] = ()
                except ContentError as exc:
                    course, problems = None, tuple(exc.problems)
                self._loaded = _Loaded(version, course, problems)
                if course is not None:
                    self._last_good = course
            return self._loaded

    def course(self) -> Course:
        """The validated course as loaded; ContentError (every problem) when it does not load."""
        loaded = self._current()
        if loaded.course is None:
            raise ContentError(list(loaded.problems))
        return loaded.course

    def renderer(self) -> Renderer:
        """The renderer of the loaded course (compiled emails cached until the files change)."""
        from dripmail.render import Renderer

        loaded = self._current()
        course = self.course()
        with self._lock:
            if loaded.renderer is None:
                loaded.renderer = Renderer(self.project, course)
            return loaded.renderer

    def problems(self) -> list[str]:
        """The loaded files' errors (``file:line: message`` each), empty when they load."""
        return list(self._current().problems)

    def rules(self) -> Any:
        """The schedule rules and title (`subscribers.CourseRules`): the course as loaded;
        while it does not load, course.toml read alone (`TomlRules`: its lessons are empty),
        else the last course that loaded in this process; ContentError when none is there.
        Never for a new reader's week (`activate` plans the loaded course's lessons)."""
        loaded = self._current()
        if loaded.course is not None:
            return loaded.course
        with self._lock:
            if not loaded.toml_read:
                loaded.toml_rules, loaded.toml_read = read_toml_rules(self.project), True
        if loaded.toml_rules is not None:
            return loaded.toml_rules
        if self._last_good is not None:
            return self._last_good
        raise ContentError(list(loaded.problems))

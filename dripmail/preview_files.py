"""`render` (every email for a sample reader as files, with an index page) and `CourseWatcher`
(what the live preview reloads on: changes reported by the OS through watchfiles)."""

from __future__ import annotations

import html
import logging
import secrets
import threading
from pathlib import Path

from dripmail.checks import sample_recipient
from dripmail.config import Project
from dripmail.content import Course, load_newsletter
from dripmail.message import Message
from dripmail.output_files import Kept, check_target, make_folder, write_atomically
from dripmail.render import Renderer


def _write(folder: Path, stem: str, message: Message, keep: Kept | None) -> None:
    write_atomically(folder / f"{stem}.html", message.html, keep)
    write_atomically(folder / f"{stem}.txt", message.text, keep)
    write_atomically(folder / f"{stem}.eml", message.to_bytes(), keep)


def write_preview(
    project: Project, course: Course, folder: Path, keep: Kept | None = None
) -> list[str]:
    """Write `<stem>.html/.txt/.eml` per email and `index.html`; returns the stems.

    The folder is created if missing; each file is written whole or not at all
    (`output_files.write_atomically`), and none may be one of `keep` (the database's files).
    InputError when `folder` is a file or cannot be created.
    """
    make_folder(folder, f"--out {folder}", "give a folder to write into")
    renderer = Renderer(project, course)
    reader = sample_recipient()
    entries: list[tuple[str, Message]] = []
    for lesson in course.lessons:
        stem = f"day-{lesson.day}-{lesson.slug}"
        message = renderer.lesson(lesson.day).personalise(
            reader, key=stem, kind="lesson", ref=str(lesson.day)
        )
        entries.append((stem, message))
    if course.welcome is not None:
        welcome = renderer.welcome().personalise(reader, key="welcome", kind="lesson", ref="0")
        entries.append(("welcome", welcome))
    entries.append(
        ("confirm", renderer.confirm().personalise(reader, key="confirm", kind="confirm", ref="-"))
    )
    news = project.newsletters_dir
    for path in sorted(news.glob("*.md")) if news.is_dir() else []:
        issue = load_newsletter(project, path)
        stem = f"newsletter-{issue.slug}"
        entries.append(
            (
                stem,
                renderer.newsletter(issue).personalise(reader, key=stem, kind="broadcast", ref="-"),
            )
        )
    # Every target is checked before the first is written: a refusal leaves the folder as it was.
    for stem, _ in entries:
        for suffix in (".html", ".txt", ".eml"):
            check_target(folder / f"{stem}{suffix}", keep)
    check_target(folder / "index.html", keep)
    for stem, message in entries:
        _write(folder, stem, message, keep)
    rows = "\n".join(
        f"<tr><td><a href='{stem}.html'>{html.escape(m.subject)}</a></td>"
        f"<td>{html.escape(m.preheader)}</td>"
        f"<td><a href='{stem}.txt'>text</a> &middot; <a href='{stem}.eml'>.eml</a></td>"
        f"<td>{len(m.html.encode()) / 1024:.1f} KB</td></tr>"
        for stem, m in entries
    )
    write_atomically(
        folder / "index.html",
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(course.title)}: preview</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}td{padding:.3rem .6rem;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>{html.escape(course.title)}</h1><p>Rendered for a sample reader (Alex).</p>"
        "<table><tr><th>subject</th><th>preheader</th><th>parts</th><th>HTML size</th></tr>"
        f"{rows}</table></body></html>\n",
        keep,
    )
    return [stem for stem, _ in entries]


class CourseWatcher:
    """Counts changes to course/, emails/ and newsletters/ as the OS reports them.

    A daemon thread runs `watchfiles.watch` (inotify, FSEvents, ReadDirectoryChangesW: no
    polling of file times) over the folders that exist when it starts; each batch of changes
    bumps `version`. `version` is ``"<token>-<count>"``: the token is new per watcher, so a
    page from before a server restart sees a new version and reloads too.
    """

    def __init__(self, project: Project, debounce_ms: int = 300, step_ms: int = 50) -> None:
        # watchfiles answers once no further change came for `step_ms` (a save is often
        # several events: truncate, write, rename), and after `debounce_ms` at the latest.
        self.project = project
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._token = secrets.token_hex(4)
        self._count = 0
        self._waiting = 0  # long polls blocked in `wait_for_change` now
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def version(self) -> str:
        """The current version (changes on every batch of file changes)."""
        with self._changed:
            return f"{self._token}-{self._count}"

    def start(self) -> CourseWatcher:
        """Start watching (once) and return once the OS watches are in place; returns self.

        Waiting for them closes the gap in which a save right after the first page view
        would go unseen. (The wait is bounded only so a broken watcher cannot hang a page.)
        """
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="dripmail-preview-watch", daemon=True
            )
            self._thread.start()
            self._ready.wait(timeout=60)
        return self

    def stop(self) -> None:
        """Stop watching and wake every waiter."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    @property
    def waiting(self) -> int:
        """How many long polls are waiting for a change now."""
        with self._changed:
            return self._waiting

    @property
    def stopped(self) -> bool:
        """True once `stop` was called (the server is shutting down)."""
        return self._stop.is_set()

    def wait_for_change(self, seen: str, timeout: float) -> str:
        """Block until `version` differs from `seen` or `timeout` seconds pass; the version.

        The live preview's long poll: the page asks with the version it shows and gets an
        answer as soon as a file changes (or after `timeout`, and then asks again).
        """
        with self._changed:
            self._waiting += 1
            try:
                self._changed.wait_for(
                    lambda: f"{self._token}-{self._count}" != seen or self._stop.is_set(),
                    timeout=timeout,
                )
            finally:
                self._waiting -= 1
            return f"{self._token}-{self._count}"

    def _run(self) -> None:
        import watchfiles

        project = self.project
        folders = [
            str(p)
            for p in (project.course_dir, project.emails_dir, project.newsletters_dir)
            if p.is_dir()
        ]
        if not folders:
            self._ready.set()
            return
        try:
            # yield_on_timeout: the first (empty) answer says the watches are in place; after
            # that an empty answer is only the thread waking to see whether it must stop.
            for changes in watchfiles.watch(
                *folders,
                debounce=self._debounce_ms,
                step=self._step_ms,
                rust_timeout=500,
                yield_on_timeout=True,
                stop_event=self._stop,
                raise_interrupt=False,
            ):
                self._ready.set()
                if changes:
                    with self._changed:
                        self._count += 1
                        self._changed.notify_all()
        except Exception:  # the folder went away (a test's tmp dir) or the OS refused a watch
            logging.getLogger("dripmail").warning("preview: stopped watching files", exc_info=True)
        finally:
            self._ready.set()

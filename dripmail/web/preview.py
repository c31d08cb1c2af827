"""The live preview for marketers: ``/preview`` (only when the app is built with preview=True).

Every lesson, the welcome and confirmation emails and every newsletter render live from the
files for a sample reader: desktop (600 px) and mobile (375 px) frames, a dark-mode frame (the
email's own ``prefers-color-scheme: dark`` rules switched on), the text part, and the `check`
findings for that email. Changes to course/, emails/ and newsletters/ are reported by the OS through
watchfiles (`dripmail.preview_files.CourseWatcher`, no polling of file times); the pages hold a
long poll on ``/preview/version?seen=V`` that answers as soon as a file changes, and reload.
The course is loaded and compiled again only then.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from dripmail.config import Project
from dripmail.errors import ContentError, NotFoundError
from dripmail.live_content import files_version
from dripmail.preview_files import CourseWatcher
from dripmail.web.context import ctx

KINDS = ("lesson", "welcome", "confirm", "newsletter")
_DARK_QUERY = re.compile(r"\(\s*prefers-color-scheme\s*:\s*dark\s*\)")
_LIGHT_QUERY = re.compile(r"@media\s*\(\s*prefers-color-scheme\s*:\s*light\s*\)")


# How long one long poll waits before answering "no change" (the page then asks again).
LONG_POLL_SECONDS = 25.0


@dataclass
class Snapshot:
    """The course as the files are now: loaded, its problems, and a renderer for it."""

    version: str
    course: Any | None  # dripmail.content.Course
    problems: Any  # dripmail.content.Problems
    renderer: Any | None  # dripmail.render.Renderer
    newsletters: dict[str, tuple[Any | None, Any]] = field(default_factory=dict)


class PreviewState:
    """Loads the course again when the files change, at most once per change.

    With a `watcher` (the live preview) a change is what the OS reported; without one, the
    files' digest (`files_version`) is computed per call.
    """

    def __init__(self, project: Project, watcher: CourseWatcher | None = None) -> None:
        self.project = project
        self.watcher = watcher
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None

    def version(self) -> str:
        """The files' version as this state tells changes apart."""
        return self.watcher.version if self.watcher else files_version(self.project)

    def close(self) -> None:
        """Stop the watcher, if any."""
        if self.watcher is not None:
            self.watcher.stop()

    def current(self) -> Snapshot:
        """The snapshot for the files as they are now."""
        from dripmail.content import load_course_checked, load_newsletter_checked
        from dripmail.render import Renderer

        version = self.version()
        with self._lock:
            if self._snapshot is not None and self._snapshot.version == version:
                return self._snapshot
            course, problems = load_course_checked(self.project)
            renderer = Renderer(self.project, course) if course is not None else None
            newsletters: dict[str, tuple[Any | None, Any]] = {}
            folder = self.project.newsletters_dir
            for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
                newsletters[path.stem] = load_newsletter_checked(self.project, path)
            self._snapshot = Snapshot(version, course, problems, renderer, newsletters)
            return self._snapshot


def _state(request: Request) -> PreviewState:
    c = ctx(request)
    state = getattr(c, "preview_state", None)
    if state is None:
        watcher = CourseWatcher(c.project).start()
        state = c.preview_state = PreviewState(c.project, watcher)  # type: ignore[attr-defined]
    return state


@dataclass
class Rendered:
    """One email rendered for the preview, or why it could not be."""

    kind: str
    ref: str
    title: str
    where: str  # the file its content comes from, as problems name it
    message: Any | None = None  # dripmail.message.Message
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _entries(snap: Snapshot) -> list[tuple[str, str, str]]:
    """(kind, ref, title) of every email in the preview, in reading order."""
    out: list[tuple[str, str, str]] = []
    if snap.course is not None:
        if snap.course.welcome is not None:
            out.append(("welcome", "-", f"Welcome email: {snap.course.welcome.subject}"))
        out.extend(("lesson", str(x.day), x.subject) for x in snap.course.lessons)
        out.append(("confirm", "-", "Confirmation email (double opt-in)"))
    for slug, (newsletter, _problems) in snap.newsletters.items():
        title = newsletter.subject if newsletter is not None else f"{slug} (has errors)"
        out.append(("newsletter", slug, f"Newsletter: {title}"))
    return out


def render_one(project: Project, snap: Snapshot, kind: str, ref: str) -> Rendered:
    """Render one email with its `check` findings; NotFoundError for an unknown one."""
    from dripmail.checks import check_email, sample_recipient
    from dripmail.content import Problems

    problems = Problems()
    if kind == "newsletter":
        if ref not in snap.newsletters:
            raise NotFoundError(f"no newsletter {ref!r} in newsletters/")
        newsletter, found = snap.newsletters[ref]
        where = project.display(project.newsletters_dir / f"{ref}.md")
        problems.errors.extend(found.errors)
        problems.warnings.extend(found.warnings)
        title = newsletter.subject if newsletter is not None else ref
    elif kind in ("lesson", "welcome", "confirm") and snap.course is None:
        # Nothing renders until the course loads: show every problem, this page reloads
        # by itself once they are fixed.
        if kind == "lesson" and not ref.isdigit():
            raise NotFoundError(f"no lesson {ref[:10]!r}")
        title = {"lesson": f"Day {ref}", "welcome": "Welcome email"}.get(kind, "Confirmation email")
        out = Rendered(kind, ref, title, "course/")
        out.errors = list(dict.fromkeys(snap.problems.errors))
        out.warnings = list(dict.fromkeys(snap.problems.warnings))
        return out
    elif kind == "lesson":
        assert snap.course is not None  # the branch above answered when it did not load
        try:
            lesson = snap.course.lesson(int(ref))
        except ValueError:
            raise NotFoundError(f"no lesson {ref[:10]!r}") from None
        where = project.display(lesson.path)
        title = lesson.subject
        newsletter = None
    elif kind == "welcome":
        welcome = snap.course.welcome if snap.course is not None else None
        if welcome is None:
            raise NotFoundError("no welcome email: add course/welcome.md")
        where, title, newsletter = project.display(welcome.path), "Welcome email", None
    elif kind == "confirm":
        where, title, newsletter = "emails/confirm.mjml.j2", "Confirmation email", None
    else:
        raise NotFoundError(f"no preview of {kind[:20]!r}")
    # Findings of loading that concern this file (course-wide ones are on the index page).
    problems.warnings.extend(w for w in snap.problems.warnings if w.startswith(where))
    out = Rendered(kind, ref, title, where)
    if snap.renderer is not None and (kind != "newsletter" or newsletter is not None):
        try:
            if kind == "lesson":
                compiled = snap.renderer.lesson(int(ref))
            elif kind == "welcome":
                compiled = snap.renderer.welcome()
            elif kind == "confirm":
                compiled = snap.renderer.confirm()
            else:
                compiled = snap.renderer.newsletter(newsletter)
            out.message = compiled.personalise(
                sample_recipient(), key=f"preview-{kind}-{ref}", kind="test", ref=ref
            )
        except ContentError as exc:
            problems.errors.extend(exc.problems)
    if out.message is not None:
        check_email(where, out.message.html, problems)
    out.errors = list(dict.fromkeys(problems.errors))
    out.warnings = list(dict.fromkeys(problems.warnings))
    return out


def dark_variant(html: str) -> str:
    """The email as a client in dark mode shows it: its dark rules always on, light ones off."""
    html = _DARK_QUERY.sub("all", html)
    html = _LIGHT_QUERY.sub("@media not all", html)
    marker = "<head>"
    style = "<style>:root{color-scheme:dark}</style>"
    return html.replace(marker, marker + style, 1) if marker in html else style + html


def _framed(html: str) -> str:
    # Links in a framed email open in a new tab instead of inside the frame.
    marker = "<head>"
    base = '<base target="_blank">'
    return html.replace(marker, marker + base, 1) if marker in html else base + html


# -- routes ------------------------------------------------------------------------------


async def index(request: Request) -> Response:
    """``GET /preview``: every email, with the course's own problems when there are any."""
    c = ctx(request)
    state = _state(request)
    snap = await c.db(state.current)
    return c.render(
        request,
        "preview_index.html",
        headers={"Cache-Control": "no-store"},
        title="Preview",
        version=snap.version,
        entries=_entries(snap),
        errors=list(dict.fromkeys(snap.problems.errors)),
        warnings=list(dict.fromkeys(snap.problems.warnings)),
    )


async def version(request: Request) -> Response:
    """``GET /preview/version[?seen=V]``: the files' version; with `seen`, a long poll.

    With ``seen`` equal to the current version the answer waits until a file changes (or
    `LONG_POLL_SECONDS` pass); the pages reload when the answer differs from what they show.
    Without ``seen`` the answer also says how many long polls are ``waiting``. While the
    server is stopping the answer is 503 ``{"version": V, "stopping": true}`` at
    once, so the server's graceful shutdown does not wait out the poll (see `web.serving`).
    """
    c = ctx(request)
    state = _state(request)
    seen = request.query_params.get("seen")
    if seen and state.watcher is not None:
        value = await run_in_threadpool(state.watcher.wait_for_change, seen, LONG_POLL_SECONDS)
        if state.watcher.stopped:
            return JSONResponse(
                {"version": value, "stopping": True},
                status_code=503,
                headers={"Cache-Control": "no-store", "Retry-After": "3"},
            )
    else:
        value = await c.db(state.version)
    body: dict[str, object] = {"version": value}
    if not seen and state.watcher is not None:
        body["waiting"] = state.watcher.waiting  # open pages' long polls (what a stop wakes)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def email_page(request: Request) -> Response:
    """``GET /preview/{kind}/{ref}``: one email in every view, with its findings."""
    c = ctx(request)
    kind, ref = request.path_params["kind"], request.path_params["ref"]
    state = _state(request)

    def work() -> tuple[Snapshot, Rendered]:
        snap = state.current()
        return snap, render_one(c.project, snap, kind, ref)

    snap, rendered = await c.db(work)
    entries = _entries(snap)
    keys = [(k, r) for k, r, _ in entries]
    at = keys.index((kind, ref)) if (kind, ref) in keys else -1
    prev_entry = entries[at - 1] if at > 0 else None
    next_entry = entries[at + 1] if 0 <= at < len(entries) - 1 else None
    message = rendered.message
    return c.render(
        request,
        "preview_email.html",
        headers={"Cache-Control": "no-store"},
        title=rendered.title,
        version=snap.version,
        r=rendered,
        subject=message.subject if message else "",
        preheader=message.preheader if message else "",
        text_part=message.text if message else "",
        size_kb=f"{len(message.html.encode()) / 1024:.1f}" if message else "",
        src=f"/preview/email/{kind}/{ref}.html",
        prev_entry=prev_entry,
        next_entry=next_entry,
    )


async def email_html(request: Request) -> Response:
    """``GET /preview/email/{kind}/{ref}.html[?dark=1]``: the HTML part, as framed."""
    c = ctx(request)
    kind, ref = request.path_params["kind"], request.path_params["ref"]
    state = _state(request)

    def work() -> Rendered:
        return render_one(c.project, state.current(), kind, ref)

    rendered = await c.db(work)
    if rendered.message is None:
        problems = "".join(f"<li>{_esc(p)}</li>" for p in rendered.errors)
        return HTMLResponse(
            "<!doctype html><html lang='en'><meta charset='utf-8'><title>Render error</title>"
            f"<body style='font:16px system-ui;padding:1rem'><p>This email does not render:</p>"
            f"<ul>{problems}</ul></body></html>",
            status_code=200,
            headers={"Cache-Control": "no-store"},
        )
    html = _framed(rendered.message.html)
    if request.query_params.get("dark") == "1":
        html = dark_variant(html)
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


def _esc(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


def routes() -> list[Route]:
    """The preview's routes (added only when the app is created with preview=True)."""
    return [
        Route("/preview", index, name="preview"),
        Route("/preview/version", version, name="preview-version"),
        Route("/preview/email/{kind}/{ref}.html", email_html, name="preview-email"),
        Route("/preview/{kind}/{ref}", email_page, name="preview-page"),
    ]

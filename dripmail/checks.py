"""`check`: everything a marketer can get wrong, found before a reader sees it.

Content problems come from `dripmail.content`; this module renders every email for a sample
reader and looks at the result the way a mail client would: size against Gmail's clipping
limit, images without alt text, links that are not https, headings and `lang`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from html.parser import HTMLParser
from typing import TYPE_CHECKING

from dripmail.config import Project
from dripmail.content import (
    Problems,
    load_course_checked,
    load_newsletter_checked,
    unread_markdown,
    warn_unread,
)
from dripmail.errors import ContentError
from dripmail.markdown_checks import insecure_image, is_relative, relative_image, relative_link

if TYPE_CHECKING:
    from dripmail.render import CompiledEmail

# Gmail clips messages whose HTML is larger than about 102 KB ("[Message clipped]"), hiding
# the footer with the unsubscribe link; warn well before that.
CLIP_LIMIT = 102_000
CLIP_WARN = 80_000
SAMPLE_LINK = "https://preview.invalid/{purpose}/sample-token"
# What the welcome email says for the sample reader (a real reader's comes from their plan).
SAMPLE_FIRST_LESSON = "tomorrow, Tuesday 2 June, at 07:00 your time (America/New_York)"


class _Scan(HTMLParser):
    """Collects what `check` looks at in rendered HTML."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images_without_alt: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.headings = 0
        self.lang = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "html":
            self.lang = values.get("lang") or ""
        elif tag == "img":
            self.images.append(values.get("src") or "")
            if not (values.get("alt") or "").strip():
                self.images_without_alt.append(values.get("src") or "?")
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        elif tag in ("h1", "h2", "h3"):
            self.headings += 1


def scan_html(html: str) -> _Scan:
    """Parse rendered HTML with the standard library's parser."""
    scan = _Scan()
    scan.feed(html)
    scan.close()
    return scan


def sample_recipient():
    """The reader used by `check`, `render` and the preview (links on a placeholder host)."""
    from dripmail.render import Recipient

    return Recipient(
        email="alex@example.org",
        first_name="Alex",
        subscriber_id=0,
        unsubscribe_url=SAMPLE_LINK.format(purpose="unsubscribe"),
        preferences_url=SAMPLE_LINK.format(purpose="preferences"),
        confirm_url=SAMPLE_LINK.format(purpose="confirm"),
        first_lesson=SAMPLE_FIRST_LESSON,
    )


def check_email(where: str, html: str, problems: Problems) -> None:
    """Problems of one rendered HTML email, reported against `where` (the template or file)."""
    size = len(html.encode())
    if size > CLIP_LIMIT:
        problems.error(where, None, f"HTML is {size:,} bytes: Gmail clips above ~102 KB")
    elif size > CLIP_WARN:
        problems.warn(where, None, f"HTML is {size:,} bytes: close to Gmail's ~102 KB clipping")
    scan = scan_html(html)
    for src in scan.images_without_alt:
        problems.error(where, None, f"image without alt text ({src})")
    for href in dict.fromkeys(scan.links):
        if is_relative(href):
            _once(problems, where, relative_link(href), href)
        elif not href.startswith(("https://", "mailto:")):
            _once(problems, where, f"link is not https ({href})", href)
    for src in dict.fromkeys(scan.images):
        if is_relative(src):
            _once(problems, where, relative_image(src), src, error=True)
        elif src.startswith("http://"):
            _once(problems, where, insecure_image(src), src)
    if not scan.lang:
        problems.warn(where, None, 'no lang on <html>: add lang="en" to <mjml>')
    if not scan.headings:
        problems.warn(where, None, "no heading (h1/h2): screen readers navigate by them")


def _once(problems: Problems, where: str, message: str, url: str, error: bool = False) -> None:
    """Report a URL problem unless this URL was already reported (at its file and line when
    the lesson or course.toml wrote it, as a link, an image or a field such as video_url, or
    for an earlier email when a template did)."""
    # Every such message names its URL the same way: "not https (URL)", "is relative (URL)".
    said = (f"not https ({url})", f"is relative ({url})")
    if any(x in line for line in (*problems.errors, *problems.warnings) for x in said):
        return
    (problems.error if error else problems.warn)(where, None, message)


def check_project(project: Project) -> tuple[Problems, int]:
    """Every problem in the project and how many emails were checked."""
    from dripmail.render import Renderer

    course, problems = load_course_checked(project)
    if course is None:
        return problems, 0
    renderer = Renderer(project, course)
    reader = sample_recipient()
    checked = 0
    jobs: list[tuple[str, Callable[[], CompiledEmail]]] = [
        (project.display(x.path), partial(renderer.lesson, x.day)) for x in course.lessons
    ]
    if course.welcome is not None:
        jobs.append((project.display(course.welcome.path), renderer.welcome))
    jobs.append(("emails/confirm.mjml.j2", renderer.confirm))
    folder = project.newsletters_dir
    warn_unread(project, unread_markdown(folder), problems)
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        newsletter, found = load_newsletter_checked(project, path)
        problems.errors.extend(found.errors)
        problems.warnings.extend(found.warnings)
        if newsletter is not None:
            jobs.append((project.display(path), partial(renderer.newsletter, newsletter)))
    for where, compile_email in jobs:
        try:
            compiled = compile_email()
            message = compiled.personalise(reader, key="check", kind="test", ref="check")
        except ContentError as exc:
            problems.errors.extend(exc.problems)
            continue
        check_email(where, message.html, problems)
        checked += 1
    return problems, checked

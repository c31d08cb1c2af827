"""`render`: every email for a sample reader as files, with an index page to click through."""

from __future__ import annotations

import html
from pathlib import Path

from dripmail.checks import sample_recipient
from dripmail.config import Project
from dripmail.content import Course, load_newsletter
from dripmail.message import Message
from dripmail.render import Renderer


def _write(folder: Path, stem: str, message: Message) -> None:
    (folder / f"{stem}.html").write_text(message.html, encoding="utf-8")
    (folder / f"{stem}.txt").write_text(message.text, encoding="utf-8")
    (folder / f"{stem}.eml").write_bytes(message.to_bytes())


def write_preview(project: Project, course: Course, folder: Path) -> list[str]:
    """Write `<stem>.html/.txt/.eml` per email and `index.html`; returns the stems."""
    folder.mkdir(parents=True, exist_ok=True)
    renderer = Renderer(project, course)
    reader = sample_recipient()
    entries: list[tuple[str, Message]] = []
    for lesson in course.lessons:
        stem = f"day-{lesson.day}-{lesson.slug}"
        message = renderer.lesson(lesson.day).personalise(
            reader, key=stem, kind="lesson", ref=str(lesson.day)
        )
        entries.append((stem, message))
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
    for stem, message in entries:
        _write(folder, stem, message)
    rows = "\n".join(
        f"<tr><td><a href='{stem}.html'>{html.escape(m.subject)}</a></td>"
        f"<td>{html.escape(m.preheader)}</td>"
        f"<td><a href='{stem}.txt'>text</a> &middot; <a href='{stem}.eml'>.eml</a></td>"
        f"<td>{len(m.html.encode()) / 1024:.1f} KB</td></tr>"
        for stem, m in entries
    )
    (folder / "index.html").write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(course.title)}: preview</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}td{padding:.3rem .6rem;border-bottom:1px solid #ddd}</style></head><body>"
        f"<h1>{html.escape(course.title)}</h1><p>Rendered for a sample reader (Alex).</p>"
        "<table><tr><th>subject</th><th>preheader</th><th>parts</th><th>HTML size</th></tr>"
        f"{rows}</table></body></html>\n",
        encoding="utf-8",
    )
    return [stem for stem, _ in entries]

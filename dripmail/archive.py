"""The public archive of sent newsletters: which issues, and each one's web version.

Only broadcasts that finished sending are listed (never a draft, a scheduled issue or one
cancelled before it started), each from its file in `newsletters/`. The web version is the
email as a reader got it, for a reader without a name and without personal links: the
compile-once path with a blank recipient, so the archive and the inbox never drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from dripmail.config import Project
from dripmail.content import load_newsletter
from dripmail.errors import NotFoundError
from dripmail.store.schema import broadcasts

_BODY_OPEN = re.compile(r"<body[^>]*>", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Issue:
    """One sent newsletter as the archive lists it."""

    slug: str
    subject: str
    sent_at: datetime
    content_hash: str | None


def sent_issues(engine: Engine) -> list[Issue]:
    """Every newsletter that finished sending, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(broadcasts)
            .where(broadcasts.c.status == "sent")
            .order_by(broadcasts.c.finished_at.desc(), broadcasts.c.id.desc())
        ).mappings()
        return [
            Issue(r["slug"], r["subject"], r["finished_at"] or r["started_at"], r["content_hash"])
            for r in rows
        ]


def find_issue(engine: Engine, slug: str) -> Issue:
    """A sent issue by slug; NotFoundError for anything else (unsent issues stay private)."""
    for issue in sent_issues(engine):
        if issue.slug == slug:
            return issue
    raise NotFoundError(f"no sent newsletter {slug!r}")


# Where the public copy's "Unsubscribe" and "Change your preferences" lead: the archive's
# paragraph saying that each reader's own links are in the email they got.
ABOUT_LINKS = "/newsletters#your-links"


def web_version(project: Project, renderer, issue: Issue, banner: str = "") -> str:
    """The issue's HTML as readers got it, for a blank reader, with `banner` (HTML) on top.

    `renderer` is the course's `dripmail.render.Renderer`. NotFoundError when the file is gone.
    """
    from dripmail.render import Recipient

    path = project.newsletters_dir / f"{issue.slug}.md"
    if not path.is_file():
        raise NotFoundError(f"newsletters/{issue.slug}.md is no longer there")
    newsletter = load_newsletter(project, path)
    # No personal links on a public page: the footer's links lead to the archive's note on
    # where a reader's own links are (`ABOUT_LINKS`), not back to the list without a word.
    reader = Recipient(email="", unsubscribe_url=ABOUT_LINKS, preferences_url=ABOUT_LINKS)
    message = renderer.newsletter(newsletter).personalise(
        reader, key=f"archive-{issue.slug}", kind="broadcast", ref="archive"
    )
    html = message.html
    if banner:
        found = _BODY_OPEN.search(html)
        at = found.end() if found else 0
        html = html[:at] + banner + html[at:]
    return html

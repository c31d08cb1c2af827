"""`/newsletters`: the archive lists sent issues only and shows each as readers got it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from dripmail import broadcast as bc
from dripmail.config import Project, Settings
from dripmail.content import load_course, load_newsletter
from dripmail.providers.outbox import OutboxProvider
from dripmail.render import Renderer
from dripmail.store.db import open_store
from dripmail.tokens import Signer
from dripmail.web.archive import routes
from tests.broadcast_fixture import NOW, seed
from tests.course_fixture import make_project

SENT = "---\nsubject: Hips & the desk <3\npreheader: Three habits\n---\nStand up **often**.\n"
LATER = "---\nsubject: Next month's secret\npreheader: Not yet\n---\nA surprise.\n"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = make_project(tmp_path)
    (root / "newsletters").mkdir()
    (root / "newsletters" / "hips.md").write_text(SENT)
    (root / "newsletters" / "secret.md").write_text(LATER)
    project = Project(root)
    engine = open_store("sqlite:///dripmail.db", root)
    seed(engine, 5)
    sent = load_newsletter(project, root / "newsletters" / "hips.md")
    row = bc.open_broadcast(engine, sent, "all", NOW)
    bc.plan(engine, row["id"], "all", NOW)
    compiled = Renderer(project, load_course(project)).newsletter(sent)
    render = bc.render_fn(compiled, "https://studio.example.com", Signer("k"), row["id"], NOW)
    bc.send(engine, OutboxProvider(root / "outbox"), row, render, NOW)
    # Scheduled, never sent: must stay private.
    later = load_newsletter(project, root / "newsletters" / "secret.md")
    bc.open_broadcast(engine, later, "all", NOW, NOW.replace(year=2099))
    return project


def _get(project: Project, path: str) -> httpx.Response:
    settings = Settings(DRIPMAIL_DATABASE_URL="sqlite:///dripmail.db")  # type: ignore[call-arg]
    app = Starlette(routes=routes(project, settings))

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    return asyncio.run(go())


def test_index_lists_sent_issues_only_escaped(project: Project) -> None:
    page = _get(project, "/newsletters")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'href="/newsletters/hips"' in page.text
    assert "Hips &amp; the desk &lt;3" in page.text and "<3" not in page.text
    assert "secret" not in page.text and "Next month" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert f"{NOW.day} June 2026" in page.text


def test_issue_is_the_email_for_a_blank_reader(project: Project) -> None:
    page = _get(project, "/newsletters/hips")
    assert page.status_code == 200
    assert "<strong>often</strong>" in page.text and "Hi there" in page.text
    assert "all issues" in page.text  # the banner above the email
    # No one's personal links, no token of any reader on a public page.
    assert "/unsubscribe/" not in page.text and "/preferences/" not in page.text
    assert "p0@example.org" not in page.text
    # Its footer's "Unsubscribe" and "Change your preferences" lead to the note saying where
    # a reader's own links are, which the index carries.
    assert page.text.count('href="/newsletters#your-links"') == 2
    index = _get(project, "/newsletters").text
    assert 'id="your-links"' in index and "links at the foot of the newsletter" in index


def test_unsent_or_unknown_issues_are_not_found(project: Project) -> None:
    assert _get(project, "/newsletters/secret").status_code == 404
    assert _get(project, "/newsletters/nope").status_code == 404
    assert _get(project, "/newsletters/..%2Fcourse%2Fcourse").status_code == 404
    (project.newsletters_dir / "hips.md").unlink()
    gone = _get(project, "/newsletters/hips")
    assert gone.status_code == 404 and "no such newsletter issue" in gone.text


def test_mounted_without_arguments_it_uses_the_apps_runner(project: Project) -> None:
    from types import SimpleNamespace

    from dripmail.runner import Runner

    settings = Settings(DRIPMAIL_DATABASE_URL="sqlite:///dripmail.db")  # type: ignore[call-arg]
    app = Starlette(routes=routes())
    app.state.ctx = SimpleNamespace(runner=Runner(project, settings))  # what create_app sets

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/newsletters")

    assert 'href="/newsletters/hips"' in asyncio.run(go()).text


def test_serve_app_mounts_the_archive(project: Project) -> None:
    from dripmail.web.app import create_app

    settings = Settings(DRIPMAIL_DATABASE_URL="sqlite:///dripmail.db")  # type: ignore[call-arg]
    app = create_app(project, settings)

    async def go(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    index = asyncio.run(go("/newsletters"))
    assert index.status_code == 200 and 'href="/newsletters/hips"' in index.text
    issue = asyncio.run(go("/newsletters/hips"))
    assert issue.status_code == 200 and "<strong>often</strong>" in issue.text
    assert asyncio.run(go("/newsletters/secret")).status_code == 404

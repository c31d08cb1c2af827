"""axe-core in chromium on every page of the web edge: no serious or critical finding.

The app runs under uvicorn on loopback (the `Server` of test_browser); the pages are the
sign-up form and its answer, confirm, unsubscribe, preferences, the newsletter archive (index
and one issue), the preview (index and one email's page) and the report page. Pages send a
strict CSP, so the context bypasses it to inject axe (the page itself is unchanged).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from axe import axe_source, serious_findings
from test_browser import CHROMIUM, Server, browser  # noqa: F401  (browser is a fixture)

from dripmail import broadcast as bc
from dripmail.config import Project
from dripmail.content import load_course, load_newsletter
from dripmail.providers.outbox import OutboxProvider
from dripmail.render import Renderer
from dripmail.subscribers import add_subscriber
from dripmail.tokens import Signer, link

pytestmark = pytest.mark.browser

NOW = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)
ISSUE = "---\nsubject: Hips at the desk\npreheader: Three small moves\n---\nStand up **often**.\n"


@pytest.fixture
def site(tmp_path: Path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (set DRIPMAIL_CHROMIUM)")
    from course_fixture import make_project

    root = make_project(tmp_path / "studio")
    (root / "newsletters").mkdir()
    (root / "newsletters" / "hips.md").write_text(ISSUE)
    with Server(root) as server:
        engine = server.app.state.ctx.engine
        project = Project(root)
        sid, _ = add_subscriber(
            engine,
            "reader@example.org",
            timezone="Europe/Berlin",
            status="pending",
            consent_source="test",
            now=NOW,
            first_name="Kim",
        )
        # The newsletter needs a reader who can get it (a broadcast to nobody is refused).
        add_subscriber(
            engine,
            "second@example.org",
            timezone="Europe/Berlin",
            status="active",
            consent_source="test",
            now=NOW,
            first_name="Alex",
        )
        issue = load_newsletter(project, root / "newsletters" / "hips.md")
        row = bc.open_broadcast(engine, issue, "all", NOW)
        bc.plan(engine, row["id"], "all", NOW)
        compiled = Renderer(project, load_course(project)).newsletter(issue)
        signer = Signer.from_settings(server.settings)
        render = bc.render_fn(compiled, server.base, signer, row["id"], NOW)
        bc.send(engine, OutboxProvider(root / "outbox"), row, render, NOW)
        links = {p: link(server.base, signer, sid, p) for p in ("confirm", "unsubscribe")}
        links["preferences"] = link(server.base, signer, sid, "preferences")
        yield server, links


def test_every_page_has_no_serious_or_critical_axe_finding(site, browser) -> None:  # noqa: F811
    server, links = site
    source = axe_source()
    context = browser.new_context(bypass_csp=True, viewport={"width": 375, "height": 800})
    context.route(
        "**/*",
        lambda r: r.continue_() if r.request.url.startswith(server.base) else r.abort(),
    )
    page = context.new_page()
    page.set_default_timeout(180_000)  # a busy shared machine: never race the page's load
    findings: dict[str, list[str]] = {}
    try:
        pages = [
            ("sign-up", f"{server.base}/"),
            ("confirm", links["confirm"]),
            ("unsubscribe", links["unsubscribe"]),
            ("preferences", links["preferences"]),
            ("archive", f"{server.base}/newsletters"),
            ("archive issue", f"{server.base}/newsletters/hips"),
            ("preview", f"{server.base}/preview"),
            ("preview lesson", f"{server.base}/preview/lesson/1"),
            ("report", f"{server.base}/report"),
            ("bad link", f"{server.base}/unsubscribe/not-a-token"),
        ]
        for name, url in pages:
            answer = page.goto(url)
            assert answer is not None and answer.status < 500, (name, answer and answer.status)
            findings[name] = serious_findings(page, source)
        # The answer to a sign-up is a page of its own.
        page.goto(f"{server.base}/")
        page.get_by_label("Email address").fill("new@example.org")
        page.get_by_role("button", name="Start my week").click()
        page.wait_for_url(f"{server.base}/subscribe")
        findings["signed up"] = serious_findings(page, source)
    finally:
        context.close()
    assert {name: found for name, found in findings.items() if found} == {}

"""End to end in a real browser: Debian's chromium driven by Playwright, against uvicorn.

The app runs in a real uvicorn server on 127.0.0.1:<free port> in a thread. The blog page
holding the `form` output is served by Playwright's request interception (no network); every
other request that is not to the local server is refused, so nothing leaves the machine.
Screenshots of the preview at 375 and 600 px are saved under test-artifacts/.
"""

from __future__ import annotations

import email
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest
from conftest import make_settings
from course_fixture import make_project
from fakes.webhook_signing import WebhookKeys

from dripmail.config import Project

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
BLOG = "https://studio.example.com/blog/psoas-stretches"
CHROMIUM = os.environ.get("DRIPMAIL_CHROMIUM", "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The app under uvicorn in a background thread."""

    def __init__(self, root: Path) -> None:
        import uvicorn

        from dripmail.web.app import create_app

        self.root = root
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        settings = make_settings(root, WebhookKeys.generate(), DRIPMAIL_PUBLIC_URL=self.base)
        self.settings = settings
        self.app = create_app(Project(root), settings, preview=True)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 300  # generous: a loaded machine is slow, never wrong
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        from dripmail.web.serving import wake_long_polls

        # As a stop signal does under `dripmail serve`: an open page's long poll answers at once.
        wake_long_polls(self.app)
        self.server.should_exit = True
        self.thread.join(timeout=300)

    def subscriber(self, address: str) -> dict:
        from dripmail.subscribers import get_subscriber

        return dict(get_subscriber(self.app.state.ctx.engine, address))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (set DRIPMAIL_CHROMIUM)")
    root = make_project(tmp_path / "studio")
    with Server(root) as running:
        yield running


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _offline_context(browser, server: Server, **options):
    """A browser context that reaches only the local server and the intercepted blog page."""
    from dripmail.web.context import WebContext
    from dripmail.web.signup import embed_form

    context = browser.new_context(**options)
    context.set_default_timeout(300_000)  # a loaded machine: slow, never wrong
    form = embed_form(WebContext(server.app.state.ctx.project, server.settings))
    blog = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>Psoas stretches</title></head><body><h1>Spend a week stretching your psoas"
        f"</h1>{form}</body></html>"
    )

    def handle(route) -> None:
        url = route.request.url
        if url.startswith(BLOG):
            route.fulfill(status=200, content_type="text/html", body=blog)
        elif url.startswith(server.base):
            route.continue_()
        else:
            route.abort()  # images on the studio's site and anything else: never fetched

    context.route("**/*", handle)
    return context


def _confirm_email(root: Path) -> email.message.EmailMessage:
    deadline = time.monotonic() + 300  # sent just after the answer
    while True:
        found = sorted((root / "outbox").glob("confirm-*.eml"))
        if found:
            return email.message_from_bytes(found[0].read_bytes(), policy=policy.default)
        assert time.monotonic() < deadline, "no confirmation email in outbox/"
        time.sleep(0.1)


def test_sign_up_confirm_and_unsubscribe_in_a_browser(server: Server, browser) -> None:
    context = _offline_context(browser, server, timezone_id="Asia/Tokyo")
    page = context.new_page()
    page.goto(BLOG)
    page.get_by_label("Email address").fill("reader@example.org")
    page.get_by_label("First name").fill("Kei")
    page.get_by_role("button", name="Start my week").click()
    page.wait_for_url(f"{server.base}/subscribe")
    assert page.get_by_role("heading", name="Check your inbox").is_visible()

    row = server.subscriber("reader@example.org")
    assert row["status"] == "pending"
    assert row["timezone"] == "Asia/Tokyo"  # filled in by the form's Intl script
    assert row["consent_page"] == BLOG
    assert row["first_name"] == "Kei"
    assert "Chrome" in (row["consent_user_agent"] or "")

    sent = _confirm_email(server.root)
    text = sent.get_body(("plain",)).get_content()
    confirm_url = re.search(r"http://127\.0\.0\.1:\d+/confirm/\S+", text).group(0)
    page.goto(confirm_url)
    assert server.subscriber("reader@example.org")["status"] == "pending"  # a GET confirms nobody
    page.get_by_role("button", name="Yes, start the course").click()
    assert page.get_by_role("heading", name="You are in!").is_visible()
    first = page.locator("#first-lesson").inner_text()
    assert "07:00 (Asia/Tokyo)" in first
    assert server.subscriber("reader@example.org")["status"] == "active"

    unsubscribe_url = str(sent["List-Unsubscribe"]).strip().strip("<>")
    page.goto(unsubscribe_url)
    assert server.subscriber("reader@example.org")["status"] == "active"  # a GET changes nothing
    page.get_by_role("button", name="Unsubscribe").click()
    assert page.get_by_role("heading", name="You are unsubscribed").is_visible()
    assert server.subscriber("reader@example.org")["status"] == "unsubscribed"
    context.close()


def test_preview_screenshots_at_375_and_600_and_live_reload(server: Server, browser) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = _offline_context(browser, server)
    page = context.new_page()
    page.goto(f"{server.base}/preview")
    page.get_by_role("link", name="Day 1: a stretch for your hips").click()
    page.wait_for_url(f"{server.base}/preview/lesson/1")
    mobile = page.frame_locator("iframe[title$='mobile']")
    assert mobile.get_by_text("Kneel on your mat").first.is_visible()
    for width in (375, 600):
        # A viewport as tall as the page (not full_page): Chromium paints sandboxed frames
        # below the fold only when they are inside the viewport.
        page.set_viewport_size({"width": width, "height": 900})
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": width, "height": min(height, 8000)})
        for view in ("desktop", "mobile", "dark mode"):
            frame = page.frame_locator(f"iframe[title$=': {view}']")
            frame.get_by_text("Kneel on your mat").first.wait_for()
        page.wait_for_timeout(300)  # let the frames paint
        page.screenshot(path=str(ARTIFACTS / f"preview-{width}.png"))
        email_page = context.new_page()
        email_page.set_viewport_size({"width": width, "height": 900})
        email_page.goto(f"{server.base}/preview/email/lesson/1.html")
        email_page.screenshot(path=str(ARTIFACTS / f"email-{width}.png"), full_page=True)
        email_page.close()
    email_page = context.new_page()
    email_page.set_viewport_size({"width": 375, "height": 900})
    email_page.goto(f"{server.base}/preview/email/lesson/1.html?dark=1")
    email_page.screenshot(path=str(ARTIFACTS / "email-375-dark.png"), full_page=True)
    # The dark view really is dark: the body background is the dark-mode colour.
    background = email_page.evaluate(
        "getComputedStyle(document.querySelector('.body-bg')).backgroundColor"
    )
    assert background == "rgb(22, 22, 22)"
    for name in ("preview-375", "preview-600", "email-375", "email-600", "email-375-dark"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 5_000

    # Saving a lesson reloads the open preview by itself.
    lesson = next((server.root / "course").glob("day-1-*.md"))
    lesson.write_text(lesson.read_text().replace("Day 1: a stretch", "Day 1: edited live"))
    page.get_by_role("heading", name="Day 1: edited live").wait_for(timeout=300_000)
    context.close()

"""The shipped course's emails in Debian's chromium, as a reader would see them.

Every email (seven lessons, the welcome, the confirmation, each newsletter) is rendered for the
sample reader and loaded into chromium. The lesson of day 1, the welcome email and the
newsletter are screenshotted at 375 and 600 px in light mode, dark mode (the email's own
``prefers-color-scheme: dark`` rules, as Apple Mail applies them), chromium's forced dark mode
(the inversion some Gmail apps do) and with images off; the PNGs are kept in
test-artifacts/emails/. The assertions are what a reader notices: a doubled title, a button
that is hard to read, body text pulled into the inbox preview, images without alt text, links
too small to tap, a light strip in dark mode, a page wider than the phone.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from axe import axe_source, serious_findings

from dripmail.checks import sample_recipient
from dripmail.config import Project
from dripmail.content import load_course, load_newsletter
from dripmail.render import CompiledEmail, Renderer

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "emails"
CHROMIUM = os.environ.get("DRIPMAIL_CHROMIUM", "/usr/bin/chromium")
SHOWN = ("lesson-1", "welcome", "newsletter-hips-at-the-desk")
# A stand-in for the studio's pictures (never fetched from the network): a 16:9 grey still.
STILL = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="1104" height="621">'
    b'<rect width="1104" height="621" fill="#7d8f86"/></svg>'
)
SPACER = {"\u034f", "\u200c", "\u00a0", " "}


def _names() -> list[str]:
    """The name of every email of the shipped course, as ``_emails`` keys them (cheap: no
    rendering, so collecting this module in every test worker costs next to nothing)."""
    course = load_course(Project(REPO))
    names = [f"lesson-{x.day}" for x in course.lessons] + ["welcome", "confirm"]
    names += [f"newsletter-{path.stem}" for path in sorted((REPO / "newsletters").glob("*.md"))]
    return sorted(names)


@functools.cache
def _emails() -> dict[str, tuple[CompiledEmail, str]]:
    """Every email of the shipped course: name -> (compiled email, rendered HTML); rendered
    once per worker, the first time a test here runs."""
    project = Project(REPO)
    course = load_course(project)
    renderer = Renderer(project, course)
    found: dict[str, CompiledEmail] = {
        f"lesson-{x.day}": renderer.lesson(x.day) for x in course.lessons
    }
    found["welcome"] = renderer.welcome()
    found["confirm"] = renderer.confirm()
    for path in sorted((REPO / "newsletters").glob("*.md")):
        found[f"newsletter-{path.stem}"] = renderer.newsletter(load_newsletter(project, path))
    reader = sample_recipient()
    emails = {
        name: (email, email.personalise(reader, key=name, kind="test", ref=name).html)
        for name, email in found.items()
    }
    assert sorted(emails) == NAMES
    return emails


NAMES = _names()


class _View:
    """One page, kept for the module, that shows each email afresh (a new document each time).

    A browser context per check cost about 1 s of CPU in chromium (a renderer process started
    and torn down): over 70 of them were most of this module's cost. A view's settings that a
    reader's client fixes for good (forced dark, images loaded or not) belong to its context,
    so each combination is a view of its own; width and colour scheme are set per email.
    """

    def __init__(self, browser, images: bool) -> None:
        self.context = browser.new_context(viewport={"width": 375, "height": 900})
        self.context.set_default_timeout(300_000)  # a loaded machine: slow, never wrong

        def route(request_route) -> None:
            if request_route.request.resource_type == "image" and images:
                request_route.fulfill(status=200, content_type="image/svg+xml", body=STILL)
            else:
                request_route.abort()  # nothing leaves the machine; images off when asked

        self.context.route("**/*", route)
        self.page = self.context.new_page()


class _Views:
    """The views a worker needs, each made on first use: the test workers share this module's
    checks, and one that runs no screenshot starts neither the forced-dark browser nor the
    images-off context."""

    def __init__(self, playwright) -> None:
        self._playwright = playwright
        self._browsers: dict[bool, Any] = {}
        self._views: dict[str, _View] = {}

    def _browser(self, forced: bool):
        if forced not in self._browsers:
            args = ["--no-sandbox"]
            if forced:
                args.append("--blink-settings=forceDarkModeEnabled=true")
            self._browsers[forced] = self._playwright.chromium.launch(
                executable_path=CHROMIUM, args=args
            )
        return self._browsers[forced]

    def __getitem__(self, name: str) -> _View:
        if name not in self._views:
            browser = self._browser(forced=name == "forced")
            self._views[name] = _View(browser, images=name != "images-off")
        return self._views[name]

    def close(self) -> None:
        for browser in self._browsers.values():
            browser.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[_Views]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (set DRIPMAIL_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        views = _Views(p)
        yield views
        views.close()


def _open(chromium: _Views, html: str, width: int, mode: str = "light", images=True):
    """The page showing `html` at `width` px; mode light, dark or forced; images stubbed or off.

    A new document in a new window each time: the page first goes to about:blank, so nothing
    (a script global such as axe, a scroll position) carries over from the previous email.
    """
    view = chromium["forced" if mode == "forced" else "images" if images else "images-off"]
    page = view.page
    page.goto("about:blank")
    page.set_viewport_size({"width": width, "height": 900})
    page.emulate_media(color_scheme="dark" if mode == "dark" else "light")
    page.set_content(html, wait_until="load")
    return page


def _rgb(css: str) -> tuple[float, float, float, float]:
    parts = [float(x) for x in re.findall(r"[\d.]+", css)]
    return (parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else 1.0)


def _luminance(css: str) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b, _ = _rgb(css)
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(foreground: str, background: str) -> float:
    """WCAG 2 contrast ratio of two computed CSS colours (rgb()/rgba())."""
    high, low = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


# The computed text colour of each element and the first opaque background behind it.
COLOURS_JS = """(selector) => [...document.querySelectorAll(selector)].map(el => {
    let node = el, bg = 'rgb(255, 255, 255)';
    while (node && node.nodeType === 1) {
        const c = getComputedStyle(node).backgroundColor;
        const alpha = c.startsWith('rgba') ? parseFloat(c.split(',')[3]) : 1;
        if (alpha > 0) { bg = c; break; }
        node = node.parentElement;
    }
    return {text: el.textContent.trim(), fg: getComputedStyle(el).color, bg};
})"""

# Every link's box, and whether it sits inside a sentence (WCAG 2.5.8's inline exception).
LINKS_JS = """() => [...document.querySelectorAll('a[href]')].map(a => {
    const r = a.getBoundingClientRect();
    const block = a.closest('p, li, td, div');
    const inline = block && block.textContent.trim().length > a.textContent.trim().length + 2;
    return {text: a.textContent.trim() || (a.querySelector('img') || {}).alt || '',
            href: a.getAttribute('href'), height: r.height, width: r.width, inline,
            image: !!a.querySelector('img')};
})"""


@pytest.mark.parametrize("name", NAMES)
def test_title_preheader_images_links_and_contrast(chromium, name: str) -> None:
    email, html = _emails()[name]
    page = _open(chromium, html, 375)
    title = page.title()
    assert title == email.subject or name == "confirm", title
    # Said once: "Day 1: Day 1: ..." is what a screen reader used to announce.
    assert not re.search(r"\b(.{6,}?)\1", title), title
    label = page.evaluate("document.querySelector('[aria-label]')?.getAttribute('aria-label')")
    assert label in (None, title)

    # The hidden preheader block (layout.mjml.j2: a display:none div, not mj-preview, whose
    # white 1px text SpamAssassin scores as low-contrast).
    hidden = page.evaluate("document.querySelector('.preheader').textContent")
    assert page.evaluate("getComputedStyle(document.querySelector('.preheader')).display") == (
        "none"
    )
    assert hidden.startswith(email.preheader), hidden[:80]
    spacer = hidden[len(email.preheader) :]
    assert len(spacer) >= 60 and set(spacer) <= SPACER, "no spacer after the preheader"

    alts = page.evaluate("[...document.images].map(i => i.getAttribute('alt'))")
    assert all(a and a.strip() for a in alts), alts

    assert page.evaluate("document.documentElement.scrollWidth") <= 375

    for link in page.evaluate(LINKS_JS):
        standalone = not link["inline"] and not link["image"]
        footer = link["href"].startswith("https://preview.invalid/")
        if standalone or footer:
            assert link["height"] >= 24, f"{link['text']!r} is {link['height']} px tall"
    for item in page.evaluate(COLOURS_JS, "a"):
        assert contrast(item["fg"], item["bg"]) >= 4.5, item
    # Link colours are also inline: some Gmail setups drop the <style> block.
    for tag in re.findall(r"<a [^>]*>", html):
        assert "color" in tag or "<img" in html[html.index(tag) : html.index(tag) + 400], tag


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["light", "dark"])
def test_buttons_read_at_4_5_to_1_and_dark_mode_has_no_light_strip(
    chromium, name: str, mode: str
) -> None:
    _, html = _emails()[name]
    page = _open(chromium, html, 375, mode)
    buttons = page.evaluate(COLOURS_JS, ".dm-btn a, a.dm-bar")
    if name.startswith(("lesson", "confirm")):
        assert buttons, "no button"
    for item in buttons:
        ratio = contrast(item["fg"], item["bg"])
        assert ratio >= 4.5, f"{item['text']!r}: {ratio:.1f}:1 in {mode} mode"
    body = page.evaluate("getComputedStyle(document.body).backgroundColor")
    if mode == "dark":
        assert _luminance(body) < 0.05, f"the page behind the email stays {body}"
        texts = page.evaluate(COLOURS_JS, ".dm-text p, .dm-text li, .dm-text h1")
        for item in texts:
            assert contrast(item["fg"], item["bg"]) >= 4.5, item


@pytest.mark.parametrize("name", SHOWN)
def test_screenshots_at_375_and_600_light_dark_forced_and_images_off(chromium, name: str) -> None:
    _, html = _emails()[name]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in (375, 600):
        for mode, images in (("light", True), ("dark", True), ("forced", True), ("light", False)):
            shown = mode if images else "images-off"
            page = _open(chromium, html, width, mode, images)
            path = ARTIFACTS / f"{name}-{width}-{shown}.png"
            page.screenshot(path=str(path), full_page=True)
            assert path.stat().st_size > 10_000
            if not images:
                # With images off the video still has its play bar and its button.
                for text in ("Play the video", "Watch today's video"):
                    if name.startswith("lesson"):
                        box = page.get_by_text(text).first.bounding_box()
                        assert box and box["height"] >= 24, text


def test_lesson_1_at_a_glance_progress_teaser_signoff_and_drawing_in_place(chromium) -> None:
    _, html = _emails()["lesson-1"]
    page = _open(chromium, html, 375)
    text = page.inner_text("body")
    assert "DAY 1 OF 7" in text.upper() and "Today at a glance" in text
    for label in ("Time", "Props", "Where", "Skip or adapt today if:"):
        assert label in text
    assert "Skip or adapt today if…" in text and "Pregnancy:" in text
    assert "Tomorrow, day 2:" in text and "Maya Okafor" in text and "reply" in text
    # The drawing sits after "Why this stretch", before "How to do it".
    order = page.evaluate(
        """() => {
            const h = [...document.querySelectorAll('h2')];
            const why = h.find(x => x.textContent.includes('Why this stretch'));
            const how = h.find(x => x.textContent.includes('How to do it'));
            const img = [...document.images].find(i => i.alt.startsWith('Drawing'));
            const after = (a, b) => !!(a.compareDocumentPosition(b) & 4);
            return [after(why, img), after(img, how)];
        }"""
    )
    assert order == [True, True]
    # The video's main button is right under the thumbnail and its play bar.
    gap = page.evaluate(
        """() => {
            const bar = document.querySelector('a.dm-bar').getBoundingClientRect();
            const btn = document.querySelector('.dm-btn a').getBoundingClientRect();
            return btn.top - bar.bottom;
        }"""
    )
    assert 0 <= gap <= 40
    footer = page.inner_text("body").split("Unsubscribe")[-1]
    assert footer.count("Hollow Tree Yoga") == 1


@pytest.mark.parametrize("name", NAMES)
def test_axe_finds_nothing_serious_in_the_email(chromium, name: str) -> None:
    source = axe_source()
    for mode in ("light", "dark"):
        page = _open(chromium, _emails()[name][1], 375, mode)
        assert serious_findings(page, source) == [], mode

"""The live preview: only when enabled, every email in every view, findings, reload on change."""

from __future__ import annotations

import re

import pytest
from conftest import assert_clean

pytestmark = pytest.mark.anyio


@pytest.fixture
async def preview(make_web):
    web = make_web(preview=True)
    yield web
    for client in web._clients:
        await client.aclose()


async def test_preview_is_not_served_unless_enabled(web):
    paths = ("/preview", "/preview/lesson/1", "/preview/email/lesson/1.html", "/preview/version")
    for path in paths:
        answer = await web.client().get(path)
        assert answer.status_code == 404
        assert_clean(answer)


async def test_index_lists_every_lesson_the_confirmation_and_newsletters(preview):
    news = preview.root / "newsletters"
    news.mkdir()
    (news / "june.md").write_text(
        '---\nsubject: "June at the studio"\npreheader: "News from the mat."\n---\nHello.\n'
    )
    page = await preview.client().get("/preview")
    assert page.status_code == 200
    for day in range(1, 8):
        assert f'href="/preview/lesson/{day}"' in page.text
    assert 'href="/preview/confirm/-"' in page.text
    assert "June at the studio" in page.text and 'href="/preview/newsletter/june"' in page.text
    assert "/static/preview.js" in page.text


async def test_email_page_has_desktop_mobile_dark_text_and_findings(preview):
    page = await preview.client().get("/preview/lesson/3")
    assert page.status_code == 200
    text = page.text
    assert "Day 3: a stretch for your hips" in text
    assert 'src="/preview/email/lesson/3.html"' in text
    assert 'src="/preview/email/lesson/3.html?dark=1"' in text
    assert "Desktop (600 px)" in text and "Mobile (375 px)" in text and "Dark mode" in text
    assert 'id="text-part"' in text and "Kneel on your mat" in text
    assert "No problems found." in text or 'id="warnings"' in text
    html = await preview.client().get("/preview/email/lesson/3.html")
    assert html.status_code == 200 and "Kneel on your mat" in html.text
    assert '<base target="_blank">' in html.text
    assert "script-src" not in html.headers["content-security-policy"]  # no script in emails


async def test_dark_view_switches_the_emails_dark_rules_on(preview):
    light = (await preview.client().get("/preview/email/lesson/1.html")).text
    dark = (await preview.client().get("/preview/email/lesson/1.html?dark=1")).text
    assert "prefers-color-scheme: dark" in light or "prefers-color-scheme:dark" in light
    assert "prefers-color-scheme" not in dark.split("</head>")[0].replace("light dark", "")
    assert "color-scheme:dark" in dark


async def test_check_findings_for_that_email_are_shown(preview):
    lesson = next((preview.root / "course").glob("day-2-*.md"))
    lesson.write_text(
        lesson.read_text() + "\nSee [the old page](http://studio.example.com/old).\n"
        "\n![](https://studio.example.com/pose.jpg)\n"
    )
    page = await preview.client().get("/preview/lesson/2")
    assert page.status_code == 200
    assert "alt text" in page.text and 'role="alert"' in page.text
    # An image without alt text is an error in the lesson file itself: the course does not
    # load, and every email's page lists the problems (no 404, no 500).
    assert "day-2-stretch-2.md" in page.text
    index = await preview.client().get("/preview")
    assert "image without alt text" in index.text


async def test_warnings_concern_only_their_own_email(preview):
    lesson = next((preview.root / "course").glob("day-2-*.md"))
    lesson.write_text(lesson.read_text() + "\nSee [the old page](http://studio.example.com/old).\n")
    page = await preview.client().get("/preview/lesson/2")
    assert "link is not https (http://studio.example.com/old)" in page.text
    other = await preview.client().get("/preview/lesson/4")
    assert "http://studio.example.com/old" not in other.text


async def _next_version(client, seen: str) -> str:
    """The long poll, as the page does it: ask with the version shown until it changes."""
    while True:
        value = (await client.get("/preview/version", params={"seen": seen})).json()["version"]
        if value != seen:
            return value


async def test_version_changes_when_a_file_changes_and_pages_follow(preview):
    client = preview.client()
    first = (await client.get("/preview/version")).json()["version"]
    assert (await client.get("/preview/version")).json()["version"] == first
    page = await client.get("/preview/lesson/1")
    assert f'content="{first}"' in page.text
    lesson = next((preview.root / "course").glob("day-1-*.md"))
    lesson.write_text(lesson.read_text().replace("Day 1: a stretch", "Day 1: the new subject"))
    # No polling of file times: the watcher hears of the write and answers the long poll.
    second = await _next_version(client, first)
    page = await client.get("/preview/lesson/1")
    assert "Day 1: the new subject" in page.text
    shown = re.search(r'name="dripmail-version" content="([^"]+)"', page.text)
    assert shown and shown.group(1) != first
    template = preview.root / "emails" / "lesson.mjml.j2"
    template.write_text(template.read_text() + "\n")
    assert await _next_version(client, second) != second


async def test_broken_course_or_template_shows_problems_not_a_500(preview):
    template = preview.root / "emails" / "lesson.mjml.j2"
    template.write_text(template.read_text().replace("{{ lesson.subject }}", "{{ lesson.nope }}"))
    page = await preview.client().get("/preview/lesson/1")
    assert page.status_code == 200
    assert "emails/lesson.mjml.j2" in page.text and 'role="alert"' in page.text
    framed = await preview.client().get("/preview/email/lesson/1.html")
    assert framed.status_code == 200 and "does not render" in framed.text
    client = preview.client()
    shown = (await client.get("/preview/version")).json()["version"]
    (preview.root / "course" / "course.toml").write_text("id = \n")
    await _next_version(client, shown)  # as the open page would: told of the change, reload
    index = await client.get("/preview")
    assert index.status_code == 200 and "course/course.toml" in index.text
    assert_clean(index)


async def test_unknown_emails_are_404(preview):
    paths = ("/preview/lesson/99", "/preview/lesson/ab", "/preview/spam/1", "/preview/newsletter/x")
    for path in paths:
        answer = await preview.client().get(path)
        assert answer.status_code == 404
        assert_clean(answer)

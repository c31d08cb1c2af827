from datetime import UTC, datetime
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from dripmail.checks import CLIP_LIMIT, scan_html
from dripmail.config import Project
from dripmail.content import load_course
from dripmail.errors import ContentError
from dripmail.render import Recipient, Renderer
from tests.course_fixture import lesson_text, make_project

SNAPSHOTS = Path(__file__).parent / "snapshots"
ANA = Recipient(
    email="ana@example.org",
    first_name="Ana",
    subscriber_id=7,
    unsubscribe_url="https://signup.example.com/unsubscribe/tok-u",
    preferences_url="https://signup.example.com/preferences/tok-p",
)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(make_project(tmp_path))


def _lesson(project: Project, day: int = 1, who: Recipient = ANA):
    renderer = Renderer(project, load_course(project))
    return renderer.lesson(day).personalise(who, key=f"k-{day}", kind="lesson", ref=str(day))


def test_lesson_html_has_video_link_alt_text_unsubscribe_and_fits(project: Project) -> None:
    message = _lesson(project, 2)
    scan = scan_html(message.html)
    assert "https://studio.example.com/videos/day-2" in scan.links
    assert ANA.unsubscribe_url in scan.links and ANA.preferences_url in scan.links
    assert not scan.images_without_alt and scan.lang == "en" and scan.headings >= 2
    assert "Play the video" in message.html and "Hi Ana," in message.html
    assert 'name="color-scheme" content="light dark"' in message.html
    assert "prefers-color-scheme: dark" in message.html
    assert len(message.html.encode()) < CLIP_LIMIT // 3
    assert message.headers == {
        "List-Unsubscribe": f"<{ANA.unsubscribe_url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert message.tags == ("test-week", "day-2") and message.subject.startswith("Day 2")


def test_text_part_matches_snapshot(project: Project) -> None:
    text = _lesson(project, 1).text
    snapshot = SNAPSHOTS / "lesson-1.txt"
    assert text == snapshot.read_text(encoding="utf-8")
    assert "<" not in text  # written from the Markdown, not scraped from HTML


def test_first_name_falls_back_and_is_escaped(project: Project) -> None:
    nameless = _lesson(project, 1, Recipient(email="x@example.org"))
    assert "Hi there," in nameless.html and "Hi there," in nameless.text
    tricky = Recipient(email="x@example.org", first_name="<b>Bo & Co</b>")
    message = _lesson(project, 1, tricky)
    assert "Hi &lt;b&gt;Bo &amp; Co&lt;/b&gt;," in message.html
    assert "Hi <b>Bo & Co</b>," in message.text  # plain text is not HTML-escaped


def test_same_inputs_give_byte_identical_output(project: Project, tmp_path: Path) -> None:
    first, second = _lesson(project, 3), _lesson(project, 3)
    when = datetime(2026, 3, 2, 7, tzinfo=UTC)
    assert first.html == second.html and first.to_bytes(when) == second.to_bytes(when)


def test_mime_parses_back_with_both_parts_and_headers(project: Project) -> None:
    parsed = message_from_bytes(_lesson(project, 1).to_bytes(), policy=policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in parsed.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["To"] == "Ana <ana@example.org>"
    assert "Hi Ana," in parsed.get_body(("plain",)).get_content()


def test_lesson_text_with_brackets_is_not_template_code(project: Project) -> None:
    path = project.course_dir / "day-4-stretch-4.md"
    path.write_text(lesson_text(4) + "\nKeep [[ recipient.email ]] and {{ x }} as typed.\n")
    message = _lesson(project, 4)
    assert "recipient.email ]]" in message.text and "ana@example.org ]]" not in message.text
    assert "ana@example.org ]]" not in message.html and "{{ x }}" in message.html


def test_unknown_variable_is_reported_at_template_line(project: Project) -> None:
    template = project.emails_dir / "lesson.mjml.j2"
    lines = template.read_text().splitlines()
    lines.insert(9, "{{ lesson.video_length }}")
    template.write_text("\n".join(lines) + "\n")
    with pytest.raises(ContentError) as caught:
        _lesson(project)
    (problem,) = caught.value.problems
    assert problem.startswith("emails/lesson.mjml.j2:10: lesson has no field 'video_length'")


def test_template_syntax_error_names_file_and_line(project: Project) -> None:
    partial = project.emails_dir / "partials" / "video.mjml.j2"
    partial.write_text(partial.read_text() + "{% if %}\n")
    with pytest.raises(ContentError, match=r"emails/partials/video.mjml.j2:\d+: template syntax"):
        _lesson(project)


def test_sandbox_blocks_python_internals(project: Project) -> None:
    template = project.emails_dir / "lesson.txt.j2"
    template.write_text("{{ lesson.__class__.__mro__ }}\n" + template.read_text())
    with pytest.raises(ContentError, match=r"emails/lesson\.txt\.j2:1"):
        _lesson(project)


def test_broken_mjml_is_a_content_error(project: Project) -> None:
    template = project.emails_dir / "confirm.mjml.j2"
    template.write_text(template.read_text().replace("</mj-column>", "", 1))
    with pytest.raises(ContentError) as caught:
        Renderer(project, load_course(project)).confirm()
    # Line 7 opens the <mj-column> whose closing tag was deleted.
    assert caught.value.problems == [
        "emails/confirm.mjml.j2:7: MJML: <mj-column> is not closed before </mj-section>"
    ]


def test_unknown_mjml_element_is_reported_at_the_partial_line(project: Project) -> None:
    # MRML would silently drop the misspelt element (and with it the video thumbnail).
    partial = project.emails_dir / "partials" / "video.mjml.j2"
    lines = partial.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if "<mj-image" in line)
    partial.write_text(partial.read_text().replace("<mj-image ", "<mj-imag ", 1))
    with pytest.raises(ContentError) as caught:
        _lesson(project)
    assert caught.value.problems == [
        f"emails/partials/video.mjml.j2:{number}: MJML: <mj-imag> is not an MJML element"
        " (MJML drops it)"
    ]


def test_mjml_that_mrml_refuses_is_reported_with_its_template(project: Project) -> None:
    layout = project.emails_dir / "layout.mjml.j2"
    layout.write_text(layout.read_text().replace("<mjml ", "<mjml><mj-include path='x.mjml'/", 1))
    with pytest.raises(ContentError, match=r"^emails/layout\.mjml\.j2:\d+: MJML: "):
        _lesson(project)


def test_double_brackets_in_template_text_stay_text(project: Project) -> None:
    lesson = project.emails_dir / "lesson.mjml.j2"
    lesson.write_text(lesson.read_text().replace("Hi {{", "[[ recipient.email ]] Hi {{", 1))
    text = project.emails_dir / "lesson.txt.j2"
    text.write_text(text.read_text().replace("Hi {{", "[% if 1 %]Hi {{", 1))
    message = _lesson(project, 1)
    assert "ana@example.org" not in message.html.split("<body")[1]
    assert "recipient.email ]] Hi Ana," in message.html
    assert "if 1 %]Hi Ana," in message.text


def test_mjml_is_compiled_once_per_lesson(project: Project, monkeypatch) -> None:
    import mjml

    calls = []
    real = mjml.mjml2html
    monkeypatch.setattr(mjml, "mjml2html", lambda *a, **k: calls.append(1) or real(*a, **k))
    renderer = Renderer(project, load_course(project))
    for i in range(50):
        renderer.lesson(1).personalise(
            Recipient(email=f"r{i}@example.org"), key=str(i), kind="lesson", ref="1"
        )
    assert len(calls) == 1


def test_newsletter_renders_with_its_heading_links_and_tags(project: Project) -> None:
    from dripmail.content import load_newsletter

    folder = project.newsletters_dir
    folder.mkdir()
    (folder / "hips.md").write_text(
        "---\nsubject: Hips at the desk\npreheader: Three small habits for long days\n---\n"
        "Stand up **every** hour. [Read more](https://studio.example.com/blog).\n"
    )
    renderer = Renderer(project, load_course(project))
    compiled = renderer.newsletter(load_newsletter(project, folder / "hips.md"))
    message = compiled.personalise(ANA, key="n-1", kind="broadcast", ref="hips")
    scan = scan_html(message.html)
    assert "https://studio.example.com/blog" in scan.links and ANA.unsubscribe_url in scan.links
    assert "<h1>Hips at the desk</h1>" in message.html and "<strong>every</strong>" in message.html
    assert message.tags == ("newsletter", "hips") and message.subject == "Hips at the desk"
    assert "Read more (https://studio.example.com/blog)" in message.text
    assert message.headers["List-Unsubscribe"] == f"<{ANA.unsubscribe_url}>"


def test_confirm_email_carries_the_confirm_link_in_both_parts(project: Project) -> None:
    who = Recipient(
        email="new@example.org",
        confirm_url="https://signup.example.com/confirm/tok-c",
        unsubscribe_url="https://signup.example.com/unsubscribe/tok-u",
    )
    renderer = Renderer(project, load_course(project))
    message = renderer.confirm().personalise(who, key="c-1", kind="confirm", ref="-")
    assert who.confirm_url in scan_html(message.html).links
    assert f"Confirm: {who.confirm_url}" in message.text and "Hi there," in message.text
    assert message.subject == "Please confirm: A test week of hip stretches"


def test_markdown_html_in_a_lesson_is_shown_as_text(project: Project) -> None:
    path = project.course_dir / "day-2-stretch-2.md"
    path.write_text(lesson_text(2) + '\n<script>alert(1)</script> <img src="x">\n')
    message = _lesson(project, 2)
    assert "<script>" not in message.html and "&lt;script&gt;alert(1)" in message.html
    assert not scan_html(message.html).images_without_alt


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            '{% include "partials/video.mjml.j2" %}',
            '{% include "partials/vid.mjml.j2" %}',
            "emails/lesson.mjml.j2:18: template not found: emails/partials/vid.mjml.j2",
        ),
        (
            "{{ lesson.stretch }}",
            "{{ lesson.day + 'x' }}",
            "emails/lesson.mjml.j2:12: template error: TypeError: unsupported operand",
        ),
        (
            "{{ lesson.stretch }}",
            "{{ lesson.__class__ }}",
            "emails/lesson.mjml.j2:12: not allowed in a template: access to attribute '__class__'",
        ),
        (
            "Hi {{ recipient.first_name }}",
            "H\udcffi {{ recipient.first_name }}",
            "emails/lesson.mjml.j2:13: cannot read: not UTF-8 text (byte 0xff at column 34)",
        ),
    ],
    ids=["missing-include", "runtime-error", "sandbox", "not-utf8"],
)
def test_template_mistakes_are_one_line_at_the_template(
    project: Project, old: str, new: str, expected: str
) -> None:
    template = project.emails_dir / "lesson.mjml.j2"
    text = template.read_text()
    assert old in text
    template.write_bytes(text.replace(old, new, 1).encode("utf-8", "surrogateescape"))
    with pytest.raises(ContentError) as caught:
        _lesson(project)
    (problem,) = caught.value.problems
    assert problem.startswith(expected), problem


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("{{ recipient.first_name | upper }}", "changed by a filter (upper)"),
        ("{{ recipient.first_name|title }}", "changed by a filter (title)"),
        ("{{ (recipient.first_name ~ '!') | upper }}", "joined to other text with ~"),
        ("{% filter upper %}{{ recipient.first_name }}{% endfilter %}", "changed by a filter"),
        ("{% if recipient.first_name %}{{ recipient.first_name }}{% endif %}", "tested"),
        ("{{ recipient.first_name | length }}", "changed by a filter (length)"),
        ("{% if recipient.first_name == '' %}there{% endif %}", "compared"),
        ("{{ recipient.first_name[:1] }}", "sliced or indexed"),
        ("{{ recipient.first_name.upper() }}", "changed by a method"),
    ],
    ids=["upper", "title", "concat", "filter-block", "if", "length", "compare", "slice", "method"],
)
def test_a_template_that_acts_on_a_reader_s_value_is_told_so_at_its_line(
    project: Project, written: str, said: str
) -> None:
    # Stage 1 renders one email for everyone: acting on the placeholder would act on its own
    # text ("[[ RECIPIENT.FIRST_NAME ]]", an `if` always true) and mislead every reader.
    template = project.emails_dir / "lesson.txt.j2"
    text = template.read_text()
    line = text[: text.index("{{ recipient.first_name }}")].count("\n") + 1
    template.write_text(text.replace("{{ recipient.first_name }}", written, 1))
    with pytest.raises(ContentError) as caught:
        Renderer(project, load_course(project)).lesson(1)
    (problem,) = caught.value.problems
    assert problem.startswith(
        f"emails/lesson.txt.j2:{line}: recipient.first_name cannot be {said}"
    ), problem
    assert "Write {{ recipient.first_name }} as it is" in problem


def test_only_the_links_an_email_shows_are_signed(project: Project) -> None:
    from datetime import UTC, datetime

    from dripmail.render import recipient_for
    from dripmail.tokens import Signer

    renderer = Renderer(project, load_course(project))
    lesson, confirm = renderer.lesson(1), renderer.confirm()
    # Unsubscribe always: it is in the List-Unsubscribe header even where the body lacks it.
    assert lesson.links == ("unsubscribe", "preferences")
    assert confirm.links == ("unsubscribe", "preferences", "confirm")  # its layout shows both
    row = {"id": 5, "email": "e@example.org", "first_name": "E"}
    when = datetime(2026, 3, 1, tzinfo=UTC)
    signer = Signer("key")
    every = recipient_for(row, "https://s.example.com", signer, when)
    needed = recipient_for(row, "https://s.example.com", signer, when, links=lesson.links)
    assert needed.confirm_url == "" and needed.preferences_url == every.preferences_url
    # The same bytes as a copy rendered with every link signed (a resent batch is unchanged).
    assert lesson.personalise(needed, key="k", kind="lesson", ref="1") == lesson.personalise(
        every, key="k", kind="lesson", ref="1"
    )


def test_welcome_says_when_lesson_one_arrives_for_each_reader(project: Project) -> None:
    from dataclasses import replace
    from datetime import UTC, datetime

    from dripmail.errors import NotFoundError
    from dripmail.welcome import first_lesson_phrase

    with pytest.raises(NotFoundError, match=r"add course/welcome\.md"):
        Renderer(project, load_course(project)).welcome()
    (project.course_dir / "welcome.md").write_text(
        '---\nsubject: "You are in"\npreheader: "What to have ready for day 1"\n---\nA mat.\n'
    )
    welcome = Renderer(project, load_course(project)).welcome()
    sent = datetime(2026, 6, 1, 16, 0, tzinfo=UTC)
    due = datetime(2026, 6, 2, 5, 0, tzinfo=UTC)
    when = first_lesson_phrase(due, "Europe/Berlin", sent)
    assert when == "tomorrow, Tuesday 2 June, at 07:00 your time (Europe/Berlin)"
    assert (
        first_lesson_phrase(due, "Asia/Tokyo", sent)
        == "today, Tuesday 2 June, at 14:00 your time (Asia/Tokyo)"
    )
    message = welcome.personalise(replace(ANA, first_lesson=when), key="w", kind="lesson", ref="0")
    assert f"Lesson 1 arrives {when}," in message.text
    assert "Lesson 1 arrives <strong>tomorrow, Tuesday 2 June" in message.html
    assert "Day 7" in message.text and "A mat." in message.text and "Hi" not in message.subject
    unknown = welcome.personalise(ANA, key="w", kind="lesson", ref="0")
    assert "Lesson 1 arrives on the morning after you confirmed" in unknown.text


@pytest.mark.parametrize(
    "first_name",
    ["Ana", "", None, "  Zoë  ", 'O"Brien <b>&amp;', "Łukasz\u00a0", "R\u0430fael"],
)
def test_personalising_for_many_readers_is_personalise_byte_for_byte(
    project: Project, first_name: str | None
) -> None:
    # A broadcast renders each reader through `for_readers`; a copy rendered again the
    # general way (a recovery, the archive) must be the same Message.
    from dripmail.render import recipient_for
    from dripmail.tokens import Signer

    renderer = Renderer(project, load_course(project))
    signer = Signer("key")
    when = datetime(2026, 3, 1, 7, 30, tzinfo=UTC)
    # The second public URL has characters HTML escapes: its links are escaped like names.
    for public in ("https://s.example.com/", "https://s.example.com/a&b'c"):
        for compiled in (renderer.lesson(1), renderer.confirm()):
            fast = compiled.for_readers(public, signer, when, kind="broadcast", ref="9")
            row = {"id": 41, "email": "zoe+x@example.org", "first_name": first_name}
            general = compiled.personalise(
                recipient_for(row, public, signer, when, compiled.links),
                key="nl-9-s41",
                kind="broadcast",
                ref="9",
            )
            assert fast(41, "zoe+x@example.org", first_name, "nl-9-s41") == general
            assert ("a&amp;b&#39;c/" in general.html) == ("&" in public)

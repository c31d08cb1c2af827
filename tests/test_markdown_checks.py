"""`check` on lesson, welcome and newsletter Markdown (`dripmail.markdown_checks`), on copies of
the repository's real course: merge tags, raw HTML, relative addresses. Each input is one the
tester wrote; each problem is one line at the file's line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dripmail.checks import check_project
from dripmail.config import Project
from dripmail.content import load_course_checked, load_newsletter_checked
from dripmail.markdown import to_html, to_text
from tests.course_fixture import copy_real_project

DAY_1 = "course/day-1-meet-your-psoas.md"
NEWSLETTER = "newsletters/hips-at-the-desk.md"
WELCOME = "course/welcome.md"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(copy_real_project(tmp_path))


def _append(project: Project, name: str, text: str) -> int:
    """Add `text` after a blank line at the end of the file; returns its first line."""
    path = project.root / name
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines, "", text]) + "\n", encoding="utf-8")
    return len(lines) + 2


def _problems(project: Project) -> tuple[list[str], list[str]]:
    problems, _ = check_project(project)
    return problems.errors, problems.warnings


def test_the_real_course_has_no_warnings(project: Project) -> None:
    errors, warnings = _problems(project)
    assert errors == [] and warnings == []


# -- merge tags ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [DAY_1, NEWSLETTER, WELCOME])
def test_a_merge_tag_in_any_markdown_body_is_warned_at_its_line(
    project: Project, name: str
) -> None:
    line = _append(project, name, "Good morning,\n{{ recipient.first_name }}!")
    kind = {DAY_1: "lesson", NEWSLETTER: "newsletter", WELCOME: "welcome"}[name]
    errors, warnings = _problems(project)
    assert errors == []
    assert warnings == [
        f"{name}:{line + 1}: {{{{ recipient.first_name }}}} is sent as written (Markdown and "
        "front matter are not templates) — delete it: the greeting with the reader's first "
        f"name is already in emails/{kind}.mjml.j2 and emails/{kind}.txt.j2, where "
        "{{ recipient.first_name }} works"
    ]


def test_conditions_other_variables_and_mailchimp_tags_are_warned(project: Project) -> None:
    line = _append(
        project, DAY_1, "{% if vip %}Extra tip{% endif %} for day {{ lesson.day }}, *|FNAME|*."
    )
    warnings = _problems(project)[1]
    assert [w.split(" is sent as written")[0] for w in warnings] == [
        f"{DAY_1}:{line}: {tag}"
        for tag in ("{% if vip %}", "{% endif %}", "{{ lesson.day }}", "*|FNAME|*")
    ]
    assert "conditions and loops work only in the templates" in warnings[0]
    assert "template variables work only in the templates" in warnings[2]


def test_braces_in_a_code_span_or_block_are_not_merge_tags(project: Project) -> None:
    _append(project, NEWSLETTER, "Templates write `{{ name }}`.\n\n    {% raw %}\n")
    assert _problems(project) == ([], [])


def test_a_merge_tag_in_front_matter_is_warned_at_its_key(project: Project) -> None:
    path = project.root / NEWSLETTER
    path.write_text(
        path.read_text(encoding="utf-8").replace('subject: "', 'subject: "{{ first_name }}, ', 1),
        encoding="utf-8",
    )
    (warning,) = _problems(project)[1]
    assert warning.startswith(f"{NEWSLETTER}:2: subject: {{{{ first_name }}}} is sent as written")


def test_merge_tags_are_really_sent_as_written(project: Project) -> None:
    """What the warning claims: the reader gets the braces (nothing renders them)."""
    assert "{{ first_name }}" in to_text("Hi {{ first_name }}")
    assert "{{ first_name }}" in to_html("Hi {{ first_name }}")


# -- raw HTML -----------------------------------------------------------------------------


def test_raw_html_is_warned_with_the_markdown_that_does_the_same(project: Project) -> None:
    line = _append(
        project,
        DAY_1,
        "Keep the blanket <b>folded</b> twice.\n\n<div>\nA box\n</div>\n\n<!-- x -->",
    )
    errors, warnings = _problems(project)
    assert errors == []
    said = "is shown to readers as typed (emails are made from the Markdown only)"
    assert warnings == [
        f"{DAY_1}:{line}: raw HTML <b> {said} — write **bold** instead",
        f"{DAY_1}:{line + 2}: raw HTML <div> {said} — write paragraphs separated by a blank "
        "line instead",
        f"{DAY_1}:{line + 6}: an HTML comment is shown to readers as typed — delete it",
    ]


def test_raw_html_is_really_shown_as_typed() -> None:
    assert "&lt;b&gt;folded&lt;/b&gt;" in to_html("<b>folded</b>")
    assert "<b>folded</b>" in to_text("<b>folded</b>")


def test_an_unknown_tag_and_a_tag_in_a_newsletter_are_warned(project: Project) -> None:
    line = _append(project, NEWSLETTER, "A <table> here and <br> there")
    warnings = _problems(project)[1]
    assert warnings[0] == (
        f"{NEWSLETTER}:{line}: raw HTML <table> is shown to readers as typed (emails are made "
        "from the Markdown only) — write it in Markdown or delete it"
    )
    assert warnings[1].startswith(f"{NEWSLETTER}:{line}: raw HTML <br>")
    assert len(warnings) == 2


def test_autolinks_and_comparisons_are_not_html(project: Project) -> None:
    _append(project, DAY_1, "See <https://studio.example.com/help> if 3 < 4.")
    assert _problems(project) == ([], [])


# -- relative addresses -------------------------------------------------------------------


def test_a_relative_image_is_an_error_and_a_relative_link_a_warning(project: Project) -> None:
    line = _append(
        project, DAY_1, "The muscle:\n\n![psoas](images/psoas.png)\n\n[video](/videos/day-1)"
    )
    errors, warnings = _problems(project)
    assert errors == [
        f"{DAY_1}:{line + 2}: image is relative (images/psoas.png): an email has no base "
        "address, so readers see a broken image — use a full https:// URL"
    ]
    assert warnings == [
        f"{DAY_1}:{line + 4}: link is relative (/videos/day-1): an email has no base address, "
        "so it leads nowhere — use a full https:// URL"
    ]


def test_relative_addresses_in_the_welcome_and_a_newsletter(project: Project) -> None:
    _append(project, WELCOME, "[the mat](mat.html)")
    _append(project, NEWSLETTER, "![desk](./desk.jpg)")
    _, problems = load_course_checked(project)
    assert [w.split(": ", 1)[1] for w in problems.warnings] == [
        "link is relative (mat.html): an email has no base address, so it leads nowhere — use "
        "a full https:// URL"
    ]
    _, found = load_newsletter_checked(project, project.root / NEWSLETTER)
    assert len(found.errors) == 1 and "image is relative (./desk.jpg)" in found.errors[0]


def test_a_relative_image_a_template_writes_is_an_error_once(project: Project) -> None:
    layout = project.emails_dir / "layout.mjml.j2"
    pixel = '<mj-raw><img src="/pixel.png" alt="pixel" /></mj-raw>'
    text = layout.read_text(encoding="utf-8")
    layout.write_text(text.replace('css-class="body-bg">', f'css-class="body-bg">{pixel}', 1))
    errors = _problems(project)[0]
    assert [e for e in errors if "/pixel.png" in e] == [
        f"{DAY_1}: image is relative (/pixel.png): an email has no base address, so readers see "
        "a broken image — use a full https:// URL"
    ], errors

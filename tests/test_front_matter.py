"""Reading course files (`dripmail.front_matter`), on copies of the repository's real course,
newsletter and templates: a byte-order mark, a key written twice, a misspelt key, a byte that
is not UTF-8. Every problem is one line at the file's line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dripmail.checks import check_project
from dripmail.config import Project
from dripmail.content import load_course, load_course_checked, load_newsletter_checked
from tests.course_fixture import copy_real_project

NEWSLETTER = "newsletters/hips-at-the-desk.md"
DAY_1 = "course/day-1-meet-your-psoas.md"
DAY_2 = "course/day-2-iliacus-and-neutral-pelvis.md"
BOM = b"\xef\xbb\xbf"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(copy_real_project(tmp_path))


def _edit(project: Project, name: str, old: str, new: str) -> None:
    """Replace the first `old` with `new` in the file, as `sed -i` would."""
    path = project.root / name
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _line_of(project: Project, name: str, start: str) -> int:
    lines = (project.root / name).read_text(encoding="utf-8").splitlines()
    return next(i for i, text in enumerate(lines, start=1) if text.startswith(start))


# -- a misspelt key ---------------------------------------------------------------------


def test_a_misspelt_newsletter_segment_is_an_error_with_the_key_meant(project: Project) -> None:
    # The tester's edit: `sed -i 's/^segment: all/segmnt: tag:vip/'`.
    _edit(project, NEWSLETTER, "segment: all\n", "segmnt: tag:vip\n")
    line = _line_of(project, NEWSLETTER, "segmnt:")
    newsletter, problems = load_newsletter_checked(project, project.root / NEWSLETTER)
    assert newsletter is None
    assert problems.errors == [
        f"{NEWSLETTER}:{line}: segmnt: unknown field (did you mean 'segment'?) — nothing is "
        "sent while a newsletter has a field dripmail does not know: correct its name or "
        "delete it"
    ]


def test_a_newsletter_key_far_from_any_lists_the_fields(project: Project) -> None:
    _edit(project, NEWSLETTER, "segment: all\n", "audience: vip\n")
    _, problems = load_newsletter_checked(project, project.root / NEWSLETTER)
    (error,) = problems.errors
    assert "audience: unknown field (the fields are: preheader, segment, sources, subject)" in (
        error
    )


def test_a_misspelt_newsletter_preheader_suggests_preheader(project: Project) -> None:
    _edit(project, NEWSLETTER, "preheader:", "preheder:")
    line = _line_of(project, NEWSLETTER, "preheder:")
    _, problems = load_newsletter_checked(project, project.root / NEWSLETTER)
    assert any(
        e.startswith(f"{NEWSLETTER}:{line}: preheder: unknown field (did you mean 'preheader'?)")
        for e in problems.errors
    ), problems.errors


def test_a_misspelt_lesson_key_stays_a_warning_with_the_key_meant(project: Project) -> None:
    _edit(project, DAY_1, "video_thumbnail_alt:", "video_thumbnial_alt:")
    _edit(project, DAY_1, "tomorrow:", "tomorow:")
    _, problems = load_course_checked(project)
    # video_thumbnail_alt is required, so its absence is an error of its own; the misspelt
    # key is named beside it with the key meant.
    assert f"{DAY_1}:1: video_thumbnail_alt: missing" in problems.errors
    line = _line_of(project, DAY_1, "tomorow:")
    assert (
        f"{DAY_1}:{line}: tomorow: unknown field (did you mean 'tomorrow'?) — it is ignored: "
        "correct its name or delete the line"
    ) in problems.warnings
    assert any(
        "video_thumbnial_alt: unknown field (did you mean 'video_thumbnail_alt'?)" in w
        for w in problems.warnings
    )


def test_a_misspelt_welcome_key_is_a_warning_with_the_key_meant(project: Project) -> None:
    _edit(project, "course/welcome.md", "sources:", "soruces:")
    course, problems = load_course_checked(project)
    assert course is not None
    line = _line_of(project, "course/welcome.md", "soruces:")
    assert any(
        w.startswith(f"course/welcome.md:{line}: soruces: unknown field (did you mean 'sources'?)")
        for w in problems.warnings
    ), problems.warnings


# -- a key written twice ----------------------------------------------------------------


def test_a_subject_written_twice_is_an_error_naming_both_lines(project: Project) -> None:
    first = _line_of(project, NEWSLETTER, "subject:")
    _edit(project, NEWSLETTER, "preheader:", 'subject: "An older draft subject"\npreheader:')
    second = first + 1
    newsletter, problems = load_newsletter_checked(project, project.root / NEWSLETTER)
    assert newsletter is None
    assert problems.errors == [
        f"{NEWSLETTER}:{second}: subject: written twice, on lines {first} and {second} (only "
        f"line {second} would be used) — keep one and delete the other"
    ]


def test_a_lesson_key_written_twice_and_a_nested_one_are_errors(project: Project) -> None:
    _edit(project, DAY_2, "duration:", 'stretch: "Another stretch"\nduration:')
    _edit(project, DAY_2, "    what:", '    who: "Twice"\n    what:')
    errors = load_course_checked(project)[1].errors
    stretch = [e for e in errors if ": stretch: written twice" in e]
    who = [e for e in errors if ": who: written twice" in e]
    assert len(stretch) == 1 and len(who) == 1, errors
    assert stretch[0].startswith(f"{DAY_2}:")


def test_the_same_key_twice_on_one_line_is_found_too(project: Project) -> None:
    folder = project.newsletters_dir
    (folder / "flow.md").write_text(
        "---\nsubject: a\npreheader: b\nsegment: {x: 1, x: 2}\n---\nHi\n", encoding="utf-8"
    )
    _, problems = load_newsletter_checked(project, folder / "flow.md")
    assert any(":4: x: written twice, on lines 4 and 4" in e for e in problems.errors)


def test_a_yaml_merge_key_may_be_overridden(project: Project) -> None:
    folder = project.newsletters_dir
    (folder / "merge.md").write_text(
        "---\nsubject: a\npreheader: b\nsources:\n  - &s {a: 1}\n  - {<<: *s, a: 2}\n---\nHi\n",
        encoding="utf-8",
    )
    _, problems = load_newsletter_checked(project, folder / "merge.md")
    assert not any("written twice" in e for e in problems.errors), problems.errors


# -- a byte-order mark --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        DAY_2,
        "course/welcome.md",
        NEWSLETTER,
        "course/course.toml",
        "emails/lesson.mjml.j2",
        "emails/lesson.txt.j2",
    ],
)
def test_a_file_saved_with_a_byte_order_mark_reads_as_without_one(
    project: Project, name: str
) -> None:
    before = load_course(project)
    path = project.root / name
    path.write_bytes(BOM + path.read_bytes())
    problems, checked = check_project(project)
    assert problems.errors == [] and problems.warnings == [], problems.errors
    assert checked == 10
    after = load_course(project)
    assert after.lesson(2) == before.lesson(2) or name != DAY_2
    assert after.title == before.title
    from dripmail.checks import sample_recipient
    from dripmail.render import Renderer

    message = (
        Renderer(project, after)
        .lesson(2)
        .personalise(sample_recipient(), key="k", kind="test", ref="r")
    )
    assert "\ufeff" not in message.html and "\ufeff" not in message.text


# -- not UTF-8 ----------------------------------------------------------------------------


def test_a_latin1_byte_is_named_by_line_and_column(project: Project) -> None:
    path = project.root / DAY_2
    lines = path.read_bytes().split(b"\n")
    lines[29] = b"Caf\xe9 " + lines[29]
    path.write_bytes(BOM + b"\n".join(lines))
    errors = load_course_checked(project)[1].errors
    assert errors == [
        f"{DAY_2}:30: cannot read: not UTF-8 text (byte 0xe9 at column 4) — save it as UTF-8"
    ]


def test_a_latin1_byte_on_the_first_line_after_a_bom_counts_from_the_text(
    project: Project,
) -> None:
    path = project.root / DAY_2
    path.write_bytes(BOM + b"-\xe9-\n" + path.read_bytes())
    errors = load_course_checked(project)[1].errors
    assert errors == [
        f"{DAY_2}:1: cannot read: not UTF-8 text (byte 0xe9 at column 2) — save it as UTF-8"
    ]

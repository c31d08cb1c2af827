from pathlib import Path

import pytest

from dripmail.config import Project
from dripmail.content import load_course, load_course_checked, load_newsletter
from dripmail.errors import ContentError, NotFoundError
from tests.course_fixture import lesson_text, make_project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(make_project(tmp_path))


def _errors(project: Project) -> list[str]:
    course, problems = load_course_checked(project)
    assert course is None, "expected the course to be rejected"
    return problems.errors


def test_valid_course_loads_seven_lessons_in_order(project: Project) -> None:
    course = load_course(project)
    assert [x.day for x in course.lessons] == list(range(1, 8))
    assert course.send_time.hour == 7 and course.timezone == "America/New_York"
    assert course.sender.address == "hello@studio.example.com"
    assert course.lesson(3).stretch == "Stretch number 3"
    assert course.lesson(1).body_line == 18
    with pytest.raises(NotFoundError, match="no lesson for day 9"):
        course.lesson(9)


def test_bad_url_names_file_line_and_field(project: Project) -> None:
    path = project.course_dir / "day-3-stretch-3.md"
    path.write_text(lesson_text(3, video_url="htp://studio"))
    assert _errors(project) == [
        'course/day-3-stretch-3.md:8: video_url: not a URL ("htp://studio")'
    ]


def test_yaml_error_names_the_line(project: Project) -> None:
    path = project.course_dir / "day-2-stretch-2.md"
    path.write_text(lesson_text(2).replace('subject: "Day 2', "subject: [Day 2", 1))
    (error,) = _errors(project)
    assert error.startswith("course/day-2-stretch-2.md:4: front matter is not valid YAML")


def test_missing_field_and_missing_front_matter(project: Project) -> None:
    text = lesson_text(4).replace('stretch: "Stretch number 4"\n', "")
    (project.course_dir / "day-4-stretch-4.md").write_text(text)
    (project.course_dir / "day-5-stretch-5.md").write_text("Just text, no front matter.\n")
    errors = _errors(project)
    assert "course/day-4-stretch-4.md:1: stretch: missing" in errors
    assert any(e.startswith("course/day-5-stretch-5.md:1: front matter missing") for e in errors)


def test_gap_and_duplicate_days(project: Project) -> None:
    (project.course_dir / "day-6-stretch-6.md").unlink()
    assert any("no lesson for day 6" in e for e in _errors(project))
    (project.course_dir / "day-6-again.md").write_text(lesson_text(5, slug="again"))
    assert any("day: 5 is also in" in e for e in _errors(project))


def test_a_day_written_in_two_files_names_the_other_files_only(project: Project) -> None:
    """Tester's report: the error listed the file itself among the others."""
    (project.course_dir / "day-3-stretch-3.md").write_text(lesson_text(2))
    (project.course_dir / "day-4-stretch-4.md").write_text(lesson_text(2))
    errors = [e for e in _errors(project) if "is also in" in e]
    also = "— give each lesson its own day from 1 to 7"
    assert errors == [
        "course/day-3-stretch-3.md:2: day: 2 is also in course/day-2-stretch-2.md, "
        f"course/day-4-stretch-4.md {also}",
        "course/day-4-stretch-4.md:2: day: 2 is also in course/day-2-stretch-2.md, "
        f"course/day-3-stretch-3.md {also}",
    ]


@pytest.mark.parametrize("suffix", [".markdown", ".MD", ".md.txt"])
def test_a_lesson_with_another_markdown_suffix_is_named(project: Project, suffix: str) -> None:
    """Tester's report: `day-4-....markdown` or `.MD` only gave "no lesson for day 4"."""
    lesson = project.course_dir / "day-4-stretch-4.md"
    lesson.rename(lesson.with_name(f"day-4-stretch-4{suffix}"))
    _, problems = load_course_checked(project)
    assert problems.errors == [
        "course: no lesson for day 4: add course/day-N-<slug>.md for each day 1-7; "
        f"course/day-4-stretch-4{suffix} is not read: rename it to day-4-stretch-4.md"
    ]
    assert problems.warnings == []


def test_other_unread_markdown_files_are_warnings(project: Project) -> None:
    (project.course_dir / "notes.markdown").write_text("ideas\n")
    (project.course_dir / ".draft.MD").write_text("hidden\n")
    folder = project.newsletters_dir
    folder.mkdir()
    (folder / "spring.MD").write_text("---\nsubject: a\npreheader: b\n---\nHi\n")
    from dripmail.checks import check_project

    problems, _ = check_project(project)
    assert problems.errors == []
    assert [w for w in problems.warnings if "not read" in w] == [
        "course/notes.markdown: not read: only .md files are — rename it to notes.md",
        "newsletters/spring.MD: not read: only .md files are — rename it to spring.md",
    ]


def test_course_toml_errors_name_their_line(project: Project) -> None:
    toml = project.course_dir / "course.toml"
    good = toml.read_text()
    toml.write_text(good.replace('timezone = "America/New_York"', 'timezone = "Mars/Olympus"'))
    assert any(e.startswith("course/course.toml:4: timezone:") for e in _errors(project))
    toml.write_text(good.replace('primary = "#1f5f52"', 'primary = "green"'))
    assert any(e.startswith("course/course.toml:19: brand.primary:") for e in _errors(project))
    toml.write_text(good.replace('send_time = "07:00"', "send_time = 07:00:00 = x"))
    (error,) = _errors(project)
    assert error.startswith("course/course.toml:3: not valid TOML")
    toml.unlink()
    assert "course/course.toml: missing" in _errors(project)[0]


def test_image_without_alt_in_markdown_is_an_error(project: Project) -> None:
    path = project.course_dir / "day-7-stretch-7.md"
    path.write_text(lesson_text(7) + "\n![](https://studio.example.com/x.jpg)\n")
    (error,) = _errors(project)
    assert error.startswith("course/day-7-stretch-7.md:") and "image without alt" in error


def test_http_link_is_a_warning_not_an_error(project: Project) -> None:
    path = project.course_dir / "day-7-stretch-7.md"
    path.write_text(lesson_text(7) + "\nSee [this](http://studio.example.com/old).\n")
    course, problems = load_course_checked(project)
    assert course is not None and not problems.errors
    assert any("link is not https (http://studio.example.com/old)" in w for w in problems.warnings)


def test_load_course_raises_with_every_problem(project: Project) -> None:
    (project.course_dir / "day-1-stretch-1.md").write_text(lesson_text(1, day="9"))
    (project.course_dir / "day-2-stretch-2.md").write_text(lesson_text(2, video_thumbnail=""))
    with pytest.raises(ContentError) as caught:
        load_course(project)
    assert len(caught.value.problems) == 2


def test_newsletter_loads_and_rejects_bad_segment(project: Project) -> None:
    folder = project.newsletters_dir
    folder.mkdir()
    (folder / "hips.md").write_text(
        "---\nsubject: Hips at the desk\npreheader: Three small habits\n---\nHello.\n"
    )
    issue = load_newsletter(project, folder / "hips.md")
    assert issue.slug == "hips" and issue.segment == "all" and issue.body_line == 5
    (folder / "bad.md").write_text("---\nsubject: x\npreheader: y\nsegment: everyone\n---\nHi\n")
    with pytest.raises(ContentError, match=r"newsletters/bad\.md:4: segment"):
        load_newsletter(project, folder / "bad.md")


def _write(project: Project, day: int, text: str | bytes) -> None:
    path = project.course_dir / f"day-{day}-stretch-{day}.md"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (lesson_text(2).replace("---\nGood", "Good", 1), ":1: front matter not closed"),
        ("---\n- day\n- slug\n---\nBody.\n", ":2: front matter must be key: value lines"),
        (lesson_text(2, day="two"), ":2: day: a whole number from 1 to 7, not 'two'"),
        (lesson_text(2).replace("day: 2", "day: 8"), ":2: day: a whole number from 1 to 7, not 8"),
        (lesson_text(2, slug="Day Two"), ':3: slug: use lowercase letters, digits and "-"'),
        (
            lesson_text(2).replace('subject: "Day 2: a stretch for your hips"', "subject: [a, b]"),
            ":4: subject: must be text",
        ),
        (lesson_text(2, preheader=""), ":5: preheader: missing"),
        (
            lesson_text(2, video_thumbnail="thumb.jpg"),
            ':9: video_thumbnail: not a URL ("thumb.jpg")',
        ),
        (lesson_text(2, video_thumbnail_alt=""), ":10: video_thumbnail_alt: missing"),
        (
            lesson_text(2, image="https://studio.example.com/a.jpg"),
            ":11: image_alt: an image needs alt text",
        ),
        (
            lesson_text(2, image="not a url", image_alt="A mat"),
            ':11: image: not a URL ("not a url")',
        ),
        (
            lesson_text(2, safety=False).split("---\nGood")[0] + "---\n\n",
            ":12: the lesson has no text",
        ),
        (
            lesson_text(2).encode("utf-8").replace(b"Good morning", b"Good \xff morning"),
            ": cannot read",
        ),
    ],
    ids=[
        "unclosed",
        "not-a-mapping",
        "day-text",
        "day-range",
        "slug",
        "subject-list",
        "empty-field",
        "thumbnail-url",
        "thumbnail-alt",
        "image-alt",
        "image-url",
        "empty-body",
        "not-utf8",
    ],
)
def test_each_lesson_error_names_file_line_and_field(
    project: Project, text: str | bytes, expected: str
) -> None:
    _write(project, 2, text)
    errors = _errors(project)
    assert len(errors) == 1, errors
    assert errors[0].startswith("course/day-2-stretch-2.md"), errors
    assert expected in errors[0], errors


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"video_url": "http://studio.example.com/v"}, ":8: video_url: not https"),
        ({"subject": "x" * 90}, ":4: subject: 90 characters"),
        ({"preheader": "Short."}, ":5: preheader: 6 characters"),
        ({"teacher": "Sam"}, ":11: teacher: unknown field (the fields are: day, duration"),
    ],
    ids=["http-video", "long-subject", "short-preheader", "unknown-field"],
)
def test_lesson_warnings_do_not_stop_the_course(
    project: Project, overrides: dict, expected: str
) -> None:
    _write(project, 2, lesson_text(2, **overrides))
    course, problems = load_course_checked(project)
    assert course is not None and problems.errors == []
    assert [w for w in problems.warnings if expected in w], problems.warnings


def test_lesson_without_safety_block_or_sources_is_a_warning(project: Project) -> None:
    _write(project, 4, lesson_text(4, safety=False))
    course, problems = load_course_checked(project)
    assert course is not None and problems.errors == []
    mine = [w for w in problems.warnings if "day-4-stretch-4.md" in w]
    assert any(":1: safety: missing: add a 'skip or adapt today if' list" in w for w in mine)
    assert any(":1: sources: none: list the references" in w for w in mine)
    assert not [w for w in problems.warnings if "day-3-stretch-3.md" in w]


def test_safety_fields_reach_the_lesson(project: Project) -> None:
    lesson = load_course(project).lesson(2)
    assert [(x.who, x.what) for x in lesson.safety] == [
        ("Hip replacement", "Keep to the precautions your surgeon gave you.")
    ]
    assert lesson.stop and lesson.sources == ("Kenhub, Psoas major muscle",)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("safety: skip if pregnant\n", "safety: must be a list"),
        ("safety:\n  - who: Pregnancy\n", "safety: item 1 needs what"),
        ("safety:\n  - just text\n", "safety: item 1 needs who and what"),
        ("sources:\n  - {a: 1}\n", "sources: a list of references"),
        ("props: [mat, blocks]\n", "props: must be text"),
    ],
    ids=["not-a-list", "no-what", "no-mapping", "bad-source", "props-list"],
)
def test_badly_shaped_safety_fields_are_errors_at_their_line(
    project: Project, block: str, expected: str
) -> None:
    text = lesson_text(5, safety=False).replace("---\nGood morning", block + "---\nGood morning")
    _write(project, 5, text)
    errors = _errors(project)
    assert len(errors) == 1 and ":11: " + expected in errors[0], errors


WELCOME = '---\nsubject: "You are in"\npreheader: "What to have ready for day 1"\n---\nA mat.\n'


def test_welcome_md_is_the_welcome_email_not_a_lesson(project: Project) -> None:
    assert load_course(project).welcome is None  # optional: no file, no welcome email
    (project.course_dir / "welcome.md").write_text(WELCOME)
    course = load_course(project)
    assert [x.day for x in course.lessons] == list(range(1, 8))
    assert course.welcome is not None and course.welcome.subject == "You are in"
    assert course.welcome.body_line == 5


def test_welcome_without_subject_names_file_and_line(project: Project) -> None:
    (project.course_dir / "welcome.md").write_text(WELCOME.replace('subject: "You are in"', "x: 1"))
    errors = _errors(project)
    assert errors == ["course/welcome.md:1: subject: missing"]


def test_file_named_for_another_day_is_a_warning(project: Project) -> None:
    path = project.course_dir / "day-2-stretch-2.md"
    path.rename(project.course_dir / "day-9-stretch-2.md")
    course, problems = load_course_checked(project)
    assert course is not None
    assert any(
        "day: 2 but the file name does not start with day-2-" in w for w in problems.warnings
    )


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            '[sender]\nname = "Test Studio"\naddress = "hello@studio.example.com"\n',
            "",
            "course/course.toml: [sender]: missing",
        ),
        (
            'address = "hello@studio.example.com"',
            'address = "hello.studio"',
            'course/course.toml:12: sender.address: not an address ("hello.studio")',
        ),
        ('send_time = "07:00"', 'send_time = "7am"', "course/course.toml:3: send_time: not HH:MM"),
        ('start = "next-morning"', 'start = "monday"', "course/course.toml:5: start:"),
        (
            "skip_weekends = false",
            'skip_weekends = "no"',
            "course/course.toml:6: skip_weekends: true or false",
        ),
        (
            'site_url = "https://studio.example.com"',
            'site_url = "studio"',
            'course/course.toml:7: site_url: not a URL ("studio")',
        ),
        ('id = "test-week"', 'id = "Test Week"', "course/course.toml:1: id: use lowercase"),
        ('title = "A test week of hip stretches"\n', "", "course/course.toml: title: missing"),
        (
            'logo_url = ""\nlogo_alt = "Test Studio"',
            'logo_url = "https://s.example.com/l.png"',
            "course/course.toml:24: brand.logo_alt: a logo needs alt text",
        ),
    ],
    ids=[
        "no-sender",
        "sender-address",
        "send-time",
        "start",
        "skip-weekends",
        "site-url",
        "id",
        "no-title",
        "logo-alt",
    ],
)
def test_each_course_toml_error_names_line_and_setting(
    project: Project, old: str, new: str, expected: str
) -> None:
    toml = project.course_dir / "course.toml"
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new))
    errors = _errors(project)
    assert [e for e in errors if e.startswith(expected)], errors


def test_unknown_course_setting_is_a_warning(project: Project) -> None:
    toml = project.course_dir / "course.toml"
    toml.write_text('colour = "blue"\n' + toml.read_text())
    course, problems = load_course_checked(project)
    assert course is not None
    assert "course/course.toml:1: colour: unknown setting (ignored)" in problems.warnings


def test_empty_folder_says_course_toml_is_missing(tmp_path: Path) -> None:
    errors = _errors(Project(tmp_path))
    assert errors == ["course/course.toml: missing: every course needs course/course.toml"]


def test_newsletter_error_paths(project: Project) -> None:
    folder = project.newsletters_dir
    folder.mkdir()
    with pytest.raises(ContentError, match=r"newsletters/nope\.md: no such newsletter file"):
        load_newsletter(project, folder / "nope.md")
    (folder / "a.md").write_text("---\npreheader: y\n---\nHi\n")
    with pytest.raises(ContentError, match=r"newsletters/a\.md:1: subject: missing"):
        load_newsletter(project, folder / "a.md")
    (folder / "b.md").write_text("---\nsubject: x\npreheader: y\n---\n\n")
    with pytest.raises(ContentError, match=r"newsletters/b\.md:5: the newsletter has no text"):
        load_newsletter(project, folder / "b.md")


def test_the_real_course_in_the_repo_loads_cleanly() -> None:
    repo = Path(__file__).resolve().parents[1]
    course, problems = load_course_checked(Project(repo))
    assert problems.errors == [] and course is not None, problems.errors
    assert [x.day for x in course.lessons] == list(range(1, 8))
    assert all(x.video_url.startswith(course.site_url) for x in course.lessons)

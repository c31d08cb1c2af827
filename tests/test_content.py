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
    assert course.lesson(1).body_line == 12
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
